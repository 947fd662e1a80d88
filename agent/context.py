"""What a transfer session needs from its agent (kept small so sessions stay testable).

The sessions (agent.source, agent.destination) read these fields by name; the agent (agent.daemon) fills
them in. A unit test gives only the first fourteen: the rest have the defaults of an agent without identity,
authority, metrics or broker limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .core.budget import InFlightBudget
from .core.ratelimit import TokenBucket
from .metrics import Metrics
from .wire.protocol import Topics
from .sandbox import Sandbox
from .settings import AgentSettings
from .store import StateStore
from .transferlog import TransferLog

Publish = Callable[[str, bytes, int, bool], Awaitable[None]]
"""Publish (topic, payload, qos, retain) on the agent's broker link; raises ConnectionError when it is down."""


async def _not_subscribed(topic: str) -> bool:
    return False  # an agent without a link (a unit test): no shared stream, unicast only


async def _nothing(topic: str) -> None:
    return None


@dataclass
class AgentContext:
    name: str
    topics: Topics
    store: StateStore
    log: TransferLog
    sandbox: Sandbox
    publish: Publish
    link_up: Callable[[], bool]
    # a peer agent's last known status word (agent.core.statuses.AgentState), None when not known (agent.peers)
    peer_status: Callable[[str], str | None]
    # the chunk size of this broker connection: agentChunkSize, or less when the broker check found a limit
    chunk_size: int
    window_chunks: int
    ack_timeout: float  # seconds
    ack_retries: int
    agent_recovery_timeout: int
    on_state_change: Callable[[], None]
    settings: AgentSettings | None = None
    # agent.wire.binding: this agent's identity key, and the trusted identity key of a peer agent (or None)
    identity: Ed25519PrivateKey | None = None
    peer_key: Callable[[str], Ed25519PublicKey | None] = lambda agent: None
    verify_peers: bool = False
    metrics: Metrics | None = None
    # data in flight across this agent's transfers (agentMaxDataInFlight); `wake` posts to a held-back session
    budget: InFlightBudget = field(default_factory=lambda: InFlightBudget(0))
    wake: Callable[[str], None] = lambda tid: None
    # raises agent.link.MessageTooLarge for a message the broker was found to refuse (agent.broker_checks)
    check_size: Callable[[str, bytes], None] = lambda topic, payload: None
    # agentMaxBandwidth (None: unlimited): every publish of the agent spends from it; a source's data waits for it
    bandwidth: TokenBucket | None = None
    # agent.link: subscribe from now on (True once the broker granted it on the live connection), and undo it
    # (a fan-out transfer's shared topic, agent.fanout_destination)
    subscribe: Callable[[str], Awaitable[bool]] = _not_subscribed
    unsubscribe: Callable[[str], Awaitable[None]] = _nothing
