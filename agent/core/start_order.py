"""Which queued transfer starts next: the highest priority first (-pr 0..9, 9 highest), in the order they
were queued within a priority (FIFO), at most `slots` (maxSourceTransfers) running at once.

No IO and no clock: the agent (agent/start_gate.py) queues a transfer when it is admitted (or reloaded after a
restart, in the store's order), asks `due()` which may start, and says `done` when one ends.
"""

from __future__ import annotations

import heapq
import itertools

PRIORITY_LOWEST = 0
PRIORITY_HIGHEST = 9
PRIORITY_DEFAULT = 0


def check_priority(value: object, flag: str = "-pr") -> int:
    """A transfer priority (a whole number 0..9); ValueError naming `flag` for anything else."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not PRIORITY_LOWEST <= value <= PRIORITY_HIGHEST:
        raise ValueError(f"{flag} {value!r} is not a priority: give a whole number from {PRIORITY_LOWEST} (lowest, "
                         f"the default) to {PRIORITY_HIGHEST} (highest)")
    return value


class StartOrder:
    """The queue of transfers waiting for a slot, and how many slots are taken."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.running: set[str] = set()
        self._queue: list[tuple[int, int, str]] = []  # (-priority, arrival, transfer id): a heap
        self._queued: set[str] = set()
        self._arrival = itertools.count()

    def queue(self, tid: str, priority: int = PRIORITY_DEFAULT) -> None:
        if tid in self._queued or tid in self.running:
            return
        heapq.heappush(self._queue, (-priority, next(self._arrival), tid))
        self._queued.add(tid)

    def due(self) -> list[str]:
        """The transfers that start now (they hold a slot from here on), in start order."""
        started: list[str] = []
        while self._queue and len(self.running) < self.slots:
            _, _, tid = heapq.heappop(self._queue)
            if tid not in self._queued:
                continue  # withdrawn
            self._queued.discard(tid)
            self.running.add(tid)
            started.append(tid)
        return started

    def done(self, tid: str) -> None:
        """`tid` ended (or was withdrawn before it started): its slot, or its place in the queue, is free."""
        self.running.discard(tid)
        self._queued.discard(tid)

    def waiting(self) -> list[str]:
        """The queued transfers in the order they will start."""
        return [tid for _, _, tid in sorted(self._queue) if tid in self._queued]
