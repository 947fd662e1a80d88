"""The broker probe: a self-check of the broker, run every time the agent's link (re)connects, before
transfers resume.

It answers two questions the agents cannot answer from MQTT 3.1.1 itself (a 3.1.1 CONNACK advertises no
limits):

1. **Topic fidelity.** Does a message come back on exactly the topic it was published on? A small probe is
   published at QoS 1 on ``<topicPrefix>/Agents/<agent>/probe/<random>`` to a subscription on
   ``<topicPrefix>/Agents/<agent>/probe/+``. RabbitMQ's MQTT plugin delivers ``SYSTEM.FTE/...`` as
   ``SYSTEM/FTE/...`` (a '.' becomes a level separator); NATS before 2.10 closes the connection on a topic
   with a '.'. Either way the agent cannot work with that ``topicPrefix``, and says so.
2. **Largest message.** Does a data message of the full size (``agentChunkSize`` + the chunk frame header
   + the MAC trailer, on the longest data topic) pass? If the broker closes the connection on it, twice
   (Mosquitto's ``max_packet_size``), or does not deliver it in time (RabbitMQ's ``max_message_size``), the
   chunk size is halved and probed again on a fresh connection, down to :data:`FLOOR`. The largest size that
   passes is the chunk size of this broker connection. A probe that loses the broker on the way proves
   nothing (an outage looks like a refusal): the agent then keeps the chunk size it has.

3. **Small messages held back.** Five round trips of a small message to an echo on a second connection,
   without quick ACKs, five with them (agent.quickack): a broker writing with Nagle's algorithm (Mosquitto without ``set_tcp_nodelay``) shows a
   step of ~40 ms that quick ACKs remove (agent.core.ack_delay). Agents then work on at full speed where
   TCP_QUICKACK exists, and the probe warns, because other clients of the broker do not.

The probe uses a short-lived connection of its own (client id ``fte-probe-<agent>-<random>``, no will, clean
session), never the agent's link: when the broker throws the probe out for an oversized message, nothing
is lost (no will published, no ``link_down`` to the transfers, no reconnection backoff of the link); the
probe simply connects again for the next size.

The decisions are pure functions (:func:`size_ladder`, :func:`next_probe_size`, :func:`effective_chunk_size`,
:func:`topic_finding`, ...), tested by tables in tests/unit/test_broker_probe.py; :class:`BrokerProbe` is
the IO around them. docs/brokers.md describes what the user sees.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import aiomqtt

from .core.ack_delay import SAMPLES as ACK_SAMPLES
from .core.ack_delay import delayed_ack_message, delayed_ack_pattern
from .core.errors import FteError
from .quickack import quick_acks
from .wire.binding import MAX_TRAILER_BYTES
from .link import BrokerAddress, _refused, make_client
from .names import MAX_AGENT_NAME_CHARS
from .wire.protocol import CHUNK_HEADER, Topics

log = logging.getLogger("fte.probe")

FLOOR = 16 * 1024
"""The smallest chunk size the probe lowers to (bytes). Below it, it stops and reports the broker unusable."""
TOPIC_WAIT = 3.0
"""Seconds the small topic probe may take to come back."""
SIZE_WAIT_PER_MIB = 0.25
"""Extra seconds a size probe may take per MiB of message (a 16 MiB probe through a slow broker)."""
BUDGET = 20.0
"""Seconds the whole probe may take; what is not probed by then is reported as not checked."""
LONGEST_AGENT_NAME = MAX_AGENT_NAME_CHARS
TRANSFER_ID_CHARS = 48  # agent.wire.protocol.new_transfer_id

# A logger of its own for the probe's MQTT client: the socket errors of a connection the broker closes on
# purpose are expected here, and must neither reach the agent's log as errors nor be taken by agent.link
# for the reason of a failed connect of the agent's own link.
_quiet = logging.getLogger("fte.probe.mqtt")
_quiet.setLevel(logging.CRITICAL)
_quiet.propagate = False
_quiet.addHandler(logging.NullHandler())


class Outcome(enum.Enum):
    """What happened to one probe message."""

    PASSED = "passed"  # it came back
    REFUSED = "refused"  # the broker closed the connection on it
    LOST = "lost"  # it did not come back in time
    UNKNOWN = "unknown"  # not tried: the probe's time budget was spent
    UNREACHABLE = "unreachable"  # not tried: the probe could not reach the broker (an outage, not a limit)


class TopicStatus(str, enum.Enum):
    OK = "ok"  # came back on exactly its topic
    CHANGED = "changed"  # came back on another topic
    REFUSED = "refused"  # the broker closed the connection on it
    NOT_DELIVERED = "not_delivered"  # did not come back in time
    NOT_CHECKED = "not_checked"  # the probe could not connect

    @property
    def is_error(self) -> bool:
        """The agent cannot work on this broker with this topicPrefix / agent name."""
        return self in (TopicStatus.CHANGED, TopicStatus.REFUSED)


# --------------------------------------------------------------------------- sizes (pure)


def size_ladder(configured: int, floor: int = FLOOR) -> list[int]:
    """The chunk sizes to try, largest first: ``configured``, halved until ``floor``, the floor itself
    last when the halving steps over it. A configured size at or below the floor is the only one."""
    if configured <= floor:
        return [configured]
    sizes = [configured]
    while sizes[-1] // 2 > floor:
        sizes.append(sizes[-1] // 2)
    sizes.append(floor)
    return sizes


def data_message_bytes(chunk_size: int) -> int:
    """The payload of the largest data message for ``chunk_size``: the chunk frame header (protocol
    ``encode_chunk``), the data and the longest MAC trailer of a bound transfer (binding ``ChunkSealer``)."""
    return CHUNK_HEADER.size + chunk_size + MAX_TRAILER_BYTES


def longest_data_topic(topics: Topics) -> int:
    """Bytes of the longest topic a data message is published on (``<prefix>/Data/<agent>/<transfer id>``)."""
    return len(topics.data("A" * LONGEST_AGENT_NAME, "0" * TRANSFER_ID_CHARS).encode())


def publish_packet_bytes(topic_bytes: int, payload_bytes: int, qos: int = 1) -> int:
    """Size of an MQTT 3.1.1 PUBLISH packet: what a broker's packet limit (Mosquitto ``max_packet_size``,
    EMQX ``mqtt.max_packet_size``) is compared with."""
    remaining = 2 + topic_bytes + (2 if qos else 0) + payload_bytes
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + length_bytes + remaining


def probe_payload_bytes(chunk_size: int, probe_topic_bytes: int, data_topic_bytes: int) -> int:
    """Payload of a size probe on the probe topic whose PUBLISH packet is at least as big as the largest
    data message of ``chunk_size`` on the longest data topic: the probe passes only if chunks do."""
    return data_message_bytes(chunk_size) + max(0, data_topic_bytes - probe_topic_bytes)


def size_wait(payload_bytes: int, base: float = TOPIC_WAIT) -> float:
    """Seconds a size probe of ``payload_bytes`` may take to come back."""
    return base + SIZE_WAIT_PER_MIB * payload_bytes / (1024 * 1024)


def next_probe_size(ladder: Sequence[int], outcomes: Sequence[tuple[int, Outcome]]) -> int | None:
    """The next chunk size to probe after ``outcomes`` (in the order tried), or None when the probe is done:
    after a size passed, after one could not be tried, or when the ladder is exhausted.

    A size the broker closed the connection on is tried once more on a fresh connection before the probe
    goes down (a connection dropped for another reason must not lower the chunk size; a second connect
    costs milliseconds). A size that was not delivered in time is not: that wait costs seconds."""
    if not ladder:
        return None
    if not outcomes:
        return ladder[0]
    size, outcome = outcomes[-1]
    if outcome in (Outcome.PASSED, Outcome.UNKNOWN, Outcome.UNREACHABLE):
        return None
    if outcome is Outcome.REFUSED and sum(1 for s, o in outcomes if s == size and o is Outcome.REFUSED) == 1:
        return size
    smaller = [s for s in ladder if s < size]
    return smaller[0] if smaller else None


def failed_sizes(outcomes: Sequence[tuple[int, Outcome]]) -> list[int]:
    """The sizes shown not to pass: not delivered in time, or the connection closed on them twice."""
    refused = [s for s, o in outcomes if o is Outcome.REFUSED]
    return sorted({s for s, o in outcomes if o is Outcome.LOST} | {s for s in refused if refused.count(s) > 1})


def effective_chunk_size(ladder: Sequence[int], outcomes: Sequence[tuple[int, Outcome]]) -> int | None:
    """The chunk size to use on this broker connection, or None when the outcomes prove nothing (then the
    agent keeps the one it has): nothing tried, nothing shown to fail, or the probe lost the broker on the
    way (an outage looks like a refusal; the next connection probes again).

    Else the largest size that passed; with none passed, the largest size below every one that failed (the
    time budget ran out before it was tried: the best guess), or the smallest of the ladder when all failed."""
    if not outcomes or outcomes[-1][1] is Outcome.UNREACHABLE:
        return None
    passed = [s for s, o in outcomes if o is Outcome.PASSED]
    if passed:
        return max(passed)
    failed = failed_sizes(outcomes)
    if not failed:
        return None
    below = [s for s in ladder if s < min(failed)]
    return below[0] if below else ladder[-1]


# --------------------------------------------------------------------------- topics (pure)


_DOT_FIX = ("use topicPrefix=SYSTEM_FTE (FTE_TOPIC_PREFIX=SYSTEM_FTE for the commands) and agent names "
            "without '.'; see docs/brokers.md")


def topic_finding(published: str, delivered: str | None, closed: bool, waited: float = TOPIC_WAIT,
                  subscription_refused: bool = False) -> tuple[TopicStatus, str | None]:
    """What the topic probe shows: the status, and for anything but OK one line saying which broker
    behaviour was seen and what to do.

    ``delivered`` is the topic the probe came back on (None if it did not), ``closed`` whether the broker
    closed the connection before it came back, ``subscription_refused`` whether it refused the subscription
    to the probe topics (a SUBACK failure)."""
    if delivered == published:
        return TopicStatus.OK, None
    if delivered is not None:
        if "." in published and delivered == published.replace(".", "/"):
            why = ("it turns a '.' inside a topic level into a level separator, as RabbitMQ's MQTT plugin does, "
                   "so no message under this topicPrefix or agent name reaches its agent")
        else:
            why = "the agents rely on topics coming back as published"
        return TopicStatus.CHANGED, (f"the broker delivered a message published on {published} on another "
                                     f"topic, {delivered}: {why}; {_DOT_FIX}")
    refused = "refused the subscription to its topic and " if subscription_refused else ""
    if closed:
        if "." in published:
            return TopicStatus.REFUSED, (
                f"the broker {refused}closed the connection on the topic {published}, which has a '.' in a level, "
                f"as NATS before 2.10 does ('.' is its subject separator): the agent cannot work with these topics "
                f"(the broker drops its connections; it keeps retrying); {_DOT_FIX}")
        return TopicStatus.REFUSED, (
            f"the broker {refused}closed the connection on a small QoS 1 message on {published}: check the "
            "broker's log and its ACL or topic rules; set brokerProbe=false to skip this check")
    what = "refused the subscription to" if subscription_refused else "did not deliver within " + f"{waited:g} s"
    return TopicStatus.NOT_DELIVERED, (
        f"the broker {what} a QoS 1 message published on {published}, probably by its ACL: the broker's topics "
        "and message size are not checked (grant each agent read and write on "
        "<topicPrefix>/Agents/<agent>/probe/+, docs/security.md, or set brokerProbe=false to skip the check)")


def lowered_message(refused_bytes: int, configured: int, effective: int) -> str:
    """The WARNING when the chunk size was lowered for this broker connection."""
    return (f"broker refused a {refused_bytes}-byte message; agentChunkSize lowered from {configured} to "
            f"{effective} for this broker connection; raise the broker's max_packet_size/max_payload or set "
            f"agentChunkSize={effective}")


def unusable_message(refused_bytes: int, effective: int) -> str:
    """The ERROR when not even the smallest size probed passes."""
    return (f"broker refused every probe message down to a {refused_bytes}-byte one (chunk size {effective}): "
            f"transfers cannot pass through it; raise the broker's max_packet_size/max_payload (or set a smaller "
            f"agentChunkSize, 1024 at least)")


# --------------------------------------------------------------------------- the report


@dataclass
class ProbeReport:
    configured: int  # agentChunkSize
    topic: str  # the probe topic
    topic_status: TopicStatus = TopicStatus.NOT_CHECKED
    topic_message: str | None = None
    outcomes: list[tuple[int, Outcome]] = field(default_factory=list)
    packets: dict[int, int] = field(default_factory=dict)  # chunk size -> PUBLISH packet bytes of its probe
    ladder: list[int] = field(default_factory=list)
    seconds: float = 0.0
    # round trips (ms) of a small message on the probe's connection without and with quick ACKs (agent.quickack)
    round_trips_plain: list[float] = field(default_factory=list)
    round_trips_quick: list[float] = field(default_factory=list)

    @property
    def delayed_acks(self) -> bool:
        """The broker holds small messages back for the client's delayed ACK (agent.core.ack_delay)."""
        return delayed_ack_pattern(self.round_trips_plain, self.round_trips_quick)

    @property
    def sized(self) -> bool:
        """The size probe reached a verdict (see effective_chunk_size)."""
        return effective_chunk_size(self.ladder, self.outcomes) is not None

    @property
    def chunk_size(self) -> int:
        """The chunk size this broker connection should use (the configured one when not sized)."""
        size = effective_chunk_size(self.ladder, self.outcomes)
        return self.configured if size is None else size

    @property
    def refused_bytes(self) -> int | None:
        """PUBLISH packet bytes of the smallest probe that did not pass, if any."""
        failed = failed_sizes(self.outcomes)
        return self.packets.get(min(failed)) if failed else None

    @property
    def passed_bytes(self) -> int | None:
        passed = [s for s, o in self.outcomes if o is Outcome.PASSED]
        return self.packets.get(max(passed)) if passed else None

    def size_finding(self) -> tuple[str, str] | None:
        """("warning", one line) when the chunk size is lowered, ("error", one line) when no size passes;
        None when the configured size passes or nothing was learnt."""
        if not self.sized:
            return None
        size = self.chunk_size
        refused = self.refused_bytes or 0
        if self.passed_bytes is None and self.outcomes[-1][1] is not Outcome.UNKNOWN:
            return "error", unusable_message(refused, size)
        if size >= self.configured:
            return None
        if self.passed_bytes is not None:
            return "warning", lowered_message(refused, self.configured, size)
        return "warning", (lowered_message(refused, self.configured, size) + f" (chunk size {size} itself is not "
                           f"checked: the probe ran out of time)")

    def summary(self) -> str:
        """One line for the agent's retained status (``broker_check``): a verdict word (ok, warning, error,
        not checked), then what was found."""
        parts: list[str] = []
        verdicts: list[str] = []
        if self.topic_status is TopicStatus.OK:
            parts.append("topics come back as published")
        elif self.topic_message:
            parts.append(self.topic_message)
            verdicts.append("error" if self.topic_status.is_error else "not checked")
        finding = self.size_finding()
        if finding is not None:
            verdicts.append(finding[0])
            parts.append(finding[1])
        elif self.sized:
            parts.append(f"a {self.passed_bytes}-byte message (chunk size {self.chunk_size}) passes")
        elif self.outcomes:
            parts.append("the message size is not checked (the probe lost the broker or ran out of time)")
        if self.delayed_acks:
            verdicts.append("warning")
            parts.append(delayed_ack_message(self.round_trips_plain, self.round_trips_quick))
        verdict = next((v for v in ("error", "warning", "not checked") if v in verdicts), "ok")
        return f"{verdict}: " + "; ".join(parts)


# --------------------------------------------------------------------------- the probe (IO)


class _Closed(FteError):
    """The broker closed the probe's connection."""


class BrokerProbe:
    """One run of the probe against ``addr``. ``run()`` never raises for a broker problem: what could not
    be checked is in the report."""

    def __init__(self, addr: BrokerAddress, agent: str, topics: Topics, chunk_size: int, *,
                 floor: int = FLOOR, topic_wait: float = TOPIC_WAIT, budget: float = BUDGET, sizes: bool = True,
                 round_trips: bool = True, client_factory: Callable[..., aiomqtt.Client] = make_client) -> None:
        self.addr = addr
        self.agent = agent
        self.topics = topics
        self.configured = chunk_size
        self.floor = floor
        self.topic_wait = topic_wait
        self.budget = budget
        self.sizes = sizes  # False: the topic check only
        self.round_trips = round_trips  # False: no delayed-ACK measurement (done once per broker already)
        self._client_factory = client_factory
        self._token = secrets.token_hex(8)
        self.topic = topics.probe(agent, self._token)
        self._seq = 0

    async def run(self) -> ProbeReport:
        started = time.monotonic()
        deadline = started + self.budget
        report = ProbeReport(self.configured, self.topic, ladder=size_ladder(self.configured, self.floor))
        data_topic = longest_data_topic(self.topics)
        topic_bytes = len(self.topic.encode())
        topic_checked = False
        while True:
            trying: int | None = None  # the chunk size whose probe is in flight
            refused = False  # the broker refused the session's subscription
            size = next_probe_size(report.ladder, report.outcomes)
            if topic_checked and size is None:
                break
            if time.monotonic() >= deadline:
                if topic_checked and size is not None:
                    report.outcomes.append((size, Outcome.UNKNOWN))
                break
            try:
                async with self._session() as session:
                    refused = session.refused
                    if not topic_checked:
                        delivered = await session.round_trip(self.topic, self._payload(0), self.topic_wait)
                        topic_checked = True
                        report.topic_status, report.topic_message = topic_finding(
                            self.topic, delivered, False, self.topic_wait, session.refused)
                        if delivered is None or not self.sizes:
                            break  # (nothing comes back: a size probe could conclude nothing)
                        if self.round_trips:
                            await self._round_trips(session, report, deadline)
                    while (size := next_probe_size(report.ladder, report.outcomes)) is not None:
                        payload = probe_payload_bytes(size, topic_bytes, data_topic)
                        report.packets[size] = publish_packet_bytes(topic_bytes, payload)
                        left = deadline - time.monotonic()
                        if left <= 0:
                            report.outcomes.append((size, Outcome.UNKNOWN))
                            break
                        trying, wait = size, size_wait(payload, self.topic_wait)
                        came = await session.round_trip(self.topic, self._payload(payload), min(wait, left))
                        trying = None
                        if came is None and left < wait:  # cut short by the budget: not a verdict
                            report.outcomes.append((size, Outcome.UNKNOWN))
                            break
                        report.outcomes.append((size, Outcome.PASSED if came is not None else Outcome.LOST))
                        if came is None:
                            break  # a broker may stay stuck on a connection that lost a message: a fresh one
            except _Closed:
                if not topic_checked:
                    report.topic_status, report.topic_message = topic_finding(self.topic, None, True, self.topic_wait,
                                                                              refused)
                    break
                if trying is None:  # dropped between probes (an outage?): nothing learnt, stop here
                    if size is not None:
                        report.outcomes.append((size, Outcome.UNREACHABLE))
                    break
                report.outcomes.append((trying, Outcome.REFUSED))
                continue  # connect again for the next size
            except _SubscriptionRefused as exc:
                if not topic_checked:
                    report.topic_status = TopicStatus.NOT_DELIVERED
                    report.topic_message = (f"{exc}: the broker (or its ACL) does not let the agent check its "
                                            "topics and message size (grant each agent read and write on "
                                            "<topicPrefix>/Agents/<agent>/probe/+, docs/security.md); set "
                                            "brokerProbe=false to skip the check")
                elif size is not None:
                    report.outcomes.append((size, Outcome.UNREACHABLE))
                break
            except (aiomqtt.MqttError, OSError) as exc:  # could not connect
                if not topic_checked:
                    report.topic_status = TopicStatus.NOT_CHECKED
                    report.topic_message = (f"the broker probe could not connect to {self.addr.url}: {exc}; topics "
                                            "and message size not checked (set brokerProbe=false if the broker "
                                            "refuses a second connection of the agent)")
                elif size is not None:
                    report.outcomes.append((trying or size, Outcome.UNREACHABLE))
                break
        report.seconds = time.monotonic() - started
        log.debug("broker probe in %.2f s: topics %s, sizes %s", report.seconds, report.topic_status.value,
                  [(size, outcome.value) for size, outcome in report.outcomes])
        return report

    async def _round_trips(self, session: "_Session", report: ProbeReport, deadline: float) -> None:
        """ACK_SAMPLES round trips of a small QoS 1 message to an echo on a second connection without quick
        ACKs on the first, then as many with them (agent.core.ack_delay). The broker's PUBACK to the first and
        then the echo are two small writes to it: the pattern of a source's last chunk's PUBACK and the ack of
        the destination that follows it."""
        del session  # the measured pair are connections of their own, subscribed to nothing else
        ping, back = self.topics.probe(self.agent, self._token + "p"), self.topics.probe(self.agent, self._token + "b")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            async with self._session(back) as first, self._session(ping) as echo:
                async def answer() -> None:
                    while True:
                        item = await echo.inbox.get()
                        if isinstance(item, BaseException):
                            return
                        await echo.client.publish(back, bytes(item.payload), qos=1)  # type: ignore[arg-type]

                answering = asyncio.create_task(answer(), name="broker-probe-echo")
                try:
                    for quick, samples in ((False, report.round_trips_plain), (True, report.round_trips_quick)):
                        quick_acks(first.client, quick)
                        for _ in range(ACK_SAMPLES):
                            left = deadline - time.monotonic()
                            if left <= 0:
                                return
                            payload = self._payload(0)
                            t0 = time.perf_counter()
                            publish = asyncio.ensure_future(first.client.publish(ping, payload, qos=1))
                            if await first._until(publish, payload[:_tag_len(payload)], min(self.topic_wait, left)) \
                                    is None:
                                report.round_trips_plain.clear()  # lost: conclude nothing
                                return
                            samples.append((time.perf_counter() - t0) * 1000)
                finally:
                    answering.cancel()
        except (aiomqtt.MqttError, OSError, _Closed, _SubscriptionRefused, asyncio.TimeoutError):
            report.round_trips_plain.clear()

    def _payload(self, size: int) -> bytes:
        """A probe message: a tag unique to this message, padded to ``size`` bytes."""
        self._seq += 1
        tag = f"fte-probe {self._token} {self._seq} ".encode()
        return tag + b"\0" * max(0, size - len(tag))

    def _session(self, subscription: str | None = None) -> "_Session":
        client = self._client_factory(self.addr, f"fte-probe-{self.agent}-{secrets.token_hex(3)}",
                                      keepalive=30, logger=_quiet)
        return _Session(client, subscription or self.topics.probe(self.agent, "+"))


class _SubscriptionRefused(FteError):
    """The broker refused (SUBACK failure) or never acknowledged the probe's subscription."""


class _Session:
    """One probe connection: subscribed to the probe filter, every message it gets in a queue."""

    def __init__(self, client: aiomqtt.Client, subscription: str) -> None:
        self.client = client
        self.subscription = subscription
        self.inbox: asyncio.Queue[aiomqtt.Message | BaseException] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.refused = False  # the broker refused the subscription

    async def __aenter__(self) -> "_Session":
        await self.client.__aenter__()
        try:
            self._reader = asyncio.create_task(self._read(), name="broker-probe-reader")
            subscribe = asyncio.ensure_future(self.client.subscribe(self.subscription, qos=1))
            await self._until(subscribe, None, TOPIC_WAIT)
            # a refused subscription (SUBACK failure) is not the end: the probe message then shows whether the
            # broker also closes the connection on the topic (NATS 2.9 on a '.') or just drops it (an ACL)
            self.refused = _refused(subscribe.result())
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        try:
            await asyncio.wait_for(self.client.__aexit__(None, None, None), 5)
        except (aiomqtt.MqttError, asyncio.TimeoutError, OSError):
            pass

    async def _read(self) -> None:
        try:
            async for message in self.client.messages:
                self.inbox.put_nowait(message)
        except aiomqtt.MqttError as exc:  # the broker closed the connection
            self.inbox.put_nowait(exc)

    async def _failed(self, exc: BaseException) -> BaseException:
        """What a failed publish or subscribe means: _Closed if the connection dropped (the reader ends
        with it, possibly a moment later), else the error itself."""
        if self._reader is not None and not self._reader.done():
            await asyncio.wait({self._reader}, timeout=0.5)
        if self._reader is not None and self._reader.done():
            return _Closed(str(exc))
        if isinstance(exc, aiomqtt.MqttError) and _timed_out(exc):
            return _SubscriptionRefused(f"the broker did not acknowledge the subscription to {self.subscription}")
        return exc

    async def _until(self, op: "asyncio.Future[object]", tag: bytes | None, timeout: float) -> str | None:
        """Wait for ``op`` (a publish or subscribe) and, with a ``tag``, for the message that starts with it:
        its topic, or None when it does not come within ``timeout`` s. Raises _Closed when the connection
        drops."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        pending_get: asyncio.Task[aiomqtt.Message | BaseException] | None = None
        try:
            while True:
                if op.done() and not op.cancelled() and op.exception() is not None:
                    raise await self._failed(op.exception())  # type: ignore[arg-type]
                if tag is None and op.done():
                    return None
                left = end - loop.time()
                if left <= 0:
                    if tag is None:
                        raise _SubscriptionRefused(f"the broker did not acknowledge the subscription to "
                                                   f"{self.subscription} within {timeout:g} s")
                    return None
                if pending_get is None:
                    pending_get = asyncio.ensure_future(self.inbox.get())
                waiting: set[asyncio.Future[object]] = {pending_get}  # type: ignore[arg-type]
                if not op.done():
                    waiting.add(op)
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if pending_get.done():
                    item = pending_get.result()
                    pending_get = None
                    if isinstance(item, BaseException):
                        raise _Closed(str(item))
                    if tag is not None and bytes(item.payload[:len(tag)]) == tag:  # type: ignore[index]
                        return str(item.topic)
        finally:
            if pending_get is not None:
                pending_get.cancel()
            if not op.done():
                op.cancel()
            elif not op.cancelled():
                op.exception()  # retrieved: never "exception was never retrieved"

    async def round_trip(self, topic: str, payload: bytes, timeout: float) -> str | None:
        """Publish ``payload`` (a :meth:`BrokerProbe._payload`) at QoS 1 and wait for it on the subscription:
        the topic it came back on, or None if it did not within ``timeout`` s. Raises _Closed when the broker
        closes the connection."""
        publish = asyncio.ensure_future(self.client.publish(topic, payload, qos=1, timeout=timeout + 5))
        return await self._until(publish, payload[:_tag_len(payload)], timeout)


def _timed_out(exc: aiomqtt.MqttError) -> bool:
    return "timed out" in str(exc).lower()


def _tag_len(payload: bytes) -> int:
    """Length of the tag at the start of a probe payload (``fte-probe <token> <seq> ``)."""
    pos = -1
    for _ in range(3):
        pos = payload.index(b" ", pos + 1)
    return pos + 1
