"""Recovery timeout: which value applies, and the counter that enforces it (seed 003).

No IO and no clock of its own: the timer reads an injected monotonic clock, so tests drive time.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]

RECOVER_FOREVER = -1
FAIL_IMMEDIATELY = 0


def check_recovery_timeout(value: int, name: str) -> int:
    """Return ``value`` if it is a valid recovery timeout, else raise naming where it came from."""
    # bool is an int subclass; "-rt True" is certainly a bug upstream, not "1 second".
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} {value!r} is invalid: expected an integer number of seconds")
    if value < RECOVER_FOREVER:
        raise ValueError(
            f"{name} {value} is invalid: use -1 (recover forever), 0 (fail as soon as recovery "
            "starts) or a number of seconds"
        )
    return value


def effective_recovery_timeout(transfer_rt: int | None, agent_rt: int | None) -> int:
    """The recovery timeout a transfer runs with, by the precedence of seed 003.

    The transfer's own ``-rt`` wins; else the source agent's ``transferRecoveryTimeout``; else -1
    (recover until successful). Only the value that decides is validated: a bad agent property is
    refused at agent startup, and must not break transfers that override it.
    """
    if transfer_rt is not None:
        return check_recovery_timeout(transfer_rt, "-rt")
    if agent_rt is not None:
        return check_recovery_timeout(agent_rt, "transferRecoveryTimeout")
    return RECOVER_FOREVER


class RecoveryTimer:
    """The recovery counter of one transfer.

    Starts when the transfer enters recovering, is reset to 0 when it resumes, and has expired when
    the counter reaches the timeout (``counter == timeout`` fails the transfer, so ``>=``).
    """

    def __init__(self, timeout: int, clock: Clock) -> None:
        self.timeout = check_recovery_timeout(timeout, "recovery timeout")
        self._clock = clock
        self._started_at: float | None = None

    @property
    def running(self) -> bool:
        return self._started_at is not None

    @property
    def started_at(self) -> float | None:
        return self._started_at

    def start(self, at: float | None = None) -> None:
        """Start counting (from ``at`` on the clock's scale, default now).

        Idempotent while running: a second stall during the same outage must not buy the transfer
        a fresh timeout, or a flapping link would recover forever whatever -rt says.
        """
        if self._started_at is None:
            self._started_at = self._clock() if at is None else at

    def reset(self) -> None:
        """Stop and put the counter back to 0 (the transfer resumed, or left recovery for good)."""
        self._started_at = None

    def elapsed(self) -> float:
        if self._started_at is None:
            return 0.0
        return max(0.0, self._clock() - self._started_at)

    @property
    def deadline(self) -> float | None:
        """Clock value at which the timer expires; None if not running or recovering forever."""
        if self._started_at is None or self.timeout == RECOVER_FOREVER:
            return None
        return self._started_at + self.timeout

    def expired(self) -> bool:
        deadline = self.deadline
        # Compare against the deadline rather than elapsed >= timeout so that expired() and
        # deadline/seconds_until_timeout agree to the last float bit.
        return deadline is not None and self._clock() >= deadline
