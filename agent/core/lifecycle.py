"""The transfer lifecycle as an explicit state table (in the style of h11's ``_state.py``).

Rule 1 (h11's): every rule that affects a transfer's state lives in the core. The shell (agent/source.py,
agent/destination.py) reads files, talks to the broker and the store, and keeps the clock; it never decides
what a transfer does next. A new state, event, timer or guard goes here, in the session machines
(agent/core/source_session.py: its REACTIONS table, `get_timer` and `handle_timer`) or in agent/core/policy.py,
never in the shell.

Every legal (state, event) pair is in ``TRANSITIONS``; anything else is a ``LifecycleError``. The
IO shell feeds events in and publishes what comes out; this module does no IO and reads time only
through the injected clock, so every rule here is tested in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import NamedTuple

from .errors import FteError
from . import results
from .recovery import RecoveryTimer


class TransferState(str, Enum):
    QUEUED = "queued"
    NEGOTIATING = "negotiating"
    IN_PROGRESS = "in_progress"
    RECOVERING = "recovering"
    RESYNCHRONISING = "resynchronising"
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RECOVERY_TIMED_OUT = "recovery_timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def is_recovery(self) -> bool:
        """True while the recovery counter runs (recovering or resynchronising)."""
        return self in RECOVERY_STATES


class TransferEvent(str, Enum):
    START = "start"
    NEGOTIATED = "negotiated"
    STALL = "stall"
    RESYNC_SENT = "resync_sent"
    RESYNCED = "resynced"
    FINISH_OK = "finish_ok"
    FINISH_PARTIAL = "finish_partial"
    FINISH_FAILED = "finish_failed"
    FAIL = "fail"
    CANCEL = "cancel"
    RECOVERY_TIMEOUT = "recovery_timeout"


S = TransferState
E = TransferEvent

TERMINAL_STATES: frozenset[TransferState] = frozenset(
    {S.COMPLETE, S.PARTIAL, S.FAILED, S.CANCELLED, S.RECOVERY_TIMED_OUT}
)
LIVE_STATES: frozenset[TransferState] = frozenset(S) - TERMINAL_STATES
# The states in which the recovery counter runs: resynchronising is still recovery, the transfer
# has not resumed until the destination has answered the resync.
RECOVERY_STATES: frozenset[TransferState] = frozenset({S.RECOVERING, S.RESYNCHRONISING})
# The terminal set as text, for the code that holds a state as a string (the store's rows, the replies and
# events the CLI reads). The one copy: a new terminal state ends `fte transfer -w` and the watchers, and
# is pruned from the store, with no further edit (tests/unit/test_vocabulary.py holds every user to it).
TERMINAL_STATE_VALUES: frozenset[str] = frozenset(s.value for s in S if s.is_terminal)
RECOVERY_STATE_VALUES: frozenset[str] = frozenset(s.value for s in S if s.is_recovery)


def is_terminal(state: TransferState) -> bool:
    return TransferState(state) in TERMINAL_STATES


# The one table. Deliberate choices, beyond the design page:
# - QUEUED cannot STALL: nothing is in flight yet, a queued transfer simply waits for the broker.
# - NEGOTIATING can STALL: the destination never answered; recovery (and its timeout) applies.
# - STALL while recovering stays recovering, and while resynchronising (the resync went unanswered)
#   returns to recovering; neither restarts the counter (TransferLifecycle sees both as "already
#   in recovery").
# - RESYNC_SENT while resynchronising is allowed: the retry loop re-sends an unanswered resync.
# - RESYNCED from recovering is allowed: the destination may report its checkpoint unasked
#   (e.g. it reconnected and asked for recovery itself), which is as good as a resync answer.
# - A resumed transfer goes back to IN_PROGRESS even if it stalled while negotiating: the resync
#   answer proves the destination has accepted the transfer.
# - No event is legal in a terminal state: late or duplicate messages are the shell's to drop.
TRANSITIONS: dict[tuple[TransferState, TransferEvent], TransferState] = {
    (S.QUEUED, E.START): S.NEGOTIATING,
    (S.NEGOTIATING, E.NEGOTIATED): S.IN_PROGRESS,
    (S.NEGOTIATING, E.STALL): S.RECOVERING,
    (S.IN_PROGRESS, E.STALL): S.RECOVERING,
    (S.RECOVERING, E.STALL): S.RECOVERING,
    (S.RESYNCHRONISING, E.STALL): S.RECOVERING,
    (S.RECOVERING, E.RESYNC_SENT): S.RESYNCHRONISING,
    (S.RESYNCHRONISING, E.RESYNC_SENT): S.RESYNCHRONISING,
    (S.RECOVERING, E.RESYNCED): S.IN_PROGRESS,
    (S.RESYNCHRONISING, E.RESYNCED): S.IN_PROGRESS,
    (S.IN_PROGRESS, E.FINISH_OK): S.COMPLETE,
    (S.IN_PROGRESS, E.FINISH_PARTIAL): S.PARTIAL,
    (S.IN_PROGRESS, E.FINISH_FAILED): S.FAILED,
    (S.RECOVERING, E.RECOVERY_TIMEOUT): S.RECOVERY_TIMED_OUT,
    (S.RESYNCHRONISING, E.RECOVERY_TIMEOUT): S.RECOVERY_TIMED_OUT,
    # Any live state can fail (e.g. sandbox refusal, digest mismatch) or be cancelled.
    **{(s, E.FAIL): S.FAILED for s in LIVE_STATES},
    **{(s, E.CANCEL): S.CANCELLED for s in LIVE_STATES},
}

RESULT_CODES: dict[TransferState, int] = {
    S.COMPLETE: results.SUCCESS,
    S.PARTIAL: results.PARTIAL,
    S.FAILED: results.FAILED,
    S.CANCELLED: results.CANCELLED,
    S.RECOVERY_TIMED_OUT: results.RECOVERY_TIMED_OUT,
}


class LifecycleError(FteError):
    """An event that the table does not allow in the current state."""

    def __init__(self, state: TransferState, event: TransferEvent) -> None:
        self.state = state
        self.event = event
        super().__init__(f"cannot handle event {event.value!r} in state {state.value!r}")


def next_state(state: TransferState, event: TransferEvent) -> TransferState:
    state, event = TransferState(state), TransferEvent(event)
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LifecycleError(state, event) from None


class Transition(NamedTuple):
    at: float
    from_state: TransferState
    event: TransferEvent
    to_state: TransferState


class TransferLifecycle:
    """One transfer's state plus its recovery counter, driven by events and an injected clock.

    Timed transitions happen in ``poll()`` (call it when ``seconds_until_timeout()`` runs out) and
    at the start of ``handle()``: the deadline is authoritative, so an event that arrives after it
    (a resume the shell was slow to deliver, another stall, even a cancel) is too late: ``handle()``
    records the timeout instead and returns RECOVERY_TIMED_OUT without applying the late event.
    """

    def __init__(
        self,
        recovery_timeout: int,
        clock: Callable[[], float],
        state: TransferState = TransferState.QUEUED,
        recovering_since: float | None = None,
        recoveries: int = 0,
    ) -> None:
        self._clock = clock
        self._state = TransferState(state)
        self._timer = RecoveryTimer(recovery_timeout, clock)
        self._recoveries = recoveries
        self._history: list[Transition] = []
        if self._state.is_recovery:
            # Rebuilt after a restart: the outage did not end because the agent restarted, so keep
            # counting from when it began (on this clock's scale). Unknown start: count from now.
            self._timer.start(at=recovering_since)
        elif recovering_since is not None:
            raise ValueError(
                f"recovering_since given but state {self._state.value!r} is not a recovery state"
            )

    # --- inputs ----------------------------------------------------------------------------------

    def handle(self, event: TransferEvent) -> TransferState:
        event = TransferEvent(event)
        if self._timeout_if_due():
            return self._state
        old = self._state
        new = next_state(old, event)
        self._record(old, event, new)
        if new.is_recovery:
            if not old.is_recovery:
                # A new outage: count it and start from 0. Within an outage start() is a no-op.
                self._timer.reset()
                self._timer.start()
                self._recoveries += 1
        else:
            # Resumed (counter back to 0, seed 003) or finished: either way nothing to time.
            self._timer.reset()
        # With timeout 0 the counter has already reached the timeout on entering recovery.
        self._timeout_if_due()
        return self._state

    def poll(self) -> TransferState:
        self._timeout_if_due()
        return self._state

    # --- outputs ---------------------------------------------------------------------------------

    @property
    def state(self) -> TransferState:
        return self._state

    @property
    def result_code(self) -> int | None:
        return RESULT_CODES.get(self._state)

    @property
    def recovery_timeout(self) -> int:
        return self._timer.timeout

    @property
    def recovering_since(self) -> float | None:
        """When the current outage began (persist this to rebuild after a restart)."""
        return self._timer.started_at

    @property
    def recovery_deadline(self) -> float | None:
        return self._timer.deadline

    def seconds_until_timeout(self) -> float | None:
        deadline = self._timer.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self._clock())

    @property
    def recoveries(self) -> int:
        return self._recoveries

    @property
    def history(self) -> list[Transition]:
        return list(self._history)  # a copy: callers must not rewrite the record

    # --- internals -------------------------------------------------------------------------------

    def _timeout_if_due(self) -> bool:
        if self._state.is_recovery and self._timer.expired():
            old, new = self._state, next_state(self._state, E.RECOVERY_TIMEOUT)
            self._record(old, E.RECOVERY_TIMEOUT, new)
            self._timer.reset()
            return True
        return False

    def _record(self, old: TransferState, event: TransferEvent, new: TransferState) -> None:
        self._state = new
        self._history.append(Transition(self._clock(), old, event, new))
