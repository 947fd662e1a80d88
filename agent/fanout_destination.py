"""A fan-out transfer at one of its destinations: the group key and the shared topic (docs/protocol.md#fan-out).

The source publishes each chunk once on `<prefix>/Fanout/<source>/<tid>`, sealed (AES-GCM) under a frame key
derived from the group key G exactly as a unicast frame key is derived from the transfer key (agent.wire.
encryption); every destination that took the offer's `fanout` subscribes there. What is kept (G, in the
transfer's header in the state store), when this destination subscribes (agent.core.destination_session:
Shared, Subscribe) and which shared chunk is written (`receive_shared`) are decided elsewhere; this module is
the IO: it takes G from an offer, subscribes and waits (bounded) for the SUBACK, and unsubscribes at the end.

An offer that came in the clear carries no group key worth having (the broker could read it): its `fanout` is
ignored and the transfer is unicast only here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any

from .context import AgentContext
from .core.policy import FANOUT_SUBSCRIBE_WAIT
from .store import TransferRecord

log = logging.getLogger("fte.destination")

GROUP_KEY_BYTES = 32
_UNSUBSCRIBING: set["asyncio.Task[None]"] = set()  # kept until done (a task nobody holds may be collected)


def group_key(header: Mapping[str, Any]) -> bytes | None:
    """The group key G kept in a destination transfer's header (None: unicast only)."""
    key = header.get("fanout_key")
    return base64.b64decode(key) if key else None


def take_offer(header: dict[str, Any], msg: Any, agent: str) -> None:
    """Keep the offer's group key in the new transfer's header, if it came encrypted to this agent and names it."""
    offer = getattr(msg, "fanout", None)
    if offer is None:
        return
    why = None
    try:
        raw = base64.b64decode(offer.key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not msg._encrypted:
        why = "the offer came in the clear, so its group key is not secret"
    elif len(raw) != GROUP_KEY_BYTES:
        why = f"its group key is not {GROUP_KEY_BYTES} bytes"
    elif agent not in offer.destinations:
        why = f"agent {agent} is not among its destinations"
    if why is not None:
        log.warning("transfer %s: fan-out offer ignored (%s); unicast only", msg.transfer_id, why)
        return
    header.update(fanout_key=offer.key, fanout_destinations=list(offer.destinations))


class SharedStream:
    """The shared topic of one destination transfer: subscribed at most once per process, left when every file
    has its result or the source's outcome comes."""

    __slots__ = ("_ctx", "key", "topic", "_joined")

    def __init__(self, ctx: AgentContext, rec: TransferRecord) -> None:
        self._ctx = ctx
        self.key = group_key(rec.header)
        self.topic = ctx.topics.fanout(rec.peer, rec.transfer_id) if self.key is not None else None
        self._joined = False

    async def join(self) -> bool:
        """Subscribe and wait for the SUBACK, at most FANOUT_SUBSCRIBE_WAIT s. True: granted."""
        if self.topic is None:
            return False
        try:
            granted = await asyncio.wait_for(self._ctx.subscribe(self.topic), FANOUT_SUBSCRIBE_WAIT)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            log.warning("subscription to %s not confirmed (%s): this transfer is received by unicast only",
                        self.topic, exc.__class__.__name__)
            granted = False
        if not granted:
            self._leave_now()  # not again at the next connection: the source was told no
            return False
        self._joined = True
        return True

    @property
    def joined(self) -> bool:
        return self._joined

    def leave(self) -> None:
        """The transfer ended here: unsubscribe (not waited for)."""
        if self._joined:
            self._joined = False
            self._leave_now()

    def _leave_now(self) -> None:
        if self.topic is None:
            return
        task = asyncio.ensure_future(self._ctx.unsubscribe(self.topic))
        _UNSUBSCRIBING.add(task)
        task.add_done_callback(_UNSUBSCRIBING.discard)
