"""Shared chunks a fan-out destination holds ahead of what it has written (docs/protocol.md#fan-out). No IO.

A chunk from the shared topic that does not continue exactly what the file holds, but lies beyond it, is kept
(at most AHEAD_CHUNKS of them per transfer) until the destination's own leg has filled the gap by unicast; it is
then written in order, as if it had just come. This lets a leg that fell behind the group head re-join the shared
stream: the source credits it with chunks at most AHEAD_CHUNKS beyond what it has acknowledged
(agent.core.fanout_credits), rather than serving the rest of the file to it by unicast while its destination
receives the shared stream for nothing. What lies at or before the written offset is dropped.
"""

from __future__ import annotations

from typing import Any

AHEAD_CHUNKS = 64  # at most this many chunks per fan-out destination transfer...
AHEAD_BYTES = 16 * 1024 * 1024  # ...and this many bytes: 64 chunks of a 16 MiB agentChunkSize would be 1 GiB


def ahead_reach(chunk_size: int) -> int:
    """How far beyond what a destination acknowledged it holds shared chunks: what the source may credit."""
    return min(AHEAD_CHUNKS * chunk_size, AHEAD_BYTES)


class AheadChunks:
    __slots__ = ("_held", "_bytes")

    def __init__(self) -> None:
        self._held: dict[tuple[int, int], Any] = {}  # (file index, offset) -> the chunk
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, chunk: Any, written: int) -> bool:
        """Keep `chunk` (beyond `written`, the offset its file holds)? False: full, or not beyond it."""
        if chunk.offset <= written:
            return False
        self.drop_before(chunk.index, written)
        key = (chunk.index, chunk.offset)
        if len(self._held) >= AHEAD_CHUNKS or self._bytes + len(chunk.data) > AHEAD_BYTES or key in self._held:
            return False
        self._held[key] = chunk
        self._bytes += len(chunk.data)
        return True

    def next(self, index: int, written: int) -> Any:
        """The held chunk that continues file `index` at `written` (now taken out), or None; older ones go."""
        self.drop_before(index, written)
        chunk = self._held.pop((index, written), None)
        if chunk is not None:
            self._bytes -= len(chunk.data)
        return chunk

    def drop_before(self, index: int, written: int) -> None:
        for key in [k for k in self._held if k[0] == index and k[1] < written]:
            self._bytes -= len(self._held.pop(key).data)

    def clear(self) -> None:
        self._held.clear()
        self._bytes = 0
