"""Replies, log events and statuses are believed only when signed by their agent: real agents, a real broker.

Anyone on the broker can publish on a client's reply topic, on an agent's log topics and on its status topic.
These tests are that third party: they forge what an agent would say, and check that no command shows it."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.wire.protocol import utc_now
from tests.support.agents import FteEnv, LogFollower, running_agents, sandbox_dir, wait_until
from tests.support.brokers import split_url

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pair(tmp_path: Path, mosquitto):
    data = sandbox_dir(tmp_path, "in", "out")
    with running_agents(tmp_path / "home", mosquitto.ensure_running().url, data) as env:
        yield env, data


def publish(env: FteEnv, topic: str, payload: bytes, retain: bool = False) -> None:
    host, port = split_url(env.broker_url)

    async def go() -> None:
        async with aiomqtt.Client(host, port, identifier="mallory-" + secrets.token_hex(4), timeout=10) as c:
            await c.publish(topic, payload, qos=1, retain=retain)

    asyncio.run(asyncio.wait_for(go(), 20))


def forged_completed(tid: str, agent: str = "A1") -> dict[str, Any]:
    return {"event_id": secrets.token_hex(16), "transfer_id": tid, "action": "completed", "state": "complete",
            "time": utc_now(), "agent": agent, "agent_role": "source", "source_agent": agent,
            "destination_agent": "A2", "job_name": None, "metadata": {}, "result_code": 0,
            "statistics": {"files": 1, "files_succeeded": 1, "bytes": 5, "seconds": 0.1}, "files": []}


def test_a_forged_reply_and_completed_event_do_not_complete_a_transfer(pair) -> None:
    """A1 is asked for a transfer to an agent that does not exist (it refuses, after waiting 2 s for that
    agent's status): a third party answers first, "accepted", and publishes "completed, result 0"."""
    env, data = pair
    (data / "in" / "f.txt").write_text("hello")
    host, port = split_url(env.broker_url)
    forged: dict[str, str] = {}

    async def attack(ready: asyncio.Event) -> None:
        async with aiomqtt.Client(host, port, identifier="mallory", timeout=10) as c:
            await c.subscribe("SYSTEM.FTE/Commands/A1", qos=1)
            ready.set()
            async for m in c.messages:
                cmd = json.loads(m.payload)
                if cmd.get("kind") != "create_transfer":
                    continue
                tid, rid = cmd["transfer_id"], cmd["request_id"]
                forged["tid"] = tid
                reply = {"request_id": rid, "ok": True, "data": {"transfer_id": tid, "files": 1, "bytes": 5}}
                await c.publish(f"SYSTEM.FTE/Replies/{cmd['reply_to']}", json.dumps(reply).encode(), qos=1)
                await c.publish(f"SYSTEM.FTE/Log/A1/{tid}", json.dumps(forged_completed(tid)).encode(), qos=1)
                return

    async def scenario() -> tuple[int, str, str]:
        ready = asyncio.Event()
        attacker = asyncio.create_task(attack(ready))
        await asyncio.wait_for(ready.wait(), 20)
        proc = await asyncio.create_subprocess_exec(
            *_script("create-transfer"), "-sa", "A1", "-da", "NOSUCHAGENT", "-df", str(data / "out" / "f.txt"),
            "-w", "60", "--json", str(data / "in" / "f.txt"), env=env.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        await asyncio.wait_for(attacker, 10)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    rc, out, err = asyncio.run(scenario())
    assert forged.get("tid"), "the command was never seen: nothing was forged"
    assert rc != 0 and '"result_code": 0' not in out, f"the forgery was believed: rc {rc}\n{out}\n{err}"
    # the real answer, A1's refusal, is what the command reports
    assert "NOSUCHAGENT" in err and "is not known" in err, err


def _script(verb: str) -> list[str]:
    from tests.support.agents import script

    return [script(verb)]


def test_fte_logs_does_not_show_forged_events(pair) -> None:
    env, data = pair
    (data / "in" / "g.txt").write_text("genuine")
    forged_tid = secrets.token_hex(24)
    with LogFollower(env) as follower:
        follower.wait_subscribed()
        publish(env, f"SYSTEM.FTE/Log/A1/{forged_tid}", json.dumps(forged_completed(forged_tid)).encode())
        # and one with a signature member, by a key nobody trusts
        fake = json.dumps(forged_completed(forged_tid))[:-1] + ',"signature":"' + "A" * 86 + '=="}'
        publish(env, f"SYSTEM.FTE/Log/A1/{forged_tid}", fake.encode())
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "g.txt"), "-w", "--json",
                    str(data / "in" / "g.txt"))
        assert r.returncode == 0, str(r)
        real = json.loads(r.stdout.strip().splitlines()[-1])["transfer_id"]
        events = follower.events_until(lambda ev: ev.get("transfer_id") == real and ev.get("action") == "completed")
    assert [ev for ev in events if ev.get("transfer_id") == forged_tid] == [], "a forged event was shown"
    assert all(ev.get("signature") for ev in events if ev.get("transfer_id") == real)


def _listing(env: FteEnv, *names: str) -> dict[str, Any]:
    r = env.run("list-agents", "--json", *names, timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip().startswith("{") else {}


def _a2_ready_and_verified(env: FteEnv) -> bool:
    st = _listing(env, "A2").get("A2") or {}
    return st.get("status") in ("READY", "ACTIVE") and st.get("verified") is True and \
        st.get("pid") == env.agents["A2"].pid


def test_an_agent_replaces_garbage_or_a_forgery_on_its_status_topic(pair) -> None:
    env, _ = pair
    publish(env, "SYSTEM.FTE/Agents/A2", b"\x00garbage", retain=True)
    wait_until(lambda: _a2_ready_and_verified(env), 20, "A2 did not republish its status over retained garbage")
    forged = {"agent": "A2", "status": "STOPPED", "time": utc_now(), "pid": 1, "host": "nowhere"}
    publish(env, "SYSTEM.FTE/Agents/A2", json.dumps(forged).encode(), retain=True)
    wait_until(lambda: _a2_ready_and_verified(env), 20, "A2 did not republish its status over a forged one")
    # its peer A1 did not take the forgery for A2's status
    wait_until(lambda: "Agents/A2: status of agent A2 not signed" in env.agents["A1"].log.read_text(), 10,
               "A1 did not drop the forged status of A2")


def test_a_status_nobody_trusts_is_shown_as_unverified(pair) -> None:
    env, _ = pair
    name = "STRANGER" + secrets.token_hex(3).upper()
    topic = f"SYSTEM.FTE/Agents/{name}"
    forged = {"agent": name, "status": "READY", "time": utc_now(), "host": "evil.example"}
    publish(env, topic, json.dumps(forged).encode(), retain=True)
    try:
        listing = _listing(env, name)
        assert listing[name]["status"] == "READY" and listing[name]["verified"] is False, listing
        r = env.run("list-agents", name)
        row = next(line for line in r.stdout.splitlines() if name in line)
        assert "unverified" in row, r.stdout
        r = env.run("show-agent-details", name, "-v")
        assert r.returncode == 0 and "READY (unverified)" in r.stdout, str(r)
        assert f"the status of agent {name} is unverified: not signed" in r.stderr, str(r)
        r = env.run("top", "--once")
        assert any(name in line and "unverified" in line for line in r.stdout.splitlines()), r.stdout
        # the agents configured here are verified
        assert _listing(env, "A1")["A1"]["verified"] is True
    finally:
        publish(env, topic, b"", retain=True)


def test_a_client_elsewhere_believes_an_agent_once_it_trusts_its_key(pair, tmp_path: Path) -> None:
    """A client whose FTE_CONFIG_HOME does not hold A1 ignores A1's (signed) replies until it trusts A1's key."""
    env, _ = pair
    laptop = dict(env.env, FTE_CONFIG_HOME=str(tmp_path / "laptop"))

    def fte(verb: str, *args: str) -> subprocess.CompletedProcess[str]:
        from tests.support.agents import script

        return subprocess.run([script(verb), *args], env=laptop, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    # no key here either: A1 refuses the unsigned ping, and signs its refusal with a key this client lacks
    r = fte("ping-agent", "A1", "-w", "3")
    assert r.returncode == 2 and "a reply came but was ignored" in r.stderr and "fte key trust-agent A1" in r.stderr, \
        r.stderr
    line = env.run("key", "show", "--agent", "A1").stdout.split()
    assert line[0] == "agent.A1"
    r = fte("key", "trust-agent", *line)
    assert r.returncode == 0, r.stderr
    assert "agent.A1 " in fte("key", "trusted-agents").stdout
    r = fte("ping-agent", "A1", "-w", "10")
    assert r.returncode == 53 and "not authorized" in r.stderr, r.stderr  # A1's own answer, now believed
    listing = json.loads(fte("list-agents", "--json", "A1", "A2").stdout)
    assert listing["A1"]["verified"] is True and listing["A2"]["verified"] is False


def test_show_agent_details_says_the_status_on_the_topic_is_not_one(tmp_path: Path, mosquitto) -> None:
    """Garbage retained on an agent's status topic, or a status of another agent: not "no status", which sends
    the user looking for a typo, but what is there and that it was ignored, without -v, non-zero exit."""
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    name = "EVIL" + secrets.token_hex(3).upper()
    topic = f"SYSTEM.FTE/Agents/{name}"
    other = {"agent": "A1", "status": "READY", "time": utc_now()}
    try:
        for payload, why in ((b"\x00garbage", "not JSON"), (json.dumps(other).encode(), "a status of agent A1")):
            publish(env, topic, payload, retain=True)
            r = env.run("show-agent-details", name, timeout=60)
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert r.returncode == 1 and len(lines) == 1, str(r)
            assert f"the status on {topic} is not a valid agent status" in lines[0], str(r)
            assert why in lines[0] and "ignored" in lines[0] and "no status on" not in lines[0], str(r)
    finally:
        publish(env, topic, b"", retain=True)
