"""The other agents as this one knows them: their last status, which peers' topics it watches, waiting for one.

A peer's status is believed (for sessions, waits, outcome resends) only when it is signed by the peer's
trusted identity key, if authority checking is on; without it, no peer is checked at all. This agent's own
status topic is judged by agent.status (`own`): what it holds is what every new client reads of this agent.

Every agent subscribes to <prefix>/Agents/+, which gets every status as it is published; but a broker may not
deliver the retained ones to a wildcard subscription (RabbitMQ 3.x, rabbitmq-server issues #8096 and #8824),
and a source agent started after its destination would never learn of it. So a peer this agent needs and
does not know yet is also watched on its own topic, <prefix>/Agents/<peer> (the link makes that subscription
again at every reconnection, which brings the retained status each time). On the other brokers this is
redundant: a status may then arrive twice, which changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Collection, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .wire import provenance
from .auth import Authority
from .wire.binding import agent_requester
from .names import AGENT_NAME_RE
from .wire.protocol import AgentStatus, ProtocolError, Topics, parse_agent_status

log = logging.getLogger("fte.agent")

# Peers watched on their own status topic at most; beyond, the one subscribed longest ago that no running
# transfer goes to is dropped (its live changes still come on the wildcard subscription).
PEER_WATCH_LIMIT = 256


class Subscriptions(Protocol):
    """What the peers need of the broker link (agent.link.BrokerLink)."""

    async def add_subscription(self, topic: str) -> None: ...

    async def remove_subscription(self, topic: str) -> None: ...


def trusted_agent_key(authority: Authority | None, agent: str) -> Ed25519PublicKey | None:
    """The identity key `agent` is trusted under here for transfers (None: not trusted, or no authority)."""
    if authority is None:
        return None
    entry = authority.trusted().get(agent_requester(agent))
    return entry.key if entry is not None and "transfer" in entry.permissions else None


class Peers:
    """`status(agent)` (the sessions' ctx.peer_status), `wait(agent, timeout)`, `on_status(agent, payload)` for
    every status that arrives; `on_change(agent, status)` is called when an agent's status word changes."""

    def __init__(self, name: str, topics: Topics, link: Subscriptions, authority: Authority | None, *,
                 own: Callable[[bytes], AgentStatus | None], busy: Callable[[], Collection[str]],
                 on_change: Callable[[str, str], None], watch_limit: int = PEER_WATCH_LIMIT) -> None:
        self._name = name
        self._topics = topics
        self._link = link
        self._authority = authority
        self._own = own
        self._busy = busy  # the destination agents of the running transfers: never unwatched
        self._on_change = on_change
        self._watch_limit = watch_limit
        self.statuses: dict[str, str] = {}  # agent -> its last status word believed (this agent's too)
        self._seen = asyncio.Event()
        self._watched: dict[str, None] = {}  # the one subscribed longest ago first
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # (un)subscriptions in the order they were decided
        self._untrusted: set[str] = set()  # peers whose status came without a signature we can check
        # agent -> the offer key of its last status believed (agent.wire.encryption); absent: an older agent
        self.offer_keys: dict[str, str] = {}

    def status(self, agent: str) -> str | None:
        """A peer's last known status. A peer not known yet is watched on its own status topic, so that its
        retained status arrives on any broker."""
        status = self.statuses.get(agent)
        if status is None:
            self.watch(agent)
        return status

    def untrusted(self, agent: str) -> bool:
        """Did `agent` publish a status whose key is not trusted here (so it stays unknown)?"""
        return agent in self._untrusted

    async def wait(self, agent: str, timeout: float) -> bool:
        """Is `agent` known, at once or within `timeout` s (watching its topic meanwhile)?"""
        if agent in self.statuses:
            return True
        # its retained status, on its own topic: the <prefix>/Agents/+ subscription may never get it
        self.watch(agent)

        async def known() -> None:
            while agent not in self.statuses:
                self._seen.clear()
                await self._seen.wait()

        try:
            await asyncio.wait_for(known(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def pending(self) -> int:
        """Subscriptions to peers' topics decided and not made yet."""
        return len(self._tasks)

    @property
    def watched(self) -> list[str]:
        """The peers watched on their own topic, the one subscribed longest ago first."""
        return list(self._watched)

    def watch(self, agent: str) -> None:
        """Subscribe to `agent`'s own status topic and keep the subscription; at most `watch_limit` peers,
        beyond which the one subscribed longest ago that is not the destination of a running transfer goes."""
        if agent == self._name or not AGENT_NAME_RE.fullmatch(agent):
            return
        if agent in self._watched:
            self._watched[agent] = self._watched.pop(agent)  # needed (again) now: the last to be dropped
            return
        self._watched[agent] = None
        dropped = []
        while len(self._watched) > self._watch_limit:
            busy = set(self._busy())
            victim = next((a for a in self._watched if a not in busy and a != agent), next(iter(self._watched)))
            del self._watched[victim]
            dropped.append(victim)
        log.debug("watching the status of agent %s on %s", agent, self._topics.agent_status(agent))

        async def subscribe() -> None:
            async with self._lock:
                for name in dropped:
                    await self._link.remove_subscription(self._topics.agent_status(name))
                await self._link.add_subscription(self._topics.agent_status(agent))

        task = asyncio.ensure_future(subscribe())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_status(self, agent: str, payload: bytes) -> None:
        """A status arrived on <prefix>/Agents/<agent>. Raises ProtocolError for one to drop with a reason."""
        status = self._own(payload) if agent == self._name else self._believed(agent, payload)
        if status is None:
            return
        before = self.statuses.get(agent)
        self.statuses[agent] = status.status
        if status.offer_key:
            self.offer_keys[agent] = status.offer_key
        self._seen.set()
        if before != status.status:
            self._on_change(agent, status.status)

    def _believed(self, agent: str, payload: bytes) -> AgentStatus | None:
        if not payload:
            if self._authority is None:
                self.statuses.pop(agent, None)
                return None
            raise ProtocolError(f"an empty status for agent {agent} (no signature to check): ignored")
        status = parse_agent_status(payload)
        if status.agent != agent:
            raise ProtocolError(f"status for {status.agent!r} published on the topic of {agent!r}")
        if self._authority is None:
            return status
        key = trusted_agent_key(self._authority, agent)
        if key is None:
            # an agent on the broker this one does not work with: not worth a warning per status change
            if agent not in self._untrusted:
                log.debug("ignoring the status of agent %s: its key is not trusted here", agent)
            self._untrusted.add(agent)
            return None
        if not provenance.verify_payload(payload, provenance.STATUS, agent, [key]):
            raise ProtocolError(f"status of agent {agent} not signed by its trusted key (a forgery?): ignored")
        self._untrusted.discard(agent)
        return status

    def close(self) -> list[asyncio.Task[None]]:
        """Cancel the subscriptions under way; the tasks, to be awaited."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        return tasks
