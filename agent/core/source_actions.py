"""What the source session asks its shell to do (agent.core.source_session returns these).

Each action is a small frozen value. The shell (agent/source.py) carries them out in the order given: it
owns the files, the store, the broker and the clock; the session owns every decision. An action that says
"persist" or "publish progress" carries no copy of the state: the shell reads the session when it carries
it out, so a later input can never leave an older copy written over a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SendResync:
    """Offer the files still to send (`indexes`) under `epoch` (persist the epoch first), then tell the session
    what became of it: `resync_done(now)` published, `sent=False` the link is down, `refused=why` the broker
    cannot carry it."""

    epoch: int
    indexes: tuple[int, ...]


@dataclass(frozen=True)
class UseFeatures:
    """The destination's answer named what it understands ("gmac", "mac_no_crc", ...): build the frames so."""

    features: frozenset[str]


@dataclass(frozen=True)
class CheckSources:
    """Is each of these source files still the one requested? Answer `sources_checked({index: why or None})`
    (the session holds the resync answer until then)."""

    indexes: tuple[int, ...]


@dataclass(frozen=True)
class ResendFrom:
    """File `index` is sent again from `offset`: a digest computed on the way is no longer sequential."""

    index: int
    offset: int


@dataclass(frozen=True)
class CloseFile:
    """File `index` has its result: close it and forget what it was when opened."""

    index: int


@dataclass(frozen=True)
class SaveFiles:
    """Save these file records (their offsets or results) in one commit."""

    files: tuple[Any, ...]


@dataclass(frozen=True)
class PersistState:
    """Save the transfer's state, recoveries, recovering-since and last stall as the session has them now,
    and tell the agent its state changed."""


@dataclass(frozen=True)
class PublishProgress:
    """Publish the transfer's live progress (the shell's summary) if the broker is there."""


@dataclass(frozen=True)
class ReleaseBudget:
    """Give this transfer's share of the agent's data in flight back (nothing is sent while recovering)."""


@dataclass(frozen=True)
class Log:
    """Emit the log event `action` with these fields (agent.transferlog; docs/log-events.md)."""

    action: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Metric:
    """Count `name` (recovery_started, recovery_ended: `value` seconds, bytes_sent: `value` bytes)."""

    name: str
    value: float = 0


# --- what to send next (agent.core.send_order.SendOrder.next_send), one at a time ---------------------------


@dataclass(frozen=True)
class SendChunk:
    """Read [offset, offset+length) of file `index` into a chunk frame and publish it. A read that fails or
    finds the file changed: the session's `source_failed`. A publish that cannot go: `stop`."""

    index: int
    offset: int
    length: int
    last: bool
    ack: bool


@dataclass(frozen=True)
class SendBundle:
    """Read these small files whole and publish them in one frame: `bundled(index)` for each read, then
    `bundle_sent(bytes)` once published."""

    indexes: tuple[int, ...]


@dataclass(frozen=True)
class SendFileEnd:
    """Every byte of file `index` is sent: compute its digest, check it did not change, publish its FileEnd,
    then `file_end_sent(index)`."""

    index: int


Action = (SendResync | UseFeatures | CheckSources | ResendFrom | CloseFile | SaveFiles | PersistState
          | PublishProgress | ReleaseBudget | Log | Metric)
Send = SendChunk | SendBundle | SendFileEnd
