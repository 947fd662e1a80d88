"""The shared stream of a fan-out transfer at its source (docs/protocol.md#fan-out): a chunk published once on
`<p>/Fanout/<source>/<tid>` for every member leg, under the group key G (AES-GCM, as a unicast frame is under
the transfer key), and the credits that tell the other legs not to send it again (agent.core.fanout_credits).

A leg about to send a chunk asks `send`: it holds a credit for it (counted sent, nothing published), or it is a
member and the chunk is beyond the head (published here, the legs at that position credited), or it sends the
chunk unicast on its own `Data` topic as an ordinary transfer does (None). Bundles are never shared.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from .core.fanout_ahead import ahead_reach
from .core.fanout_credits import FanoutCredits
from .core.lifecycle import TransferState as S
from .core.source_actions import SendChunk
from .fileio import read_failed, source_changed
from .source_files import SourceChanged
from .wire.binding import ChunkSealer

log = logging.getLogger("fte.source")

DATA_QOS = 1
# At the start, a member leg waits (at most this long) for the other legs offered the shared stream to finish
# their negotiation, so that the first chunks are published once for all rather than raced by the first leg
START_GRACE = 5.0


class SharedStream:
    def __init__(self, ctx: Any, fanout: Any) -> None:
        self.ctx = ctx
        self.fanout = fanout
        key = fanout.rec.header.get("fanout_key")
        self.sealer = ChunkSealer(base64.b64decode(key), False, True) if key else None
        self.topic = ctx.topics.fanout(ctx.name, fanout.tid)
        first = next(iter(fanout.legs.values()))
        self.credits = FanoutCredits(fanout.legs, ctx.window_chunks,
                                     {f.index: f.size for f in first.session.files.values()},
                                     reach=ahead_reach(ctx.chunk_size))  # what a destination holds ahead
        self.unicast: dict[str, dict[int, int]] = {d: {} for d in fanout.legs}  # file -> end of its last unicast
        self.published_bytes = 0
        # per leg: chunks whose credit it took, it published, it sent unicast (as a member / not), for the log
        self.counts: dict[str, dict[str, int]] = {d: dict.fromkeys(("taken", "published", "unicast_member",
                                                                    "unicast_other"), 0) for d in fanout.legs}
        self.started = time.monotonic()

    def control(self, leg: Any, msg: Any) -> None:
        """A control message for `leg`, before its session takes it: a resync reply of its epoch makes it a
        member iff it says `fanout: true` (and its offer carried G); a rewind clears its credits."""
        if msg.kind == "resync_reply" and msg.epoch == leg.session.epoch:
            member = bool(msg.fanout) and self.sealer is not None and bool(leg.rec.header.get("fanout"))
            self.credits.join(leg.dest, member)
            for other in self.fanout.legs.values():
                if other is not leg:
                    other.post("wake")  # a leg held at the start (holding) may go
        elif msg.kind == "ack" and msg.rewind:
            self.credits.clear(leg.dest)

    def holding(self, leg: Any) -> bool:
        """Should member `leg` wait before it sends (another leg offered the stream is still negotiating, and
        the start grace has not run out)? Bounded: START_GRACE."""
        if leg.dest not in self.credits.members or time.monotonic() - self.started > START_GRACE:
            return False
        return any(o is not leg and o.rec.header.get("fanout") and o.state in (S.QUEUED, S.NEGOTIATING)
                   for o in self.fanout.legs.values())

    def credited(self, leg: Any) -> int:
        """Bytes of the credits `leg` takes first from its next send on (sent without a publish)."""
        if leg.dest not in self.credits.members:
            return 0
        return self.credits.held_ahead(leg.dest, leg.session.sending.next_position())

    def send(self, leg: Any, send: SendChunk) -> bool | None:
        """Carry out `send` of `leg` through the shared stream (True/False as SourceTransfer._send), or None:
        send it unicast."""
        dest, chunk = leg.dest, (send.index, send.offset, send.length)
        if leg.state != S.IN_PROGRESS:
            self.credits.leave(dest)
            return None
        counts = self.counts[dest]
        if self.credits.take(dest, chunk):
            leg.reads.skipped(*chunk)
            counts["taken"] += 1
            return True
        if self.sealer is None or not self.credits.publishes(dest, chunk):
            self.unicast[dest][send.index] = send.offset + send.length
            counts["unicast_member" if dest in self.credits.members else "unicast_other"] += 1
            return None
        f = leg.session.files[send.index]
        try:
            frame = leg.reads.read_frame(send, leg.session.epoch, self.sealer)
        except SourceChanged as exc:
            return leg._failed(send.index, str(exc))
        except OSError as exc:
            return leg._failed(send.index, read_failed(f.source, exc))
        if frame is None:
            return leg._failed(send.index, leg.reads.changed(send.index) or source_changed(f"size {f.size} -> less"))
        if not self.ctx.link_up():
            leg.post("send_failed")
            return False
        leg._publish(self.topic, frame, DATA_QOS)
        self.published_bytes += len(frame)
        counts["published"] += 1
        positions, busy, acked = {}, {}, {}
        for other, o in self.fanout.legs.items():
            if other == dest:
                continue
            positions[other] = o.session.sending.next_position() if o.state == S.IN_PROGRESS else None
            w, end = o.session.sending.windows.get(send.index), self.unicast[other].get(send.index, 0)
            busy[other] = {send.index} if w is not None and w.acked < end else set()
            if w is not None:
                acked[other] = max(w.acked, w.early_ack)
        for other in self.credits.published(dest, chunk, positions, busy, acked):
            self.fanout.legs[other].post("wake")  # it may take the credit now (its window permitting)
        return True

    def close(self) -> None:
        """The transfer ended: one line saying how each leg was served (what a fan-out saved, and why not)."""
        legs = "; ".join(f"{d}: " + " ".join(f"{k}={v}" for k, v in c.items()) + (" missed " + ",".join(
            f"{k}={v}" for k, v in sorted(self.credits.missed[d].items())) if self.credits.missed[d] else "")
                         for d, c in self.counts.items())
        log.info("fan-out %s: %d bytes published on the shared topic; %s", self.fanout.tid, self.published_bytes, legs)
