"""Publishing once for many destinations (a fan-out transfer, docs/protocol.md#fan-out): the group head and
each leg's credits. No IO: the source's shared stream (agent/fanout_stream.py) asks and tells.

A chunk is (file index, offset, length); its position is (index, offset), compared lexicographically. The head
is the furthest chunk published on the shared topic. When a member leg publishes a chunk beyond the head, every
other member leg whose expected position is that chunk (its next send position, advanced past the chunks it is
already credited with), that holds fewer than its bound of credits (2 x window_chunks), and that has no
unicast chunk of that file unacknowledged or whose destination acknowledged the file to within `reach` of the
chunk's end, is credited with it: when that leg comes to send the chunk, it counts it sent and publishes
nothing. A leg behind the head in the same file is credited too when the chunk ends within `reach` of what its
destination acknowledged (which holds it ahead, agent.core.fanout_ahead): it re-joins, sending the gap unicast
itself. A leg further behind gets no credits and is served by unicast, within its own send window, so a slow
destination never holds the others back.
A rewind or a resync of a leg clears its credits (what it holds is the destination's word again); a credit
before the leg's next send position (of a file its destination refused or failed) is forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Pos = tuple[int, int]
Chunk = tuple[int, int, int]


class FanoutCredits:
    def __init__(self, legs: Iterable[str], window_chunks: int, sizes: Mapping[int, int], reach: int = 0) -> None:
        """`sizes`: each file's size by index (the files are sent in index order). `reach`: bytes beyond what a
        leg's destination acknowledged that it holds a shared chunk ahead (AHEAD_CHUNKS x chunk size); 0: none."""
        if window_chunks <= 0:
            raise ValueError(f"window_chunks {window_chunks} is invalid: must be > 0")
        self.bound = 2 * window_chunks
        self.reach = reach
        self.head: Pos | None = None
        self.members: set[str] = set()
        self.credits: dict[str, dict[Pos, int]] = {leg: {} for leg in legs}
        # why a member leg was not credited with a published chunk, counted by leg (instrumentation)
        self.missed: dict[str, dict[str, int]] = {leg: {} for leg in self.credits}
        self._sizes = dict(sizes)
        order = sorted(self._sizes)
        self._after = {a: b for a, b in zip(order, order[1:])}  # the next file in sending order

    # ------------------------------------------------------------------ membership

    def join(self, leg: str, member: bool) -> None:
        """The leg's last resync reply said `fanout: true` (member) or not; either way its credits go."""
        (self.members.add if member else self.members.discard)(leg)
        self.clear(leg)

    def leave(self, leg: str) -> None:
        """The leg entered recovery (or ended): unicast only until its next resync reply."""
        self.members.discard(leg)
        self.clear(leg)

    def clear(self, leg: str) -> None:
        """A rewind or resync of the leg: its credits are no longer true."""
        self.credits[leg].clear()

    # ------------------------------------------------------------------ a leg about to send a chunk

    def take(self, leg: str, chunk: Chunk) -> bool:
        """True: `leg` holds a credit for `chunk` (now spent): count it sent, publish nothing."""
        length = self.credits[leg].pop(chunk[:2], None)
        return length is not None and length == chunk[2]

    def publishes(self, leg: str, chunk: Chunk) -> bool:
        """Should `leg` publish `chunk` on the shared topic (it is a member and the chunk is beyond the head)?"""
        return leg in self.members and (self.head is None or chunk[:2] > self.head)

    def published(self, leg: str, chunk: Chunk, next_positions: Mapping[str, Pos | None],
                  busy: Mapping[str, set[int]], acked: Mapping[str, int] | None = None) -> list[str]:
        """`leg` published `chunk` on the shared topic: it is the head, and the legs credited with it are
        returned. `next_positions`: each leg's next send position (agent.core.send_order); `busy`: the files
        each leg has unicast chunks of unacknowledged; `acked`: each leg's acknowledged offset in the chunk's file.
        A leg at the head is credited if it is not busy, or if the chunk ends within `reach` of what it acked (its
        destination holds it until the unicast before it is written); a leg behind the head in the same file,
        if the chunk ends within `reach` (it re-joins: it sends the gap unicast, then takes the credits)."""
        self.head = chunk[:2]
        credited = []
        for other in sorted(self.members):
            if other == leg:
                continue
            mine = self.credits[other]
            why = self._why_not(other, chunk, next_positions.get(other), busy, (acked or {}).get(other))
            if why is not None:
                self.missed[other][why] = self.missed[other].get(why, 0) + 1
                continue
            mine[self.head] = chunk[2]
            credited.append(other)
        return credited

    def _why_not(self, other: str, chunk: Chunk, next_pos: Pos | None, busy: Mapping[str, set[int]],
                 acked: int | None) -> str | None:
        self._forget_passed(other, next_pos)
        if len(self.credits[other]) >= self.bound:
            return "bound"
        exp = self.expected(other, next_pos)
        if exp is None:
            return "idle"
        within = acked is not None and exp[0] == chunk[0] and chunk[1] + chunk[2] - acked <= self.reach
        if exp == chunk[:2]:
            return None if within or chunk[0] not in busy.get(other, ()) else "busy"
        if exp > chunk[:2]:
            return "ahead"
        return None if within else "behind"

    def _forget_passed(self, leg: str, next_pos: Pos | None) -> None:
        """Credits before the leg's next send position will never be taken (a file its destination refused or
        failed, which its send order skips): they go, rather than hold its bound."""
        mine = self.credits[leg]
        if next_pos is not None and mine and min(mine) < next_pos:
            for pos in [p for p in mine if p < next_pos]:
                del mine[pos]

    def expected(self, leg: str, next_pos: Pos | None) -> Pos | None:
        """Where `leg` will be once it has taken its credits: its next send position advanced past them."""
        return self._past_credits(leg, next_pos)[0]

    def held_ahead(self, leg: str, next_pos: Pos | None) -> int:
        """Bytes of the credits `leg` takes first, from its next send position on: it counts them sent and
        publishes nothing, so the transfer's --bandwidth does not hold them back (agent.core.ratelimit)."""
        return self._past_credits(leg, next_pos)[1]

    def _past_credits(self, leg: str, next_pos: Pos | None) -> tuple[Pos | None, int]:
        pos, mine, held = next_pos, self.credits[leg], 0
        while pos is not None and pos in mine:
            held += mine[pos]
            pos = self._advance(pos, mine[pos])
        return pos, held

    def _advance(self, pos: Pos, length: int) -> Pos | None:
        idx, offset = pos[0], pos[1] + length
        if offset < self._sizes.get(idx, 0):
            return idx, offset
        nxt = self._after.get(idx)
        while nxt is not None and self._sizes[nxt] == 0:  # an empty file has no chunk to be expected at
            nxt = self._after.get(nxt)
        return None if nxt is None else (nxt, 0)
