"""Commands have a lane of their own: rate limits before anything costly, a bounded queue, one task.

The link's one worker used to handle commands, data chunks and control messages in turn. 10,000 forged
commands a second for 10 s kept it busy for 77 s (each refusal cost a log line, a reply waiting for its
PUBACK and a log event): every legitimate command timed out, and a running transfer went 10x slower, its
chunks and acknowledgements queued behind the forgeries. Now the link's reader hands every command to
`CommandLane.offer` as it arrives, which decides from the requester the command claims (no parsing, no
signature check: core.ratelimit.CommandAdmission) whether it is read at all, and queues it for the lane's
own task. The data path never waits for a command, and a flood costs the agent a bounded amount of work.
Refusals are answered and logged at a bounded rate too (`refusal_allowed`), and what was dropped is counted
and logged. The limits are fixed and documented (docs/authority.md, "Floods of commands").
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter, deque
from typing import Awaitable, Callable, Collection

from .core.ratelimit import UNTRUSTED, CommandAdmission, Throttle

log = logging.getLogger("fte.agent")

# Commands read per second, and at once, in the name of each trusted requester (bench/submit.py sends its
# batches of transfers at once: they must all get through)
REQUESTER_RATE = 100.0
REQUESTER_BURST = 500
# ... and by everyone else together: unknown or no requester, unreadable commands, and every command when
# authority checking is off (then the agent cannot tell one requester from another)
UNTRUSTED_RATE = 100.0
UNTRUSTED_BURST = 500
# commands read and waiting for the lane's task; when full, the one waiting longest is dropped (its sender
# has most likely given up on it)
QUEUE_LIMIT = 1024
# refused commands (not authorized, malformed) answered, logged and published as events, per second and at
# once; beyond, they are counted only
REFUSAL_RATE = 5.0
REFUSAL_BURST = 20
# the count of what was dropped is logged at most this often (seconds), while there is any
SUMMARY_INTERVAL = 5.0
# the trusted requesters' names are read again from the trust file at most this often (seconds)
TRUSTED_REFRESH = 1.0

# The requester a command claims, read without parsing it (JSON allows other spellings, such as \u escapes,
# and a key given twice; any of those is simply not a trusted name here, and goes to the untrusted bucket)
_CLAIMED = re.compile(rb'"requester"\s*:\s*"([A-Za-z0-9_.@-]{1,64})"')
_PEEK_LIMIT = 64 * 1024  # a bigger command is no command a requester signs (and it would be refused as untrusted)


def claimed_requester(payload: bytes) -> str | None:
    if len(payload) > _PEEK_LIMIT:
        return None
    m = _CLAIMED.search(payload)
    return m.group(1).decode() if m else None


class CommandLane:
    """`offer` (synchronous, from the link's reader) admits and queues; `run` handles one command at a time."""

    def __init__(self, handle: Callable[[bytes], Awaitable[None]],
                 trusted: Callable[[], Collection[str]] | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._handle = handle
        self._trusted_source = trusted
        self._clock = clock
        self.admission = CommandAdmission(clock, REQUESTER_RATE, REQUESTER_BURST, UNTRUSTED_RATE, UNTRUSTED_BURST)
        self.refusals = Throttle(REFUSAL_RATE, REFUSAL_BURST, clock)
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self.queue_drops = 0
        self._trusted: frozenset[str] = frozenset()
        self._trusted_at = -1e9
        # what the last summary line reported
        self._reported: Counter[str] = Counter()
        self._reported_queue = 0
        self._reported_held = 0
        self._summary_at = -1e9

    @property
    def dropped(self) -> int:
        """Commands dropped unread since the start (over a rate limit, or the queue full)."""
        return sum(self.admission.dropped.values()) + self.queue_drops

    def refusal_allowed(self) -> bool:
        """May a refused command be answered and logged now? If not, it is only counted (`refusals.held`)."""
        return self.refusals.allow()

    def _trusted_names(self) -> frozenset[str]:
        if self._trusted_source is None:
            return frozenset()
        now = self._clock()
        if now - self._trusted_at >= TRUSTED_REFRESH:
            self._trusted_at = now
            try:
                self._trusted = frozenset(self._trusted_source())
            except Exception:  # an unreadable trust file: nobody is trusted (the authority check says why)
                self._trusted = frozenset()
        return self._trusted

    def offer(self, payload: bytes) -> None:
        requester = claimed_requester(payload)
        trusted = requester is not None and requester in self._trusted_names()
        if not self.admission.admit(requester, trusted):
            self._summarise()
            return
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self.queue_drops += 1
            self._summarise()
        self._queue.append(payload)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                try:  # woken at least every SUMMARY_INTERVAL: the count of a flood that ended is logged too
                    await asyncio.wait_for(self._ready.wait(), SUMMARY_INTERVAL)
                except asyncio.TimeoutError:
                    pass
                self._summarise()
                continue
            payload = self._queue.popleft()
            try:
                await self._handle(payload)
            except Exception:  # a bad command must never take the agent down
                log.exception("error handling a command")

    def _summarise(self) -> None:
        """One log line, at most every SUMMARY_INTERVAL, with what was dropped or not answered since the last."""
        now = self._clock()
        if now - self._summary_at < SUMMARY_INTERVAL:
            return
        by_bucket = self.admission.dropped - self._reported
        queue = self.queue_drops - self._reported_queue
        held = self.refusals.held - self._reported_held
        if not by_bucket and not queue and not held:
            return
        since = now - self._summary_at
        self._summary_at = now
        self._reported = Counter(self.admission.dropped)
        self._reported_queue, self._reported_held = self.queue_drops, self.refusals.held
        why = [f"{n} over the rate limit of "
               + ("untrusted and unsigned requesters" if key == UNTRUSTED else f"requester {key!r}")
               for key, n in by_bucket.most_common(5)]
        if queue:
            why.append(f"{queue} with the command queue full")
        window = f"in the last {since:.0f} s" if since < 3600 else "since the agent started"
        log.warning("command flood: %s, %d command(s) dropped unread%s and %d refused command(s) neither "
                    "answered nor logged (beyond %g refusals a second); see docs/authority.md, floods of commands",
                    window, sum(by_bucket.values()) + queue, f" ({', '.join(why)})" if why else "", held,
                    REFUSAL_RATE)
