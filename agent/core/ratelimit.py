"""Token buckets: how many commands an agent reads, and how many refusals it answers, per second; and how
many bytes a second an agent and a transfer send (agentMaxBandwidth, --bandwidth: `SendRate`).

No IO and no clock of its own: the caller passes one (time.monotonic; a test's own in
tests/unit/test_ratelimit.py), so the policy is tested by tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

Clock = Callable[[], float]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; full at the start. Each `take` spends one."""

    def __init__(self, rate: float, burst: int, clock: Clock, *, full: bool = True) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got rate {rate}, burst {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst) if full else 0.0
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        # a clock that goes back (it should not: monotonic) refills nothing rather than taking tokens away
        self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def take(self) -> bool:
        if self._refill() >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def available(self) -> float:
        """The tokens there are now (negative: a debt, what `spend` took beyond them)."""
        return self._refill()

    def spend(self, n: float) -> None:
        """Take `n` tokens whether there are or not: what was sent anyway (a control message) is a debt
        that later `wait`s pay back."""
        self._refill()
        self._tokens -= n

    def wait(self, n: float) -> float:
        """Seconds until `n` tokens are there (at most `burst` are ever waited for: more never are)."""
        missing = min(float(n), float(self.burst)) - self._refill()
        return max(0.0, missing / self.rate)


class SendRate:
    """Bytes a second, through every bucket given (the agent's agentMaxBandwidth, the transfer's --bandwidth):
    the lowest rate applies. A message of `size` bytes may go when every bucket holds `size` tokens (or, a
    message larger than a bucket's burst, a full bucket); each bucket's owner spends what went (the agent's
    publish, the transfer's driver), so the bytes sent by time t never pass rate x t by more than a message.
    With no bucket it lets everything through."""

    def __init__(self, *buckets: TokenBucket | None) -> None:
        self.buckets = [b for b in buckets if b is not None]

    def allowance(self, size: int) -> int | None:
        """Bytes that may be sent now, in messages of about `size` bytes (None: no limit; 0: wait). A sender
        that keeps sending while its allowance is above 0 (agent.core.send_order's budget) sends whole messages
        of at most the tokens there are."""
        if not self.buckets:
            return None
        least = min(min(b.available(), float(b.burst)) - min(float(size), float(b.burst)) + 1.0
                    for b in self.buckets)
        return max(0, int(least))

    def wait(self, size: int) -> float:
        """Seconds until a message of `size` bytes may go (0: now)."""
        return max((b.wait(size) for b in self.buckets), default=0.0)


def bandwidth_bucket(rate: int, message_bytes: int, clock: Clock, seconds: float = 0.5) -> TokenBucket | None:
    """The bucket of a rate in bytes a second (0: none, unlimited), empty at the start, holding `seconds` of
    bytes or two messages, whichever is more. A transfer's bucket starts at its first send and holds half a
    second: it never beats its rate, and a sender woken late (two cores shared with the broker and the
    destination) loses none of it (with a tenth of a second, up to a third on a loaded machine:
    docs/performance.md, "Bandwidth limits"). The agent's bucket lives as long as the agent, so what it holds
    after a quiet spell goes at once: it holds a tenth of a second (`seconds` 0.1), the most it passes its rate."""
    if rate <= 0:
        return None
    return TokenBucket(rate, max(int(rate * seconds), 2 * message_bytes, 1), clock, full=False)


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


class TransferPace:
    """What a source transfer's driver asks of the rates (agent/source.py): how many bytes this round of sends
    may take, how long to sleep when it was cut short, and what it published (spent from its own bucket; the
    agent's is spent by the agent's publish, for every message it sends). The legs of a fan-out share one
    --bandwidth bucket (`share`): the rate is the transfer's, for all its destinations together."""

    def __init__(self, agent: TokenBucket | None, rate: int, message_bytes: int, clock: Clock) -> None:
        self._agent, self._own_rate, self._message, self._clock = agent, rate, message_bytes, clock
        self.own: TokenBucket | None = None  # --bandwidth (None: not given, or not sending yet)
        self.rate = SendRate(agent)
        self.paced = False  # the last round was cut short by a rate: wake when there are tokens again
        self._first: TransferPace | None = None  # whose --bandwidth bucket this one spends from (share)

    def share(self, first: "TransferPace") -> None:
        """Spend from and wait for `first`'s --bandwidth bucket, not one of this pace's own: a fan-out's legs
        (agent/fanout.py), whose shared publishes and unicast sends to every destination are one transfer's."""
        self._first = first

    def _bucket(self, make: bool) -> TokenBucket | None:
        if self._first is not None:
            return self._first._bucket(make)
        if make and self.own is None and self._own_rate:
            # made at the first send, not when the transfer was queued: time spent queued saves up nothing
            self.own = bandwidth_bucket(self._own_rate, self._message, self._clock)
        return self.own

    def budget(self, budget: int, message_bytes: int, free: int = 0) -> int:
        """`budget` cut to what the rates allow now, beyond the `free` bytes first in line that publish nothing
        (a fan-out leg's credits: agent.core.fanout_credits.held_ahead)."""
        own = self._bucket(True)
        if own is not None and own not in self.rate.buckets:
            self.rate = SendRate(self._agent, own)
        allowance = self.rate.allowance(message_bytes)
        if allowance is not None:
            allowance += free
        self.paced = allowance is not None and allowance < budget
        return budget if allowance is None else min(budget, allowance)

    def wait(self, wait: float, message_bytes: int) -> float:
        """The driver's sleep: `wait`, or less when the rate cut the round short and tokens come sooner. Never
        0 for the rate's sake: with the tokens there, what holds the sender back is its window, and a sleep
        of 0 would spin without ever reading the acknowledgements that open it."""
        rate_wait = self.rate.wait(message_bytes) if self.paced else 0.0
        return min(wait, rate_wait) if rate_wait > 0 else wait

    def sent(self, n: int) -> None:
        own = self._bucket(False)
        if own is not None:
            own.spend(n)
