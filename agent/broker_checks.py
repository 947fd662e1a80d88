"""The broker checks of one agent, and what they found, as declared features of its broker.

A broker's quirks are not code paths of the agent: the checks fill in one `BrokerFeatures` (rclone's
`Features`), and the parts that depend on a quirk read it there (the link its largest packet, the sessions
their chunk size, the agent's status the verdict line). A new quirk the probe can find is a field here,
set in `BrokerChecks.apply`, and read where it matters.

Two checks, both run by agent.broker_probe on a connection of their own:
- the probe, on every connection of the agent's link before it is up (so before any transfer resumes): are
  topics delivered as published, and which chunk size passes?
- the diagnosis, after a connection attempt that timed out: a broker that refuses the agent's topics may
  refuse its CONNECT already (NATS 2.9 drops one whose last will topic has a '.', without a CONNACK). The
  topic check then runs in the background, without a will, so that the log says why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Callable

from .broker_probe import BUDGET as PROBE_BUDGET
from .broker_probe import BrokerProbe, ProbeReport, TopicStatus
from .core.ack_delay import delayed_ack_message
from .link import BrokerAddress
from .wire.protocol import Topics

log = logging.getLogger("fte.agent")

# the probe bounds itself (PROBE_BUDGET); this only guards against a bug in it
_PROBE_GUARD = PROBE_BUDGET + 15


@dataclass(frozen=True)
class BrokerFeatures:
    """What this agent knows of its broker, as far as the checks found (defaults: nothing found)."""

    chunk_size: int
    """The chunk size of this broker connection: agentChunkSize, or the largest size found to pass."""
    max_packet: int | None = None
    """The largest PUBLISH packet known to pass when a bigger one was refused (else None: no limit known);
    the link refuses bigger messages at once (agent.link.MessageTooLarge) instead of losing its connection."""
    topics: TopicStatus = TopicStatus.NOT_CHECKED
    """Whether topics come back as published (RabbitMQ turns a '.' into a level; NATS < 2.10 refuses one)."""
    delayed_acks: bool = False
    """The broker holds small messages back for the client's delayed ACK (Nagle's algorithm on its side: the
    probe's round trips, agent.core.ack_delay); the agent's quick ACKs (agent.quickack) work around it."""
    check: str | None = None
    """One line for the agent's retained status (`broker_check`): a verdict word, then what was found."""


class BrokerChecks:
    """`before_up` and `connection_failed` are the link's hooks; `features` is what they found, and
    `on_change` is called with every new finding (the agent hands it to the link and the sessions)."""

    def __init__(self, addr: BrokerAddress, agent: str, topics: Topics, configured_chunk_size: int, *,
                 enabled: bool, on_change: Callable[[BrokerFeatures], None],
                 probe: Callable[..., BrokerProbe] = BrokerProbe) -> None:
        self._addr = addr
        self._agent = agent
        self._topics = topics
        self._configured = configured_chunk_size
        self._enabled = enabled
        self._on_change = on_change
        self._probe = probe
        self.features = BrokerFeatures(configured_chunk_size)
        self._sizes: str | None = None  # the size finding last logged
        self._topic_logged: TopicStatus | None = None  # the topic finding last logged (None: none yet)
        self._diagnosis: asyncio.Task[None] | None = None
        self._probes = 0  # full probes started
        # brokers (URLs) whose delayed-ACK pattern was measured: once a broker, not on every reconnection (two
        # more connections and subscriptions each time, on a degraded cluster node that refuses some of them)
        self._acks_measured: set[str] = set()

    def use(self, addr: BrokerAddress) -> None:
        """Probe `addr` from now on: the broker of the list (agent.core.brokers) the link is connecting to."""
        self._addr = addr

    async def before_up(self) -> None:
        """The probe, on a connection of the link before it is up: topics, and the chunk size that passes."""
        if not self._enabled:
            self.features = replace(self.features, check="off (brokerProbe=false)")
            return
        self._probes += 1
        url = self._addr.url
        probe = self._probe(self._addr, self._agent, self._topics, self._configured,
                            **({"round_trips": False} if url in self._acks_measured else {}))
        try:
            report = await asyncio.wait_for(probe.run(), _PROBE_GUARD)
        except Exception as exc:  # never fatal: the agent works on as before the probe
            log.warning("the broker probe failed (%s); chunk size stays %d", str(exc) or type(exc).__name__,
                        self.features.chunk_size)
            return
        if report.round_trips_quick:
            self._acks_measured.add(url)
        self.apply(report)

    def connection_failed(self, exc: BaseException) -> None:
        """A connection attempt failed before the link was up. Only after one that timed out or that the broker
        closed before its CONNACK (NATS 2.9 closes on a will topic with a '.'), while no topic finding is known,
        and one at a time: not after a refused TCP connection, a TLS error or refused credentials (the check
        would fail the same way), and the link's reconnection policy is not delayed."""
        text = str(exc).lower()
        if not self._enabled or ("timed out" not in text and "closed before the broker answered" not in text) or \
                self._topic_logged not in (None, TopicStatus.NOT_CHECKED) or \
                (self._diagnosis is not None and not self._diagnosis.done()):
            return
        self._diagnosis = asyncio.create_task(self._diagnose(), name="broker-diagnosis")

    async def _diagnose(self) -> None:
        probes = self._probes
        probe = self._probe(self._addr, self._agent, self._topics, self._configured, sizes=False)
        try:
            report = await asyncio.wait_for(probe.run(), _PROBE_GUARD)
        except Exception as exc:
            log.debug("broker diagnosis failed: %s", exc)
            return
        # a finding, unless it could not reach the broker or a full probe ran meanwhile (it knows better)
        if report.topic_status is not TopicStatus.NOT_CHECKED and probes == self._probes:
            self.apply(report, quiet=True)

    def apply(self, report: ProbeReport, quiet: bool = False) -> BrokerFeatures:
        """The features `report` shows, logged once when they change (not on every reconnection)."""
        was = self.features
        if report.topic_status is not self._topic_logged and report.topic_message:
            (log.error if report.topic_status.is_error else log.warning)("broker check: %s", report.topic_message)
        self._topic_logged = report.topic_status
        features = replace(was, topics=report.topic_status, check=report.summary())
        if report.round_trips_quick:  # else nothing measured: keep what the last probe found
            if report.delayed_acks and not was.delayed_acks:
                log.warning("broker check: %s", delayed_ack_message(report.round_trips_plain,
                                                                     report.round_trips_quick))
            features = replace(features, delayed_acks=report.delayed_acks)
        if report.sized:  # else the probe learnt nothing about sizes: keep what the last one found
            finding = report.size_finding()
            if finding is not None and finding[1] != self._sizes:
                (log.error if finding[0] == "error" else log.warning)("%s", finding[1])
            elif finding is None and was.chunk_size != report.chunk_size:
                log.info("the broker passes %d-byte chunks again: chunk size back to agentChunkSize",
                         report.chunk_size)
            self._sizes = finding[1] if finding else None
            features = replace(features, chunk_size=report.chunk_size,
                               max_packet=report.passed_bytes if report.refused_bytes else None)
        self.features = features
        self._on_change(features)
        if not quiet:
            log.info("broker check in %.2f s: topics %s, chunk size %d", report.seconds, report.topic_status.value,
                     features.chunk_size)
        return features

    def close(self) -> None:
        if self._diagnosis is not None:
            self._diagnosis.cancel()
