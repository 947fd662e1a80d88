"""-pr and --bandwidth end to end (issue 17): the console scripts, two agents, the Mosquitto session broker.

With maxSourceTransfers=1, transfers queued behind a running one start highest priority first, in the order
they came within a priority (read from the order of their `completed` events, as fte-logs prints them), also
after the source agent was killed and restarted; fte-list-transfers shows each one's priority; a template
carries -pr and --bandwidth; --bandwidth makes a transfer take at least size / rate; agentMaxBandwidth is
parsed and a bad value refused by the agent at start, in one line naming it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import FteEnv, LogFollower, running_agents, sandbox_dir, wait_until
from tests.support.brokers import MosquittoProcess

pytestmark = pytest.mark.timeout(180)

AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3, "maxSourceTransfers": 1}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return sandbox_dir(tmp_path, "in", "out")


@pytest.fixture
def fte(tmp_path: Path, data: Path, mosquitto: MosquittoProcess) -> Iterator[FteEnv]:
    with running_agents(tmp_path / "home", mosquitto.ensure_running().url, data, **AGENT_PROPERTIES) as env:
        yield env


def submit(env: FteEnv, source: Path, dest: Path, *flags: str) -> str:
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dest), "-de", "overwrite", *flags, "--json",
                str(source))
    assert r.returncode == 0, str(r)
    return str(r.json()["transfer_id"])


def listing(env: FteEnv) -> dict[str, dict[str, Any]]:
    r = env.run("list-transfers", "-a", "A1", "--json")
    assert r.returncode == 0, str(r)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return {t["transfer_id"]: t for t in rows if t["role"] == "source"}


@pytest.mark.parametrize("restart", [False, True], ids=["running", "after-a-restart"])
def test_queued_transfers_start_by_priority_then_in_order(fte: FteEnv, data: Path, restart: bool) -> None:
    # the one slot is held by a transfer paced to take minutes (20 MB at 100 kB/s) until it is cancelled
    blocker = data / "in" / "blocker.bin"
    blocker.write_bytes(os.urandom(20_000_000))
    held = submit(fte, blocker, data / "out" / "blocker.bin", "--bandwidth", "100K")
    wait_until(lambda: listing(fte).get(held, {}).get("state") == "in_progress", 30, "the blocker never ran")
    queued = {}
    for name, flags in (("p0a", ()), ("p5a", ("-pr", "5")), ("p0b", ("-pr", "0")), ("p9", ("-pr", "9")),
                        ("p5b", ("--priority", "5"))):
        src = data / "in" / f"{name}.bin"
        src.write_bytes(os.urandom(50_000))
        queued[submit(fte, src, data / "out" / f"{name}.bin", *flags)] = name
    rows = listing(fte)
    assert {queued[t]: rows[t]["priority"] for t in queued} == {"p0a": 0, "p5a": 5, "p0b": 0, "p9": 9, "p5b": 5}
    assert all(rows[t]["state"] == "queued" for t in queued), rows
    text = fte.run("list-transfers", "-a", "A1").stdout
    p9 = next(t for t, n in queued.items() if n == "p9")
    assert any(p9 in line and " pr 9 " in line for line in text.splitlines()), text
    if restart:
        fte.agents["A1"].kill()  # no goodbye: the queue and its priorities come back from the state store
        fte.start_agent("A1", timeout=60)  # a loaded machine: the state store and the broker take their time
        assert {queued[t]: r["priority"] for t, r in listing(fte).items() if t in queued}["p9"] == 9
    with LogFollower(fte, "-a", "A1") as follower:
        follower.wait_subscribed()
        r = fte.run("cancel-transfer", held, "-a", "A1")
        assert r.returncode == 0, str(r)
        done: list[str] = []

        def all_done(ev: dict[str, Any]) -> bool:
            if ev.get("action") == "completed" and ev.get("transfer_id") in queued:
                assert ev.get("result_code") == 0, ev
                done.append(queued[ev["transfer_id"]])
            return len(done) == len(queued)

        follower.events_until(all_done, timeout=90)
    assert done == ["p9", "p5a", "p5b", "p0a", "p0b"]
    assert listing(fte)[held]["state"] == "cancelled"


def test_bandwidth_makes_a_transfer_take_at_least_size_over_rate(fte: FteEnv, data: Path) -> None:
    size, rate = 2_000_000, 500_000
    src = data / "in" / "paced.bin"
    src.write_bytes(os.urandom(size))
    with LogFollower(fte, "-a", "A1") as follower:
        follower.wait_subscribed()
        tid = submit(fte, src, data / "out" / "paced.bin", "--bandwidth", "500K")
        events = follower.events_until(lambda ev: ev.get("transfer_id") == tid and ev.get("action") == "completed",
                                       timeout=60)
    completed = events[-1]
    assert completed["result_code"] == 0, completed
    assert (data / "out" / "paced.bin").read_bytes() == src.read_bytes()
    # a lower bound only, a correctness check (how close it comes is measured in bench/bandwidth.py)
    assert completed["statistics"]["seconds"] >= size / rate, completed["statistics"]
    assert listing(fte)[tid]["bandwidth"] == rate


@pytest.mark.parametrize("flags,words", [
    (("-pr", "10"), "-pr 10 is not a priority: give a whole number from 0"),
    (("-pr", "-1"), "-pr -1 is not a priority"),
    (("--bandwidth", "fast"), "--bandwidth 'fast' is not a rate in bytes a second"),
    (("--bandwidth", "1.5M"), "--bandwidth '1.5M' is not a rate"),
])
def test_bad_priority_or_bandwidth_is_one_clear_line(tmp_path: Path, flags: tuple[str, ...], words: str) -> None:
    env = FteEnv(tmp_path / "home", "mqtt://127.0.0.1:1")  # refused before any broker is asked
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", "/tmp/x", *flags, "/tmp/y")
    assert r.returncode != 0 and r.stdout == "", str(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], str(r)


def test_template_carries_priority_and_bandwidth(fte: FteEnv, data: Path) -> None:
    name = f"pr-{secrets.token_hex(4)}"
    src = data / "in" / "t.bin"
    src.write_bytes(os.urandom(10_000))
    try:
        r = fte.run("create-template", "-tn", name, "-sa", "A1", "-da", "A2", "-dd", str(data / "out"),
                    "-de", "overwrite", "-pr", "7", "--bandwidth", "20M", str(src))
        assert r.returncode == 0, str(r)
        summary = fte.run("list-templates", "-v", name).stdout
        assert "-pr 7" in summary and "--bandwidth 20000000" in summary, summary
        r = fte.run("create-transfer", "-tn", name, "-w", "60", "--json")
        assert r.returncode == 0, str(r)
        tid = json.loads(r.stdout.strip().splitlines()[-1])["transfer_id"]
        row = listing(fte)[tid]
        assert (row["priority"], row["bandwidth"]) == (7, 20_000_000), row
        # a flag given on submission overrides the template's
        r = fte.run("create-transfer", "-tn", name, "-pr", "2", "-w", "60", "--json")
        assert r.returncode == 0, str(r)
        tid = json.loads(r.stdout.strip().splitlines()[-1])["transfer_id"]
        assert listing(fte)[tid]["priority"] == 2
    finally:
        fte.run("delete-templates", name)


@pytest.mark.parametrize("value,ok", [("20M", True), ("0", True), ("20MB", False), ("-5", False)])
def test_agent_max_bandwidth_is_parsed_and_a_bad_value_refused(tmp_path: Path, mosquitto: MosquittoProcess,
                                                               value: str, ok: bool) -> None:
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    env.create_agent("BW1", sandbox=sandbox_dir(tmp_path), agentMaxBandwidth=value)
    if ok:
        try:
            env.start_agent("BW1")
        finally:
            env.stop_all()
        return
    r = env.run("start-agent", "BW1", "-F", timeout=60)
    assert r.returncode != 0, str(r)
    lines = [line for line in r.stderr.splitlines() if "agentMaxBandwidth" in line]
    assert lines and f"{value!r} is not a rate in bytes a second" in lines[0], str(r)


def test_agent_max_bandwidth_caps_what_the_agent_sends(tmp_path: Path, data: Path,
                                                       mosquitto: MosquittoProcess) -> None:
    size, rate = 2_000_000, 500_000
    props = dict(AGENT_PROPERTIES, agentMaxBandwidth="500K")
    with running_agents(tmp_path / "home-bw", mosquitto.ensure_running().url, data, **props) as env:
        src = data / "in" / "capped.bin"
        src.write_bytes(os.urandom(size))
        with LogFollower(env, "-a", "A1") as follower:
            follower.wait_subscribed()
            tid = submit(env, src, data / "out" / "capped.bin")
            events = follower.events_until(
                lambda ev: ev.get("transfer_id") == tid and ev.get("action") == "completed", timeout=60)
    assert events[-1]["result_code"] == 0, events[-1]
    assert (data / "out" / "capped.bin").read_bytes() == src.read_bytes()
    # the agent's bucket may hold what it saved up since it started: a tenth of a second, or two chunks
    saved = max(rate // 10, 2 * AGENT_PROPERTIES["agentChunkSize"])
    assert events[-1]["statistics"]["seconds"] >= (size - saved) / rate, events[-1]["statistics"]
