"""A source transfer's live progress figures (files_done, bytes_done, bytes_total, the first unfinished file),
kept up to date from the files that changed instead of summed over every file at each progress message.

No IO. The send order (agent.core.send_order) and the source session (agent.core.source_session) are the only
code that changes a file's status, offset or send window; each such change names the file in
`SendOrder.touched`, and `refresh` counts those files again. For 10,000 files a progress message costs
O(files changed since the last one), not O(files); the figures are the same as the plain sums
(tests/unit/test_progress_tally.py compares them over random sequences of events).
"""

from __future__ import annotations

from typing import Any

from .statuses import FileStatus


class ProgressTally:
    def __init__(self, files: dict[int, Any], sending: Any) -> None:
        self.files, self.sending = files, sending
        self._order = list(files)  # the order the plain scan goes (the files' dict order)
        self._pos = {idx: p for p, idx in enumerate(self._order)}
        self._seen: dict[int, tuple[int, int, int]] = {}  # idx -> (size, done 0/1, acked) as counted
        self.bytes_total = self.bytes_done = self.files_done = 0
        self._first = 0  # no file before this position of _order is READY
        for idx in self._order:
            self._count(idx)
        sending.touched.clear()

    def refresh(self) -> None:
        touched = self.sending.touched
        for idx in touched:
            if idx in self._seen:
                self._count(idx)
        touched.clear()

    def current(self) -> Any | None:
        """The first READY file (None: there is none), as the plain scan of the files finds it."""
        self.refresh()
        order, files = self._order, self.files
        while self._first < len(order) and files[order[self._first]].status != FileStatus.READY:
            self._first += 1
        return files[order[self._first]] if self._first < len(order) else None

    def _count(self, idx: int) -> None:
        f = self.files[idx]
        now = (f.size, int(f.status != FileStatus.READY), self.sending.acked(f))
        was = self._seen.get(idx, (0, 0, 0))
        self._seen[idx] = now
        self.bytes_total += now[0] - was[0]
        self.files_done += now[1] - was[1]
        self.bytes_done += now[2] - was[2]
        if not now[1]:
            self._first = min(self._first, self._pos[idx])
