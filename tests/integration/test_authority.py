"""Who may command an agent, and who may take part in a transfer: end to end, real agents and broker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from typing import Any
from pathlib import Path

import aiomqtt
import pytest

from agent.auth import ensure_key, public_text, sign
from agent.wire.binding import load_or_create_agent_key, new_ephemeral, seal
from agent.wire.protocol import (Complete, CreateTransfer, FileOffer, Ping, Resync, TransferItem, TransferSpec, encode_chunk,
                            new_transfer_id, parse_control)
from cli.client import ClientError, FteClient
from tests.support.agents import FteEnv, Result, running_agents, sandbox_dir, script, wait_until
from tests.support.brokers import split_url
from tests.support.subscription import Subscription


@pytest.fixture
def pair(tmp_path: Path, mosquitto):
    data = sandbox_dir(tmp_path, "in", "out")
    with running_agents(tmp_path / "home", mosquitto.ensure_running().url, data, transferAckTimeout=3000) as env:
        yield env, data


def run_as(env: FteEnv, requester: str, verb: str, *args: str) -> Result:
    e = dict(env.env, FTE_REQUESTER=requester)
    cmd = [script(verb), *args]
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return Result(cmd, p.returncode, p.stdout, p.stderr)


def signed_reply(env: FteEnv, cmd: Any, requester: str, key: Any, target: str = "A2") -> dict:
    """`cmd` signed as `requester` with `key`, published on `target`'s command topic by a raw client; its reply."""
    payload = json.dumps(sign(json.loads(cmd.model_dump_json(exclude_none=True)), requester, key,
                              target=target)).encode()

    async def go() -> dict:
        async with aiomqtt.Client(*split_url(env.broker_url), identifier="tester") as c:
            await c.subscribe("SYSTEM.FTE/Replies/tester", qos=1)
            await c.publish(f"SYSTEM.FTE/Commands/{target}", payload, qos=1)
            async with asyncio.timeout(10):
                async for m in c.messages:
                    return json.loads(m.payload)
        raise AssertionError("no reply")

    return asyncio.run(go())


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_create_agent_turns_authority_on_and_trusts_its_user(pair) -> None:
    env, data = pair
    props = (env.agent_dir("A1") / "agent.properties").read_text()
    assert "\nauthorityChecking=true\n" in props
    trusted = (env.agent_dir("A1") / "authorized_requesters").read_text()
    assert "agent.A2 " in trusted  # agents of one FTE_CONFIG_HOME trust each other for transfers
    (data / "in" / "f.txt").write_text("hello")
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "f.txt"), "-w",
                str(data / "in" / "f.txt"))
    assert r.returncode == 0, str(r)
    assert (data / "out" / "f.txt").read_text() == "hello"


def test_unknown_requester_is_refused_with_53_and_nothing_happens(pair) -> None:
    env, data = pair
    (data / "in" / "f.txt").write_text("hello")
    r = run_as(env, "mallory", "create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "m.txt"),
               "-w", str(data / "in" / "f.txt"))
    assert r.returncode == 53, str(r)
    assert "not authorized" in r.stderr and "unsigned" not in r.stderr
    assert not (data / "out" / "m.txt").exists()
    wait_until(lambda: "refused create_transfer" in env.agents["A1"].log.read_text(), 10, "refusal logged")


def test_trusted_requester_gets_only_its_permissions(pair) -> None:
    env, data = pair
    key = ensure_key(env.home, "bob")
    r = env.run("key", "trust", "A1", "bob", public_text(key.public_key()), "-p", "transfer")
    assert r.returncode == 0, str(r)
    (data / "in" / "f.txt").write_text("from bob")
    r = run_as(env, "bob", "create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "b.txt"), "-w",
               str(data / "in" / "f.txt"))
    assert r.returncode == 0, str(r)
    r = run_as(env, "bob", "stop-agent", "A1")
    assert r.returncode == 53, str(r)
    assert "lacks the 'admin' permission" in r.stderr
    assert env.agents["A1"].alive()
    assert env.run("ping-agent", "A1").returncode == 0


def test_an_untrusted_requester_is_obeyed_no_more_at_once(pair) -> None:
    """fte key untrust, which the trust file's header names: the running agent refuses the requester's next
    command (53) without a restart; an unknown name is one clear line."""
    env, _ = pair
    key = ensure_key(env.home, "carol")
    assert env.run("key", "trust", "A1", "carol", public_text(key.public_key()), "-p", "all").returncode == 0
    r = run_as(env, "carol", "ping-agent", "A1")
    assert r.returncode == 0, str(r)
    r = env.run("key", "untrust", "A1", "carol")
    assert r.returncode == 0 and "no longer trusts carol" in r.stdout, str(r)
    r = run_as(env, "carol", "ping-agent", "A1")
    assert r.returncode == 53 and "not trusted" in r.stderr, str(r)
    again = env.run("key", "untrust", "A1", "carol")
    assert again.returncode == 1 and "carol is not in" in again.stderr and "fte key list A1" in again.stderr, str(again)
    assert env.run("ping-agent", "A1").returncode == 0  # the others are still obeyed


def test_replayed_command_is_refused(pair) -> None:
    env, data = pair
    (data / "in" / "f.txt").write_text("once")
    key = ensure_key(env.home, "root-test")
    env.run("key", "trust", "A1", "root-test", public_text(key.public_key()), "-p", "transfer")
    spec = TransferSpec(source_agent="A1", destination_agent="A2",
                        items=[TransferItem(source=str(data / "in" / "f.txt"), destination=str(data / "out" / "r.txt"),
                                            destination_type="file")], exist="overwrite")
    cmd = CreateTransfer(kind="create_transfer", request_id="replay1", reply_to="tester", transfer_id=new_transfer_id(),
                         spec=spec)
    payload = json.dumps(sign(json.loads(cmd.model_dump_json(exclude_none=True)), "root-test", key,
                                    target="A1")).encode()

    async def go() -> list[dict]:
        async with aiomqtt.Client("127.0.0.1", int(env.broker_url.rsplit(":", 1)[1]), identifier="tester") as c:
            await c.subscribe("SYSTEM.FTE/Replies/tester", qos=1)
            replies = []
            for _ in range(2):
                await c.publish("SYSTEM.FTE/Commands/A1", payload, qos=1)
                async with asyncio.timeout(10):
                    async for m in c.messages:
                        replies.append(json.loads(m.payload))
                        break
            return replies

    first, second = asyncio.run(go())
    assert first["ok"] is True
    assert second["ok"] is False and second["result_code"] == 53 and "replay" in second["message"]


def test_forged_chunks_and_forged_completion_are_dropped(pair) -> None:
    """A third party on the broker sees the topics but not the transfer key: it can neither inject data nor end it."""
    env, data = pair
    src = data / "in" / "big.bin"
    src.write_bytes(os.urandom(24 * 1024 * 1024))
    port = int(env.broker_url.rsplit(":", 1)[1])
    proc = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "big.bin"), "-w",
                     "--json", str(src))

    async def attack() -> int:
        sent = 0
        async with aiomqtt.Client("127.0.0.1", port, identifier="mallory") as c:
            await c.subscribe("SYSTEM.FTE/Log/A1/+", qos=1)
            async with asyncio.timeout(30):
                async for m in c.messages:
                    ev = json.loads(m.payload)
                    if ev.get("action") == "started":
                        tid = ev["transfer_id"]
                        break
            for epoch in range(1, 6):
                for offset in range(0, 4 * 262144, 262144):
                    frame = encode_chunk(epoch, 0, offset, b"\x00" * 262144)
                    await c.publish(f"SYSTEM.FTE/Data/A2/{tid}", frame, qos=1)
                    sent += 1
            forged = Complete(kind="complete", transfer_id=tid, source_agent="A1", state="cancelled", result_code=41)
            await c.publish(f"SYSTEM.FTE/Control/A2/{tid}", seal(forged, None), qos=1)
        return sent

    assert asyncio.run(attack()) == 20
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert json.loads(out.strip().splitlines()[-1])["result_code"] == 0
    assert sha(data / "out" / "big.bin") == sha(src)
    assert "without a valid MAC" in env.agents["A2"].log.read_text()


def test_an_agent_the_destination_does_not_trust_cannot_send_it_files(pair, tmp_path: Path) -> None:
    env, data = pair
    stranger = load_or_create_agent_key(tmp_path / "stranger")
    _, kx = new_ephemeral()
    tid = new_transfer_id()
    offer = Resync(kind="resync", transfer_id=tid, epoch=1, source_agent="EVIL", destination_agent="A2",
                   exist="overwrite", checksum="none", chunk_size=262144, kx=kx,
                   files=[FileOffer(index=0, source="/x", destination=str(data / "out" / "planted.txt"), size=5)])
    port = int(env.broker_url.rsplit(":", 1)[1])

    async def go() -> dict:
        async with aiomqtt.Client("127.0.0.1", port, identifier="evil") as c:
            await c.subscribe(f"SYSTEM.FTE/Control/EVIL/{tid}", qos=1)
            await c.publish(f"SYSTEM.FTE/Control/A2/{tid}", seal(offer, None, stranger), qos=1)
            async with asyncio.timeout(10):
                async for m in c.messages:
                    return json.loads(m.payload)
        raise AssertionError("no answer")

    reply = asyncio.run(go())
    parse_control(json.dumps(reply).encode())
    assert reply["kind"] == "resync_reply"
    assert reply["files"][0]["status"] == "failed"
    assert "does not trust agent EVIL" in reply["files"][0]["supplement"]
    assert not (data / "out" / "planted.txt").exists()
    assert not (data / "out" / "planted.txt.part").exists()


class CommandTap:
    """What crosses the broker on the command and reply topics, as an eavesdropper on the broker sees it."""

    def __init__(self, env: FteEnv) -> None:
        self.env = env
        self.commands: dict[str, list[bytes]] = {}
        self.replies: list[dict] = []
        self._subs = [Subscription(env.broker_url, "SYSTEM.FTE/Commands/+", self._command),
                      Subscription(env.broker_url, "SYSTEM.FTE/Replies/+", self._reply)]

    def _command(self, topic: str, payload: bytes) -> None:
        self.commands.setdefault(topic.rsplit("/", 1)[1], []).append(payload)

    def _reply(self, topic: str, payload: bytes) -> None:
        self.replies.append(json.loads(payload))

    def captured(self, agent: str) -> bytes:
        found = wait_until(lambda: self.commands.get(agent), 10, f"a command to {agent} seen on the broker")
        assert len(found) == 1, found
        return found[0]

    def replies_to(self, payload: bytes, count: int) -> list[dict]:
        """The first `count` replies to the command `payload` (matched by its request id)."""
        rid = json.loads(payload)["request_id"]

        def enough() -> list[dict] | None:
            found = [x for x in self.replies if x["request_id"] == rid]
            return found[:count] if len(found) >= count else None

        return wait_until(enough, 20, f"{count} replies to {rid}")

    def republish(self, agent: str, payload: bytes) -> None:
        async def go() -> None:
            async with aiomqtt.Client(*split_url(self.env.broker_url), identifier="eavesdropper") as c:
                await c.publish(f"SYSTEM.FTE/Commands/{agent}", payload, qos=1)

        asyncio.run(go())

    def close(self) -> None:
        for s in self._subs:
            s.close()


@pytest.fixture
def tap(pair):
    t = CommandTap(pair[0])
    yield t
    t.close()


def test_a_stop_command_captured_for_one_agent_is_refused_by_another(pair, tap: CommandTap) -> None:
    env, _ = pair
    r = env.run("stop-agent", "A1")
    assert r.returncode == 0, str(r)
    captured = tap.captured("A1")
    env.agents["A1"].proc.wait(20)
    tap.republish("A2", captured)  # the same bytes, on A2's command topic
    _, answer = tap.replies_to(captured, 2)
    assert answer["ok"] is False and answer["result_code"] == 53, answer
    assert "addressed to agent 'A1'" in answer["message"], answer
    assert env.agents["A2"].alive()
    assert env.run("ping-agent", "A2").returncode == 0
    wait_until(lambda: "refused stop_agent" in env.agents["A2"].log.read_text(), 10, "refusal logged")


def test_a_command_replayed_after_the_agent_restarts_is_refused(pair, tap: CommandTap) -> None:
    env, _ = pair
    r = env.run("ping-agent", "A2")
    assert r.returncode == 0, str(r)
    captured = tap.captured("A2")
    tap.replies_to(captured, 1)
    env.agents["A2"].kill()  # SIGKILL: whatever the agent remembers only in memory is gone
    env.start_agent("A2")
    tap.republish("A2", captured)
    _, answer = tap.replies_to(captured, 2)
    assert answer["ok"] is False and answer["result_code"] == 53, answer
    assert "already received once" in answer["message"], answer


def test_an_agents_identity_key_is_not_a_requester(pair) -> None:
    """agents/A1/agent.key is trusted by A2 as `agent.A1` to bind transfers; signing a command with it (here: make
    A2 send a file to A1) must not work."""
    env, data = pair
    (data / "in" / "secret.txt").write_text("A2's")
    identity = load_or_create_agent_key(env.agent_dir("A1"))
    spec = TransferSpec(source_agent="A2", destination_agent="A1",
                        items=[TransferItem(source=str(data / "in" / "secret.txt"),
                                            destination=str(data / "out" / "stolen.txt"), destination_type="file")])
    cmd = CreateTransfer(kind="create_transfer", request_id="identity1", reply_to="tester",
                         transfer_id=new_transfer_id(), spec=spec)
    reply = signed_reply(env, cmd, "agent.A1", identity)
    assert reply["ok"] is False and reply["result_code"] == 53, reply
    assert "identity key" in reply["message"], reply
    assert not (data / "out" / "stolen.txt").exists()


def test_the_key_commands_keep_agent_keys_apart_from_requesters(tmp_path: Path, monkeypatch) -> None:
    env = FteEnv(tmp_path / "home", "mqtt://127.0.0.1:9")  # nothing here talks to a broker
    env.create_agent("A1")
    r = env.run("key", "generate", "--name", "agent.A2")
    assert r.returncode != 0 and "agents' identity keys" in r.stderr, str(r)
    assert not (env.home / "keys" / "agent.A2.key").exists()
    other = public_text(load_or_create_agent_key(tmp_path / "A2").public_key())
    r = env.run("key", "trust", "A1", "agent.A2", other, "-p", "all")
    assert r.returncode != 0 and "use -p transfer" in r.stderr, str(r)
    assert "agent.A2" not in (env.agent_dir("A1") / "authorized_requesters").read_text()
    r = env.run("key", "trust", "A1", "agent.A2", other, "-p", "transfer")
    assert r.returncode == 0, str(r)
    monkeypatch.setenv("FTE_CONFIG_HOME", str(env.home))
    monkeypatch.setenv("FTE_REQUESTER", "agent.A1")
    with pytest.raises(ClientError, match="set FTE_REQUESTER to another name"):
        FteClient(env.broker_url).sign(Ping(kind="ping", request_id="p1"), "A1")


def _entries(path: Path) -> dict[str, str]:
    """name -> public key of each line of a trust file."""
    return {p[0]: p[1] for p in (ln.split() for ln in path.read_text().splitlines()) if p and not p[0].startswith("#")}


def test_an_agents_identity_key_cannot_be_trusted_as_a_requester(tmp_path: Path) -> None:
    """`fte key trust A2 x1 <A1's identity key> -p all` gave an agent's key command rights under another name."""
    env = FteEnv(tmp_path / "home", "mqtt://127.0.0.1:9")  # nothing here talks to a broker
    env.create_agent("A1")
    env.create_agent("A2")
    a1_key = public_text(load_or_create_agent_key(env.agent_dir("A1")).public_key())
    trust_file = env.agent_dir("A2") / "authorized_requesters"
    assert _entries(trust_file)["agent.A1"] == a1_key
    r = env.run("key", "trust", "A2", "x1", a1_key, "-p", "all")
    assert r.returncode == 1 and "agent.A1" in r.stderr and "identity key" in r.stderr, str(r)
    assert "x1" not in _entries(trust_file)
    # not in the trust file, but the identity key of an agent configured here: refused too
    trust_file.write_text("".join(ln + "\n" for ln in trust_file.read_text().splitlines()
                                  if not ln.startswith("agent.A1 ")))
    r = env.run("key", "trust", "A2", "x1", a1_key, "-p", "transfer")
    assert r.returncode == 1 and "agent A1" in r.stderr and "identity key" in r.stderr, str(r)
    assert "x1" not in _entries(trust_file)
    # and a requester's key is not taken as an agent's
    requester, key = next((n, k) for n, k in _entries(trust_file).items() if not n.startswith("agent."))
    r = env.run("key", "trust", "A2", "agent.A9", key, "-p", "transfer")
    assert r.returncode == 1 and repr(requester) in r.stderr, str(r)
    assert "agent.A9" not in _entries(trust_file)


def test_a_hand_edited_requester_with_an_agents_key_commands_nothing(pair) -> None:
    """Defence in depth: a trust file edited by hand to list A1's identity key as requester x1 (all
    permissions): A2 still refuses a command signed with that key."""
    env, _ = pair
    identity = load_or_create_agent_key(env.agent_dir("A1"))
    trust_file = env.agent_dir("A2") / "authorized_requesters"
    with trust_file.open("a") as f:
        f.write(f"x1 {public_text(identity.public_key())} all\n")
    cmd = Ping(kind="ping", request_id="handedit1", reply_to="tester")
    reply = signed_reply(env, cmd, "x1", identity)
    assert reply["ok"] is False and reply["result_code"] == 53, reply
    assert "agent.A1" in reply["message"] and "identity key" in reply["message"], reply
