"""What a transfer session needs from its agent (kept small so sessions stay testable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .core.budget import InFlightBudget
from .protocol import Topics
from .sandbox import Sandbox
from .store import StateStore
from .transferlog import TransferLog


@dataclass
class AgentContext:
    name: str
    topics: Topics
    store: StateStore
    log: TransferLog
    sandbox: Sandbox
    publish: Callable[[str, bytes, int, bool], Awaitable[None]]
    link_up: Callable[[], bool]
    peer_status: Callable[[str], str | None]
    chunk_size: int
    window_chunks: int
    ack_timeout: float  # seconds
    ack_retries: int
    agent_recovery_timeout: int
    on_state_change: Callable[[], None]
    settings: Any = None
    # agent.binding: this agent's identity key, and the trusted identity key of a peer agent (or None)
    identity: Any = None
    peer_key: Callable[[str], Any] = lambda agent: None
    verify_peers: bool = False
    metrics: Any = None
    # data in flight across this agent's transfers (agentMaxDataInFlight); `wake` posts to a held-back session
    budget: InFlightBudget = field(default_factory=lambda: InFlightBudget(0))
    wake: Callable[[str], None] = lambda tid: None
    # raises agent.link.MessageTooLarge for a message the broker was found to refuse (agent.broker_probe)
    check_size: Callable[[str, bytes], None] = lambda topic, payload: None
