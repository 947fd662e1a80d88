"""Fan-out through the console scripts: one `fte-create-transfer -da A2,A3,A4` to three real agents, on a real
Mosquitto, with a sniffer on `#` (docs/protocol.md#fan-out).

Every destination agent has its own sandbox and transferRoot, so that one relative `-df` lands in a directory of
each (they share the machine). The faults (a destination killed mid-transfer, one gone for good) are in
tests/fault/test_fanout_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.wire.encryption import ENVELOPE_MAGIC
from agent.wire.protocol import CHUNK_FLAGS_AT, CHUNK_MAGIC, FLAG_AEAD
from tests.integration.test_encryption import MARKER, NAME, _contents
from tests.support.agents import FteEnv, wait_until
from tests.support.subscription import Subscription

pytestmark = pytest.mark.timeout(240)

DESTINATIONS = ("A2", "A3", "A4")
REL = f"out/{NAME}.fan"  # relative: resolved against each destination's transferRoot


class Tap:
    """Every payload on `#`, in order of arrival (the broker operator's view)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, bytes]] = []

    def handle(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.seen.append((topic, payload))

    def payloads(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.seen)

    def event(self, tid: str, action: str) -> dict[str, Any] | None:
        for topic, payload in self.payloads():
            if topic == f"SYSTEM.FTE/Log/A1/{tid}":
                event = json.loads(payload)
                if event.get("action") == action:
                    return event
        return None


def create_fanout_agents(env: FteEnv, root: Path, names: tuple[str, ...] = DESTINATIONS,
                         **properties: Any) -> dict[str, Path]:
    """A1 (sandbox root/src) and the destination agents, each with its own sandbox and transferRoot root/<name>
    (holding out/); the roots by agent."""
    roots = {"A1": root / "src"}
    roots["A1"].mkdir(parents=True)
    env.create_agent("A1", sandbox=roots["A1"], **properties)
    for name in names:
        roots[name] = root / name.lower()
        (roots[name] / "out").mkdir(parents=True)
        env.create_agent(name, sandbox=roots[name], transferRoot=roots[name], **properties)
    return roots


@contextmanager
def running_fanout_agents(tmp_path: Path, url: str) -> Iterator[tuple[FteEnv, dict[str, Path]]]:
    """A1 and DESTINATIONS (create_fanout_agents) running on the broker at `url`, stopped at the end."""
    env = FteEnv(tmp_path / "home", url)
    try:
        roots = create_fanout_agents(env, tmp_path / "data")
        for name in ("A1", *DESTINATIONS):
            env.start_agent(name)
        yield env, roots
    finally:
        env.stop_all()


@pytest.fixture
def fan(tmp_path: Path, mosquitto) -> Iterator[tuple[FteEnv, dict[str, Path]]]:
    with running_fanout_agents(tmp_path, mosquitto.ensure_running().url) as running:
        yield running


def agent_logs(env: FteEnv) -> str:
    return "\n".join(f"--- {n} ---\n{a.log_tail(40)}" for n, a in env.agents.items())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_transfer_delivers_identical_files_to_three_destinations(fan) -> None:
    env, roots = fan
    src = roots["A1"] / "fan.bin"
    src.write_bytes(_contents() * 3)  # about 3.5 MB: fourteen chunks
    tap = Tap()
    with Subscription(env.broker_url, "SYSTEM.FTE/Log/#", tap.handle):
        r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL, "-w", "120",
                    "--json", str(src), timeout=180)
        assert r.returncode == 0, f"{r}\n{agent_logs(env)}"
        tid = r.json()["transfer_id"]
        completed = wait_until(lambda: tap.event(tid, "completed"), 30, "the completed event")
    for name in DESTINATIONS:
        dst = roots[name] / REL
        assert dst.exists() and _digest(dst) == _digest(src), f"{name}: {dst} missing or not identical"
    assert completed["result_code"] == 0, completed
    entries = completed["destinations"]
    assert [e["agent"] for e in entries] == list(DESTINATIONS), entries
    for e in entries:
        assert e["result_code"] == 0 and e["files_done"] == 1 and e["files_failed"] == 0, e
        assert e["bytes_done"] == src.stat().st_size, e
    started = tap.event(tid, "started")
    assert started is not None  # one started event for the transfer, and one completed
    assert started["destination_agent"] == "A2" and started["destination_agents"] == list(DESTINATIONS), started
    assert sum(1 for t, p in tap.payloads() if t == f"SYSTEM.FTE/Log/A1/{tid}" and b'"completed"' in p) == 1


def test_a_sniffer_reads_nothing_of_a_fanout_and_each_chunk_is_published_about_once(fan) -> None:
    env, roots = fan
    body = _contents() * 6  # about 7 MB
    src = roots["A1"] / f"{NAME}.bin"
    src.write_bytes(body)
    tap = Tap()
    with Subscription(env.broker_url, "#", tap.handle):
        r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL, "-w", "120",
                    "--json", str(src), timeout=180)
        assert r.returncode == 0, f"{r}\n{agent_logs(env)}"
        tid = r.json()["transfer_id"]
        wait_until(lambda: tap.event(tid, "completed"), 30, "the completed event on the sniffer")
    for name in DESTINATIONS:
        assert (roots[name] / REL).read_bytes() == body, name

    seen = tap.payloads()
    leaks = [t for t, p in seen if MARKER in p or MARKER[:16] in p]
    assert not leaks, f"the file's contents are readable on {leaks}"

    shared = [p for t, p in seen if t == f"SYSTEM.FTE/Fanout/A1/{tid}"]
    unicast = [p for t, p in seen if t.startswith("SYSTEM.FTE/Data/") and t.endswith(tid)]
    assert shared, "nothing was published on the shared topic"
    assert all(p[:4] == CHUNK_MAGIC and p[CHUNK_FLAGS_AT] & FLAG_AEAD for p in shared + unicast)
    controls = [p for t, p in seen if t.startswith("SYSTEM.FTE/Control/") and t.endswith(tid)]
    assert controls and all(p[:4] == ENVELOPE_MAGIC for p in controls)
    published = sum(len(p) for p in shared + unicast)
    ratio = published / len(body)
    print(f"fan-out to 3: {published} bytes of data published for {len(body)} ({ratio:.2f}x; shared "
          f"{sum(map(len, shared))}, unicast {sum(map(len, unicast))})")
    # three separate transfers would publish 3x the file; publish-once is about 1x (plus what one leg repairs)
    assert ratio < 2.0, f"{published} bytes of data published for a {len(body)}-byte file to 3 destinations " \
                        f"({ratio:.2f}x; shared {sum(map(len, shared))}, unicast {sum(map(len, unicast))})"


def test_an_unknown_destination_in_the_list_is_refused_naming_it(fan) -> None:
    env, roots = fan
    src = roots["A1"] / "small.bin"
    src.write_bytes(b"x" * 1000)
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2,NOSUCHAGENT,A4", "-df", REL, "-w", "30", str(src),
                timeout=60)
    assert r.returncode == 40, str(r)
    assert "NOSUCHAGENT" in r.stdout + r.stderr, str(r)
    for name in DESTINATIONS:
        assert not (roots[name] / REL).exists(), f"{name} received a file of a refused transfer"
