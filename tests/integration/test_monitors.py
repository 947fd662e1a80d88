"""Resource monitors end to end: the console scripts against Mosquitto, two real agents, real files.

fte-create-monitor with each trigger kind (match, noMatch, noSizeChange=N, fileSize>=SIZE), variable
substitution in the task, -bs batching, -mt with a request file from `fte-create-transfer -gt`, the
no-duplicate rules (a file fires once; again when modified or deleted and re-created; not again after an
agent restart), fte-stop-monitor / fte-start-monitor / fte-delete-monitor / fte-list-monitors, and the
refusals with the reference's result codes (101, 102, 104, 105, 110, 111, 114).

Monitor events are read where the agent publishes them, SYSTEM.FTE/Log/<agent>/Monitors/<name>, by a
subscription of the test's own (fte-logs --follow subscribes to Log/+/+ and does not show them). Every
wait is bounded; "nothing happens" is checked for a few poll intervals (polls are 1 s).

The two agents (MON1 -> MON2, sandbox: the module's data directory) are shared by the module; every
test uses a monitor name and directories of its own.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import FteEnv, Result, wait_until
from tests.support.brokers import MosquittoProcess
from tests.support.subscription import Subscription

pytestmark = pytest.mark.timeout(90)

SRC, DST = "MON1", "MON2"
LATE = "MON3"  # configured, started only by the test that needs a destination agent that is not up yet
PREFIX = "SYSTEM.FTE"
AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3}
POLL = ["-pi", "1", "-pu", "seconds"]
QUIET = 1.5  # seconds (1.5 polls) in which something must NOT happen
WAIT = 20.0  # bound for something that must happen


# --------------------------------------------------------------------------- helpers


class EventTap:
    """The test's own MQTT subscription (tests.support.subscription): JSON events on `topic_filter`.

    Live when the constructor returns (the broker acknowledged the subscription), so no event published
    afterwards is missed.
    """

    def __init__(self, url: str, topic_filter: str) -> None:
        self.events: "queue.Queue[tuple[str, dict[str, Any]]]" = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.pending: list[tuple[str, dict[str, Any]]] = []  # seen, not taken by a wait
        self._subscription = Subscription(url, topic_filter, self._receive)

    def _receive(self, topic: str, payload: bytes) -> None:
        try:
            ev = json.loads(payload)
        except ValueError:
            return
        if isinstance(ev, dict):
            self.events.put((topic, ev))

    def close(self) -> None:
        self._subscription.close()

    def _pull(self, deadline: float) -> bool:
        """Move the next event (if one comes before `deadline`) to the unconsumed ones."""
        try:
            item = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        self.seen.append(item)
        self.pending.append(item)
        return True

    def _take(self, pred: Callable[[str, dict[str, Any]], bool]) -> dict[str, Any] | None:
        for i, item in enumerate(self.pending):
            if pred(*item):
                del self.pending[i]
                return item[1]
        return None

    def wait(self, pred: Callable[[str, dict[str, Any]], bool], what: str, timeout: float = WAIT) -> dict[str, Any]:
        """The first event not taken by an earlier wait for which pred(topic, event) holds (it may have
        arrived already: the agent publishes a transfer's "started" before the monitor's "fired"); bounded."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self._take(pred)
            if ev is not None:
                return ev
            if not self._pull(deadline) and time.monotonic() >= deadline:
                break
        recent = "\n".join(f"{t} {json.dumps(e)[:300]}" for t, e in self.seen[-15:])
        raise AssertionError(f"no event within {timeout} s: {what}; recent events:\n{recent}")

    def none(self, pred: Callable[[str, dict[str, Any]], bool], what: str, seconds: float = QUIET) -> None:
        """No event for which pred(topic, event) holds (and that no wait took) arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            ev = self._take(pred)
            if ev is not None:
                raise AssertionError(f"unexpected event ({what}): {json.dumps(ev)}")
            if not self._pull(deadline) and time.monotonic() >= deadline:
                return


def monitor_topic(name: str) -> str:
    return f"{PREFIX}/Log/{SRC}/Monitors/{name}"


def fired(name: str, path: Path | None = None) -> Callable[[str, dict[str, Any]], bool]:
    """A 'fired' event of monitor `name` (for the file `path`, if given)."""
    def pred(topic: str, ev: dict[str, Any]) -> bool:
        return (topic == monitor_topic(name) and ev.get("action") == "fired"
                and (path is None or str(path) in ev.get("files", [])))
    return pred


def monitor_event(name: str, *actions: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda topic, ev: topic == monitor_topic(name) and ev.get("action") in actions


def arrived(path: Path, content: bytes, timeout: float = WAIT) -> None:
    wait_until(lambda: path.is_file() and path.read_bytes() == content, timeout,
               f"{path} arrives with the expected {len(content)} bytes (exists: {path.exists()})", interval=0.1)


def one_line_error(r: Result, code: int, *fragments: str) -> None:
    assert r.returncode == code, str(r)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), str(r)
    for f in fragments:
        assert f in r.stderr, str(r)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoProcess) -> Iterator[FteEnv]:
    base = tmp_path_factory.mktemp("monitors")
    data = base / "data"
    data.mkdir()
    e = FteEnv(base / "fte_home", mosquitto.ensure_running().url)
    e.data = data  # type: ignore[attr-defined]
    e.cleanup = []  # type: ignore[attr-defined]  # fte-delete-monitor processes of the tests' teardowns
    try:
        for name in (SRC, DST, LATE):
            e.create_agent(name, sandbox=data, **AGENT_PROPERTIES)
        procs = {name: e.start_agent(name, wait_ready=False) for name in (SRC, DST)}
        for name, p in procs.items():
            e.wait_status(name, {"READY", "ACTIVE"}, pid=p.pid, process=p)
        yield e
    finally:
        finish_cleanup(e)
        e.stop_all()


def finish_cleanup(env: FteEnv) -> None:
    """Wait for the fte-delete-monitor processes started by earlier tests' teardowns."""
    while env.cleanup:  # type: ignore[attr-defined]
        p = env.cleanup.pop()  # type: ignore[attr-defined]
        try:
            p.communicate(timeout=30)
        except Exception:  # noqa: BLE001 - cleanup only
            p.kill()
            p.communicate()


class Case:
    """A monitor name and directories of the test's own, and a tap on the source agent's log topics."""

    def __init__(self, env: FteEnv, label: str) -> None:
        self.env = env
        self.name = f"{label}_{secrets.token_hex(3)}"
        self.root: Path = env.data / self.name  # type: ignore[attr-defined]
        self.watch = self.root / "watch"
        self.out = self.root / "out"
        self.watch.mkdir(parents=True)
        self.out.mkdir()
        self.tap = EventTap(env.broker_url, f"{PREFIX}/Log/{SRC}/#")
        self.created: list[str] = []

    def args(self, trigger: str, *task: str, name: str | None = None, directory: Path | None = None) -> list[str]:
        """fte-create-monitor's arguments for a monitor of this test (polling every second)."""
        return ["-ma", SRC, "-mn", name or self.name, "-md", str(directory or self.watch), "-tr", trigger, *POLL,
                *task]

    def create(self, trigger: str, *task: str, name: str | None = None, directory: Path | None = None,
               expect: int = 0) -> Result:
        name = name or self.name
        r = self.env.run("create-monitor", *self.args(trigger, *task, name=name, directory=directory))
        if expect == 0:
            assert r.returncode == 0, str(r)
            self.created.append(name)
        return r

    def close(self) -> None:
        self.tap.close()
        for name in self.created:  # in the background: the module fixture waits for them
            self.env.cleanup.append(  # type: ignore[attr-defined]
                self.env.popen("delete-monitor", "-ma", SRC, "-mn", name))


@pytest.fixture
def case(env: FteEnv, request: pytest.FixtureRequest) -> Iterator[Case]:
    label = request.node.name.removeprefix("test_")[:20].replace("[", "_").replace("]", "")
    c = Case(env, label)
    try:
        yield c
    finally:
        c.close()


def publish_retained(env: FteEnv, topic: str, payload: bytes) -> None:
    """What anyone who may publish on the broker can do (a raw MQTT client of the test's own)."""
    import asyncio

    import aiomqtt

    from tests.support.brokers import split_url

    host, port = split_url(env.broker_url)

    async def go() -> None:
        async with aiomqtt.Client(host, port, identifier=f"third-party-{secrets.token_hex(4)}", timeout=30) as c:
            await c.publish(topic, payload, qos=1, retain=True)

    asyncio.run(asyncio.wait_for(go(), 30))


def run_together(env: FteEnv, *commands: tuple[str, list[str]]) -> list[Result]:
    """Independent commands run at the same time (each costs a process start and a broker round trip)."""
    procs = [(verb, args, env.popen(verb, *args)) for verb, args in commands]
    results = []
    for verb, args, p in procs:
        out, err = p.communicate(timeout=60)
        results.append(Result([verb, *args], p.returncode, out, err))
    return results


def listed(env: FteEnv, name: str) -> list[dict[str, Any]]:
    r = env.run("list-monitors", "-ma", SRC, "-mn", name, "--json")
    assert r.returncode == 0, str(r)
    return json.loads(r.stdout)


# --------------------------------------------------------------------------- triggers


def test_match_substitutes_variables_and_the_event_names_the_transfer(case: Case) -> None:
    dest = (f"{case.out}/${{AgentName}}-${{FileNameWithoutExtension}}-${{FileNameExtension}}-${{FileName}}")
    case.create("match,*.csv", "-da", DST, "-df", dest)
    (case.watch / "notes.txt").write_bytes(b"not a csv")
    content = os.urandom(70_000)
    src = case.watch / "report.csv"
    src.write_bytes(content)

    ev = case.tap.wait(fired(case.name, src), "monitor fired for report.csv")
    assert ev["files"] == [str(src)] and ev["agent"] == SRC and ev["monitor"] == case.name, ev
    tid = ev["transfer_id"]
    assert tid and tid in ev["message"], ev
    # the transfer id in the event is the transfer that ran, started by the monitor
    started = case.tap.wait(lambda t, e: t == f"{PREFIX}/Log/{SRC}/{tid}" and e.get("action") == "started",
                            f"transfer {tid} started")
    assert started["originator"] == f"monitor {case.name}", started
    case.tap.wait(lambda t, e: t == f"{PREFIX}/Log/{SRC}/{tid}" and e.get("state") == "complete",
                  f"transfer {tid} complete")
    arrived(case.out / f"{SRC}-report-csv-report.csv", content)
    assert sorted(p.name for p in case.out.iterdir()) == [f"{SRC}-report-csv-report.csv"]  # not notes.txt


def test_nomatch_fires_once_per_absence_and_refuses_file_variables(case: Case) -> None:
    alarm = case.root / "alarm.txt"
    alarm.write_bytes(b"the flag file is missing\n")
    refused, ok = run_together(
        case.env,
        # a file variable: there is no file to describe
        ("create-monitor", case.args("noMatch,*.flag", "-da", DST, "-df", f"{case.out}/${{FileName}}",
                                     name=case.name + "v")),
        # ${AgentName} describes no file: allowed
        ("create-monitor", case.args("noMatch,*.flag", "-da", DST, "-df", f"{case.out}/alarm-${{AgentName}}.txt",
                                     "-de", "overwrite", str(alarm))))
    one_line_error(refused, 110, "noMatch", "${FileName}")
    assert ok.returncode == 0, str(ok)
    case.created.append(case.name)
    ev = case.tap.wait(fired(case.name), "noMatch fired for the empty directory")
    assert ev["files"] == [] and ev["transfer_id"], ev
    arrived(case.out / f"alarm-{SRC}.txt", alarm.read_bytes())
    case.tap.none(fired(case.name), "noMatch fired twice for one absence")

    flag = case.watch / "go.flag"
    flag.write_bytes(b"")
    case.tap.none(fired(case.name), "noMatch fired while a matching file is present")
    flag.unlink()
    ev2 = case.tap.wait(fired(case.name), "noMatch fired again for the new absence")
    assert ev2["transfer_id"] != ev["transfer_id"], (ev, ev2)


def test_nosizechange_waits_for_a_file_being_written(case: Case) -> None:
    case.create("noSizeChange=2,*.log", "-da", DST, "-df", f"{case.out}/${{FileName}}")
    src = case.watch / "growing.log"
    dest = case.out / "growing.log"
    content = b""
    with open(src, "ab") as fh:
        # appended to about three times per poll for 2.5 s: never sent half-written
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            chunk = os.urandom(4096)
            fh.write(chunk)
            fh.flush()
            content += chunk
            assert not dest.exists() and not any(p.name.startswith("growing") for p in case.out.iterdir()), \
                "a file still being written was sent"
            case.tap.none(fired(case.name), "fired while the file was being written", seconds=0.3)
    # unchanged for 2 polls: sent, complete
    ev = case.tap.wait(fired(case.name, src), "noSizeChange fired once the file stopped changing", timeout=10)
    arrived(dest, content)
    assert len(content) > 24_000 and ev["transfer_id"]


def test_filesize_fires_at_the_size(case: Case) -> None:
    # "2K" (no B) means 2 KB, like "2KB"
    case.create("fileSize>=2K,*.bin", "-da", DST, "-dd", str(case.out))
    small, big = case.watch / "small.bin", case.watch / "big.bin"
    small.write_bytes(os.urandom(1000))
    big.write_bytes(os.urandom(3000))
    ev = case.tap.wait(fired(case.name, big), "fileSize fired for the 3000-byte file")
    assert ev["files"] == [str(big)], ev
    arrived(case.out / "big.bin", big.read_bytes())
    case.tap.none(fired(case.name, small), "fileSize fired for a file below the size", seconds=1.5)
    assert not (case.out / "small.bin").exists()

    with open(small, "ab") as fh:
        fh.write(os.urandom(1048))  # 2048 bytes: the size exactly
    case.tap.wait(fired(case.name, small), "fileSize fired once the file reached 2 KB")
    arrived(case.out / "small.bin", small.read_bytes())


def test_batch_size_combines_files_into_one_transfer(case: Case) -> None:
    files = {}
    for i in range(4):
        p = case.watch / f"part{i}.dat"
        p.write_bytes(os.urandom(5000 + i))
        files[p.name] = p.read_bytes()
    # all four present at the first poll: batches of 3 and 1
    case.create("match,*.dat", "-da", DST, "-dd", str(case.out), "-bs", "3")
    ev1 = case.tap.wait(fired(case.name), "first batch")
    ev2 = case.tap.wait(fired(case.name), "second batch")
    assert [len(ev1["files"]), len(ev2["files"])] == [3, 1], (ev1, ev2)
    assert sorted(ev1["files"] + ev2["files"]) == sorted(str(case.watch / n) for n in files)
    assert ev1["transfer_id"] != ev2["transfer_id"]
    started = case.tap.wait(lambda t, e: t == f"{PREFIX}/Log/{SRC}/{ev1['transfer_id']}"
                            and e.get("action") == "started", "the batch's transfer started")
    assert len(started["files"]) == 3, started
    for name, content in files.items():
        arrived(case.out / name, content)


def test_batch_size_with_a_destination_file_per_file(case: Case) -> None:
    for i in range(2):
        (case.watch / f"b{i}.dat").write_bytes(os.urandom(1000))
    case.create("match,*.dat", "-da", DST, "-df", f"{case.out}/${{FileName}}", "-bs", "2")
    ev = case.tap.wait(monitor_event(case.name, "fired", "failed"), "the batch fired or failed")
    assert ev["action"] == "fired", ev
    for i in range(2):
        arrived(case.out / f"b{i}.dat", (case.watch / f"b{i}.dat").read_bytes())


# --------------------------------------------------------------------------- memory: no duplicates


def test_a_file_fires_once_again_when_modified_or_recreated_not_after_a_restart(case: Case, env: FteEnv) -> None:
    case.create("match,*.txt", "-da", DST, "-df", f"{case.out}/${{FileName}}", "-de", "overwrite")
    src, dest = case.watch / "a.txt", case.out / "a.txt"
    src.write_bytes(b"version 1\n")
    case.tap.wait(fired(case.name, src), "fired for a new file")
    arrived(dest, b"version 1\n")
    case.tap.none(fired(case.name, src), "the same file fired twice")

    src.write_bytes(b"version 2, longer\n")
    case.tap.wait(fired(case.name, src), "fired again for the modified file")
    arrived(dest, b"version 2, longer\n")

    # deleted, seen absent, and re-created with the very same size and modification time: fires again
    st = src.stat()
    src.unlink()
    time.sleep(1.6)  # more than a poll interval: the monitor sees the file gone (nothing to await)
    src.write_bytes(b"version 2, longer\n")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    ev = case.tap.wait(fired(case.name, src), "fired again for the re-created file")
    # (its transfer ends before the agent is stopped: a stop during a transfer is not what this test is about)
    case.tap.wait(lambda t, e: t == f"{PREFIX}/Log/{SRC}/{ev['transfer_id']}" and e.get("state") == "complete",
                  "the re-created file's transfer completed")

    # meanwhile someone else publishes a monitor definition of their own where the agent's retained views are
    # (same directory, their destination): the agent runs monitors from its state store, never from these
    forged_name, forged_out = f"{case.name}_forged", case.root / "forged"
    forged = listed(env, case.name)[0]
    forged.update(name=forged_name, requester="mallory")
    forged["spec"] = {**forged["spec"], "name": forged_name,
                      "task": {**forged["spec"]["task"], "items": [
                          {**forged["spec"]["task"]["items"][0], "destination": f"{forged_out}/${{FileName}}"}]}}
    publish_retained(env, f"{PREFIX}/Monitors/{SRC}/{forged_name}", json.dumps(forged).encode())

    # the agent restarts: the monitor resumes with it, remembers a.txt, and sends what came meanwhile
    finish_cleanup(env)  # no command of an earlier teardown in flight to the agent
    env.agents[SRC].terminate()
    new = case.watch / "new.txt"
    new.write_bytes(b"arrived while the agent was down\n")
    try:
        env.start_agent(SRC)
        ev = case.tap.wait(fired(case.name), "the monitor resumed with its agent and fired")
        assert ev["files"] == [str(new)], f"a.txt fired again after the restart: {ev}"
        arrived(case.out / "new.txt", new.read_bytes())
        case.tap.none(fired(case.name, src), "a.txt fired again after the restart")
        case.tap.none(monitor_event(forged_name, "created", "fired", "failed"), "a forged retained monitor ran")
        assert not forged_out.exists()
    finally:
        publish_retained(env, f"{PREFIX}/Monitors/{SRC}/{forged_name}", b"")


def test_a_file_whose_transfer_could_not_start_fires_again(case: Case, env: FteEnv) -> None:
    # the destination agent is configured but not running: the agent refuses to start the transfer
    late = LATE
    case.create("match,*.txt", "-da", late, "-df", f"{case.out}/${{FileName}}")
    src = case.watch / "waiting.txt"
    src.write_bytes(b"sent once the destination is up\n")
    ev = case.tap.wait(monitor_event(case.name, "failed", "fired"), "the monitor tried to start the transfer")
    assert ev["action"] == "failed" and ev["result_code"] == 108 and late in ev["message"], ev
    assert ev["files"] == [str(src)], ev
    # not remembered as fired: once the destination agent runs, the file is sent
    env.start_agent(late)
    ev = case.tap.wait(fired(case.name, src), "fired once the destination agent was up")
    arrived(case.out / "waiting.txt", src.read_bytes())


# --------------------------------------------------------------------------- management commands


def test_listing_shows_polls_and_last_poll(case: Case, env: FteEnv) -> None:
    """fte-list-monitors shows how often a running monitor polled and when last: its retained view is published
    again after the first poll and then every MONITOR_VIEW_INTERVAL (5 s), so two views show a count that grew."""
    from agent.core.policy import MONITOR_VIEW_INTERVAL

    case.create("match,*.none", "-da", DST, "-dd", str(case.out))
    wait_until(lambda: [m["polls"] for m in listed(env, case.name)] >= [1], WAIT, "the first poll listed")
    [first] = listed(env, case.name)
    assert first["last_poll"] is not None, first
    wait_until(lambda: listed(env, case.name)[0]["polls"] > first["polls"], WAIT + MONITOR_VIEW_INTERVAL,
               "a later poll listed")
    [later] = listed(env, case.name)
    assert later["last_poll"] > first["last_poll"], (first, later)


def test_list_stop_start_delete(case: Case, env: FteEnv) -> None:
    case.create("match,*.txt", "-da", DST, "-dd", str(case.out))

    as_json, r = run_together(env, ("list-monitors", ["-ma", SRC, "-mn", case.name, "--json"]),
                              ("list-monitors", ["-ma", SRC, "-v"]))
    assert as_json.returncode == 0 and r.returncode == 0, (str(as_json), str(r))
    [row] = json.loads(as_json.stdout)
    assert row["agent"] == SRC and row["state"] == "started", row
    assert row["spec"]["trigger"] == "match,*.txt" and row["spec"]["poll_seconds"] == 1, row
    assert row["spec"]["directory"] == str(case.watch) and row["spec"]["task"]["destination_agent"] == DST, row
    [line] = [ln for ln in r.stdout.splitlines() if case.name in ln]
    # the creator is kept with the definition (the signer of create_monitor) and shown
    from agent.auth import requester_name

    creator = requester_name({})
    assert row["requester"] == creator, row
    for expected in (SRC, "started", "match,*.txt", str(case.watch), "every 1 s", f"{DST}:{case.out}",
                     f"by {creator}"):
        assert expected in line, line

    r = env.run("stop-monitor", "-ma", SRC, "-mn", case.name)
    assert r.returncode == 0 and "stopped" in r.stdout, str(r)
    x = case.watch / "x.txt"
    x.write_bytes(b"x")
    quiet_from = time.monotonic()
    wait_until(lambda: [m["state"] for m in listed(env, case.name)] == ["stopped"], 10, "listed as stopped")
    case.tap.none(fired(case.name), "a stopped monitor fired",
                  seconds=max(0.1, QUIET - (time.monotonic() - quiet_from)))

    r = env.run("start-monitor", "-ma", SRC, "-mn", case.name)
    assert r.returncode == 0 and "started" in r.stdout, str(r)
    case.tap.wait(fired(case.name, x), "the restarted monitor fired for the file that came while it was stopped")
    arrived(case.out / "x.txt", b"x")

    r = env.run("delete-monitor", "-ma", SRC, "-mn", case.name)
    assert r.returncode == 0 and "deleted" in r.stdout, str(r)
    case.created.remove(case.name)
    (case.watch / "y.txt").write_bytes(b"y")
    quiet_from = time.monotonic()
    wait_until(lambda: listed(env, case.name) == [], 10, "gone from fte-list-monitors")
    for r in run_together(env, *((verb, ["-ma", SRC, "-mn", case.name])
                                 for verb in ("delete-monitor", "stop-monitor", "start-monitor"))):
        one_line_error(r, 104, case.name)
    case.tap.none(fired(case.name), "a deleted monitor fired",
                  seconds=max(0.1, 1.5 - (time.monotonic() - quiet_from)))


def test_refusals_with_result_codes(case: Case, env: FteEnv, tmp_path: Path) -> None:
    task = ("-da", DST, "-dd", str(case.out))
    outside = tmp_path / "outside"
    outside.mkdir()
    other = case.root / "other.json"  # a task whose source agent is not the monitoring agent
    r = env.run("create-transfer", "-sa", DST, "-da", SRC, "-dd", str(case.out), "${FilePath}", "-gt", str(other))
    assert r.returncode == 0, str(r)
    sandbox, missing, trigger, unit, source = run_together(
        env,
        ("create-monitor", case.args("match,*", *task, directory=outside)),
        ("create-monitor", case.args("match,*", *task, directory=case.root / "missing")),
        ("create-monitor", case.args("exists,*.txt", *task)),
        ("create-monitor", case.args("match,*", *task, "-pu", "fortnights")),
        ("create-monitor", case.args("match,*", "-mt", str(other))))
    one_line_error(sandbox, 114, "outside the agent's sandbox")  # the monitored directory
    one_line_error(missing, 101, "not a directory")
    one_line_error(trigger, 102, "trigger", "exists")
    one_line_error(unit, 1, "fortnights")
    one_line_error(source, 111, SRC, DST)

    case.create("match,*.txt", *task)
    one_line_error(case.create("match,*.csv", *task, expect=105), 105, "already has a monitor", "-f")
    r = case.create("match,*.csv", *task, "-f", expect=-1)  # -f replaces it
    assert r.returncode == 0, str(r)
    wait_until(lambda: [m["spec"]["trigger"] for m in listed(env, case.name)] == ["match,*.csv"], 10,
               "the replaced definition is listed")


def test_task_file_made_with_generate_transfer(case: Case, env: FteEnv) -> None:
    taskfile = case.root / "task.json"
    r = env.run("create-transfer", "-sa", SRC, "-da", DST, "-df", f"{case.out}/copy-of-${{FileName}}",
                "-de", "overwrite", "${FilePath}", "-gt", str(taskfile))
    assert r.returncode == 0, str(r)
    assert json.loads(taskfile.read_text())["spec"]["items"][0]["source"] == "${FilePath}"
    case.create("match,*.xml", "-mt", str(taskfile))
    src = case.watch / "order.xml"
    src.write_bytes(b"<order id='1'/>\n")
    ev = case.tap.wait(fired(case.name, src), "the -mt task fired")
    assert ev["transfer_id"]
    arrived(case.out / "copy-of-order.xml", src.read_bytes())
