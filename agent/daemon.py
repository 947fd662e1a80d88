"""The agent process: one per host, source and destination of transfers, driven by its broker link."""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import aiomqtt

from .core.errors import FteError
from . import __version__
from .auth import TRUST_FILE, AuthError, Authority
from .command_lane import CommandLane
from .core import triggers as T
from .metrics import Metrics
from .core.schedule import ScheduleError
from .scheduler import CreateSchedule, DeleteSchedule, ListSchedules, Scheduler
from .scheduler import event as schedule_event
from .monitor import (CreateMonitor, ListMonitors, MonitorCommand, MonitorError, MonitorRunner, MonitorSpec,
                      check_task, parse_any_command)
from .broker_probe import BUDGET as PROBE_BUDGET
from .broker_probe import BrokerProbe, ProbeReport, TopicStatus
from .binding import (agent_requester, check_chunk_mac, check_message_mac, load_or_create_agent_key, new_ephemeral,
                      seal, transfer_key, verify_signed)
from .context import AgentContext
from . import provenance
from .core import results
from .core.lifecycle import TERMINAL_STATE_VALUES as TERMINAL
from .core.lifecycle import TransferState as S
from .core.budget import InFlightBudget
from .core.recovery import effective_recovery_timeout
from .destination import DestinationTransfer
from .core.policy import COMPLETE_RETRY_INTERVAL, PEER_WAIT, STATUS_MIN_INTERVAL
from .link import BrokerAddress, BrokerLink, MessageTooLarge
from .names import AGENT_NAME_RE
from .protocol import (MAX_PATH_CHARS, FileHolding, Ack, AgentStatus, CancelTransfer, Complete, CompleteAck,
                       CreateTransfer, FileEnd, FileResult, ListTransfers, Ping, ProtocolError, QueryTransfer, Reply,
                       RequestRecovery, Resync,
                       ResyncReply, StopAgent, Topics, TransferSpec, decode_chunk, Bundle, FileResults, dump, new_transfer_id,
                       parse_agent_status,
                       parse_control, utc_now)
from .fileio import os_error_at, shorten
from .fsops import ConfinedDirs
from .sandbox import Sandbox, SandboxError
from .source import SourceTransfer, _iso, send_complete
from .store import FileRecord, StateStore, TransferRecord
from .transferlog import OutboxPublisher, TransferLog
from .core.statuses import AGENT_RUNNING, AgentState, FileStatus

log = logging.getLogger("fte.agent")

LIST_LIMIT = 500  # transfers in a list_transfers reply (the most recent)
HISTORY_DAYS = 7  # finished transfers are kept this long in the state store, then forgotten
# Peers whose status an agent subscribes to on its own topic, <prefix>/Agents/<peer>, besides <prefix>/Agents/+
# (a broker may not deliver retained messages to a wildcard subscription: RabbitMQ 3.x). Beyond this, the one
# subscribed longest ago that no running transfer goes to is dropped; its live changes still come on the wildcard.
PEER_WATCH_LIMIT = 256
_AGENT_NAME = AGENT_NAME_RE


class CommandRefused(FteError):
    """A command the agent will not carry out: its reply says why, with `code` as its result code."""

    code = results.COMMAND_FAILED


def _open_frame(payload: bytes, key: bytes | None, tid: str) -> Any:
    """A data frame checked and decoded: a Chunk or a Bundle. A bound transfer's frames carry a MAC, which
    is their check (the CRC then adds nothing and is not computed); an unbound transfer's frames, a CRC."""
    if key is None:
        return decode_chunk(payload)
    frame = check_chunk_mac(payload, key)
    if frame is None:
        raise ProtocolError(f"chunk for transfer {tid} without a valid MAC (not from its source)")
    return decode_chunk(frame, authenticated=True)


def _regular_files(root: str, recursive: bool, dirs: ConfinedDirs,
                   stats: dict[str, os.stat_result]) -> list[str]:
    """The regular files in `root` (and below it, if `recursive`), sorted by path; symbolic links are
    neither followed nor listed, and each directory is opened relative to its parent without following a
    link (agent/fsops.py), so that a directory swapped for a link during the walk lists nothing outside.
    Their lstat goes in `stats`. Strings, not Paths: a Path per file cost more than the walk itself."""
    found: list[str] = []
    for p, st in dirs.regular_files(root, recursive):
        found.append(p)
        stats[p] = st
    # sorted as Paths were (component by component: "a/b" before "a-c"), so the send order is unchanged
    return sorted(found, key=lambda p: p.split("/"))


class Agent:
    def __init__(self, settings: Any, state_dir: Path, agent_home: Path | None = None) -> None:
        self.settings = settings
        self.name: str = settings.agentName
        self.topics = Topics(settings.topicPrefix)
        self.state_dir = state_dir
        self.store = StateStore(state_dir / "state.db")
        self.sandbox = Sandbox(settings.sandbox_allow, settings.sandbox_deny,
                               Path(settings.transferRoot) if settings.transferRoot else None)
        password = settings.brokerPassword.get_secret_value() if settings.brokerPassword else None
        self.addr = BrokerAddress.from_url(settings.brokerUrl, username=settings.brokerUsername, password=password,
                                           ca_file=_s(settings.brokerCaFile), cert_file=_s(settings.brokerCertFile),
                                           key_file=_s(settings.brokerKeyFile))
        self.status = AgentState.STARTING
        self.started_at = utc_now()
        self.peers: dict[str, str] = {}
        self.peer_seen = asyncio.Event()
        # peers watched on their own status topic (agent._watch_peer), the one subscribed longest ago first
        self._watched: dict[str, None] = {}
        self._watch_tasks: set[asyncio.Task[None]] = set()
        self._watch_lock = asyncio.Lock()  # (un)subscriptions in the order they were decided
        self.sources: dict[str, SourceTransfer] = {}
        self.source_tasks: dict[str, asyncio.Task[None]] = {}
        self.dests: dict[str, DestinationTransfer] = {}
        self.source_slots = asyncio.Semaphore(max(1, settings.maxSourceTransfers))
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()
        self._immediate = False
        self._status_dirty = asyncio.Event()
        self._raw_command = b""
        self._drops: dict[str, tuple[float, int]] = {}
        self._status_force = False
        self.metrics = Metrics(self.name)
        self.metrics.gauges.update({
            "fte_transfers_active": lambda: {'role="source"': len(self.sources),
                                             'role="destination"': sum(1 for d in self.dests.values() if d.active)},
            "fte_transfers_in_state": self._state_counts,
            "fte_log_outbox_depth": lambda: {"": self.store.outbox_size()},
            "fte_monitors_running": lambda: {"": len(self.monitors)},
            "fte_broker_connected": lambda: {"": 1 if self.link.up.is_set() else 0},
        })
        self.monitors: dict[str, tuple[MonitorRunner, asyncio.Task[None]]] = {}
        self.scheduler = Scheduler(self.store, self._scheduled_start, self._schedule_event,
                                   lambda rows: self._retain(self.topics.schedules(self.name),
                                                             json.dumps({"agent": self.name, "time": utc_now(),
                                                                         "schedules": rows}).encode()))
        self.agent_home = agent_home or agent_dir_of(settings)
        self.authority = (Authority(self.agent_home / TRUST_FILE, nonces=self.store) if settings.authorityChecking
                          else None)
        # commands are rate-limited, queued and handled apart from the data path (agent.command_lane)
        authority = self.authority
        self.commands = CommandLane(self._on_command, (lambda: authority.trusted().keys()) if authority else None)
        self._refusals_reported = (0, 0)  # (held, dropped) of the lane at the last not_authorized event
        # signs the transfers it negotiates, and everything it publishes for others to believe (agent.provenance)
        self.identity = load_or_create_agent_key(self.agent_home)
        self._own_key = self.identity.public_key()
        self._untrusted_peers: set[str] = set()  # peers whose status came without a signature we can check
        self.outbox = OutboxPublisher(self.store, self._publish, lambda: self.link.up.is_set(),
                                      sign=lambda topic, payload: provenance.sign_payload(
                                          payload, provenance.EVENT, topic, self.identity))
        self.tlog = TransferLog(self.name, self.topics, self.store, self.outbox.wake)
        self.broker_check: str | None = None  # what the last broker probe found (agent.broker_probe)
        self._probe_topics: TopicStatus | None = None  # its topic finding, logged when it changes
        self._probe_sizes: str | None = None  # and its size finding
        self._diagnosis: asyncio.Task[None] | None = None  # a topic check after a failed connection attempt
        self._probes = 0  # full probes started
        will = aiomqtt.Will(self.topics.agent_status(self.name), self._status_payload(AgentState.UNREACHABLE), qos=1,
                            retain=True)
        self.link = BrokerLink(
            self.addr, client_id=f"fte-agent-{self.name}",
            subscriptions=[self.topics.commands(self.name), self.topics.data_filter(self.name),
                           self.topics.control_filter(self.name), self.topics.all_agent_status()],
            on_message=self._on_message, on_up=self._on_up, on_down=self._on_down,
            keepalive=settings.brokerKeepalive, will=will, before_up=self._check_broker,
            not_up=self._connection_failed, urgent=self._on_arrival)
        self.ctx = AgentContext(
            name=self.name, topics=self.topics, store=self.store, log=self.tlog, sandbox=self.sandbox,
            publish=self._publish, link_up=lambda: self.link.up.is_set(), peer_status=self._peer_status,
            chunk_size=settings.agentChunkSize, window_chunks=settings.agentWindowSize,
            ack_timeout=settings.transferAckTimeout / 1000.0, ack_retries=settings.transferAckTimeoutRetries,
            agent_recovery_timeout=settings.transferRecoveryTimeout, on_state_change=self._status_dirty.set,
            settings=settings, identity=self.identity, peer_key=self._trusted_agent_key,
            check_size=self.link.check_size,
            verify_peers=self.authority is not None, metrics=self.metrics,
            budget=InFlightBudget(settings.agentMaxDataInFlight), wake=self._wake_source)

    def _wake_source(self, tid: str) -> None:
        session = self.sources.get(tid)
        if session is not None:
            session.post("wake")

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        self._load_state()
        tasks = [asyncio.create_task(self.link.run(), name="link"),
                 asyncio.create_task(self.outbox.run(), name="outbox"),
                 asyncio.create_task(self.commands.run(), name="commands"),
                 asyncio.create_task(self._watchdog(), name="watchdog"),
                 asyncio.create_task(self._status_publisher(), name="status"),
                 asyncio.create_task(self._run_scheduler(), name="scheduler")]
        if self.settings.metricsPort:
            tasks.append(asyncio.create_task(self.metrics.serve(self.settings.metricsPort, self.settings.metricsHost),
                                             name="metrics"))
        for tid, session in self.sources.items():
            self.source_tasks[tid] = asyncio.create_task(self._run_source(session))
        for name, spec, state, memory in self.store.monitors():
            if state == "started":
                self._start_monitor(MonitorSpec.model_validate(spec), memory)
            else:  # its retained listing again, signed as this version signs (clients believe no other)
                self._publish_monitor(MonitorSpec.model_validate(spec), state)
        try:
            stop_wait = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([stop_wait, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
            if tasks[0] in done and tasks[0].exception():
                raise tasks[0].exception()  # type: ignore[misc]
            await self._shutdown()
        finally:
            monitor_tasks = [t for _, t in self.monitors.values()]
            if self._diagnosis is not None:
                self._diagnosis.cancel()
            watches = list(self._watch_tasks)
            for t in tasks + list(self.source_tasks.values()) + monitor_tasks + watches:
                t.cancel()
            await asyncio.gather(*tasks, *self.source_tasks.values(), *monitor_tasks, *watches,
                                 return_exceptions=True)
            for d in self.dests.values():
                for idx in list(d.fds):
                    d._close(idx)
            self.store.close()
            self.stopped.set()

    def request_stop(self, immediate: bool = False) -> None:
        self._immediate = self._immediate or immediate
        self.stopping.set()

    async def _shutdown(self) -> None:
        self.status = AgentState.STOPPING
        await self._publish_status()
        if not self._immediate:
            # controlled stop: no new transfers, the running ones finish. A transfer in recovery is not
            # waited for (with -rt -1 that could be forever): it resumes from its checkpoint at restart.
            while not self._immediate:
                live = [s for s in self.sources.values() if not s.state.is_terminal and not s.state.is_recovery]
                if not live:
                    break
                log.info("controlled stop: waiting for %d transfer(s) to finish", len(live))
                await asyncio.sleep(0.5)
        await self.outbox.drain()
        self.status = AgentState.STOPPED
        await self.link.stop(final=[(self.topics.agent_status(self.name), self._status_payload(AgentState.STOPPED), True)])

    def _load_state(self) -> None:
        """Rebuild every transfer from the state store after a (possibly violent) restart."""
        pruned = self.store.prune(time.time() - HISTORY_DAYS * 86400, TERMINAL)
        if pruned:
            log.info("forgot %d transfer(s) that finished more than %d days ago", pruned, HISTORY_DAYS)
        for row in self.store.transfers("source", files=False):
            rec = None if row.state in TERMINAL else self.store.load_transfer(row.transfer_id, "source")
            if rec is not None:
                self.sources[rec.transfer_id] = SourceTransfer(self.ctx, rec, restarted=True)
        for row in self.store.transfers("destination", files=False):
            rec = None if row.state in TERMINAL else self.store.load_transfer(row.transfer_id, "destination")
            if rec is not None:
                self.dests[rec.transfer_id] = DestinationTransfer(self.ctx, rec)
        if self.sources or self.dests:
            log.info("resuming %d source and %d destination transfer(s) from the state store",
                     len(self.sources), len(self.dests))

    async def _run_source(self, session: SourceTransfer) -> None:
        async with self.source_slots:
            await session.run()
        self.sources.pop(session.tid, None)
        self._status_dirty.set()

    # ------------------------------------------------------------------ broker link

    async def _publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        await self.link.publish(topic, payload, qos=qos, retain=retain)

    async def _check_broker(self) -> None:
        """The broker probe (agent.broker_probe), on every connection of the link before it is up, so before
        any transfer resumes: are topics kept as published, and which chunk size passes this broker?"""
        if not self.settings.brokerProbe:
            self.broker_check = "off (brokerProbe=false)"
            return
        self._probes += 1
        probe = BrokerProbe(self.addr, self.name, self.topics, self.settings.agentChunkSize)
        try:
            # the probe bounds itself (PROBE_BUDGET); this only guards against a bug
            report = await asyncio.wait_for(probe.run(), PROBE_BUDGET + 15)
        except Exception as exc:  # never fatal: the agent works on as before the probe
            log.warning("the broker probe failed (%s); chunk size stays %d", str(exc) or type(exc).__name__,
                        self.ctx.chunk_size)
            return
        self._apply_probe(report)

    def _connection_failed(self, exc: BaseException) -> None:
        """A connection attempt failed before the link was up. A broker that refuses the agent's topics may
        refuse its CONNECT already (NATS 2.9 drops one whose last will topic has a '.', without a CONNACK: the
        attempt times out): the topic check then runs on a connection of its own, without a will, in the
        background (the reconnection policy is not delayed), until one reaches the broker. Not after a refused
        TCP connection, a TLS error or refused credentials: the check would fail the same way."""
        if not self.settings.brokerProbe or "timed out" not in str(exc).lower() or \
                self._probe_topics not in (None, TopicStatus.NOT_CHECKED) or \
                (self._diagnosis is not None and not self._diagnosis.done()):
            return
        self._diagnosis = asyncio.create_task(self._diagnose(), name="broker-diagnosis")

    async def _diagnose(self) -> None:
        probes = self._probes
        probe = BrokerProbe(self.addr, self.name, self.topics, self.settings.agentChunkSize, sizes=False)
        try:
            report = await asyncio.wait_for(probe.run(), PROBE_BUDGET + 15)
        except Exception as exc:
            log.debug("broker diagnosis failed: %s", exc)
            return
        # a finding, unless it could not reach the broker or a full probe ran meanwhile (it knows better)
        if report.topic_status is not TopicStatus.NOT_CHECKED and probes == self._probes:
            self._apply_probe(report, quiet=True)

    def _apply_probe(self, report: ProbeReport, quiet: bool = False) -> None:
        # each finding is logged once, when it changes, not on every reconnection
        if report.topic_status is not self._probe_topics and report.topic_message:
            (log.error if report.topic_status.is_error else log.warning)("broker check: %s", report.topic_message)
        self._probe_topics = report.topic_status
        if report.sized:  # else the probe learnt nothing about sizes: keep what the last one found
            finding = report.size_finding()
            if finding is not None and finding[1] != self._probe_sizes:
                (log.error if finding[0] == "error" else log.warning)("%s", finding[1])
            elif finding is None and self.ctx.chunk_size != report.chunk_size:
                log.info("the broker passes %d-byte chunks again: chunk size back to agentChunkSize",
                         report.chunk_size)
            self._probe_sizes = finding[1] if finding else None
            self.ctx.chunk_size = report.chunk_size
            # the largest message known to pass, when a bigger one was refused: bigger ones are not sent
            self.link.max_packet = report.passed_bytes if report.refused_bytes else None
        self.broker_check = report.summary()
        if not quiet:
            log.info("broker check in %.2f s: topics %s, chunk size %d", report.seconds, report.topic_status.value,
                     self.ctx.chunk_size)

    async def _on_up(self) -> None:
        if self.status in (AgentState.STARTING, AgentState.UNREACHABLE):
            self.status = AgentState.READY
        await self._publish_status()
        self.outbox.wake()
        for s in self.sources.values():
            s.post("link_up")
        for d in list(self.dests.values()):
            await d.request_recovery(f"destination agent {self.name} (re)connected to the broker")

    async def _on_down(self) -> None:
        for s in self.sources.values():
            s.post("link_down")

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, (bytes, bytearray)) else b""
        levels = self.topics.split(topic)
        try:
            if len(levels) == 3 and levels[0] == "Data" and levels[1] == self.name:
                await self._on_data(levels[2], bytes(payload))
            elif len(levels) == 3 and levels[0] == "Control" and levels[1] == self.name:
                await self._on_control(levels[2], parse_control(bytes(payload)), bytes(payload))
            elif len(levels) == 2 and levels[0] == "Agents":
                self._on_agent_status(levels[1], bytes(payload))
        except ProtocolError as exc:
            self.metrics.rejected_messages += 1
            self._log_drop(topic, str(exc))

    def _on_arrival(self, message: aiomqtt.Message) -> bool:
        """The link's `urgent` path, run by its reader as each message arrives. Commands go to their own lane
        (agent.command_lane: rate limits, a bounded queue, a task of their own), so that data chunks and control
        messages never wait behind them on the link's worker; agent statuses are handled at once."""
        topic = str(message.topic)
        levels = self.topics.split(topic)  # once per message: every data chunk comes this way
        if len(levels) != 2 or levels[0] not in ("Commands", "Agents"):
            return False  # left to the worker
        payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
        if levels[0] == "Commands":
            if levels[1] != self.name:
                return False
            self.commands.offer(payload)
        else:
            self._on_status_now(topic, levels[1], payload)
        return True

    def _on_status_now(self, topic: str, agent: str, payload: bytes) -> None:
        """Agent statuses are handled as they arrive (the link's `urgent` path), not queued behind the message
        being handled: a new transfer waits for its destination's status (start_transfer) while it holds the
        command lane (agent.command_lane)."""
        try:
            self._on_agent_status(agent, payload)
        except ProtocolError as exc:
            self.metrics.rejected_messages += 1
            self._log_drop(topic, str(exc))

    def _peer_status(self, agent: str) -> str | None:
        """A peer's last known status (the sessions' ctx.peer_status). A peer not known yet is watched on its
        own status topic, so that its retained status arrives on any broker."""
        status = self.peers.get(agent)
        if status is None:
            self._watch_peer(agent)
        return status

    def _watch_peer(self, agent: str) -> None:
        """Subscribe to `agent`'s own status topic, <prefix>/Agents/<agent>, and keep the subscription (the
        link makes it again at every reconnection, which brings the current retained status each time).

        Every agent also subscribes to <prefix>/Agents/+, which gets every status as it is published, but a
        broker may not deliver the retained ones to a wildcard subscription (RabbitMQ 3.x, rabbitmq-server
        issues #8096 and #8824): a source agent started after its destination would never learn of it.
        On the other brokers this subscription is redundant (a status may then arrive twice, which changes
        nothing). At most PEER_WATCH_LIMIT peers: beyond, the one subscribed longest ago that is not the
        destination of a running transfer is unsubscribed."""
        if agent == self.name or not _AGENT_NAME.fullmatch(agent):
            return
        if agent in self._watched:
            self._watched[agent] = self._watched.pop(agent)  # needed (again) now: the last to be dropped
            return
        self._watched[agent] = None
        dropped = []
        while len(self._watched) > PEER_WATCH_LIMIT:
            busy = {s.dest for s in self.sources.values()}
            victim = next((a for a in self._watched if a not in busy and a != agent), next(iter(self._watched)))
            del self._watched[victim]
            dropped.append(victim)
        log.debug("watching the status of agent %s on %s", agent, self.topics.agent_status(agent))

        async def subscribe() -> None:
            async with self._watch_lock:
                for name in dropped:
                    await self.link.remove_subscription(self.topics.agent_status(name))
                await self.link.add_subscription(self.topics.agent_status(agent))

        task = asyncio.ensure_future(subscribe())
        self._watch_tasks.add(task)
        task.add_done_callback(self._watch_tasks.discard)

    def _log_drop(self, topic: str, reason: str) -> None:
        """Every dropped message is logged with its reason, but a flood costs one line per second per reason."""
        now = time.monotonic()
        key = reason[:40]
        last, suppressed = self._drops.get(key, (0.0, 0))
        if now - last < 1.0:
            self._drops[key] = (last, suppressed + 1)
            return
        more = f" (and {suppressed} more like it)" if suppressed else ""
        self._drops[key] = (now, 0)
        if len(self._drops) > 1000:
            self._drops.clear()
        log.warning("dropped a message on %s: %s%s", topic[:200], reason, more)

    def _trusted_agent_key(self, agent: str) -> Any:
        if self.authority is None:
            return None
        entry = self.authority.trusted().get(agent_requester(agent))
        return entry.key if entry is not None and "transfer" in entry.permissions else None

    def _on_agent_status(self, agent: str, payload: bytes) -> None:
        if agent == self.name:
            status = self._own_status(payload)
        else:
            status = self._peer_status_of(agent, payload)
        if status is None:
            return
        before = self.peers.get(agent)
        self.peers[agent] = status.status
        self.peer_seen.set()
        if before == status.status:
            return
        for s in self.sources.values():
            if s.dest == agent:
                s.post("peer", status.status)
        if status.status in AGENT_RUNNING and agent != self.name:
            asyncio.ensure_future(self._resend_outcomes(agent))

    def _own_status(self, payload: bytes) -> AgentStatus | None:
        """What is retained on this agent's own status topic is what every new client and peer reads of it:
        anything there that is not this agent's current status (garbage, an empty message, a forgery, a status
        of an earlier run, a late last will) is replaced by republishing its own at once (the status publisher
        bounds that to one per STATUS_MIN_INTERVAL, however many arrive)."""
        status: AgentStatus | None = None
        try:
            status = parse_agent_status(payload) if payload else None
        except ProtocolError:
            pass
        signed = status is not None and status.agent == self.name and \
            provenance.verify_payload(payload, provenance.STATUS, self.name, [self._own_key])
        current = signed and status is not None and status.pid == os.getpid() and \
            status.started_at == self.started_at and status.status != AgentState.UNREACHABLE
        if not current and self.link.up.is_set() and not self.stopping.is_set():
            what = "an earlier status of this agent" if signed else \
                "a status not signed by this agent" if status is not None else "no status" if not payload else \
                "a message that is no status"
            self._log_drop(self.topics.agent_status(self.name), f"its own status topic holds {what}: republishing "
                           "this agent's status")
            self._status_force = True
            self._status_dirty.set()
        return status if signed else None

    def _peer_status_of(self, agent: str, payload: bytes) -> AgentStatus | None:
        """A peer's status, believed (for sessions, waits, outcome resends) only when signed by the peer's
        trusted identity key, if authority checking is on (without it, no peer is checked at all)."""
        if not payload:
            if self.authority is None:
                self.peers.pop(agent, None)
                return None
            raise ProtocolError(f"an empty status for agent {agent} (no signature to check): ignored")
        status = parse_agent_status(payload)
        if status.agent != agent:
            raise ProtocolError(f"status for {status.agent!r} published on the topic of {agent!r}")
        if self.authority is None:
            return status
        key = self._trusted_agent_key(agent)
        if key is None:
            # an agent on the broker this one does not work with: not worth a warning per status change
            if agent not in self._untrusted_peers:
                log.debug("ignoring the status of agent %s: its key is not trusted here", agent)
            self._untrusted_peers.add(agent)
            return None
        if not provenance.verify_payload(payload, provenance.STATUS, agent, [key]):
            raise ProtocolError(f"status of agent {agent} not signed by its trusted key (a forgery?): ignored")
        self._untrusted_peers.discard(agent)
        return status

    async def _on_data(self, tid: str, payload: bytes) -> None:
        dest = self.dests.get(tid)
        if dest is None:
            # not (or no longer) ours: late chunks of a finished transfer, or garbage
            raise ProtocolError(f"chunk for a transfer this agent is not receiving ({tid[:60]!r})")
        frame = _open_frame(payload, dest.key, tid)
        if isinstance(frame, Bundle):
            await dest.on_bundle(frame)
        else:
            await dest.on_chunk(frame)

    def _key_of(self, tid: str, role: str) -> bytes | None:
        live = (self.sources if role == "source" else self.dests).get(tid)
        if live is not None:
            return live.key
        rec = self.store.load_transfer(tid, role, files=False)
        return transfer_key(rec.header) if rec else None

    def _peer_signed(self, agent: str, raw: dict[str, Any]) -> bool:
        """Negotiation messages must be signed by the peer agent's trusted identity key (authority on)."""
        if not self.ctx.verify_peers:
            return True
        key = self.ctx.peer_key(agent)
        return key is not None and verify_signed(raw, key)

    async def _on_control(self, tid: str, msg: Any, payload: bytes) -> None:
        if msg.transfer_id != tid:
            raise ProtocolError("transfer id in the message does not match its topic")
        raw = json.loads(payload)
        if isinstance(msg, Resync):
            if not self._peer_signed(msg.source_agent, raw):
                await self._refuse_negotiation(msg)
                return
        elif isinstance(msg, ResyncReply):
            session = self.sources.get(tid)
            if session is None:
                return
            if not self._peer_signed(session.dest, raw):
                raise ProtocolError(f"resync reply for {tid} not signed by a trusted key of agent {session.dest}")
            if msg.kx:
                session.bind(msg.kx)
        else:
            role = "destination" if isinstance(msg, (FileEnd, Complete)) else "source"
            key = self._key_of(tid, role)
            if key is not None and not check_message_mac(raw, raw.get("mac"), key):
                raise ProtocolError(f"{msg.kind} for transfer {tid} without a valid MAC (not from its peer)")
        if isinstance(msg, Resync):
            await self._dest_resync(msg)
        elif isinstance(msg, (FileEnd,)):
            if tid in self.dests:
                await self.dests[tid].on_file_end(msg)
        elif isinstance(msg, Complete):
            dest = self.dests.pop(tid, None)
            if dest is None:
                rec = self.store.load_transfer(tid, "destination")
                dest = DestinationTransfer(self.ctx, rec) if rec else None
            if dest is not None:
                await dest.on_complete(msg)
            else:
                # nothing of it here (it failed before reaching us): confirm so the source stops asking
                await self._publish(self.topics.control(msg.source_agent, tid),
                                    dump(CompleteAck(kind="complete_ack", transfer_id=tid)), 1, False)
            self._status_dirty.set()
        elif isinstance(msg, (ResyncReply, Ack, FileResult, FileResults)):
            if tid in self.sources:
                self.sources[tid].post("control", msg)
        elif isinstance(msg, RequestRecovery):
            if tid in self.sources:
                self.sources[tid].post("control", msg)
            else:
                await self._answer_finished(tid)
        elif isinstance(msg, CompleteAck):
            rec = self.store.load_transfer(tid, "source", files=False)
            if rec and not rec.peer_confirmed:
                rec.peer_confirmed = True
                self.store.update_transfer(rec)  # the row only: the files are left as they are

    async def _refuse_negotiation(self, msg: Resync) -> None:
        """A transfer offered by an agent we do not trust: answer (signed) that every file failed."""
        reason = (f"not authorized: agent {self.name} does not trust agent {msg.source_agent} (add its key with: "
                  f"fte key trust {self.name} {agent_requester(msg.source_agent)} KEY -p transfer)")
        log.warning("refused transfer %s from agent %s: no trusted signature", msg.transfer_id, msg.source_agent)
        if self.store.load_transfer(msg.transfer_id, "destination", files=False) is not None:
            return  # a forged resync for a transfer we run: ignore it
        reply = ResyncReply(kind="resync_reply", transfer_id=msg.transfer_id, epoch=msg.epoch, files=[
            FileHolding(index=f.index, held=0, status=FileStatus.FAILED, result_code=results.FILE_FAILED, supplement=reason)
            for f in msg.files])
        try:
            await self._publish(self.topics.control(msg.source_agent, msg.transfer_id),
                                seal(reply, None, self.ctx.identity), 1, False)
        except ConnectionError:
            pass

    async def _dest_resync(self, msg: Resync) -> None:
        if msg.destination_agent != self.name:
            raise ProtocolError(f"resync for agent {msg.destination_agent!r} received by {self.name!r}")
        dest = self.dests.get(msg.transfer_id)
        if dest is None:
            rec = self.store.load_transfer(msg.transfer_id, "destination")
            if rec is not None:
                dest = DestinationTransfer(self.ctx, rec)
                if rec.state not in TERMINAL:
                    self.dests[msg.transfer_id] = dest
            else:
                active = sum(1 for d in self.dests.values() if d.active)
                if self.settings.maxDestinationTransfers == 0 or active >= self.settings.maxDestinationTransfers:
                    # no room: no answer, so the source keeps negotiating (it waits, like the reference's
                    # WaitingForDestinationCapacity); with maxDestinationTransfers=0 it never gets one
                    log.warning("transfer %s from %s deferred: %d of maxDestinationTransfers=%d in use",
                                msg.transfer_id, msg.source_agent, active, self.settings.maxDestinationTransfers)
                    return
                busy = {f.destination: d.tid for d in self.dests.values() if d.active
                        for f in d.files.values() if f.status == FileStatus.READY}
                dest = DestinationTransfer.accept(self.ctx, msg, busy)
                self.dests[msg.transfer_id] = dest
                self._status_dirty.set()
        await dest.on_resync(msg)

    async def _answer_finished(self, tid: str) -> None:
        """A destination asks about a transfer this source no longer runs: tell it the outcome."""
        rec = self.store.load_transfer(tid, "source")
        if rec is None:
            return
        if rec.state in TERMINAL:
            await send_complete(self.ctx, rec)

    async def _resend_outcomes(self, agent: str) -> None:
        for rec in self.store.transfers("source", files=False):
            if rec.peer == agent and rec.state in TERMINAL and not rec.peer_confirmed:
                await send_complete(self.ctx, rec)

    # ------------------------------------------------------------------ commands

    async def _on_command(self, payload: bytes) -> None:
        try:
            cmd = parse_any_command(payload)
        except ProtocolError as exc:
            if not self.commands.refusal_allowed():
                return  # beyond the bound of refusals answered: counted (command_lane), not answered
            log.warning("dropped a command: %s", exc)
            request_id = _peek(payload, "request_id")
            reply_to = _peek(payload, "reply_to")
            if request_id and reply_to:
                await self._reply(reply_to, Reply(request_id=request_id[:64], ok=False,
                                                  result_code=results.COMMAND_FAILED, message=f"malformed command: {exc}"))
            return
        try:
            if self.authority is not None:
                try:
                    self.authority.check(json.loads(payload), agent=self.name, kind=cmd.kind)
                except (AuthError, ValueError) as exc:
                    if not self._log_refusal(cmd, str(exc)):
                        return  # beyond the bound of refusals answered: counted (command_lane), not answered
                    raise CommandRefused(f"not authorized: {exc}", results.NOT_AUTHORIZED) from None
            self._raw_command = payload
            data = await self._execute(cmd)
            reply = Reply(request_id=cmd.request_id, ok=True, data=data)
        except CommandRefused as exc:
            # a refusal quoting a long path must still fit a reply (or the command goes unanswered)
            reply = Reply(request_id=cmd.request_id, ok=False, result_code=exc.code,
                          message=shorten(str(exc), MAX_PATH_CHARS))
        if cmd.reply_to:
            await self._reply(cmd.reply_to, reply)
        if isinstance(cmd, StopAgent) and reply.ok:
            self.request_stop(cmd.immediate)

    def _log_refusal(self, cmd: Any, reason: str) -> bool:
        """A refused command leaves a trace on the log topic (the reply alone could go to anyone), within the
        bound of refusals answered (agent.command_lane); False, when beyond it: then it is only counted, and
        neither answered, logged nor published. The event and the log line say how many were so suppressed,
        and how many commands were dropped unread (rate limits), since the previous event."""
        if not self.commands.refusal_allowed():
            return False
        held, dropped = self.commands.refusals.held, self.commands.dropped
        suppressed, unread = held - self._refusals_reported[0], dropped - self._refusals_reported[1]
        self._refusals_reported = (held, dropped)
        tid = getattr(cmd, "transfer_id", None) or "Security"
        event = {"action": "not_authorized", "time": utc_now(), "agent": self.name, "command": cmd.kind,
                 "request_id": cmd.request_id, "requester": getattr(cmd, "requester", None),
                 "transfer_id": getattr(cmd, "transfer_id", None), "result_code": results.NOT_AUTHORIZED,
                 "message": f"command {cmd.kind} refused: {reason}", "suppressed": suppressed, "dropped": unread}
        more = f" ({suppressed} more refused and {unread} dropped unread since the last refusal logged)" \
            if suppressed or unread else ""
        log.warning("refused %s from %s: %s%s", cmd.kind, event["requester"] or "an unsigned requester", reason, more)
        self.store.outbox_put(self.topics.log(self.name, tid), json.dumps(event).encode())
        self.outbox.wake()
        return True

    async def _reply(self, client: str, reply: Reply) -> None:
        topic = self.topics.replies(client)
        try:
            await self._publish(topic, self._signed_reply(reply), 1, False)
        except ConnectionError:
            pass
        except MessageTooLarge as exc:
            # an answer the broker would throw this agent out for (hundreds of transfers listed through a broker
            # with a small maximum): say so, rather than leave the command waiting for its timeout
            log.error("%s; the reply to %s was not sent", exc, client)
            refusal = Reply(request_id=reply.request_id, ok=False, result_code=results.COMMAND_FAILED,
                            message=f"agent {self.name}'s answer does not fit through the broker: {exc}; ask for "
                                    f"less (one transfer: fte-show-transfer ID) or raise the broker's maximum "
                                    f"message size (max_packet_size, max_payload)")
            try:
                await self._publish(topic, self._signed_reply(refusal), 1, False)
            except (ConnectionError, MessageTooLarge):
                pass

    def _signed_reply(self, reply: Reply) -> bytes:
        """A reply the client can tell from a forgery: signed by this agent's key, bound to the agent (the
        signed body names the request_id), agent.provenance."""
        return provenance.sign_payload(dump(reply), provenance.REPLY, self.name, self.identity)

    async def _execute(self, cmd: Any) -> dict[str, Any]:
        if isinstance(cmd, Ping):
            return {"agent": self.name, "status": self.status, "time": utc_now(), "version": __version__}
        if isinstance(cmd, CreateTransfer):
            return await self._create_transfer(cmd)
        if isinstance(cmd, CancelTransfer):
            return await self._cancel(cmd.transfer_id)
        if isinstance(cmd, QueryTransfer):
            return self._query(cmd.transfer_id, files=True)
        if isinstance(cmd, ListTransfers):
            # the most recent ones: a reply stays far below the clients' size limit, however long the history
            recs = list(self.store.transfers(files=False))[-LIST_LIMIT:]
            return {"transfers": [self._query(r.transfer_id, r.role) for r in recs]}
        if isinstance(cmd, StopAgent):
            return {"agent": self.name, "status": AgentState.STOPPING}
        if isinstance(cmd, (CreateMonitor, MonitorCommand, ListMonitors)):
            return await self._monitor_command(cmd)
        if isinstance(cmd, CreateSchedule):
            if cmd.spec.source_agent != self.name:
                raise CommandRefused(f"this is agent {self.name}, not the source agent {cmd.spec.source_agent}")
            try:
                return self.scheduler.create(cmd)
            except ScheduleError as exc:
                raise CommandRefused(str(exc)) from None
        if isinstance(cmd, DeleteSchedule):
            if not self.scheduler.delete(cmd.schedule_id):
                raise CommandRefused(f"agent {self.name} has no schedule {cmd.schedule_id}")
            return {"schedule_id": cmd.schedule_id, "state": "deleted"}
        if isinstance(cmd, ListSchedules):
            return {"schedules": self.scheduler.listing()}
        raise CommandRefused(f"unsupported command {type(cmd).__name__}")

    async def _create_transfer(self, cmd: CreateTransfer) -> dict[str, Any]:
        return await self.start_transfer(cmd.spec, cmd.transfer_id, cmd.sent_at, originator=cmd.requester)

    async def start_transfer(self, spec: TransferSpec, tid: str | None = None, sent_at: str | None = None,
                             originator: str | None = None) -> dict[str, Any]:
        """Validate and start a transfer this agent is the source of (from a command, a monitor, a schedule)."""
        if self.stopping.is_set():
            raise CommandRefused(f"agent {self.name} is stopping and accepts no new transfers")
        if spec.source_agent != self.name:
            raise CommandRefused(f"this is agent {self.name}, not the source agent {spec.source_agent}")
        tid = tid or new_transfer_id()
        if self.store.load_transfer(tid, "source", files=False) is not None:
            return {"transfer_id": tid, "duplicate": True}  # a resubmission after a lost reply
        if self.settings.maxSourceTransfers == 0:
            raise CommandRefused(f"agent {self.name} does not send files (maxSourceTransfers=0)", 51)
        if len(self.sources) >= self.settings.maxSourceTransfers + self.settings.maxQueuedTransfers:
            raise CommandRefused(f"agent {self.name} has too many transfers "
                                 f"(maxSourceTransfers + maxQueuedTransfers = "
                                 f"{self.settings.maxSourceTransfers + self.settings.maxQueuedTransfers}); retry later")
        if spec.destination_agent not in self.peers:
            # its retained status, on its own topic: the <prefix>/Agents/+ subscription may never get it
            self._watch_peer(spec.destination_agent)
            try:
                await asyncio.wait_for(self._wait_peer(spec.destination_agent), timeout=PEER_WAIT)
            except asyncio.TimeoutError:
                if spec.destination_agent in self._untrusted_peers:
                    raise CommandRefused(
                        f"destination agent {spec.destination_agent!r} is on the broker, but agent {self.name} does "
                        f"not trust its key (its status cannot be verified); trust it with: fte key trust "
                        f"{self.name} {agent_requester(spec.destination_agent)} KEY -p transfer", results.FAILED) \
                        from None
                raise CommandRefused(
                    f"destination agent {spec.destination_agent!r} is not known on this broker (no status on "
                    f"{self.topics.agent_status(spec.destination_agent)}); check the name with fte-list-agents",
                    results.FAILED) from None
        try:
            rt = effective_recovery_timeout(spec.recovery_timeout, self.settings.transferRecoveryTimeout)
        except ValueError as exc:
            raise CommandRefused(str(exc)) from None
        files = self._resolve_sources(spec)
        header = {"source_agent": self.name, "destination_agent": spec.destination_agent, "exist": spec.exist,
                  "disposition": spec.disposition, "checksum": spec.checksum, "job_name": spec.job_name,
                  "metadata": dict(spec.metadata), "recovery_timeout_requested": spec.recovery_timeout,
                  "requested_at": sent_at, "originator": originator}
        kx_private, kx_public = new_ephemeral()  # our half of the transfer key exchange (agent.binding)
        header.update(kx_private=base64.b64encode(kx_private).decode(), kx_public=kx_public)
        rec = TransferRecord(tid, "source", S.QUEUED.value, spec.destination_agent, header, recovery_timeout=rt,
                             files=files)
        self.store.save_transfer(rec)
        self.tlog.emit(rec, "started", recovery_timeout=rt, originator=originator,
                       files=[{"index": f.index, "source": f.source, "destination": f.destination, "size": f.size}
                              for f in files],
                       message=f"transfer of {len(files)} file(s), {sum(f.size for f in files)} bytes, "
                               f"from {self.name} to {spec.destination_agent}")
        session = SourceTransfer(self.ctx, rec)
        self.sources[tid] = session
        self.source_tasks[tid] = asyncio.create_task(self._run_source(session))
        self._status_dirty.set()
        return {"transfer_id": tid, "files": len(files), "bytes": sum(f.size for f in files),
                "recovery_timeout": rt}

    # ------------------------------------------------------------------ monitors

    async def _monitor_command(self, cmd: Any) -> dict[str, Any]:
        if isinstance(cmd, ListMonitors):
            return {"monitors": [self._monitor_view(n, sp, st) for n, sp, st, _ in self.store.monitors()]}
        if isinstance(cmd, CreateMonitor):
            spec = cmd.monitor
            if spec.agent != self.name:
                raise CommandRefused(f"monitor for agent {spec.agent} sent to agent {self.name}",
                                     T.MONITOR_TASK_SOURCE_AGENT_INVALID)
            existing = {n for n, *_ in self.store.monitors()}
            if spec.name in existing and not cmd.replace:
                raise CommandRefused(f"agent {self.name} already has a monitor {spec.name} (use -f to replace it)",
                                     T.MONITOR_ALREADY_PRESENT)
            try:
                root = self.sandbox.resolve(spec.directory, write=False)
            except SandboxError as exc:
                raise CommandRefused(f"monitored directory refused: {exc}", T.MONITOR_RESOURCE_DENIED) from None
            if not root.is_dir():
                raise CommandRefused(f"{spec.directory} is not a directory on agent {self.name}",
                                     T.MONITOR_RESOURCE_INCORRECT)
            try:
                check_task(spec)
            except MonitorError as exc:
                raise CommandRefused(str(exc), exc.code) from None
            self._stop_monitor_task(spec.name)
            self.store.save_monitor(spec.name, json.loads(spec.model_dump_json()), "started", cmd.requester)
            self._start_monitor(spec, {})
            self._monitor_event(spec.name, "created", {"message": f"monitor {spec.name} created on {root}"})
            return {"monitor": spec.name, "state": "started"}
        rows = {n: (sp, st) for n, sp, st, _ in self.store.monitors()}
        if cmd.name not in rows:
            raise CommandRefused(f"agent {self.name} has no monitor {cmd.name}", T.MONITOR_MISSING)
        spec = MonitorSpec.model_validate(rows[cmd.name][0])
        if cmd.kind == "delete_monitor":
            self._stop_monitor_task(cmd.name)
            self.store.delete_monitor(cmd.name)
            self._retain(self.topics.monitors(self.name, cmd.name), b"")
            self._monitor_event(cmd.name, "deleted", {"message": f"monitor {cmd.name} deleted"})
            return {"monitor": cmd.name, "state": "deleted"}
        if cmd.kind == "stop_monitor":
            self._stop_monitor_task(cmd.name)
            self.store.set_monitor_state(cmd.name, "stopped")
            self._publish_monitor(spec, "stopped")
            return {"monitor": cmd.name, "state": "stopped"}
        self.store.set_monitor_state(cmd.name, "started")
        memory = next(m for n, _, _, m in self.store.monitors() if n == cmd.name)
        if cmd.name not in self.monitors:
            self._start_monitor(spec, memory)
        return {"monitor": cmd.name, "state": "started"}

    def _start_monitor(self, spec: MonitorSpec, memory: dict[str, Any]) -> None:
        root = str(self.sandbox.resolve(spec.directory, write=False))

        async def submit(task: dict[str, Any], origin: str) -> str:
            out = await self.start_transfer(TransferSpec.model_validate(task), originator=origin)
            return str(out["transfer_id"])

        runner = MonitorRunner(spec, root, T.MonitorMemory.from_json(memory), submit,
                               lambda action, fields: self._monitor_event(spec.name, action, fields),
                               lambda mem: self.store.save_monitor_memory(spec.name, mem.to_json()))
        self.monitors[spec.name] = (runner, asyncio.create_task(runner.run(), name=f"monitor-{spec.name}"))
        self._publish_monitor(spec, "started")

    def _stop_monitor_task(self, name: str) -> None:
        entry = self.monitors.pop(name, None)
        if entry is not None:
            entry[1].cancel()

    def _monitor_view(self, name: str, spec: dict[str, Any], state: str) -> dict[str, Any]:
        runner = self.monitors.get(name, (None,))[0]
        return {"name": name, "agent": self.name, "state": state, "spec": spec,
                "requester": self.store.monitor_requester(name),
                "polls": runner.polls if runner else 0, "last_poll": runner.last_poll if runner else None}

    def _publish_monitor(self, spec: MonitorSpec, state: str) -> None:
        view = self._monitor_view(spec.name, json.loads(spec.model_dump_json()), state)
        self._retain(self.topics.monitors(self.name, spec.name), json.dumps(view).encode())

    def _retain(self, topic: str, payload: bytes) -> None:
        self.store.outbox_put(topic, payload, retain=True)
        self.outbox.wake()

    def _monitor_event(self, name: str, action: str, fields: dict[str, Any]) -> None:
        event = {"monitor": name, "agent": self.name, "action": action, "time": utc_now(), **fields}
        if action == "failed":
            log.warning("monitor %s: %s", name, fields.get("message"))
        self.store.outbox_put(self.topics.monitor_log(self.name, name), json.dumps(event).encode())
        self.outbox.wake()

    async def _run_scheduler(self) -> None:
        # the first occurrences wait for the broker: a transfer needs to know its destination agent
        await self.link.up.wait()
        await self.scheduler.run()

    async def _scheduled_start(self, spec: TransferSpec, origin: str) -> str:
        return str((await self.start_transfer(spec, originator=origin))["transfer_id"])

    def _schedule_event(self, sid: str, action: str, fields: dict[str, Any]) -> None:
        ev = schedule_event(self.name, sid, action, fields)
        log.info("schedule %s %s: %s", sid, action, fields.get("message"))
        self.store.outbox_put(self.topics.log(self.name, sid), json.dumps(ev).encode())
        self.outbox.wake()

    def _state_counts(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for s in self.sources.values():
            key = f'state="{s.state.value}"'
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def _wait_peer(self, agent: str) -> None:
        while agent not in self.peers:
            self.peer_seen.clear()
            await self.peer_seen.wait()

    def _resolve_sources(self, spec: TransferSpec) -> list[FileRecord]:
        try:
            return self._walk_sources(spec)
        except SandboxError as exc:
            raise CommandRefused(f"source refused: {exc}") from None
        except OSError as exc:  # unreadable, vanished while walking, name too long...
            raise CommandRefused(f"cannot read the sources on agent {self.name}: {os_error_at(exc)}") from None

    def _walk_sources(self, spec: TransferSpec) -> list[FileRecord]:
        dirs = ConfinedDirs(self.sandbox)
        try:
            return self._walk_sources_in(spec, dirs)
        finally:
            dirs.close()

    def _walk_sources_in(self, spec: TransferSpec, dirs: ConfinedDirs) -> list[FileRecord]:
        pairs: list[tuple[str, str]] = []
        stats: dict[str, os.stat_result] = {}
        for item in spec.items:
            before = len(pairs)
            self._walk_item(item, pairs, dirs, stats)
            if item.destination_type == "file" and len(pairs) - before > 1:
                # one -df names one file (a monitor batch has one -df item per file, which is fine)
                raise CommandRefused(f"-df {item.destination} names one destination file but {item.source} is "
                                     f"{len(pairs) - before} files; use -dd DIR")
        seen: set[str] = set()
        for _, d in pairs:
            if d in seen:
                raise CommandRefused(f"two sources would land on the same destination file {d} (-df names one "
                                     "file: for several sources use -dd DIR)")
            seen.add(d)
        if not pairs:
            raise CommandRefused("the sources contain no files")
        files = []
        for i, (p, dest) in enumerate(pairs):
            st = stats.get(p) or (os.stat(p) if not self.sandbox.enabled else dirs.lstat(p))
            if st is None:
                raise FileNotFoundError(f"source {p!r} vanished while it was being listed")
            files.append(FileRecord(i, p, dest, st.st_size, st.st_mtime))
        return files

    def _walk_item(self, item: Any, pairs: list[tuple[str, str]], dirs: ConfinedDirs,
                   stats: dict[str, os.stat_result]) -> None:
        """Append (source path, destination) for every file one source specification names."""
        literal = os.path.expanduser(item.source)
        # a name that exists is itself, even if it contains wildcard characters ("report[final].csv")
        matches = sorted(glob.glob(literal)) if any(c in item.source for c in "*?[") \
            and not os.path.lexists(literal) else [literal]
        if not matches:
            raise CommandRefused(f"source {item.source!r} matches no file on agent {self.name}")
        for m in matches:
            try:
                real = self.sandbox.resolve(m, write=False)
            except SandboxError as exc:
                raise CommandRefused(f"source refused: {exc}") from None
            if real.is_dir():
                if item.destination_type != "directory":
                    raise CommandRefused(f"source {m!r} is a directory: give a destination directory with -dd")
                # `real` is resolved and no symbolic link is followed below it: each p is its own real path,
                # and "<destination>/<the directory's name>/<p below it>" its destination
                top = str(real)
                base = os.path.join(str(Path(item.destination)), real.name)
                for p in _regular_files(top, item.recursive, dirs, stats):
                    pairs.append((p, base + p[len(top):]))
            elif real.is_file():
                dest = item.destination if item.destination_type == "file" else str(Path(item.destination) / real.name)
                pairs.append((str(real), dest))
            else:
                raise CommandRefused(f"source {m!r} does not exist on agent {self.name}")

    async def _cancel(self, tid: str) -> dict[str, Any]:
        session = self.sources.get(tid)
        if session is not None:
            session.post("cancel", "cancelled by request (fte-cancel-transfer)")
            return {"transfer_id": tid, "role": "source", "state": "cancelling"}
        if tid in self.dests:
            # the source owns the outcome: ask it to cancel (it then tells us to clean up)
            dest = self.dests[tid]
            # passed on over the transfer's own (authenticated) control topic: this agent checked the requester
            await dest.request_recovery("cancelled by request (fte-cancel-transfer)", cancel=True)
            return {"transfer_id": tid, "role": "destination", "state": "cancel forwarded to " + dest.source_agent}
        rec = self.store.load_transfer(tid, "source") or self.store.load_transfer(tid, "destination")
        if rec is not None:
            raise CommandRefused(f"transfer {tid} already ended ({rec.state})", results.COMMAND_FAILED)
        raise CommandRefused(f"transfer {tid} is not known to agent {self.name}")

    def _query(self, tid: str, role: str | None = None, files: bool = False) -> dict[str, Any]:
        """What this agent knows of a transfer, from the live session or the state store."""
        live = None
        if role in (None, "source") and tid in self.sources:
            live = self.sources[tid].summary()
        elif role in (None, "destination") and tid in self.dests:
            live = self.dests[tid].summary()
        if live is not None:
            if files:
                rec = self.store.load_transfer(tid, live["role"])
                live["files"] = [_file_view(f) for f in rec.files] if rec else []
            return live
        for r in ([role] if role else ["source", "destination"]):
            rec = self.store.load_transfer(tid, r, files=files)
            if rec is not None:
                files_total, files_done, bytes_total, bytes_done = self.store.file_totals(tid, r)
                return {"transfer_id": tid, "role": r, "state": rec.state, "result_code": rec.result_code,
                        "source_agent": rec.header.get("source_agent"),
                        "destination_agent": rec.header.get("destination_agent"),
                        "bytes_total": bytes_total, "bytes_done": bytes_done,
                        "files_total": files_total, "files_done": files_done,
                        "recoveries": rec.recoveries, "last_stall": rec.last_stall,
                        "created": _iso(rec.created), "updated": _iso(rec.updated),
                        "job_name": rec.header.get("job_name"),
                        **({"files": [_file_view(f) for f in rec.files]} if files else {})}
        raise CommandRefused(f"transfer {tid} is not known to agent {self.name}")

    # ------------------------------------------------------------------ background duties

    async def _watchdog(self) -> None:
        """The destination's side of stall detection, and outcomes the peers have not confirmed."""
        ack_timeout = self.settings.transferAckTimeout / 1000.0
        last_resend = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, ack_timeout / 2))
            if not self.link.up.is_set():
                continue
            now = time.monotonic()
            for d in list(self.dests.values()):
                if d.active and now - d.last_activity > ack_timeout:
                    await d.request_recovery(f"no data from {d.source_agent} for {ack_timeout:g} s")
            if now - last_resend > COMPLETE_RETRY_INTERVAL:
                last_resend = now
                for rec in self.store.transfers("source", files=False):
                    if rec.state in TERMINAL and not rec.peer_confirmed and \
                            self._peer_status(rec.peer) in AGENT_RUNNING:
                        await send_complete(self.ctx, rec)

    def _status_payload(self, status: str) -> bytes:
        """The agent's retained status, signed (agent.provenance): clients and peers believe no other."""
        return provenance.sign_payload(self._status_body(status), provenance.STATUS, self.name, self.identity)

    def _status_body(self, status: str) -> bytes:
        return dump(AgentStatus(
            agent=self.name, status=status, time=utc_now(), version=__version__, host=socket.gethostname(),
            pid=os.getpid(), started_at=self.started_at,
            source_transfers={t: s.state.value for t, s in self.sources.items()},
            destination_transfers={t: d.rec.state for t, d in self.dests.items()},
            max_source_transfers=self.settings.maxSourceTransfers,
            max_destination_transfers=self.settings.maxDestinationTransfers,
            max_queued_transfers=self.settings.maxQueuedTransfers,
            # the will is made before the context exists: the configured chunk size until a probe ran
            chunk_size=self.ctx.chunk_size if hasattr(self, "ctx") else self.settings.agentChunkSize,
            broker_check=self.broker_check))

    async def _publish_status(self) -> None:
        if self.status in AGENT_RUNNING:
            self.status = AgentState.ACTIVE if self.sources or any(d.active for d in self.dests.values()) else AgentState.READY
        try:
            await self._publish(self.topics.agent_status(self.name), self._status_payload(self.status), 1, True)
        except ConnectionError:
            pass

    async def _status_publisher(self) -> None:
        """A change of status (READY/ACTIVE) is published at once; a change of transfer states alone at
        most every agentStatusPublishRateLimit seconds (the reference's rate limit)."""
        last = -1e9
        published = None
        while True:
            await self._status_dirty.wait()
            # forget finished destination sessions
            for tid in [t for t, d in self.dests.items() if not d.active]:
                self.dests.pop(tid, None)
            busy = bool(self.sources) or any(d.active for d in self.dests.values())
            wanted = (AgentState.ACTIVE if busy else AgentState.READY) if self.status in AGENT_RUNNING else self.status
            wait = last + self.settings.agentStatusPublishRateLimit - time.monotonic()
            if wanted == published and wait > 0 and not self._status_force:
                try:  # only transfer states changed: wait out the rate limit (or a status change)
                    await asyncio.wait_for(self._status_changed(published), wait)
                except asyncio.TimeoutError:
                    pass
            self._status_dirty.clear()
            self._status_force = False
            await self._publish_status()
            published, last = self.status, time.monotonic()
            await asyncio.sleep(STATUS_MIN_INTERVAL)

    async def _status_changed(self, published: str | None) -> None:
        while True:
            busy = bool(self.sources) or any(d.active for d in self.dests.values())
            wanted = (AgentState.ACTIVE if busy else AgentState.READY) if self.status in AGENT_RUNNING else self.status
            if wanted != published:
                return
            await asyncio.sleep(0.2)


def agent_dir_of(settings: Any) -> Path:
    """The agent's configuration directory (its trust file lives there)."""
    from .settings import agent_dir

    return agent_dir(settings.agentName)


def _file_view(f: FileRecord) -> dict[str, Any]:
    return {"index": f.index, "source": f.source, "destination": f.destination, "size": f.size,
            "bytes_done": f.size if f.status == FileStatus.DONE else f.offset, "status": f.status,
            "result_code": f.result_code, "supplement": f.supplement}


def _s(v: Any) -> str | None:
    return str(v) if v else None


def _peek(payload: bytes, key: str) -> str | None:
    try:
        v = json.loads(payload).get(key)
        return v if isinstance(v, str) and 0 < len(v) <= 64 and v.replace("-", "").replace("_", "").replace(".", "").isalnum() else None
    except Exception:
        return None
