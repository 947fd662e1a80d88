"""The audit logger: every log event on the broker into the history database (ops.history).

It subscribes to <prefix>/Log/+/# (transfers, monitors, schedules, refusals) with a durable MQTT session: a
fixed client id (`fte-logger-<host>` unless configured), clean session off, QoS 1. The broker keeps the
session while the logger is stopped and delivers what was published meanwhile when it comes back; an event
delivered twice is one row (ops.history is idempotent by event_id).

Every event's signature is checked as the CLI checks it (agent.wire.provenance against the agent keys this
user trusts, cli.trusted_agents): an event no trusted key signed for its topic is stored with verified false
and the reason, never as the agents' word. What is no event (too big, not a JSON object, off the log tree)
is dropped and counted, logged at most every `DROP_LOG_INTERVAL` seconds; nothing from the broker stops it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable

import aiomqtt
import pydantic_core

from agent.wire import provenance
from agent.wire.events import EventError, read_event
from agent.wire.protocol import Topics

from .history import History

log = logging.getLogger("fte.logger")

MAX_EVENT_BYTES = 64 * 1024 * 1024  # a completed event of ~300,000 files; bigger is dropped, and said
DROP_LOG_INTERVAL = 10.0
KEY_RELOAD_INTERVAL = 10.0  # a key trusted after the logger started is found within this
PRUNE_INTERVAL = 24 * 3600.0


def default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:40] or "host"
    return f"fte-logger-{host}"


class EventLogger:
    """Reads messages off the log tree and records them. `handle(topic, payload)` is the whole judgement (no
    broker): tests feed it directly; `run(stop)` is the connection around it."""

    def __init__(self, history: History, addr: Any, *, topics: Topics, home: Path, client_id: str | None = None,
                 keep_days: int | None = None, max_bytes: int = MAX_EVENT_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.history = history
        self.addr = addr
        self.topics = topics
        self.home = home
        self.client_id = client_id or default_client_id()
        self.keep_days = keep_days
        self.max_bytes = max_bytes
        self._clock = clock
        self._keys = self._load_keys()
        self._keys_loaded = clock()
        self.recorded = 0
        self.duplicates = 0
        self.dropped = 0
        self._drops_unsaid = 0
        self._drop_said = -1e9
        self.connected = asyncio.Event()

    def _load_keys(self) -> Any:
        from cli.trusted_agents import AgentKeys

        return AgentKeys(self.home)

    # ---- the judgement of one message

    def _drop(self, topic: str, why: str) -> str:
        self.dropped += 1
        self._drops_unsaid += 1
        now = self._clock()
        if now - self._drop_said >= DROP_LOG_INTERVAL:
            more = f" ({self._drops_unsaid - 1} more dropped since the last note)" if self._drops_unsaid > 1 else ""
            log.warning("dropped a message on %r: %s%s", topic[:200], why, more)
            self._drop_said, self._drops_unsaid = now, 0
        return "dropped"

    def _verify(self, payload: bytes, topic: str, agent: str) -> tuple[bool, str | None]:
        keys = self._keys.keys(agent)
        if provenance.verify_payload(payload, provenance.EVENT, topic, keys):
            return True, None
        if self._clock() - self._keys_loaded >= KEY_RELOAD_INTERVAL:  # a key trusted since: look again
            self._keys, self._keys_loaded = self._load_keys(), self._clock()
            keys = self._keys.keys(agent)
            if provenance.verify_payload(payload, provenance.EVENT, topic, keys):
                return True, None
        return False, provenance.why_unverified(payload, keys, agent)

    def judge(self, topic: str, payload: bytes) -> tuple[dict[str, Any], bool, str | None] | str:
        """(the event, verified, problem) to record, or why the message is dropped."""
        levels = self.topics.split(topic)
        if len(levels) < 3 or levels[0] != "Log":
            return "not on the log tree"
        if len(payload) > self.max_bytes:
            return f"{len(payload)} bytes, over the limit of {self.max_bytes}"
        try:
            data = pydantic_core.from_json(payload)
        except ValueError as exc:
            return f"not JSON: {exc}"
        if not isinstance(data, dict):
            return f"not a JSON object but {type(data).__name__}"
        agent = levels[1]
        verified, problem = self._verify(payload, topic, agent)
        if verified and data.get("agent") != agent:
            verified, problem = False, f"it names agent {data.get('agent')!r} but was published on {agent}'s topic"
        try:
            read_event(data)
        except EventError as exc:
            verified, problem = False, (problem + "; " if problem else "") + f"not a valid event: {exc}"
        return data, verified, problem

    def handle(self, topic: str, payload: bytes) -> str:
        """Record one message: "recorded", "duplicate" or "dropped". Never raises for what the broker sent."""
        judged = self.judge(topic, payload)
        if isinstance(judged, str):
            return self._drop(topic, judged)
        event, verified, problem = judged
        if not verified:
            log.warning("recorded an unverified event on %r: %s", topic[:200], problem)
        if self.history.record(event, verified=verified, problem=problem, topic=topic):
            self.recorded += 1
            return "recorded"
        self.duplicates += 1
        return "duplicate"

    # ---- the connection

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.addr.host, self.addr.port, identifier=self.client_id, username=self.addr.username,
            password=self.addr.password, tls_context=self.addr.tls_context(), keepalive=30,
            clean_session=False,  # the durable session: the broker keeps what comes while we are away
            protocol=aiomqtt.ProtocolVersion.V311, timeout=10)

    async def _prune(self) -> None:
        if self.keep_days is None:
            return
        removed = await asyncio.to_thread(self.history.prune, self.keep_days)
        log.info("retention: removed %d event(s) older than %d day(s)", removed, self.keep_days)

    async def _pruner(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            try:
                await self._prune()
            except Exception as exc:  # the database went away for a moment: next time
                log.error("retention failed: %s", exc)

    async def _store(self, message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, (bytes, bytearray)) else b""
        await asyncio.to_thread(self.handle, str(message.topic), bytes(payload))

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe, record, until `stop` is set; on a lost broker, reconnect (1 s to 30 s)."""
        await self._prune()
        pruner = asyncio.create_task(self._pruner())
        delay = 1.0
        try:
            while not stop.is_set():
                try:
                    async with self._client() as client:
                        await client.subscribe(self.topics.every_event(), qos=1, timeout=30)
                        log.info("connected to %s as %s; recording %s into %s", self.addr.url, self.client_id,
                                 self.topics.every_event(), self.history.url)
                        self.connected.set()
                        delay = 1.0
                        await self._consume(client, stop)
                except aiomqtt.MqttError as exc:
                    self.connected.clear()
                    if stop.is_set():
                        break
                    log.warning("broker %s: %s; reconnecting in %.0f s", self.addr.url, exc, delay)
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                    delay = min(delay * 2, 30.0)
        finally:
            pruner.cancel()
            self.connected.clear()

    async def _consume(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        messages = client.messages.__aiter__()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(messages.__anext__())
                done, _ = await asyncio.wait({nxt, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if nxt in done:
                    await self._store(nxt.result())  # raises MqttError when the connection is gone
                    continue
                nxt.cancel()
                # stopping: what the broker already handed over (acknowledged on receipt) is written first
                while len(client.messages):
                    await self._store(await messages.__anext__())
                return
        finally:
            stopping.cancel()

