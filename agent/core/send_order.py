"""Which bytes of which file the source sends next: the files in index order, a send window each
(agent.core.window), and the small files that travel whole, many to a frame, in bundles.

No IO: the source session (agent.core.source_session) owns one and decides when to send; the shell pulls
one send at a time (`next_send`) and says how it went, so a read that fails changes what follows.
"""

from __future__ import annotations

from typing import Any

from .source_actions import Send, SendBundle, SendChunk, SendFileEnd
from .statuses import FileStatus
from .window import AckRequests, SendWindow

# Files up to this size (and half a chunk) travel whole, many to a frame, when the destination supports it.
BUNDLE_FILE_MAX = 64 * 1024


class _Sums:
    """Sums of a list of numbers, each changed and any range summed in O(log n) (a Fenwick tree)."""

    def __init__(self, n: int) -> None:
        self._t = [0] * (n + 1)

    def add(self, pos: int, delta: int) -> None:
        pos += 1
        while pos < len(self._t):
            self._t[pos] += delta
            pos += pos & -pos

    def before(self, pos: int) -> int:
        """The sum of the numbers at positions < pos."""
        total = 0
        while pos > 0:
            total += self._t[pos]
            pos -= pos & -pos
        return total


class SendOrder:
    def __init__(self, files: dict[int, Any], limits: Any, bundle_entry_bytes: int, max_bundle_files: int) -> None:
        """`files`: the transfer's SourceFile records by index; `limits`: chunk_size and window_chunks, read
        live (the broker probe may change the chunk size); the rest: the wire format's (agent.wire.protocol)."""
        self.files = files
        self.limits = limits
        self.windows = {f.index: SendWindow(f.size, limits.chunk_size, 1 << 30, start_offset=f.offset)
                        for f in files.values() if f.status == FileStatus.READY}  # a file leaves with its result
        self.end_sent: set[int] = set()  # files whose FileEnd (or bundle) went in this epoch
        # files whose status, offset or window changed since agent.core.progress_tally counted them
        self.touched: set[int] = set()
        self.bundles = False  # the destination takes bundles ("bundle" in its features)
        self.acks = AckRequests(limits.window_chunks)  # .sparse: FLAG_NO_ACK on the chunks that need no ack
        self._entry_bytes = bundle_entry_bytes
        self._max_bundle_files = max_bundle_files
        self._order = sorted(self.windows)
        self._at = {idx: pos for pos, idx in enumerate(self._order)}
        # each window's bytes in flight by position in _order, as last counted: every change of a window's
        # offsets goes through this order (take, on_ack, the rewinds, drop) and is counted again, so that
        # window_left sums them in O(log files) instead of walking the files in flight
        self._flight = _Sums(len(self._order))
        self._counted: dict[int, int] = {}
        # no file at a position in [_first, _scan) needs sending: a file stops needing it for good in this epoch
        # (its windows' window_chunks are unbounded, so an ack never lets more of it go) until a rewind
        self._scan = 0
        # Files are sent in index order, so the windows after the first one with something left to send have
        # nothing in flight: the scan stops there, and 10,000 files cost no more per chunk than one
        self._first = 0  # position in _order of the first file without a result
        self._pos = 0  # where the round of sends under way stands
        self._current: int | None = None  # the file being sent by chunks
        self._budget = 0
        self._sending = False

    @property
    def window_bytes(self) -> int:
        return self.limits.window_chunks * self.limits.chunk_size

    def ready(self, idx: int) -> bool:
        f = self.files.get(idx)
        return f is not None and f.status == FileStatus.READY and idx in self.windows

    def acked(self, f: Any) -> int:
        if f.status == FileStatus.DONE:
            return f.size
        w = self.windows.get(f.index)
        return w.acked if w else f.offset

    def rewind(self, idx: int, offset: int) -> int:
        """Send file `idx` again from `offset` (what the destination holds); the bytes to send again."""
        w = self.windows[idx]
        resent = max(0, w.next_offset - offset)
        if w.chunk_size != self.limits.chunk_size:
            # the broker probe (agent.broker_probe) changed the chunk size of this broker connection: offsets
            # are byte offsets, so resuming at `offset` with another chunk size is fine
            w = self.windows[idx] = SendWindow(w.size, self.limits.chunk_size, w.window_chunks, start_offset=offset,
                                               early_acks=w.early_acks)
        w.rewind(offset)
        self.end_sent.discard(idx)
        self.touched.add(idx)
        self._first = self._scan = 0  # the send frontier may have moved back
        self._count(idx)
        return resent

    def on_ack(self, idx: int, offset: int) -> bool:
        """The destination acked file `idx` up to `offset` (agent.core.window.SendWindow.on_ack)."""
        moved = self.windows[idx].on_ack(offset)
        self._count(idx)
        return moved

    def rewind_in_place(self, idx: int, offset: int) -> None:
        """A rewinding ack: send file `idx` again from `offset`, in this window."""
        self.end_sent.discard(idx)
        self.windows[idx].rewind(offset)
        self._scan = min(self._scan, self._at[idx])
        self._count(idx)

    def drop(self, idx: int) -> None:
        """File `idx` has its result: nothing more of it is sent or in flight."""
        if self.windows.pop(idx, None) is not None:
            self._count(idx)

    def take_early_acks(self) -> None:
        """A fan-out leg's: its destination may ack a chunk of the shared stream before this order sent it
        (agent.core.window, early acks)."""
        for w in self.windows.values():
            w.early_acks = True

    def next_position(self) -> tuple[int, int] | None:
        """(file index, offset) of the next chunk this order would send, window room aside (None: no chunk left
        to send); a fan-out leg's expected position (agent.core.fanout_credits)."""
        for idx in self._order[self._first:]:
            w = self.windows.get(idx)
            if w is not None and self.ready(idx) and w.next_offset < w.size:
                return idx, w.next_offset
        return None

    # ------------------------------------------------------------------ a round of sends

    def window_left(self) -> int:
        """Bytes the window allows in flight beyond what is (the files from the first without a result to the
        first with something to send); where sending continues is kept for the round."""
        order = self._order
        while self._first < len(order) and order[self._first] not in self.windows:
            self._first += 1
        pos = max(self._scan, self._first)
        while pos < len(order) and not self._needs_sending(order[pos]):
            pos += 1
        self._scan = self._pos = pos
        return self.window_bytes - (self._flight.before(min(pos + 1, len(order))) - self._flight.before(self._first))

    def start(self, budget: int) -> None:
        """Send from where `window_left` found, at most `budget` bytes (the window within the agent's cap)."""
        self._budget, self._current, self._sending = budget, None, True

    @property
    def budget_left(self) -> int:
        return self._budget

    def next_send(self) -> Send | None:
        """The next thing to send in this round, or None when the round is over."""
        order = self._order
        while self._sending:
            idx, self._current = self._current, None
            if idx is not None and self.ready(idx):
                f, w = self.files[idx], self.windows[idx]
                if self._budget > 0 and w.can_send():
                    self._current = idx
                    offset, length = w.take()
                    self.touched.add(idx)  # a fan-out leg's early ack moves `acked` here
                    self._count(idx)
                    self._budget -= length
                    last = offset + length >= f.size
                    return SendChunk(idx, offset, length, last, self.acks.ask(last, self._budget))
                if w.next_offset >= f.size and idx not in self.end_sent:
                    return SendFileEnd(idx)
            if not (self._pos < len(order) and self._budget > 0):
                break
            idx = order[self._pos]
            if self.bundles and self._bundleable(idx):
                return self._bundle()
            self._pos += 1
            if self.ready(idx):
                self._current = idx
        self._sending = False
        return None

    def stop(self) -> None:
        """The shell cannot send (the link is down): the round is over."""
        self._sending = False

    def bundled(self, idx: int) -> None:
        """File `idx` of a SendBundle was read and goes in the frame."""
        if self.files[idx].size:
            self.windows[idx].take()  # the whole file: size <= half a chunk
            self.touched.add(idx)
            self._count(idx)
        self.end_sent.add(idx)

    def bundle_sent(self, sent: int) -> None:
        self._budget -= sent

    def file_end_sent(self, idx: int) -> None:
        self.end_sent.add(idx)

    # ------------------------------------------------------------------ internals

    def _count(self, idx: int) -> None:
        """Count file `idx`'s bytes in flight again (its window changed or went)."""
        w = self.windows.get(idx)
        now = w.in_flight_bytes if w is not None else 0
        delta = now - self._counted.get(idx, 0)
        if delta:
            self._flight.add(self._at[idx], delta)
            self._counted[idx] = now

    def _needs_sending(self, idx: int) -> bool:
        w = self.windows.get(idx)
        return w is not None and (w.can_send() or idx not in self.end_sent)

    def _bundleable(self, idx: int) -> bool:
        """Small, and nothing of it sent in this epoch: it can travel whole in a bundle."""
        w = self.windows.get(idx)
        f = self.files[idx]
        return (w is not None and f.status == FileStatus.READY and w.next_offset == 0 and idx not in self.end_sent
                and f.size <= min(BUNDLE_FILE_MAX, self.limits.chunk_size // 2))

    def _bundle(self) -> SendBundle | None:
        """Consecutive small files from the send position, up to a chunk's worth of bytes, in one frame."""
        chunk, budget, order = self.limits.chunk_size, self._budget, self._order
        if budget < chunk // 2 < self.window_bytes - budget:
            # little room, and bundles in flight whose answers will make more: wait for a fuller bundle rather
            # than send a train of one-file frames (each costs a message both ways)
            self._sending = False
            return None
        batch: list[int] = []
        room = min(chunk, budget)
        # the answer (one FileResults, a few hundred bytes a file) must pass the broker too
        most = max(1, min(self._max_bundle_files, chunk // 512))
        while self._pos < len(order) and len(batch) < most:
            j = order[self._pos]
            if self._bundleable(j):
                cost = self.files[j].size + self._entry_bytes + 64
                if batch and cost > room:
                    break
                batch.append(j)
                room -= cost
            elif self._needs_sending(j):
                break  # sent by chunks, in its turn
            self._pos += 1
        return SendBundle(tuple(batch))
