"""Send window for one file: which chunk to send next, and how much the destination holds.

The destination acknowledges the contiguous bytes it has written and flushed (a checkpoint), so an
ack is a single offset, and memory stays bounded by ``window_chunks × chunk_size`` whatever
the file size.
"""

from __future__ import annotations

from collections import deque


class SendWindow:
    def __init__(
        self, size: int, chunk_size: int, window_chunks: int, start_offset: int = 0, early_acks: bool = False
    ) -> None:
        if size < 0:
            raise ValueError(f"size {size} is invalid: must be >= 0")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size {chunk_size} is invalid: must be > 0")
        if window_chunks <= 0:
            raise ValueError(f"window_chunks {window_chunks} is invalid: must be > 0")
        if not 0 <= start_offset <= size:
            raise ValueError(f"start_offset {start_offset} is outside the file (0..{size})")
        self.size = size
        self.chunk_size = chunk_size
        self.window_chunks = window_chunks
        self._acked = start_offset
        self._next = start_offset
        # End offsets of chunks sent and not yet wholly acknowledged. A chunk counts against the
        # window until the destination holds all of it, so a partial ack frees nothing.
        self._in_flight: deque[int] = deque()
        # An ack beyond what this window sent (a fan-out destination may ack a chunk of the shared stream before
        # its leg took the credit for it: docs/protocol.md#fan-out), applied when take() passes it.
        self._early = 0
        self.early_acks = early_acks  # only a fan-out leg's window takes them; for the others such an ack is refused

    @property
    def early_ack(self) -> int:
        return self._early

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def next_offset(self) -> int:
        return self._next

    @property
    def in_flight_bytes(self) -> int:
        return self._next - self._acked

    @property
    def in_flight_chunks(self) -> int:
        return len(self._in_flight)

    @property
    def done(self) -> bool:
        # An empty file is done from the start: there is nothing to send and nothing to wait for.
        return self._acked == self.size

    def can_send(self) -> bool:
        return self._next < self.size and len(self._in_flight) < self.window_chunks

    def take(self) -> tuple[int, int]:
        """Return (offset, length) of the next chunk and count it as in flight."""
        if not self.can_send():
            raise RuntimeError(
                f"cannot send: next_offset={self._next} size={self.size} "
                f"in_flight={len(self._in_flight)}/{self.window_chunks}"
            )
        offset = self._next
        length = min(self.chunk_size, self.size - offset)
        self._next = offset + length
        self._in_flight.append(self._next)
        if self._early and self._early <= self._next:
            early, self._early = self._early, 0
            self.on_ack(early)
        return offset, length

    def on_ack(self, offset: int) -> bool:
        """Record that the destination holds bytes [0, offset). True if that is progress.

        Acks are monotonic: a stale or duplicate ack (<= acked), e.g. reordered by the broker, is
        ignored; so is one beyond what was sent, which only a confused or hostile peer sends, except with
        `early_acks` (a fan-out leg: its destination can hold a shared chunk before the leg counted it sent):
        then it acknowledges everything sent, and the rest is remembered, applied when take() passes it.
        """
        if self.early_acks and self._next < offset <= self.size:
            # the destination holds all this window sent, and more: everything sent is acked now, the rest when
            # take() passes it (else a full window of credited chunks would wait for an ack that came already)
            self._early = max(self._early, offset)
            offset = self._next
        if offset <= self._acked or offset > self._next:
            return False
        self._acked = offset
        while self._in_flight and self._in_flight[0] <= offset:
            self._in_flight.popleft()
        return True

    def rewind(self, offset: int) -> None:
        """Resynchronise: the destination reports it holds exactly [0, offset); resend from there.

        May move backwards past ``acked``: a destination that lost unflushed data is the authority.
        """
        if not 0 <= offset <= self.size:
            raise ValueError(f"rewind offset {offset} is outside the file (0..{self.size})")
        self._acked = self._next = offset
        self._in_flight.clear()
        self._early = 0

    def __repr__(self) -> str:
        return (
            f"SendWindow(size={self.size}, acked={self._acked}, next_offset={self._next}, "
            f"in_flight={len(self._in_flight)}/{self.window_chunks})"
        )


class AckRequests:
    """Which chunks ask the destination for an ack (the others carry FLAG_NO_ACK; docs/protocol.md#chunk-frame).

    Acks are cumulative, so one ack answers every chunk before it. The source asks where it would otherwise
    wait: at the end of a file (it then waits for the file's result), when this chunk uses the last of what the
    window or the agent's cap allows now (it then waits for an ack to free room), and at least once every
    quarter window, so room comes back while the rest of the window is still in flight.
    """

    def __init__(self, window_chunks: int, sparse: bool = False) -> None:
        if window_chunks <= 0:
            raise ValueError(f"window_chunks {window_chunks} is invalid: must be > 0")
        self.every = max(1, window_chunks // 4)
        self.sparse = sparse  # the destination understands FLAG_NO_ACK ("sparse_ack" in its features)
        self._unasked = 0  # chunks sent since the last that asked

    def ask(self, last: bool, room_left: int) -> bool:
        """For the chunk about to be sent: True if it must ask for an ack. `room_left`: bytes the source
        may still send after this chunk before it has to wait."""
        self._unasked += 1
        if not self.sparse or last or room_left <= 0 or self._unasked >= self.every:
            self._unasked = 0
            return True
        return False
