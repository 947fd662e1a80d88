"""The agent's own retained status on <prefix>/Agents/<agent>: what it says, when it is published, and
keeping it so.

A change of the status word (READY <-> ACTIVE) is published at once; a change of transfer states alone at
most every agentStatusPublishRateLimit seconds (the reference's rate limit), and never two within
STATUS_MIN_INTERVAL. The status is signed (agent.wire.provenance): clients and peers believe no other. What is
retained on the topic is what every new client and peer reads of this agent, so anything else found there
(garbage, an empty message, a forgery, a status of an earlier run, a late last will) is replaced at once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import __version__

from .wire import provenance
from .wire.encryption import offer_public
from .context import Publish
from .core.policy import STATUS_MIN_INTERVAL, STATUS_WORD_POLL
from .core.statuses import AGENT_RUNNING, AgentState
from .wire.protocol import AgentStatus, ProtocolError, Topics, dump, parse_agent_status, utc_now
from .settings import AgentSettings

if TYPE_CHECKING:
    from .router import DropLog


class OwnStatus:
    """`word` is the status (AgentState); `changed()` asks for a publication (the sessions' on_state_change);
    `run()` publishes; `check_retained(payload)` judges what arrived on the agent's own topic."""

    def __init__(self, name: str, settings: AgentSettings, topics: Topics, identity: Ed25519PrivateKey, *,
                 publish: Publish, link_up: Callable[[], bool], stopping: Callable[[], bool],
                 busy: Callable[[], bool], transfers: Callable[[], tuple[dict[str, str], dict[str, str]]],
                 chunk_size: Callable[[], int], broker_check: Callable[[], str | None],
                 tidy: Callable[[], None], drops: "DropLog",
                 broker: Callable[[], str | None] = lambda: None) -> None:
        self._name = name
        self._settings = settings
        self._topics = topics
        self._identity = identity
        self._own_key = identity.public_key()
        self._offer_key = offer_public(identity)  # sources encrypt their offers to it (agent.wire.encryption)
        self._publish = publish
        self._link_up = link_up
        self._stopping = stopping
        self._busy = busy  # any transfer running (source, or destination still receiving)
        self._transfers = transfers  # (source, destination) transfer id -> state
        self._chunk_size = chunk_size
        self._broker_check = broker_check
        self._tidy = tidy  # forgets finished destination sessions, before each publication
        self._drops = drops
        self._broker = broker  # the URL of the broker (node of a list) the agent is connected to, if any
        self.word: str = AgentState.STARTING
        self.started_at = utc_now()
        self.topic = topics.agent_status(name)
        self._dirty = asyncio.Event()
        self._force = False
        self._last: bytes | None = None

    def changed(self) -> None:
        self._dirty.set()

    def reassert_later(self, delay: float) -> None:
        """Publish the status again after `delay` seconds, whatever changed meanwhile (a late last will)."""
        def force() -> None:
            if self._link_up() and not self._stopping():
                self._force = True
                self._dirty.set()
        asyncio.get_running_loop().call_later(delay, force)

    def payload(self, word: str) -> bytes:
        """The agent's status with `word`, signed (agent.wire.provenance)."""
        source, destination = self._transfers()
        body = dump(AgentStatus(
            agent=self._name, status=word, time=utc_now(), version=__version__, host=socket.gethostname(),
            pid=os.getpid(), started_at=self.started_at, source_transfers=source, destination_transfers=destination,
            max_source_transfers=self._settings.maxSourceTransfers,
            max_destination_transfers=self._settings.maxDestinationTransfers,
            max_queued_transfers=self._settings.maxQueuedTransfers,
            chunk_size=self._chunk_size(), broker_check=self._broker_check(), broker=self._broker(),
            offer_key=self._offer_key))
        return provenance.sign_payload(body, provenance.STATUS, self._name, self._identity)

    def _wanted(self) -> str:
        if self.word in AGENT_RUNNING:
            return AgentState.ACTIVE if self._busy() else AgentState.READY
        return self.word

    async def publish(self) -> None:
        """Publish the status now (READY or ACTIVE while running, as the transfers say)."""
        self.word = self._wanted()
        self._last = self.payload(self.word)
        try:
            await self._publish(self.topic, self._last, 1, True)
        except ConnectionError:
            pass

    async def republish(self) -> None:
        """The last status published, again, byte for byte (its `time` stays when it was made): over a late
        last will retained where the agent does not read (agent.daemon's heartbeat)."""
        if self._last is None or not self._link_up() or self._stopping():
            return
        try:
            await self._publish(self.topic, self._last, 1, True)
        except ConnectionError:
            pass

    async def run(self) -> None:
        last = -1e9
        published: str | None = None
        while True:
            await self._dirty.wait()
            self._tidy()
            wait = last + self._settings.agentStatusPublishRateLimit - time.monotonic()
            if self._wanted() == published and wait > 0 and not self._force:
                try:  # only transfer states changed: wait out the rate limit (or a status change)
                    await asyncio.wait_for(self._word_changed(published), wait)
                except asyncio.TimeoutError:
                    pass
            self._dirty.clear()
            self._force = False
            await self.publish()
            published, last = self.word, time.monotonic()
            await asyncio.sleep(STATUS_MIN_INTERVAL)

    async def _word_changed(self, published: str | None) -> None:
        while self._wanted() == published:
            await asyncio.sleep(STATUS_WORD_POLL)

    def check_retained(self, payload: bytes) -> AgentStatus | None:
        """What arrived on this agent's own status topic: the status if this agent signed it, else None. Anything
        that is not its current status is replaced by republishing it at once (bounded by the publisher to one
        per STATUS_MIN_INTERVAL, however many arrive)."""
        status: AgentStatus | None = None
        try:
            status = parse_agent_status(payload) if payload else None
        except ProtocolError:
            pass
        signed = status is not None and status.agent == self._name and \
            provenance.verify_payload(payload, provenance.STATUS, self._name, [self._own_key])
        current = signed and status is not None and status.pid == os.getpid() and \
            status.started_at == self.started_at and status.status != AgentState.UNREACHABLE
        if not current and self._link_up() and not self._stopping():
            what = "an earlier status of this agent" if signed else \
                "a status not signed by this agent" if status is not None else "no status" if not payload else \
                "a message that is no status"
            self._drops.drop(self.topic, f"its own status topic holds {what}: republishing this agent's status")
            self._force = True
            self._dirty.set()
        return status if signed else None
