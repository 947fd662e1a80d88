"""The agent process: one per host, source and destination of transfers, driven by its broker link.

`Agent` builds the agent's parts and runs them; each part is a module of its own:

    agent.link            the broker connection (reconnects, subscriptions, publishing)
    agent.broker_checks   the broker probe and what it found (BrokerFeatures)
    agent.router          every arriving message to its handler, after its checks
    agent.commands        the command handlers (registry) and the control protocol (CommandDesk)
    agent.admission       whether a new transfer is taken, and its files
    agent.transfers       the live transfer sessions (agent.source, agent.destination)
    agent.peers           the other agents' statuses
    agent.status          this agent's retained status
    agent.watchdog        stalled destinations, unconfirmed outcomes
    agent.monitor_host    the resource monitors; agent.scheduler the schedules
    agent.transferlog     log events, through the outbox (agent.store)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiomqtt

from .wire import provenance
from .admission import Admission
from .auth import TRUST_FILE, Authority
from .wire.binding import load_or_create_agent_key
from .broker_checks import BrokerChecks, BrokerFeatures
from .commands import CommandDesk, CommandRefused, registry
from .context import AgentContext
from .core.budget import InFlightBudget
from .core.policy import HEARD_INTERVAL, STATUS_REASSERT_AFTER_CONNECT, STOP_POLL
from .core.ratelimit import bandwidth_bucket
from .core.statuses import AGENT_RUNNING, AgentState
from .link import BrokerAddress, BrokerLink
from .metrics import Metrics
from .monitor_host import MonitorHost
from .peers import Peers, trusted_agent_key
from .wire.protocol import Topics, TransferSpec, utc_now
from .router import DropLog, Router
from .programs import ProgramHost, monitor_command
from .sandbox import Sandbox
from .scheduler import Scheduler
from .scheduler import event as schedule_event
from .settings import AgentSettings
from .status import OwnStatus
from .standby import open_store
from .template_keeper import TemplateKeeper, trusted_verifier
from .transferlog import OutboxPublisher, TransferLog
from .transfers import Transfers
from .watchdog import Watchdog

__all__ = ["Agent", "CommandRefused", "agent_dir_of"]

log = logging.getLogger("fte.agent")



class Agent:
    def __init__(self, settings: AgentSettings, state_dir: Path, agent_home: Path | None = None) -> None:
        self.settings = settings
        self.name: str = settings.agentName
        self.topics = topics = Topics(settings.topicPrefix)
        self.state_dir = state_dir
        # a postgresql:// agentStore: the state shared by a standby pair, and the lease that fences it (agent.standby)
        self.store, self.lease = open_store(settings, state_dir)
        self.sandbox = Sandbox(settings.sandbox_allow, settings.sandbox_deny,
                               Path(settings.transferRoot) if settings.transferRoot else None)
        password = settings.brokerPassword.get_secret_value() if settings.brokerPassword else None
        # the brokers of brokerUrl's list, tried in order (agent.core.brokers); addr: the first
        self.addrs = [BrokerAddress.from_url(url, username=settings.brokerUsername, password=password,
                                             ca_file=_s(settings.brokerCaFile), cert_file=_s(settings.brokerCertFile),
                                             key_file=_s(settings.brokerKeyFile)) for url in settings.broker_urls]
        self.addr = self.addrs[0]
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()
        self._immediate = False
        self.agent_home = agent_home or agent_dir_of(settings)
        self.authority = (Authority(self.agent_home / TRUST_FILE, nonces=self.store) if settings.authorityChecking
                          else None)
        # signs the transfers it negotiates, and everything it publishes for others to believe (agent.wire.provenance)
        self.identity = load_or_create_agent_key(self.agent_home)
        self.metrics = Metrics(self.name)
        # agentMaxBandwidth: every message this agent publishes spends from it (_publish); data waits for it
        self.bandwidth = bandwidth_bucket(settings.agentMaxBandwidth, settings.agentChunkSize, time.monotonic, 0.1)
        self.outbox = OutboxPublisher(self.store, self._publish, lambda: self.link.up.is_set(),
                                      sign=lambda topic, payload: provenance.sign_payload(
                                          payload, provenance.EVENT, topic, self.identity))
        self.tlog = TransferLog(self.name, topics, self.store, self.outbox.wake)
        self.broker = BrokerChecks(self.addr, self.name, topics, settings.agentChunkSize,
                                   enabled=settings.brokerProbe, on_change=self._broker_features)
        drops = DropLog()
        self.own_status = OwnStatus(
            self.name, settings, topics, self.identity, publish=self._publish, link_up=lambda: self.link.up.is_set(),
            stopping=self.stopping.is_set, busy=lambda: self.transfers.busy, transfers=lambda: self.transfers.states(),
            chunk_size=lambda: self.broker.features.chunk_size, broker_check=lambda: self.broker.features.check,
            tidy=lambda: self.transfers.forget_finished(), drops=drops, broker=self._connected_broker)
        self.desk = CommandDesk(self.name, topics, self.identity, self.authority, publish=self._publish,
                                event=self._event)
        self.peers = Peers(self.name, topics, _LinkSubscriptions(self), self.authority,
                           own=self.own_status.check_retained, busy=lambda: self.transfers.destinations_busy(),
                           on_change=self._peer_changed)
        self.ctx = AgentContext(
            name=self.name, topics=topics, store=self.store, log=self.tlog, sandbox=self.sandbox,
            publish=self._publish, link_up=lambda: self.link.up.is_set(), peer_status=self.peers.status,
            chunk_size=settings.agentChunkSize, window_chunks=settings.agentWindowSize,
            ack_timeout=settings.transferAckTimeout / 1000.0, ack_retries=settings.transferAckTimeoutRetries,
            agent_recovery_timeout=settings.transferRecoveryTimeout, on_state_change=self.own_status.changed,
            settings=settings, identity=self.identity, peer_key=lambda agent: trusted_agent_key(self.authority, agent),
            check_size=lambda topic, payload: self.link.check_size(topic, payload),
            verify_peers=self.authority is not None, metrics=self.metrics,
            budget=InFlightBudget(settings.agentMaxDataInFlight), wake=lambda tid: self.transfers.wake(tid),
            bandwidth=self.bandwidth, subscribe=lambda topic: self.link.add_subscription(topic),
            unsubscribe=lambda topic: self.link.remove_subscription(topic))
        admission = Admission(self.name, settings, topics, self.store, self.sandbox, self.peers,
                              stopping=self.stopping.is_set, sources=lambda: len(self.transfers.sources))
        self.transfers = Transfers(self.ctx, admission, settings.maxSourceTransfers)
        self.watchdog = Watchdog(self.ctx)
        self.monitors = MonitorHost(self.name, topics, self.store, self.sandbox, start_transfer=self.transfers.start,
                                    retain=self._retain, event=self._event,
                                    run_command=lambda task, origin: monitor_command(self.ctx, task, origin))
        self.scheduler = Scheduler(self.store, self._scheduled_start, self._schedule_event,
                                   lambda rows: self._retain(topics.schedules(self.name),
                                                             json.dumps({"agent": self.name, "time": utc_now(),
                                                                         "schedules": rows}).encode()))
        from .settings import config_home
        self.keeper = TemplateKeeper(self.name, topics, state_dir / "templates.json", self._publish,
                                     trusted_verifier(config_home(), self.authority))
        self.desk.handlers = registry(self.name, status=lambda: self.own_status.word, transfers=self.transfers,
                                      monitors=self.monitors, scheduler=self.scheduler, stop=self.request_stop)
        self.programs = ProgramHost(self.ctx)  # -predst/-postdst of the transfers this agent receives
        self.router = Router(self.ctx, self.metrics, drops, commands=self.desk.lane, peers=self.peers,
                             transfers=self.transfers, watchdog=self.watchdog, programs=self.programs)
        self.metrics.gauges.update({
            "fte_transfers_active": lambda: {'role="source"': len(self.transfers.sources),
                                             'role="destination"': len(self.transfers.active_destinations())},
            "fte_transfers_in_state": self.transfers.state_counts,
            "fte_log_outbox_depth": lambda: {"": self.store.outbox_size()},
            "fte_monitors_running": lambda: {"": len(self.monitors)},
            "fte_broker_connected": lambda: {"": 1 if self.link.up.is_set() else 0},
        })
        will = aiomqtt.Will(topics.agent_status(self.name), self.own_status.payload(AgentState.UNREACHABLE), qos=1,
                            retain=True)
        self.link = BrokerLink(
            self.addrs, client_id=f"fte-agent-{self.name}",
            subscriptions=[topics.commands(self.name), topics.data_filter(self.name),
                           topics.control_filter(self.name), topics.all_agent_status(), *self.keeper.subscriptions],
            on_message=self._message, on_up=self._on_up, on_down=self._on_down,
            keepalive=settings.brokerKeepalive, will=will, before_up=self._before_up,
            not_up=self.broker.connection_failed, urgent=self.router.arrival,
            connect_timeout=settings.brokerConnectTimeout)

    # ------------------------------------------------------------------ broker lists

    async def _before_up(self) -> None:
        """On each connection of the link: the broker check probes the broker the link is connecting to."""
        self.broker.use(self.link.addr)
        await self.broker.before_up()

    def _connected_broker(self) -> str | None:
        """The URL of the broker the agent is on (for its status), None while not connected."""
        link = getattr(self, "link", None)  # the last will is built before the link
        return link.addr.url if link is not None and link.up.is_set() else None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        if not await self._hold_lease():
            return
        self.transfers.load()
        tasks = [asyncio.create_task(self.link.run(), name="link"),
                 asyncio.create_task(self.outbox.run(), name="outbox"),
                 asyncio.create_task(self.desk.lane.run(), name="commands"),
                 asyncio.create_task(self.watchdog.run(), name="watchdog"),
                 asyncio.create_task(self.own_status.run(), name="status"),
                 asyncio.create_task(self._run_scheduler(), name="scheduler"),
                 asyncio.create_task(self._heartbeat(), name="heard")]
        if self.settings.metricsPort:
            tasks.append(asyncio.create_task(self.metrics.serve(self.settings.metricsPort, self.settings.metricsHost),
                                             name="metrics"))
        self.transfers.run_loaded()
        self.monitors.resume()
        try:
            stop_wait = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([stop_wait, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
            if tasks[0] in done and tasks[0].exception():
                raise tasks[0].exception()  # type: ignore[misc]
            await self._shutdown()
        finally:
            self.broker.close()
            others = (self.transfers.cancel_tasks() + self.monitors.stop() + self.peers.close()
                      + self.keeper.close() + self.programs.cancel_tasks())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, *others, return_exceptions=True)
            self.transfers.close_files()
            self.store.close()
            if self.lease:
                await asyncio.to_thread(self.lease.release)
            self.stopped.set()

    async def _hold_lease(self) -> bool:
        """A standby pair's member waits here, as the standby, until it holds the lease (agent.standby)."""
        if self.lease is None:
            return True
        if not await asyncio.to_thread(self.lease.wait, self.stopping.is_set):
            self.store.close()
            self.stopped.set()
            return False
        self.lease.start_renewing()
        return True

    def request_stop(self, immediate: bool = False) -> None:
        self._immediate = self._immediate or immediate
        self.stopping.set()

    async def _shutdown(self) -> None:
        self.own_status.word = AgentState.STOPPING
        await self.own_status.publish()
        # controlled stop: no new transfers, the running ones finish. A transfer in recovery is not waited for
        # (with -rt -1 that could be forever): it resumes from its checkpoint at restart.
        while not self._immediate and (live := self.transfers.live()):
            log.info("controlled stop: waiting for %d transfer(s) to finish", live)
            await asyncio.sleep(STOP_POLL)
        await self.outbox.drain()
        self.own_status.word = AgentState.STOPPED
        await self.link.stop(final=[(self.topics.agent_status(self.name),
                                     self.own_status.payload(AgentState.STOPPED), True)])

    # ------------------------------------------------------------------ wiring

    async def _publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if self.lease:
            self.lease.check()  # fence: a process that lost the lease publishes nothing as the agent
        if self.bandwidth is not None:
            self.bandwidth.spend(len(payload))
        await self.link.publish(topic, payload, qos=qos, retain=retain)

    def _retain(self, topic: str, payload: bytes) -> None:
        self.store.outbox_put(topic, payload, retain=True)
        self.outbox.wake()

    def _event(self, topic: str, event: dict[str, Any]) -> None:
        self.store.outbox_put(topic, json.dumps(event).encode())
        self.outbox.wake()

    def _broker_features(self, features: BrokerFeatures) -> None:
        """What the broker checks found, to the parts that depend on it."""
        self.ctx.chunk_size = features.chunk_size
        self.link.max_packet = features.max_packet

    async def _on_up(self) -> None:
        if self.own_status.word in (AgentState.STARTING, AgentState.UNREACHABLE):
            self.own_status.word = AgentState.READY
        await self.own_status.publish()
        self.own_status.reassert_later(STATUS_REASSERT_AFTER_CONNECT)
        self.republish_definitions()
        self.keeper.connected()
        self.outbox.wake()
        self.transfers.post_sources("link_up")
        for d in list(self.transfers.dests.values()):
            await d.request_recovery(f"destination agent {self.name} (re)connected to the broker")

    async def _on_down(self) -> None:
        self.keeper.disconnected()
        self.transfers.post_sources("link_down")

    def republish_definitions(self) -> None:
        """At every connection: the retained views of the monitors and schedules this agent owns, again (a
        broker that restarted without persistence lost them; the agent never stopped running them)."""
        self.monitors.republish()
        self.scheduler.publish()

    async def _message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        if self.keeper.handles(topic):
            payload = message.payload if isinstance(message.payload, bytes) else b""
            await self.keeper.message(topic, payload)
            return
        await self.router.message(message)

    def _peer_changed(self, agent: str, status: str) -> None:
        self.transfers.post_sources("peer", status, to=agent)
        if status in AGENT_RUNNING and agent != self.name:
            asyncio.ensure_future(self.watchdog.resend_to(agent))

    async def _heartbeat(self) -> None:
        """While connected, every HEARD_INTERVAL: the retained, signed {agent, time, interval, keepalive} on
        <prefix>/Agents/<agent>/heard, so that clients can say when an UNREACHABLE agent was last heard from;
        and the agent's status again, retained."""
        topic = self.topics.heard(self.name)
        while True:
            await self.link.up.wait()
            body = json.dumps({"agent": self.name, "time": utc_now(), "interval": HEARD_INTERVAL,
                               "keepalive": self.settings.brokerKeepalive}).encode()
            try:
                await self._publish(topic, provenance.sign_payload(body, provenance.EVENT, topic, self.identity),
                                    1, True)
            except (ConnectionError, aiomqtt.MqttError):
                pass  # the link is going; the next connection publishes it again
            await asyncio.sleep(HEARD_INTERVAL)
            # A late last will of a connection abandoned while failing over can be retained on a cluster node
            # at any time, and the agent does not read every node's copy (seen on a NATS 2.9 cluster, later
            # than STATUS_REASSERT_AFTER_CONNECT): republished here, a wrong status lasts one interval at most.
            try:
                await self.own_status.republish()
            except aiomqtt.MqttError:
                pass  # the link is going; the next connection publishes the status again

    async def _run_scheduler(self) -> None:
        # the first occurrences wait for the broker: a transfer needs to know its destination agent
        await self.link.up.wait()
        await self.scheduler.run()

    async def _scheduled_start(self, spec: TransferSpec, origin: str) -> str:
        return str((await self.transfers.start(spec, originator=origin))["transfer_id"])

    def _schedule_event(self, sid: str, action: str, fields: dict[str, Any]) -> None:
        log.info("schedule %s %s: %s", sid, action, fields.get("message"))
        self._event(self.topics.log(self.name, sid), schedule_event(self.name, sid, action, fields))


class _LinkSubscriptions:
    """The link's subscriptions for the peers, made before the link exists (it is built last)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def add_subscription(self, topic: str) -> None:
        await self._agent.link.add_subscription(topic)

    async def remove_subscription(self, topic: str) -> None:
        await self._agent.link.remove_subscription(topic)


def agent_dir_of(settings: AgentSettings) -> Path:
    """The agent's configuration directory (its trust file lives there)."""
    from .settings import agent_dir

    return agent_dir(settings.agentName)


def _s(v: object) -> str | None:
    return str(v) if v else None
