"""The transfer log: JSON events on <prefix>/Log/<agent>/<transfer_id>.

Events go to the state store's outbox first and are published from there, in order, by
`OutboxPublisher`: an event produced while the broker is unreachable is kept on disk and published,
with its original time, when the broker comes back. The publisher signs each message with the agent's
identity key for the topic it goes to (agent.wire.provenance) as it publishes it: events kept on disk from before
are signed too, and an event shortened to fit the broker is signed as it is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from .wire.events import build_event, new_event_id
from .link import MessageTooLarge
from .wire.protocol import Topics, utc_now
from .store import StateStore, TransferRecord

log = logging.getLogger("fte.log")

Publish = Callable[[str, bytes, int, bool], Awaitable[None]]
Sign = Callable[[str, bytes], bytes]  # (topic, payload) -> the payload with its signature member


class TransferLog:
    def __init__(self, agent: str, topics: Topics, store: StateStore, wake: Callable[[], None]) -> None:
        self.agent = agent
        self.topics = topics
        self.store = store
        self._wake = wake
        # in-process observers (the demo, tests); called with every event as it is produced
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def emit(self, rec: TransferRecord, action: str, **fields: Any) -> dict[str, Any]:
        """Log `action` of the transfer: its envelope from the record, `fields` (None: left out) after it.

        The event is built and validated as its model (agent.wire.events): an action without a model, a field of
        the wrong type or one the model does not declare raises EventError here, in the emitter's tests."""
        header = rec.header
        tid = header.get("leg_of") or rec.transfer_id  # a fan-out leg logs under its transfer's id
        event: dict[str, Any] = {
            # the same id when the event is published again (the outbox keeps the event as it was made)
            "event_id": new_event_id(),
            "transfer_id": tid,
            "action": action,
            "state": rec.state,
            "time": utc_now(),
            "agent": self.agent,
            "agent_role": rec.role,
            "source_agent": header.get("source_agent", self.agent),
            "destination_agent": header.get("destination_agent"),
            "job_name": header.get("job_name"),
            "metadata": header.get("metadata") or {},
            **{k: v for k, v in fields.items() if v is not None},
        }
        # Checked strictly, with no member its model lacks: the JSON of `event` is its model's, and is published
        # as made (dumping the model again would cost as much as the check, for a completed event of 10,000 files)
        build_event(event)
        self.store.outbox_put(self.topics.log(self.agent, tid), json.dumps(event).encode())
        log.info("%s %s %s%s", tid[:12], action, rec.state,
                 f" ({fields['message']})" if fields.get("message") else "")
        self._wake()
        for listener in self.listeners:
            listener(event)
        return event


def without_files(payload: bytes) -> bytes | None:
    """The event without its `files` list (`files_omitted` says how many), or None if it has none."""
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(event, dict) or not event.get("files"):
        return None
    event["files_omitted"] = len(event["files"])
    event["files"] = []
    return json.dumps(event).encode()


class OutboxPublisher:
    """Drains the outbox in order whenever the broker is reachable."""

    def __init__(self, store: StateStore, publish: Publish, is_up: Callable[[], bool],
                 sign: Sign = lambda topic, payload: payload) -> None:
        self.store = store
        self._publish = publish
        self._sign = sign
        self._is_up = is_up
        self.wakeup = asyncio.Event()

    def wake(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            await self.drain()

    async def drain(self) -> None:
        while self._is_up():
            batch = self.store.outbox_peek()
            if not batch:
                return
            for seq, topic, payload, retain in batch:
                try:
                    await self._publish(topic, self._sign(topic, payload), 1, retain)
                except ConnectionError:
                    return  # kept on disk; drained again when the link is back
                except MessageTooLarge as exc:
                    # an event listing thousands of files, on a broker with a small maximum: published
                    # without its file list rather than not at all (watchers wait for "completed")
                    smaller = without_files(payload)
                    if smaller is None:
                        log.error("%s; not published", exc)
                    else:
                        log.error("%s; published without its file list", exc)
                        try:
                            await self._publish(topic, self._sign(topic, smaller), 1, retain)
                        except ConnectionError:
                            return
                        except MessageTooLarge as again:
                            log.error("%s; not published", again)
                self.store.outbox_done(seq)
