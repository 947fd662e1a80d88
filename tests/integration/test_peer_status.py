"""An agent learns a peer's status on the peer's own topic, on any broker.

Every agent subscribes to <prefix>/Agents/+, but RabbitMQ 3.x does not deliver retained messages to a
subscription with a wildcard (docs/brokers.md): a source agent started after its destination would never
learn of it. So an agent that needs the status of an agent it does not know (a new transfer's destination, a
transfer's peer in recovery) subscribes to <prefix>/Agents/<peer> and keeps that subscription.

Here the embedded broker and both agents run in this process, and agent A1 has no <prefix>/Agents/+
subscription at all: what it knows of A2 can only come through the exact-topic subscription (a stricter
emulation of RabbitMQ, which at least delivers live statuses to the wildcard). The broker-level case, on a
real RabbitMQ, is in test_broker_matrix.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Agent
from agent.embedded_broker import EmbeddedBroker
from agent.wire.protocol import CreateTransfer, TransferItem, TransferSpec, new_transfer_id, utc_now
from agent.settings import load_agent_settings, write_agent_properties
from cli.client import FteClient, new_request_id

pytestmark = pytest.mark.timeout(60)


class Agents:
    def __init__(self, home: Path, url: str) -> None:
        self.home, self.url = home, url
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.finished: dict[str, dict[str, Any]] = {}

    def configure(self, name: str) -> None:
        write_agent_properties(self.home / "agents" / name / "agent.properties", {
            "agentName": name, "brokerUrl": self.url, "sandboxRoot": str(self.home), "transferAckTimeout": "2000",
            "transferAckTimeoutRetries": "2", "brokerKeepalive": "5",
            "agentStateDir": str(self.home / "state" / name)})

    async def start(self, name: str, wildcard: bool = True) -> Agent:
        settings = load_agent_settings(name, env={"FTE_CONFIG_HOME": str(self.home)})
        agent = Agent(settings, settings.state_dir, agent_home=self.home / "agents" / name)
        if not wildcard:
            agent.link.subscriptions.remove(agent.topics.all_agent_status())
        agent.tlog.listeners.append(self._on_event)
        self.agents[name] = agent
        self.tasks[name] = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.link.up.wait(), 15)
        return agent

    async def stop(self, name: str) -> None:
        self.agents[name].request_stop(immediate=True)
        await asyncio.wait_for(self.tasks[name], 15)

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("action") == "completed":
            self.finished[ev["transfer_id"]] = ev

    async def stop_all(self) -> None:
        for name, task in self.tasks.items():
            if not task.done():
                self.agents[name].request_stop(immediate=True)
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_agent_learns_a_peer_only_readable_on_its_own_topic(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTE_CONFIG_HOME", str(tmp_path))  # the command below signs with no key: none here
    broker = EmbeddedBroker(port=0, keep_retained=False)
    await broker.start()
    group = Agents(tmp_path, broker.url)
    try:
        for name in ("A1", "A2"):
            group.configure(name)
        # A1 first: amqtt 0.12 sends a connecting client the retained messages that match any session's
        # subscriptions (A2's <prefix>/Agents/+ included), not only its own; A1 started after A2 would get
        # A2's status that way. Started first, A1 has no subscription A2's status matches.
        a1 = await group.start("A1", wildcard=False)
        await group.start("A2")
        await asyncio.sleep(0.5)
        assert "A2" not in a1.peers.statuses, "A1 learnt of A2 without the exact-topic subscription: nothing is tested"
        status_topic = a1.topics.agent_status("A2")
        assert status_topic not in a1.link.subscriptions

        # a transfer to A2 (a command: handled by A1's link worker, which must not hide A2's status from it)
        src, dst = tmp_path / "out" / "f.bin", tmp_path / "in" / "f.bin"
        src.parent.mkdir()
        src.write_bytes(os.urandom(300_000))
        spec = TransferSpec(source_agent="A1", destination_agent="A2",
                            items=[TransferItem(source=str(src), destination=str(dst), destination_type="file")])
        tid = new_transfer_id()
        t0 = time.monotonic()
        async with FteClient(broker.url) as c:
            reply = await c.request("A1", CreateTransfer(kind="create_transfer", request_id=new_request_id(),
                                                         reply_to=c.client_id, sent_at=utc_now(), transfer_id=tid,
                                                         spec=spec))
        assert reply.ok, reply.message
        assert time.monotonic() - t0 < 2.0, "A1 waited out its 2 s for A2's status: it came only after giving up"
        await until(lambda: tid in group.finished, 30, "the transfer did not finish")
        assert group.finished[tid]["result_code"] == 0, group.finished[tid]
        assert dst.read_bytes() == src.read_bytes()
        assert a1.peers.statuses.get("A2") in ("READY", "ACTIVE")
        assert status_topic in a1.link.subscriptions, "the exact-topic subscription must be kept"

        # it is kept: A2's later statuses reach A1 ...
        await group.stop("A2")
        await until(lambda: a1.peers.statuses.get("A2") == "STOPPED", 10,
                    f"A1 did not see A2 stop: {a1.peers.statuses}")
        # ... and made again when A1 reconnects (the broker restarted keeps no retained message here, so A1
        # can only learn of the new A2 through that subscription, made anew on its new connection)
        connects = a1.link.connects
        await broker.stop()
        await broker.start()
        await until(lambda: a1.link.connects > connects and a1.link.up.is_set(), 20, "A1 did not reconnect")
        await group.start("A2")
        await until(lambda: a1.peers.statuses.get("A2") == "READY", 10,
                    f"A1 did not see A2 again: {a1.peers.statuses}")
    finally:
        await group.stop_all()
        await broker.stop()


async def test_a_peer_status_asked_for_by_a_session_is_watched(tmp_path: Path) -> None:
    """ctx.peer_status (what a source session asks during recovery) subscribes to an unknown peer's status,
    once; the agent's own name and a name that is no agent name are never subscribed to."""
    broker = EmbeddedBroker(port=0)
    await broker.start()
    group = Agents(tmp_path, broker.url)
    try:
        group.configure("A1")
        a1 = await group.start("A1", wildcard=False)
        assert a1.ctx.peer_status("B7") is None
        for name in ("B7", "A1", "#", "x/y"):
            a1.ctx.peer_status(name)
        await until(lambda: not a1.peers.pending, 5, "the subscription was not made")
        agents_topics = [t for t in a1.link.subscriptions if "/Agents/" in t]
        assert agents_topics == [a1.topics.agent_status("B7")]
    finally:
        await group.stop_all()
        await broker.stop()
