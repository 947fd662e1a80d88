"""The template keeper: every agent keeps the signed templates it has seen and republishes them when the
broker lost its retained state (a non-persistent broker that restarted). The rules are in agent.core.keeper.

What it keeps: each retained <prefix>/Templates/<name> whose document verifies (creator's signature, by a
creator this agent trusts: agent.definitions), byte for byte as the creator published it, in
<state dir>/templates.json. An empty retained message (fte-delete-template) deletes it and leaves a
tombstone. After each connection it waits KEEPER_SETTLE for the retained messages, then compares them with
what it keeps (agent.core.keeper.reconcile); a republish waits a random jitter first and then publishes only
what is still absent, so that N agents do not each publish everything. Untrusted input: size-limited,
anything unverifiable is ignored (logged at debug), never a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable

from .atomic_files import write_atomic
from .core import keeper as K
from .core.policy import KEEPER_JITTER, KEEPER_SETTLE
from .wire.protocol import Topics, utc_now

log = logging.getLogger("fte.keeper")

MAX_TEMPLATE_BYTES = 1 << 20
MAX_MARKER_BYTES = 1024
MAX_TOMBSTONES = 10_000
Publish = Callable[[str, bytes, int, bool], Awaitable[None]]


class TemplateKeeper:
    def __init__(self, name: str, topics: Topics, path: Path, publish: Publish,
                 verify: Callable[[str, dict[str, Any]], bool], rand: random.Random | None = None) -> None:
        self._name = name
        self._topics = topics
        self._path = path
        self._publish = publish
        self._verify = verify
        self._rand = rand or random.Random()
        self.epoch_topic = topics.keeper_epoch()
        self.kept: dict[str, str] = {}  # name -> payload as published (text)
        self.tombstones: dict[str, str | None] = {}  # name -> created of the deleted version
        self.epoch: str | None = None  # the marker seen last (persisted)
        self._load()
        self._present: set[str] = set()
        self._epoch_now: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.reconciled = asyncio.Event()  # set after each connection's reconciliation (tests, logs)

    @property
    def subscriptions(self) -> list[str]:
        return [self._topics.templates(), self.epoch_topic]

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        try:
            data = json.loads(self._path.read_text())
            self.kept = {str(k): str(v) for k, v in data.get("kept", {}).items()}
            self.tombstones = {str(k): (None if v is None else str(v)) for k, v in data.get("tombstones", {}).items()}
            self.epoch = data.get("epoch")
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("template keeper: %s unreadable (%s); starting with nothing kept", self._path, exc)

    def _save(self) -> None:
        while len(self.tombstones) > MAX_TOMBSTONES:
            self.tombstones.pop(next(iter(self.tombstones)))
        data = {"kept": self.kept, "tombstones": self.tombstones, "epoch": self.epoch}
        write_atomic(self._path, json.dumps(data).encode(), 0o600)

    # ------------------------------------------------------------------ messages

    def handles(self, topic: str) -> bool:
        return topic == self.epoch_topic or self._topics.template_name(topic) is not None

    async def message(self, topic: str, payload: bytes) -> None:
        try:
            if topic == self.epoch_topic:
                self._marker(payload)
            else:
                await self._template(str(self._topics.template_name(topic)), payload)
        except Exception as exc:  # untrusted input never stops the agent
            log.debug("template keeper: dropped %s: %r", topic, exc)

    def _marker(self, payload: bytes) -> None:
        if not payload:
            self._epoch_now = None
            return
        if len(payload) > MAX_MARKER_BYTES:
            return
        epoch = json.loads(payload).get("epoch")
        if isinstance(epoch, str) and 0 < len(epoch) <= 64:
            self._epoch_now = epoch
            if self.reconciled.is_set() and epoch != self.epoch:  # a live change after reconciliation
                self.epoch = epoch
                self._save()

    async def _template(self, name: str, payload: bytes) -> None:
        if not payload:  # deleted
            self._present.discard(name)
            if name in self.kept:
                doc = json.loads(self.kept.pop(name))
                self.tombstones[name] = doc.get("created")
                self._save()
                log.info("template keeper: template %s deleted; it is not republished", name)
            return
        if len(payload) > MAX_TEMPLATE_BYTES:
            return
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("name") != name or not self._verify(name, doc):
            log.debug("template keeper: template %s not kept: not signed by a creator this agent trusts", name)
            return
        self._present.add(name)
        if name in self.tombstones and K.is_dead(doc.get("created"), self.tombstones[name]):
            # a deleted version that someone republished (a keeper that missed the deletion): clear it again
            log.info("template keeper: template %s was deleted; clearing a stale copy republished", name)
            self._present.discard(name)
            await self._publish(self._topics.templates(name), b"", 1, True)
            return
        self.tombstones.pop(name, None)
        text = payload.decode()
        if self.kept.get(name) != text:
            self.kept[name] = text
            self._save()

    # ------------------------------------------------------------------ connections

    def connected(self) -> None:
        """The link is up (its subscriptions made): reconcile once the retained messages are in."""
        self.reconciled.clear()
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._reconcile(), name="template-keeper")

    def disconnected(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._present = set()
        self._epoch_now = None
        self.reconciled.clear()

    def close(self) -> list[asyncio.Task[None]]:
        task, self._task = self._task, None
        if task is None:
            return []
        task.cancel()
        return [task]

    async def _reconcile(self) -> None:
        await asyncio.sleep(KEEPER_SETTLE)  # the retained messages come at once after the subscription
        plan = K.reconcile(set(self.kept), self._present, self.epoch, self._epoch_now)
        for name in plan.forget:
            # no tombstone here: a retained message slower than KEEPER_SETTLE must not make this keeper clear a
            # live template when it arrives; the keepers that saw the deletion hold the tombstones
            log.info("template keeper: template %s was deleted while this agent was away", name)
            self.kept.pop(name, None)
        if plan.republish or plan.set_epoch:
            await asyncio.sleep(self._rand.uniform(0, KEEPER_JITTER))  # other keepers may do it first
            again = [n for n in plan.republish if n not in self._present and n in self.kept]
            for name in again:
                await self._publish(self._topics.templates(name), self.kept[name].encode(), 1, True)
            if again:
                log.info("template keeper: the broker had lost %d template(s); republished: %s", len(again),
                         ", ".join(again))
            if self._epoch_now is None:
                epoch = secrets.token_hex(8)
                marker = {"epoch": epoch, "set_by": self._name, "set_at": utc_now()}
                await self._publish(self.epoch_topic, json.dumps(marker).encode(), 1, True)
                self._epoch_now = epoch
        self.epoch = self._epoch_now
        self._save()
        self.reconciled.set()


def trusted_verifier(config_home: Path, authority: Any) -> Callable[[str, dict[str, Any]], bool]:
    """A template is kept when its creator's signature verifies against a creator this agent's user trusts
    ($FTE_CONFIG_HOME/keys: own keys and trusted_creators, as the CLI) or a requester the agent trusts (its
    trust file, when authority checking is on)."""
    import base64

    from cryptography.exceptions import InvalidSignature

    from .auth import is_agent_key_name
    from .definitions import DefinitionTrust, DefinitionTrustError, signed_bytes

    trust = DefinitionTrust(config_home)

    def verify(name: str, doc: dict[str, Any]) -> bool:
        try:
            trust.verify("template", name, doc)
            return True
        except DefinitionTrustError:
            pass
        except (OSError, ValueError):
            return False
        creator = str(doc.get("created_by") or "")
        if authority is None or not creator or is_agent_key_name(creator):
            return False
        entry = authority.trusted().get(creator)
        if entry is None:
            return False
        try:
            entry.key.verify(base64.b64decode(str(doc.get("signature")), validate=True),
                             signed_bytes("template", name, doc))
            return True
        except (InvalidSignature, ValueError):
            return False

    return verify
