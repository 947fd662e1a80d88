"""Fan-out attacked by a fellow participant (docs/authority.md#fan-out-transfers-one-group-key-for-all-destinations).

A client that holds what a destination of the transfer holds (the group key G, read here from A2's state store)
publishes on the shared topic `<p>/Fanout/A1/<tid>`: garbled frames, replays of the source's frames, and frames
that open under G but carry other bytes, published ahead of the source so that they are written first. No
destination may rename a file whose content differs from the source's; the forged bytes are found by the
file's digest and the file is received again by unicast alone; the transfer completes for every destination.

Real agent processes on the test's own Mosquitto; every wait is for an event, a store row or a file, bounded.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import struct
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from agent.wire.encryption import decrypt_frame, encrypt_frame
from agent.wire.protocol import CHUNK_HEADER, decode_chunk
from tests.support.brokers import split_url, wait_for
from tests.support.subscription import Subscription

from .helpers import MiB, PREFIX, FaultEnv, finish, make_file, part_files, part_size, sha256

pytestmark = pytest.mark.timeout(180)

DESTINATIONS = ("A2", "A3", "A4")
REL = "out/big.fan"
SIZE = 8 * MiB
_OFFSET_AT = 16  # the offset field of a chunk header (">4sBBHIIQII")


def _agents(env: FaultEnv, root: Path, fsize: dict[str, int] | None = None) -> dict[str, Path]:
    roots = {"A1": root / "src"}
    roots["A1"].mkdir(parents=True)
    env.add_agent("A1", roots["A1"])
    for name in DESTINATIONS:
        roots[name] = root / name.lower()
        (roots[name] / "out").mkdir(parents=True)
        env.add_agent(name, roots[name], transferRoot=roots[name], transferAckTimeout=5000)
    for name in ("A1", *DESTINATIONS):
        env.start_agent(name, fsize=(fsize or {}).get(name))
    return roots


def _group_key(env: FaultEnv, agent: str, tid: str) -> bytes | None:
    """G, as the destination `agent` keeps it (its state store): what a hostile destination holds."""
    db = env.agent_dir(agent) / "state" / "state.db"
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT header FROM transfers WHERE transfer_id=? AND role='destination'", (tid,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    key = json.loads(row[0]).get("fanout_key") if row else None
    return base64.b64decode(key) if key else None


class Forger:
    """On the first frame of the source seen on the shared topic: a forged frame (other bytes, under G) for every
    chunk after it, so that they come before the source's own; on every frame: two forged ahead of it, a garbled
    one, and the frame itself again (a replay)."""

    def __init__(self, url: str, topic: str, key: bytes) -> None:
        self.topic, self.key = topic, key
        self.forged: set[int] = set()
        self.seen = 0
        self.lock = threading.Lock()
        host, port = split_url(url)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fte-test-forger-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        frame = decrypt_frame(payload, self.key)
        if frame is None:
            return  # one of ours (the broker sends a subscriber its own messages too)
        chunk = decode_chunk(frame, authenticated=True)
        length = len(chunk.data)
        with self.lock:
            self.seen += 1
            ahead = [chunk.offset + k * length for k in (range(1, SIZE // length) if not self.seen - 1 else (1, 2))]
            ahead = [o for o in ahead if o + length <= SIZE and o not in self.forged]
            self.forged.update(ahead)
        for offset in ahead:
            forged = bytearray(frame)
            struct.pack_into(">Q", forged, _OFFSET_AT, offset)
            forged[CHUNK_HEADER.size:] = os.urandom(length)
            client.publish(self.topic, bytes(encrypt_frame(forged, self.key)), qos=1)
        client.publish(self.topic, os.urandom(len(payload)), qos=1)  # garbled
        client.publish(self.topic, payload, qos=1)  # replayed

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_destination_forging_shared_frames_poisons_no_file_and_the_transfer_completes(env: FaultEnv,
                                                                                         tmp_path: Path) -> None:
    roots = _agents(env, tmp_path / "data")
    watcher = env.watch()
    src = roots["A1"] / "big.bin"
    digest = make_file(src, SIZE)

    # paced (about 4 s) so that the forger, who learns G from A2's store, is there for most of the file
    client = env.popen("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL,
                       "--bandwidth", "2M", "-w", "--json", str(src))
    tid = watcher.wait_any("started", 30)["transfer_id"]
    key = wait_for(lambda: _group_key(env, "A2", tid), 30, interval=0.02, message="A2 kept no group key")
    forger = Forger(env.broker_url, f"{PREFIX}/Fanout/A1/{tid}", key)
    try:
        r = finish(client, 120, env)
    finally:
        forger.stop()
    assert forger.seen > 0 and forger.forged, "the forger saw nothing to forge"
    completed = watcher.wait(tid, "completed", 10)
    assert r.returncode == 0, f"{r}\n{completed}\n{env.logs()}"
    for name in DESTINATIONS:
        assert sha256(roots[name] / REL) == digest, name
        assert part_files(roots[name]) == [], name
    assert [e["result_code"] for e in completed["destinations"]] == [0, 0, 0], completed["destinations"]
    logs = "\n".join(a.log.read_text(errors="replace") for n, a in env.agents.items() if n != "A1")
    assert "does not open with its group key" in logs  # the garbled frames: dropped, and said so
    # the forged ones were written and caught by the digest, and the file received again by unicast alone
    assert "received again by unicast only" in logs, env.logs()
    assert sum(e["recoveries"] for e in completed["destinations"]) >= 1, completed["destinations"]


# --------------------------------------------------------------------------- replays


REPLAYED = ("Commands/", "Control/", "Data/", "Fanout/")  # not the retained statuses, logs or replies


def test_a_replayed_fanout_starts_no_second_transfer_and_rewrites_no_finished_file(env: FaultEnv,
                                                                                  tmp_path: Path) -> None:
    roots = _agents(env, tmp_path / "data")
    watcher = env.watch()
    src = roots["A1"] / "big.bin"
    digest = make_file(src, 2 * MiB)
    captured: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def keep(topic: str, payload: bytes) -> None:
        if topic.startswith(tuple(f"{PREFIX}/{k}" for k in REPLAYED)):
            with lock:
                captured.append((topic, payload))

    with Subscription(env.broker_url, "#", keep):
        r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL, "-w", "60",
                    "--json", str(src), timeout=90)
        assert r.returncode == 0, f"{r}\n{env.logs()}"
        tid = r.json()["transfer_id"]
        watcher.wait(tid, "completed", 10)
    stats = {n: (roots[n] / REL).stat() for n in DESTINATIONS}
    with lock:
        replay = list(captured)
    assert any("/Commands/" in t for t, _ in replay) and any("/Fanout/" in t for t, _ in replay)

    # the whole exchange again, as a sniffer on # captured it: the request, the offers and resyncs, every frame
    host, port = split_url(env.broker_url)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fte-test-replay-{uuid.uuid4().hex[:8]}")
    pub.connect(host, port, keepalive=10)
    pub.loop_start()
    try:
        for topic, payload in replay:
            pub.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        pub.disconnect()
        pub.loop_stop()

    # a barrier: a second fan-out after the replay, through the same agents, runs to its end
    (roots["A1"] / "after.bin").write_bytes(b"after" * 1000)
    r2 = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", "out/after.fan", "-w", "60",
                 "--json", str(roots["A1"] / "after.bin"), timeout=90)
    assert r2.returncode == 0, f"{r2}\n{env.logs()}"
    tid2 = r2.json()["transfer_id"]
    watcher.wait(tid2, "completed", 10)

    started = {e["transfer_id"] for e in watcher.events if e.get("action") == "started"}
    assert started == {tid, tid2}, f"a replay started a transfer: {started - {tid, tid2}}"
    assert len(watcher.of(tid, "started")) == 1 and len(watcher.of(tid, "completed")) == 1, watcher.of(tid)
    for name in DESTINATIONS:
        now = (roots[name] / REL).stat()
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (stats[name].st_ino, stats[name].st_mtime_ns,
                                                               stats[name].st_size), name
        assert sha256(roots[name] / REL) == digest, name
        assert part_files(roots[name]) == [], name
    for name, agent in env.agents.items():
        assert agent.alive(), f"{name} died\n{env.logs()}"


# --------------------------------------------------------------------------- one destination's disk full


def test_a_full_disk_at_one_destination_of_three_fails_that_one_alone_and_leaves_no_part_file(
        env: FaultEnv, tmp_path: Path) -> None:
    # A3 may write no file beyond 1 MiB (RLIMIT_FSIZE: EFBIG, as ENOSPC or a quota): its part file cannot grow
    roots = _agents(env, tmp_path / "data", fsize={"A3": 1 * MiB})
    watcher = env.watch()
    src = roots["A1"] / "big.bin"
    digest = make_file(src, 4 * MiB)
    r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL, "-w", "60",
                "--json", str(src), timeout=90)
    assert r.returncode == 20, f"{r}\n{env.logs()}"
    tid = r.json()["transfer_id"]
    completed = watcher.wait(tid, "completed", 10)
    assert completed["result_code"] == 20, completed
    by_agent = {e["agent"]: e for e in completed["destinations"]}
    for name in ("A2", "A4"):
        assert by_agent[name]["result_code"] == 0, by_agent
        assert sha256(roots[name] / REL) == digest, name
    full = by_agent["A3"]
    assert full["result_code"] != 0 and full["files_failed"] == 1, full
    assert "FTEIO0001E" in (full["supplement"] or "") and "too large" in full["supplement"].lower(), full  # EFBIG
    assert not (roots["A3"] / REL).exists()
    for name in DESTINATIONS:
        assert part_files(roots[name]) == [], name  # removed where the write failed (docs/operations.md)


def test_offers_and_resyncs_replayed_mid_fanout_change_nothing(env: FaultEnv, tmp_path: Path) -> None:
    roots = _agents(env, tmp_path / "data")
    watcher = env.watch()
    src = roots["A1"] / "big.bin"
    digest = make_file(src, 12 * MiB)
    captured: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def keep(topic: str, payload: bytes) -> None:  # what the source sent each destination: offers, resyncs
        if topic.startswith(tuple(f"{PREFIX}/Control/{d}/" for d in DESTINATIONS)):
            with lock:
                captured.append((topic, payload))

    with Subscription(env.broker_url, f"{PREFIX}/Control/#", keep):
        client = env.popen("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL,
                           "--bandwidth", "4M", "-w", "--json", str(src))
        tid = watcher.wait_any("started", 30)["transfer_id"]
        wait_for(lambda: part_size(roots["A3"] / REL) >= 2 * MiB, 60, interval=0.01,
                 message=lambda: f"A3 did not get 2 MiB\n{env.logs()}")
        with lock:
            replay = list(captured)
        assert len({t for t, _ in replay}) == len(DESTINATIONS), replay  # an offer (and resync) to each
        host, port = split_url(env.broker_url)
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fte-test-replay-{uuid.uuid4().hex[:8]}")
        pub.connect(host, port, keepalive=10)
        pub.loop_start()
        try:
            for _ in range(3):
                for topic, payload in replay:
                    pub.publish(topic, payload, qos=1).wait_for_publish(10)
        finally:
            pub.disconnect()
            pub.loop_stop()
        r = finish(client, 120, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    completed = watcher.wait(tid, "completed", 10)
    assert [e["result_code"] for e in completed["destinations"]] == [0, 0, 0], completed["destinations"]
    assert {e["transfer_id"] for e in watcher.events if e.get("action") == "started"} == {tid}
    for name in DESTINATIONS:
        assert sha256(roots[name] / REL) == digest, name
        assert part_files(roots[name]) == [], name
