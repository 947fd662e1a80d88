"""Hostile input end to end: flood a running agent's topics with garbage, then use it normally.

Two agent processes (A1, A2; sandbox = tmp_path/data) on the session Mosquitto broker. A test client that
is not an agent publishes a few thousand malformed, oversized, truncated, wrongly shaped and path-traversing
messages on every topic A2 listens to (Commands, Data, Control, Agents). Afterwards A2 must still be
alive, answer a ping, complete a normal transfer with identical content, have written nothing outside its
sandbox, and have logged why it dropped what it dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.wire.protocol import encode_chunk
from tests.support.agents import FteEnv, Result, running_agents, sandbox_dir
from tests.support.brokers import MosquittoProcess, split_url

pytestmark = pytest.mark.timeout(120)

PREFIX = "SYSTEM.FTE"
AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 3000,
                    "transferAckTimeoutRetries": 3}
MB = 1024 * 1024


@contextmanager
def _agents(tmp_path: Path, url: str, **properties: Any) -> Iterator[FteEnv]:
    data = sandbox_dir(tmp_path, "in", "out")
    (tmp_path / "outside").mkdir()
    # a directory symlink inside the sandbox that leads out of it
    (data / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    # the sandbox is data/, except data/tree/private ('!' entry)
    with running_agents(tmp_path / "fte_home", url, f"{data}{os.pathsep}!{data / 'tree' / 'private'}",
                        **{**AGENT_PROPERTIES, **properties}) as fte:
        yield fte


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoProcess) -> Iterator[tuple[FteEnv, Path]]:
    """A1 and A2 as fte-create-agent makes them (authority checking on), shared by the tests that leave
    them as they found them (starting agents is most of a test's time)."""
    tmp = tmp_path_factory.mktemp("hostile")
    with _agents(tmp, mosquitto.ensure_running().url) as fte:
        yield fte, tmp


@pytest.fixture
def env(shared: tuple[FteEnv, Path]) -> FteEnv:
    return shared[0]


@pytest.fixture
def root(shared: tuple[FteEnv, Path]) -> Path:
    """The shared agents' tmp directory (data/ is their sandbox, outside/ is not)."""
    return shared[1]


@pytest.fixture(params=[pytest.param(True, id="authority"), pytest.param(False, id="no-authority")])
def flood_env(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[FteEnv]:
    """With authority checking on, forged requests stop at the signature check; with it off, every one
    reaches the sandbox and the protocol checks, which must hold on their own. The forged offers travel in
    the clear: agentEncryption=false, or A2 would refuse every one of them before the sandbox sees it."""
    with _agents(tmp_path, mosquitto.ensure_running().url,
                 authorityChecking="true" if request.param else "false", agentEncryption="false") as fte:
        yield fte


def tid() -> str:
    return secrets.token_hex(24)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------- the hostile messages


def resync(transfer_id: str, destinations: list[str], **changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "kind": "resync", "transfer_id": transfer_id, "epoch": 0, "source_agent": "Ghost",
        "destination_agent": "A2", "exist": "overwrite", "checksum": "none", "chunk_size": 65536,
        "files": [{"index": i, "source": "/x", "destination": d, "size": 5} for i, d in enumerate(destinations)]}
    doc.update(changes)
    return json.dumps(doc).encode()


def hostile_messages(data: Path, outside: Path, rng: random.Random) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(topic, payload) pairs for A2, and the forged transfer ids whose destinations break out."""
    cmd, dat, ctl, agents = f"{PREFIX}/Commands/A2", f"{PREFIX}/Data/A2", f"{PREFIX}/Control/A2", f"{PREFIX}/Agents"
    msgs: list[tuple[str, bytes]] = []

    def junk(n: int = 400) -> bytes:
        return rng.randbytes(rng.randint(0, n))

    wrong_shapes = [b"", b"null", b"[]", b"{}", b"1", b'"ping"', b"true", b"[" * 100_000, b"9" * 5000,
                    b'{"kind":"ping"}', b'{"kind":"ping","request_id":7}', b'{"kind":"evil","request_id":"r"}',
                    b'{"kind":"resync","request_id":"r"}', b'{"kind":"ping","request_id":"r","extra":1}',
                    b'{"kind":"create_transfer","request_id":"r","reply_to":"attacker","spec":"rm -rf /"}',
                    b'{"kind":"cancel_transfer","request_id":"r","reply_to":"attacker","transfer_id":"../x"}',
                    b'{"kind":"stop_agent","request_id":"r","immediate":"yes"}', b"\xff\xfe\x00{",
                    json.dumps({"kind": "ack", "transfer_id": tid(), "epoch": 0, "index": 0, "offset": 0}).encode()]
    # commands: oversized, wrong shapes, garbage (in that order: an agent answers and logs only the first
    # refusals of a flood, docs/authority.md, and each kind must be seen refused with its reason)
    msgs += [(cmd, b"{" + b" " * (5 * MB)), (cmd, rng.randbytes(5 * MB)), (cmd, b"x" * (9 * MB))]
    msgs += [(cmd, w) for w in wrong_shapes]
    msgs += [(cmd, junk()) for _ in range(500)]
    # a well-formed request to read a file outside the sandbox (whoever may command A2, it is refused)
    msgs.append((cmd, json.dumps({
        "kind": "create_transfer", "request_id": "steal", "reply_to": "attacker",
        "spec": {"source_agent": "A2", "destination_agent": "A1",
                 "items": [{"source": "/etc/passwd", "destination": str(data / "out" / "passwd"),
                            "destination_type": "file"}]}}).encode()))

    # data: unknown transfers, a topic level that is no transfer id, truncated and oversized chunks
    frame = encode_chunk(0, 0, 0, b"pwned")
    for _ in range(600):
        msgs.append((f"{dat}/{tid()}", rng.choice([junk(), frame, frame[:rng.randint(0, len(frame) - 1)]])))
    msgs += [(f"{dat}/not-an-id", junk()) for _ in range(50)]
    msgs += [(f"{dat}/not-an-id", frame), (f"{dat}/{tid()}", rng.randbytes(5 * MB))]

    # control: garbage, wrong shapes, control messages of every kind for transfers nobody started
    for _ in range(500):
        msgs.append((f"{ctl}/{tid()}", junk()))
    msgs += [(f"{ctl}/{tid()}", w) for w in wrong_shapes]
    msgs += [(f"{ctl}/not-an-id", junk()) for _ in range(50)]
    msgs.append((f"{ctl}/{tid()}", b'{"kind":"ack",' + b" " * (5 * MB) + b"}"))
    for _ in range(100):
        t = tid()
        msgs += [
            (f"{ctl}/{t}", json.dumps({"kind": "ack", "transfer_id": t, "epoch": 0, "index": 0, "offset": 5}).encode()),
            (f"{ctl}/{t}", json.dumps({"kind": "file_end", "transfer_id": t, "epoch": 0, "index": 0,
                                       "size": 5}).encode()),
            (f"{ctl}/{t}", json.dumps({"kind": "request_recovery", "transfer_id": t, "reason": "x"}).encode()),
            (f"{ctl}/{t}", json.dumps({"kind": "complete_ack", "transfer_id": t}).encode()),
            (f"{ctl}/{t}", json.dumps({"kind": "file_result", "transfer_id": t, "index": 0,
                                       "result_code": 0}).encode()),
            (f"{ctl}/{t}", json.dumps({"kind": "ack", "transfer_id": t, "epoch": -1, "index": 0,
                                       "offset": -5}).encode()),
            (f"{ctl}/{t}", json.dumps({"kind": "ack", "transfer_id": t, "epoch": "0", "index": 0.0,
                                       "offset": 2**70}).encode()),
        ]

    # resyncs that try to place files outside the sandbox (then chunks and file ends for them)
    forged: list[str] = []
    escapes = ["../../etc/passwd", "/etc/cron.d/fte-pwned", str(outside / "absolute"),
               str(data / ".." / "outside" / "dotdot"), str(data / "escape" / "via_symlink"),
               "~/fte-pwned", str(data / "out" / "x.part"), str(data / "out" / "nul\x00name"),
               str(data / "out" / ("n" * 300))]
    for dest in escapes:
        t = tid()
        forged.append(t)
        msgs.append((f"{ctl}/{t}", resync(t, [dest])))
    t = tid()
    forged.append(t)
    msgs.append((f"{ctl}/{t}", resync(t, escapes)))  # all of them in one transfer
    for t in forged:
        msgs += [(f"{dat}/{t}", frame), (f"{dat}/{t}", frame[:-2]), (f"{dat}/{t}", frame + b"xx"),
                 (f"{dat}/{t}", junk()),
                 (f"{ctl}/{t}", json.dumps({"kind": "file_end", "transfer_id": t, "epoch": 0, "index": 0,
                                            "size": 5}).encode())]
    # a resync whose transfer id is not its topic's, one for another agent, and malformed resyncs
    msgs.append((f"{ctl}/{tid()}", resync(tid(), [str(data / "out" / "mismatch")])))
    t = tid()
    msgs.append((f"{ctl}/{t}", resync(t, [str(data / "out" / "other_agent")], destination_agent="A1")))
    t = tid()
    msgs += [(f"{ctl}/{t}", resync(t, [str(data / "out" / "neg")], epoch=-1)),
             (f"{ctl}/{t}", resync(t, [str(data / "out" / "dup"), str(data / "out" / "dup2")]).replace(
                 b'"index": 1', b'"index": 0')),
             (f"{ctl}/{t}", resync(t, [str(data / "out" / "big")], chunk_size=10**12)),
             (f"{ctl}/{t}", resync(t, ["x" * 5000])),
             (f"{ctl}/{t}", resync(t, [str(data / "out" / "huge")]).replace(b'"size": 5', b'"size": 1e400'))]

    # agent statuses: garbage, the wrong shape, a status claiming another agent's name
    now = "2024-01-01T00:00:00.000Z"
    for _ in range(200):
        # (never empty: an empty payload is how a retained status is deleted, which any agent must honour)
        msgs.append((f"{agents}/{rng.choice(['Evil', 'Nobody', 'x' * 40, 'A1', 'A2'])}", junk() or b"\x00"))
    msgs += [(f"{agents}/Evil", json.dumps({"agent": "A1", "status": "STOPPED", "time": now}).encode()),
             (f"{agents}/Evil", json.dumps({"agent": "A2", "status": "UNREACHABLE", "time": now}).encode()),
             (f"{agents}/A1", json.dumps({"agent": "A2", "status": "STOPPED", "time": now}).encode()),
             (f"{agents}/Evil", json.dumps([{"agent": "Evil"}]).encode()),
             (f"{agents}/Evil", json.dumps({"agent": "Evil", "status": 5, "time": now}).encode()),
             (f"{agents}/Evil", b"[" * 100_000),
             (f"{agents}/Evil", b"{" + b" " * (2 * MB) + b"}")]
    return msgs, forged


def flood(env: FteEnv, msgs: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], Result]:
    """Publish every message to A2 (QoS 1: the broker holds them all), then ping A2 (commands have a queue of
    their own: the ping's answer means every command before it was handled, or dropped by the rate limits),
    then offer A2 one more transfer it refuses (data and control messages are handled in order: its answer
    means every one before it was handled). Returns what came back to the attacker meanwhile, and the
    ping's result."""
    host, port = split_url(env.broker_url)
    got: list[tuple[str, bytes]] = []
    sentinel = tid()
    handled = asyncio.Event()

    async def go() -> Result:
        async with aiomqtt.Client(host, port, identifier=f"attacker-{os.getpid()}", timeout=30) as c:
            await c.subscribe(f"{PREFIX}/Replies/attacker", qos=1)
            await c.subscribe(f"{PREFIX}/Control/Ghost/+", qos=1)
            for i in range(0, len(msgs), 10):
                await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in msgs[i:i + 10]))

            async def collect() -> None:
                async for m in c.messages:
                    got.append((str(m.topic), bytes(m.payload)))  # type: ignore[arg-type]
                    if str(m.topic) == f"{PREFIX}/Control/Ghost/{sentinel}":
                        handled.set()

            collector = asyncio.create_task(collect())
            for _ in range(3):  # without authority checking, the ping shares the rate limit with the flood
                ping = await asyncio.to_thread(env.run, "ping-agent", "A2", "-w", "10", timeout=60)
                if ping.returncode == 0:
                    break
            await c.publish(f"{PREFIX}/Control/A2/{sentinel}", resync(sentinel, ["/etc/fte-hostile-sentinel"]), qos=1)
            async with asyncio.timeout(30):
                await handled.wait()
            await asyncio.sleep(0.5)  # answers published just before the ping's reply
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
            return ping

    return got, asyncio.run(go())


# --------------------------------------------------------------------------- tests


def test_flooded_agent_keeps_serving(flood_env: FteEnv, tmp_path: Path) -> None:
    env = flood_env
    data, outside = tmp_path / "data", tmp_path / "outside"
    passwd_before = sha(Path("/etc/passwd")) if Path("/etc/passwd").exists() else None
    outside_before, data_before = tree(outside), tree(data)
    a2 = env.agents["A2"]

    msgs, forged = hostile_messages(data, outside, random.Random(20240601))
    assert len(msgs) > 2500
    t0 = time.monotonic()
    back, r = flood(env, msgs)
    flood_s = time.monotonic() - t0

    # alive, and answering
    assert r.returncode == 0, f"{r}\n--- A2 log:\n{a2.log_tail()}"
    assert a2.alive(), a2.log_tail()
    assert env.agents["A1"].alive(), env.agents["A1"].log_tail()

    # nothing the attacker asked for was done: every reply a refusal, every forged file failed
    for topic, payload in back:
        doc = json.loads(payload)
        if topic.endswith("/Replies/attacker"):
            assert doc["ok"] is False, doc
        else:
            assert doc.get("kind") == "resync_reply" and doc["files"], doc
            assert all(f["status"] == "failed" for f in doc["files"]), doc
            for f in doc["files"]:
                # refused by the sandbox, or earlier (with authority checking) because Ghost is not trusted
                assert any(w in f.get("supplement", "") for w in ("sandbox", "'..'", "not a valid file name",
                                                                  "not a plain file name", "too long",
                                                                  "not authorized")), f
    replied = {json.loads(p)["transfer_id"] for t, p in back if "/Control/Ghost/" in t}
    authority_off = "authorityChecking=false" in (env.agent_dir("A2") / "agent.properties").read_text()
    if authority_off:
        # every forged transfer reached the destination's checks, and each was answered "failed"
        assert set(forged) <= replied, set(forged) - replied
    # nothing written outside the sandbox, nothing (not even a part file) inside it
    assert tree(outside) == outside_before
    for p in (Path("/etc/cron.d/fte-pwned"), Path("/etc/passwd.part"), Path.home() / "fte-pwned",
              Path.home() / "fte-pwned.part"):
        assert not p.exists(), p
    if passwd_before is not None:
        assert sha(Path("/etc/passwd")) == passwd_before
    assert tree(data) == data_before, tree(data) - data_before

    # a normal transfer still works, with identical content
    src = data / "in" / "after_flood.bin"
    src.write_bytes(os.urandom(300_000))
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "after_flood.bin"), "-w",
                "30", str(src), timeout=60)
    assert r.returncode == 0, f"{r}\n--- A2 log:\n{a2.log_tail()}"
    assert sha(data / "out" / "after_flood.bin") == sha(src)
    assert not list(data.rglob("*.part"))
    # and the reverse direction (A2 as source) too
    r = env.run("create-transfer", "-sa", "A2", "-da", "A1", "-df", str(data / "out" / "back.bin"), "-w", "30",
                str(src), timeout=60)
    assert r.returncode == 0, f"{r}\n--- A2 log:\n{a2.log_tail()}"
    assert sha(data / "out" / "back.bin") == sha(src)

    # the drops are logged with a reason, on each kind of topic
    log = a2.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]
    for expected in ("dropped a command: not JSON", "dropped a command: message of", "exceeds the limit",
                     "dropped a command: invalid command", f"dropped a message on {PREFIX}/Control/A2/",
                     "does not match its topic", f"dropped a message on {PREFIX}/Agents/Evil",
                     "published on the topic of"):
        assert expected in log, f"{expected!r} not in the agent log:\n{log[-3000:]}"
    if authority_off:  # the forged transfers exist, so their truncated chunks were decoded and refused
        assert f"dropped a message on {PREFIX}/Data/A2/" in log and "(truncated?)" in log, log[-3000:]
    print(f"flood of {len(msgs)} messages published in {flood_s:.1f} s; {len(back)} answers")


def test_refused_resyncs_do_not_use_up_destination_capacity(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    """Resyncs from a source that never follows up, whose files the sandbox all refused, must not keep
    the destination from accepting real transfers (authority checking off: anyone may publish them)."""
    limit = 2
    with _agents(tmp_path, mosquitto.ensure_running().url, authorityChecking="false",
                 maxDestinationTransfers=limit) as env:
        data, outside = tmp_path / "data", tmp_path / "outside"
        ids = [tid() for _ in range(limit)]
        msgs = [(f"{PREFIX}/Control/A2/{t}", resync(t, [str(outside / f"f{i}")])) for i, t in enumerate(ids)]
        assert flood(env, msgs)[1].returncode == 0
        assert tree(outside) == set()  # the sandbox held: nothing was written
        src = data / "in" / "real.txt"
        src.write_text("a real transfer\n")
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "real.txt"), "-w", "4",
                    str(src), timeout=60)
        assert r.returncode == 0, f"{r}\n--- A2 log:\n{env.agents['A2'].log_tail(5)}"
        assert (data / "out" / "real.txt").read_text() == "a real transfer\n"


def test_data_on_a_topic_that_is_no_transfer_id_is_logged(env: FteEnv) -> None:
    _, ping = flood(env, [(f"{PREFIX}/Data/A2/not-an-id", b"garbage"),
                          (f"{PREFIX}/Data/A2/not-an-id", encode_chunk(0, 0, 0, b"x"))])
    assert ping.returncode == 0
    log = env.agents["A2"].log.read_text(errors="replace")
    assert f"{PREFIX}/Data/A2/not-an-id" in log, log[-2000:]


def test_recursive_source_with_an_excluded_subdirectory_is_answered(env: FteEnv, root: Path) -> None:
    """Excluded files are either skipped (exit 0) or the request is refused with the reason, not left unanswered."""
    data = root / "data"
    (data / "tree" / "private").mkdir(parents=True)
    (data / "tree" / "a.txt").write_text("allowed")
    (data / "tree" / "private" / "secret.txt").write_text("excluded")
    try:
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out" / "copy"), "-r",
                    "-w", "15", "--timeout", "3", str(data / "tree"), timeout=60)
        assert not (data / "out" / "copy" / "tree" / "private" / "secret.txt").exists()
        assert r.returncode == 0 or "excluded" in r.stdout + r.stderr, str(r)
    finally:
        shutil.rmtree(data / "tree", ignore_errors=True)
        shutil.rmtree(data / "out" / "copy", ignore_errors=True)


def test_destination_outside_the_sandbox_is_refused_and_nothing_is_written(env: FteEnv, root: Path) -> None:
    data, outside = root / "data", root / "outside"
    src = data / "in" / "f.txt"
    src.write_text("secret payload\n")
    cases = {
        "absolute": str(outside / "absolute.txt"),
        "dotdot": str(data / "out" / ".." / ".." / "outside" / "dotdot.txt"),
        "symlink": str(data / "escape" / "via_symlink.txt"),
        "etc": "/etc/fte-hostile-test.txt",
    }
    for what, dest in cases.items():
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", dest, "-w", "30", str(src), timeout=60)
        assert r.returncode != 0, f"{what}: {r}"
        text = r.stdout + r.stderr
        # the supplement names the path as given and why it was refused
        assert "failed" in text and dest in text, f"{what}: no clear supplement:\n{r}"
        assert "outside the agent's sandbox" in text or "contains '..'" in text, f"{what}: no clear supplement:\n{r}"
        assert not Path(dest).exists() and not Path(dest + ".part").exists(), what
    assert tree(outside) == set()
    assert not list(data.rglob("*.part"))
    assert tree(data / "out") == set()
    assert env.agents["A2"].alive()


def test_source_outside_the_sandbox_or_not_a_file_name_is_refused_at_once(env: FteEnv, root: Path) -> None:
    """The source agent refuses (non-zero exit, a reason) without waiting for a timeout."""
    data = root / "data"
    for what, source, reason in [
        ("outside", "/etc/passwd", "sandbox"),
        ("dotdot", str(data / "in" / ".." / ".." / "outside"), "'..'"),
        ("name too long", str(data / "in" / ("n" * 300)), "too long"),  # ENAMETOOLONG escaped as an OSError
    ]:
        t0 = time.monotonic()
        r: Result = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "x"),
                            "--timeout", "15", source, timeout=60)
        assert r.returncode != 0, f"{what}: {r}"
        assert reason in r.stdout + r.stderr, f"{what}: {r}"
        assert time.monotonic() - t0 < 10, f"{what}: the refusal took a timeout, not a reply: {r}"
    assert tree(data / "out") == set()
