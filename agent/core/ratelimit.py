"""Token buckets: how many commands an agent reads, and how many refusals it answers, per second.

No IO and no clock of its own: the caller passes one (time.monotonic; a test's own in
tests/unit/test_ratelimit.py), so the policy is tested by tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

Clock = Callable[[], float]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; full at the start. Each `take` spends one."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got rate {rate}, burst {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        # a clock that goes back (it should not: monotonic) refills nothing rather than taking tokens away
        self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


UNTRUSTED = "untrusted"  # the one class of every command that does not claim a trusted requester's name


class CommandAdmission:
    """Whether a command is read at all, decided from the requester it claims, before anything costly
    (parsing it, checking its signature).

    A command claiming a requester the agent trusts is charged to that requester's own bucket; every other
    command (unknown or no requester, unreadable, and every command when authority checking is off) to one
    shared bucket. So forgeries in the name of nobody the agent trusts, however many, never delay a
    trusted requester. The claim is not checked here (that is the signature check's job): forgeries in a
    trusted requester's name use up that requester's bucket, and only that one.
    """

    def __init__(self, clock: Clock, requester_rate: float, requester_burst: int, untrusted_rate: float,
                 untrusted_burst: int, max_requesters: int = 1024) -> None:
        self._clock = clock
        self._requester = (requester_rate, requester_burst)
        self._untrusted = TokenBucket(untrusted_rate, untrusted_burst, clock)
        self._buckets: dict[str, TokenBucket] = {}
        self._max = max_requesters
        self.dropped: Counter[str] = Counter()  # by requester (or UNTRUSTED): commands not admitted

    def admit(self, requester: str | None, trusted: bool) -> bool:
        """True if the command may be read; False (and counted in `dropped`) if over its bucket's rate."""
        if trusted and requester:
            bucket = self._buckets.get(requester)
            if bucket is None:
                if len(self._buckets) >= self._max:  # trusted names only, so this is a trust file of >1024
                    self._buckets.pop(next(iter(self._buckets)))
                bucket = self._buckets[requester] = TokenBucket(*self._requester, self._clock)
            key = requester
        else:
            bucket, key = self._untrusted, UNTRUSTED
        if bucket.take():
            return True
        self.dropped[key] += 1
        return False


class Throttle:
    """Lets at most `rate` a second through (`burst` at once), and counts what it held back."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self._bucket = TokenBucket(rate, burst, clock)
        self.held = 0  # held back since the start

    def allow(self) -> bool:
        if self._bucket.take():
            return True
        self.held += 1
        return False
