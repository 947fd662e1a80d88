"""Data in flight across all the transfers of one agent, under one cap (agentMaxDataInFlight).

Each transfer's window bounds its own data in flight; without a cap per agent, N concurrent transfers hold
N windows (64 × 4 MiB: the agents' memory reached 250-300 MiB in the benchmark). The source sessions report
what they have in flight and ask how much more they may send. No IO: the session posts the wake-ups.
"""

from __future__ import annotations


class InFlightBudget:
    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError(f"cap {cap} is invalid: must be >= 0 (0: no cap)")
        self.cap = cap
        self._used: dict[str, int] = {}
        self._total = 0
        self._waiting: set[str] = set()

    @property
    def total(self) -> int:
        return self._total

    def report(self, tid: str, in_flight: int) -> set[str]:
        """Transfer `tid` now has `in_flight` bytes sent and not acknowledged. Returns the transfers that
        were held back and may send now (to be woken), which is none unless the total went down."""
        before = self._total
        self._total += in_flight - self._used.get(tid, 0)
        if in_flight:
            self._used[tid] = in_flight
        else:
            self._used.pop(tid, None)
        if self._total < before and self._waiting:
            woken, self._waiting = self._waiting - {tid}, set()
            return woken
        return set()

    def release(self, tid: str) -> set[str]:
        """The transfer ended or stopped sending (recovering): its bytes no longer count."""
        self._waiting.discard(tid)
        return self.report(tid, 0)

    def allowance(self, tid: str, in_flight: int, chunk: int) -> int | None:
        """Bytes transfer `tid` (with `in_flight` bytes out) may send now, reserved for it until its next
        `report` (sessions send while others run: without the reservation each would be granted the same
        room); None: no cap. A transfer with nothing in flight may always send one chunk, so that no
        transfer waits for ever behind others (the total can then pass the cap by a chunk per transfer)."""
        self.report(tid, in_flight)
        if self.cap == 0:
            return None
        left = self.cap - self._total
        if in_flight == 0:
            left = max(left, chunk)
        if left <= 0:
            self._waiting.add(tid)
            return 0
        self.report(tid, in_flight + left)
        return left
