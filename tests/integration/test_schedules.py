"""Scheduled transfers end to end: `fte-create-transfer -ss ...` against Mosquitto and two real agents.

A transfer runs at its start time; a repeating schedule is listed with its next run and the occurrences
so far, and fte-delete-scheduled-transfer removes it; a schedule survives an agent restart, and an
occurrence that fell while the agent was down runs once when it starts; occurrences already past when a
schedule is created (a start time in the past) run once, and the schedule's log event (action "run" on
SYSTEM.FTE/Log/<agent>/<schedule id>) says how many were missed; bad flags are one error line, exit 1.

Schedule events are read with `fte-logs --follow --json -a AGENT` (they are on Log/<agent>/<id>). Times
are given as YYYY-MM-DDThh:mm:ss in this machine's local time (-tb admin, the default). The agents
(SCH1 -> SCH2) are shared by the module; every test uses files and schedules of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import FteEnv, LogFollower, Result, wait_until
from tests.support.brokers import MosquittoProcess

pytestmark = pytest.mark.timeout(90)

SRC, DST = "SCH1", "SCH2"
AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3}
WAIT = 20.0


def local(t: datetime) -> str:
    """A -ss/-es value: local time to the second."""
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def in_seconds(s: float) -> datetime:
    """Now + s seconds, truncated to the second (what -ss keeps), as an aware local time."""
    return (datetime.now() + timedelta(seconds=s)).replace(microsecond=0).astimezone()


def when(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def arrived(path: Path, content: bytes, timeout: float = WAIT) -> None:
    wait_until(lambda: path.is_file() and path.read_bytes() == content, timeout,
               f"{path} arrives with the expected {len(content)} bytes", interval=0.1)


def one_line_error(r: Result, *fragments: str) -> None:
    assert r.returncode == 1, str(r)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), str(r)
    for f in fragments:
        assert f in r.stderr, str(r)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoProcess) -> Iterator[FteEnv]:
    base = tmp_path_factory.mktemp("schedules")
    data = base / "data"
    data.mkdir()
    e = FteEnv(base / "fte_home", mosquitto.ensure_running().url)
    e.data = data  # type: ignore[attr-defined]
    try:
        for name in (SRC, DST):
            e.create_agent(name, sandbox=data, **AGENT_PROPERTIES)
        for name in (SRC, DST):
            e.start_agent(name)
        yield e
    finally:
        e.stop_all()


class Case:
    def __init__(self, env: FteEnv) -> None:
        self.env = env
        self.dir: Path = env.data / secrets.token_hex(4)  # type: ignore[attr-defined]
        self.out = self.dir / "out"
        self.out.mkdir(parents=True)
        self.src = self.dir / "payload.bin"
        self.content = os.urandom(50_000)
        self.src.write_bytes(self.content)
        self.follower = LogFollower(env, "-a", SRC)
        self.follower.wait_subscribed()
        self.pending: list[dict[str, Any]] = []  # read from the follower, not taken by a wait
        self.schedules: list[str] = []

    def schedule(self, *flags: str, dest: str = "copy.bin") -> dict[str, Any]:
        r = self.env.run("create-transfer", "-sa", SRC, "-da", DST, "-df", str(self.out / dest), "-de", "overwrite",
                         str(self.src), *flags, "--json")
        assert r.returncode == 0, str(r)
        data = r.json()
        self.schedules.append(data["schedule_id"])
        return data

    def wait(self, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT) -> dict[str, Any]:
        """The first event not taken by an earlier wait for which pred holds (events of a schedule and of its
        transfer interleave, so an event may have been read already); bounded."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.pending):
                if pred(ev):
                    return self.pending.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event within {timeout} s: {what}; events seen:\n"
                                     + "\n".join(self.follower.seen[-15:]))
            try:
                self.pending += self.follower.events_until(lambda ev: True, timeout=left)
            except AssertionError:
                pass  # nothing more within the time left

    def event(self, sid: str, action: str, timeout: float = WAIT) -> dict[str, Any]:
        return self.wait(lambda ev: ev.get("schedule_id") == sid and ev.get("action") == action,
                         f"schedule {sid}: {action}", timeout)

    def listed_with_runs(self, sid: str, runs: int) -> dict[str, Any]:
        """The schedule's row once fte-list-scheduled-transfers shows `runs` occurrences so far (bounded)."""
        def row() -> dict[str, Any] | None:
            r = self.listing().get(sid)
            return r if r is not None and r["runs"] == runs else None
        return wait_until(row, 10, f"schedule {sid} listed with runs {runs}")

    def listing(self) -> dict[str, dict[str, Any]]:
        r = self.env.run("list-scheduled-transfers", "-a", SRC, "--json")
        assert r.returncode == 0, str(r)
        return {row["schedule_id"]: row for row in json.loads(r.stdout)}

    def close(self) -> None:
        self.follower.close()
        listed = self.listing() if self.env.agents[SRC].alive() else {}
        for sid in self.schedules:
            if sid in listed:
                self.env.run("delete-scheduled-transfer", "-a", SRC, sid)


@pytest.fixture
def case(env: FteEnv) -> Iterator[Case]:
    c = Case(env)
    try:
        yield c
    finally:
        c.close()


def test_a_transfer_runs_at_its_start_time(case: Case) -> None:
    start = in_seconds(3)
    data = case.schedule("-ss", local(start))
    sid = data["schedule_id"]
    assert when(data["next_run"]) == start, data
    if datetime.now().astimezone() < start:
        assert not (case.out / "copy.bin").exists(), "ran before its start time"

    run = case.event(sid, "run")
    assert when(run["time"]) >= start, run
    assert run["occurrence"] == 0 and run["missed"] == 0 and when(run["scheduled_for"]) == start, run
    tid = run["transfer_id"]
    arrived(case.out / "copy.bin", case.content)
    done = case.wait(lambda ev: ev.get("transfer_id") == tid and ev.get("state") == "complete",
                     f"transfer {tid} complete")
    assert done["result_code"] == 0, done
    started = case.wait(lambda ev: ev.get("transfer_id") == tid and ev.get("action") == "started",
                        f"transfer {tid} started")
    assert started["originator"] == f"schedule {sid}", started
    # once: gone afterwards
    case.event(sid, "expired")
    wait_until(lambda: sid not in case.listing(), 10, "a schedule that ran its only occurrence is not listed")


def test_repeating_schedule_is_listed_and_deleted(case: Case) -> None:
    start = in_seconds(2)
    sid = case.schedule("-ss", local(start), "-oi", "minutes", "-oc", "2")["schedule_id"]
    run = case.event(sid, "run")
    assert run["occurrence"] == 0, run
    arrived(case.out / "copy.bin", case.content)

    nxt = start + timedelta(minutes=1)
    row = case.listed_with_runs(sid, 1)
    assert when(row["next_run"]) == nxt and row["agent"] == SRC, row
    assert row["schedule"]["interval"] == "minutes" and row["schedule"]["count"] == 2, row
    r = case.env.run("list-scheduled-transfers", "-a", SRC)
    assert r.returncode == 0, str(r)
    [line] = [ln for ln in r.stdout.splitlines() if sid in ln]
    from agent.auth import requester_name

    creator = requester_name({})  # the signer of create_schedule, kept with the schedule and shown
    assert row["requester"] == creator, row
    for expected in (f"next {nxt.isoformat()}", "every 1 minutes", str(case.src), DST, "runs so far: 1",
                     f"by {creator}"):
        assert expected in line, line

    r = case.env.run("delete-scheduled-transfer", "-a", SRC, sid)
    assert r.returncode == 0 and f"Schedule {sid} deleted" in r.stdout, str(r)
    case.event(sid, "deleted")
    wait_until(lambda: sid not in case.listing(), 10, "a deleted schedule is not listed")
    r = case.env.run("delete-scheduled-transfer", "-a", SRC, sid)
    one_line_error(r, sid)


def test_schedule_survives_a_restart_and_a_missed_occurrence_runs_at_start(case: Case, env: FteEnv) -> None:
    start = in_seconds(5)
    sid = case.schedule("-ss", local(start), "-oi", "days", "-oc", "3")["schedule_id"]
    env.agents[SRC].terminate()
    assert datetime.now().astimezone() < start, "the agent stopped too late for this test (a slow machine)"
    assert not (case.out / "copy.bin").exists()
    # the agent is down at the start time (nothing to await but the clock)
    time.sleep(max(0.0, (start - datetime.now().astimezone()).total_seconds()) + 0.5)
    env.start_agent(SRC)

    run = case.event(sid, "run")
    assert run["occurrence"] == 0 and run["missed"] == 0 and when(run["scheduled_for"]) == start, run
    assert when(run["time"]) > start + timedelta(seconds=0.5), run
    arrived(case.out / "copy.bin", case.content)
    row = case.listed_with_runs(sid, 1)  # still listed after the restart
    assert when(row["next_run"]) == start + timedelta(days=1), row


def test_occurrences_missed_before_creation_run_once_and_are_counted(case: Case) -> None:
    # the start three minutes ago: occurrences 0, 1 and 2 are missed, occurrence 3 (about now) runs
    start = in_seconds(-180)
    sid = case.schedule("-ss", local(start), "-oi", "minutes", "-oc", "10")["schedule_id"]
    run = case.event(sid, "run")
    assert run["missed"] == 3 and run["occurrence"] == 3, run
    assert when(run["scheduled_for"]) == start + timedelta(minutes=3), run
    assert "3 occurrence(s) were missed" in run["message"], run
    arrived(case.out / "copy.bin", case.content)
    with pytest.raises(AssertionError, match="no event within"):
        case.event(sid, "run", timeout=2.0)  # once, not four times
    # "runs" counts the occurrences that are past, run or missed
    row = case.listed_with_runs(sid, 4)
    assert when(row["next_run"]) == start + timedelta(minutes=4), row


def test_invalid_schedule_flags(case: Case, env: FteEnv) -> None:
    base = ("-sa", SRC, "-da", DST, "-df", str(case.out / "x.bin"), str(case.src))
    soon = local(in_seconds(3600))
    later = local(in_seconds(7200))
    for flags, fragment in [
        (("-oc", "2"), "-ss"),
        (("-oi", "minutes"), "-ss"),
        (("-ss", soon, "-oi", "minutes", "-oc", "2", "-es", later), "not both"),
        (("-ss", "tomorrow"), "'tomorrow' is not a time"),
        (("-ss", soon, "-oi", "fortnights"), "-oi 'fortnights'"),
        (("-ss", soon, "-oi", "hours", "-of", "0"), "-of 0"),
        (("-ss", soon, "-oc", "3"), "-oi"),
        (("-ss", soon, "-tb", "remote"), "-tb"),
        (("-ss", soon, "-w"), "-w"),
        (("-ss", later, "-oi", "minutes", "-es", soon), "before -ss"),  # refused by the agent
    ]:
        one_line_error(env.run("create-transfer", *base, *flags), fragment)
    # nothing was scheduled by any of them
    assert not any(r["spec"]["items"][0]["destination"] == str(case.out / "x.bin") for r in case.listing().values())


def test_occurrence_frequency_without_start_is_refused(case: Case, env: FteEnv) -> None:
    r = env.run("create-transfer", "-sa", SRC, "-da", DST, "-df", str(case.out / "f.bin"), str(case.src),
                "-of", "2")
    one_line_error(r, "-ss")
