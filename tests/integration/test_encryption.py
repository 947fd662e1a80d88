"""End-to-end encryption through the console scripts, real agents, a real Mosquitto, and a sniffer on `#`.

The sniffer is the broker operator: it records every payload of every topic while a file with a distinctive
name, size and contents crosses, and tampers with a chunk frame on the way (it publishes a copy of one with a
flipped byte on the destination's data topic, as an operator could). Nothing of the file may be readable in
what the agents send each other, and the tampered frame must be dropped, not written.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from pathlib import Path

import aiomqtt
import pytest

from agent.wire.encryption import ENVELOPE_MAGIC
from agent.wire.protocol import CHUNK_FLAGS_AT, CHUNK_MAGIC, FLAG_AEAD, FLAG_GMAC
from tests.support.agents import FteEnv, running_agents, sandbox_dir, wait_until
from tests.support.brokers import split_url
from tests.support.subscription import Subscription

pytestmark = pytest.mark.timeout(180)

MARKER = b"MARKER-7f3c-9a1e-secret-contents;"
NAME = "zebra-quokka-4d2b19"
SIZE = 1_234_567  # five chunks of 256 KiB and a bit: its decimal digits must appear in no agent-to-agent payload
# what the agents publish on purpose for people, in the clear (docs/security.md): commands and replies, the
# transfer log and progress. Agent-to-agent traffic is Data/ and Control/; statuses are checked too.
FOR_PEOPLE = ("SYSTEM.FTE/Commands/", "SYSTEM.FTE/Replies/", "SYSTEM.FTE/Log/", "SYSTEM.FTE/Transfers/")


def _contents() -> bytes:
    body = (MARKER + os.urandom(991)) * (SIZE // (len(MARKER) + 991) + 1)
    return body[:SIZE]


class Operator:
    """Records every payload on `#`; tampers with the first chunk frame it sees for A2 (once)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.tampered: str | None = None

    def handle(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.seen.append((topic, payload))
            first = self.tampered is None and topic.startswith("SYSTEM.FTE/Data/A2/") and len(payload) > 1000
            if first:
                self.tampered = topic
        if first:
            bad = bytearray(payload)
            bad[len(bad) // 2] ^= 0x40  # a byte of the ciphertext
            threading.Thread(target=self._publish, args=(topic, bytes(bad)), daemon=True).start()

    def _publish(self, topic: str, payload: bytes) -> None:
        host, port = split_url(self.url)

        async def go() -> None:
            async with aiomqtt.Client(host, port, identifier="operator-" + secrets.token_hex(4), timeout=10) as c:
                await c.publish(topic, payload, qos=1)

        asyncio.run(asyncio.wait_for(go(), 20))

    def payloads(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.seen)


@pytest.fixture
def pair(tmp_path: Path, mosquitto):
    data = sandbox_dir(tmp_path, "in", "out")
    with running_agents(tmp_path / "home", mosquitto.ensure_running().url, data) as env:
        yield env, data


def _events(seen: list[tuple[str, bytes]], tid: str) -> dict[str, dict]:
    out = {}
    for topic, payload in seen:
        if topic == f"SYSTEM.FTE/Log/A1/{tid}":
            event = json.loads(payload)
            out[event["action"]] = event
    return out


def test_a_sniffer_on_every_topic_reads_nothing_of_the_file_and_a_tampered_frame_is_dropped(pair) -> None:
    env, data = pair
    src = data / "in" / f"{NAME}.bin"
    src.write_bytes(_contents())
    dst = data / "out" / f"{NAME}.copy"
    operator = Operator(env.broker_url)
    with Subscription(env.broker_url, "#", operator.handle):
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "90", "--json", str(src))
        assert r.returncode == 0, str(r)
        tid = r.json()["transfer_id"]
        assert r.json()["encryption"] == "aes-256-gcm", r.stdout  # the -w --json summary says it too
        # the sniffer has every event once the completed one arrived (the agent publishes them in order)
        wait_until(lambda: any(t.startswith("SYSTEM.FTE/Log/A1/") and b'"completed"' in p
                               for t, p in operator.payloads()), 30, "the completed event on the sniffer")
    assert dst.read_bytes() == src.read_bytes(), "the file did not arrive intact"

    seen = operator.payloads()
    # the contents: in no payload of any topic
    leaks = [t for t, p in seen if MARKER in p or MARKER[:16] in p]
    assert not leaks, f"the file's contents are readable on {leaks}"
    # the name and the size: in no payload the agents send each other (nor in their statuses)
    between = [(t, p) for t, p in seen if not t.startswith(FOR_PEOPLE)]
    assert any(t.startswith("SYSTEM.FTE/Control/A2/") for t, _ in between)
    for what in (NAME.encode(), str(SIZE).encode(), SIZE.to_bytes(8, "big")):
        leaks = [t for t, p in between if what in p]
        assert not leaks, f"{what!r} is readable on {leaks}"

    # every frame to A2 is encrypted, every control message in an envelope
    frames = [p for t, p in between if t.startswith("SYSTEM.FTE/Data/A2/")]
    assert len(frames) >= 5 and all(p[:4] == CHUNK_MAGIC and p[CHUNK_FLAGS_AT] & FLAG_AEAD for p in frames)
    controls = [p for t, p in between if t.startswith(("SYSTEM.FTE/Control/A1/", "SYSTEM.FTE/Control/A2/"))]
    assert controls and all(p[:4] == ENVELOPE_MAGIC for p in controls), \
        [p[:40] for p in controls if p[:4] != ENVELOPE_MAGIC]

    # the tampered copy was dropped by the destination (and nothing of it written: the file is intact)
    assert operator.tampered is not None
    wait_until(lambda: "without a valid MAC" in env.agents["A2"].log_tail(200), 20,
               "A2 logging the tampered frame as dropped")

    # the events stay readable for subscribers, and say that the payload was encrypted
    events = _events(seen, tid)
    assert events["started"]["encryption"] == "aes-256-gcm"
    assert events["completed"]["encryption"] == "aes-256-gcm"
    assert events["started"]["files"][0]["size"] == SIZE  # readable, on purpose


def _agents(env: FteEnv, data: Path, a1: dict[str, str], a2: dict[str, str]) -> None:
    env.create_agent("A1", sandbox=data, **a1)
    env.create_agent("A2", sandbox=data, **a2)
    env.start_agent("A1")
    env.start_agent("A2")


def test_a_destination_that_requires_encryption_refuses_a_transfer_sent_in_the_clear(tmp_path: Path,
                                                                                    mosquitto) -> None:
    data = sandbox_dir(tmp_path, "in", "out")
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    try:
        _agents(env, data, {"agentEncryption": "false"}, {})
        (data / "in" / "f.txt").write_bytes(b"hello")
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "f.txt"), "-w", "60",
                    str(data / "in" / "f.txt"))
        assert r.returncode != 0, str(r)
        assert "requires end-to-end encryption" in r.stdout + r.stderr, str(r)
        assert "agentEncryption=false" in r.stdout + r.stderr, str(r)
        assert not (data / "out" / "f.txt").exists()
    finally:
        env.stop_all()


def test_with_encryption_off_on_both_the_transfer_is_authenticated_and_says_so(tmp_path: Path, mosquitto) -> None:
    data = sandbox_dir(tmp_path, "in", "out")
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    operator = Operator(env.broker_url)
    operator.tampered = "not this time"
    try:
        _agents(env, data, {"agentEncryption": "false"}, {"agentEncryption": "false"})
        (data / "in" / "f.bin").write_bytes(MARKER * 100)
        with Subscription(env.broker_url, "#", operator.handle):
            r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "f.bin"), "-w",
                        "60", "--json", str(data / "in" / "f.bin"))
            assert r.returncode == 0, str(r)
            tid = r.json()["transfer_id"]
            assert r.json()["encryption"] == "none", r.stdout
            wait_until(lambda: "completed" in _events(operator.payloads(), tid), 30, "the completed event")
        assert (data / "out" / "f.bin").read_bytes() == MARKER * 100
        frames = [p for t, p in operator.payloads() if t.startswith("SYSTEM.FTE/Data/A2/")]
        assert frames and all(p[CHUNK_FLAGS_AT] & FLAG_GMAC and not p[CHUNK_FLAGS_AT] & FLAG_AEAD for p in frames)
        assert any(MARKER in p for p in frames)  # readable: what the switch is for
        events = _events(operator.payloads(), tid)
        assert events["started"]["encryption"] == events["completed"]["encryption"] == "none"
    finally:
        env.stop_all()


OLDER_AGENT = """
import agent.status
agent.status.offer_public = lambda identity: None  # an agent of a version without end-to-end encryption
"""


def test_a_source_refuses_to_send_to_a_destination_that_cannot_decrypt(tmp_path: Path, mosquitto) -> None:
    """A2 behaves as an older version (its status offers no encryption key): A1 refuses the request, saying
    what to do, rather than sending the files in the clear."""
    data = sandbox_dir(tmp_path, "in", "out")
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    site = tmp_path / "older-agent"
    site.mkdir()
    (site / "sitecustomize.py").write_text(OLDER_AGENT)
    try:
        env.create_agent("A1", sandbox=data)
        env.create_agent("A2", sandbox=data)
        env.start_agent("A1")
        env.start_agent("A2", extra_env={"PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                                                   os.environ.get("PYTHONPATH")]))})
        (data / "in" / "f.txt").write_bytes(b"hello")
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "f.txt"), "-w", "60",
                    str(data / "in" / "f.txt"))
        assert r.returncode != 0, str(r)
        assert "cannot receive encrypted transfers" in r.stderr and "agentEncryption=false" in r.stderr, str(r)
        assert not (data / "out" / "f.txt").exists()
    finally:
        env.stop_all()
