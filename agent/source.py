"""The IO driver of the source side of one transfer (the rules are agent.core.source_session).

It owns what the session must not: the open source files and their reads (chunk frames, whole small files,
digests), the state store, the publications and the clock. Everything that happens to the transfer arrives
in `inbox` (control messages from the destination, broker up/down, the destination's status, cancel, a
wake-up from the agent's budget) and is handled by one task, so the session never races with itself: the
task feeds each input to the session with the time, carries out the actions it returns, and sleeps until
the session's one deadline (`get_timer()`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from .wire.binding import ChunkSealer, derive_key, seal, transfer_key
from .wire.encryption import ENCRYPTION, encrypted, envelope_for, offer_for
from .wire.events import build_progress
from .context import AgentContext
from .wire import provenance
from .core import results
from .core.lifecycle import TransferState as S
from .core.ratelimit import TransferPace
from .core.source_actions import (Action, CheckSources, CloseFile, Log, Metric, PersistState, PublishProgress,
                                  ReleaseBudget, ResendFrom, SaveFiles, Send, SendBundle, SendFileEnd,
                                  SendResync, UseFeatures)
from .core.source_session import SourceSession
from .fileio import os_error_at, read_failed, source_changed
from .link import MessageTooLarge
from .programs import ProgramCaller
from .source_files import SourceChanged, SourceFiles
from .metrics import Metrics
from .wire.protocol import (BUNDLE_ENTRY, MAX_BUNDLE_FILES, Complete, FanoutOffer, FileEnd, FileOffer, Resync,
                            TextConversion, encode_bundle)
from .store import TransferRecord

log = logging.getLogger("fte.source")

DATA_QOS = 1


def _wall(mono: float | None) -> float | None:
    return None if mono is None else time.time() - (time.monotonic() - mono)


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def priority_view(header: dict[str, Any]) -> dict[str, Any]:
    """-pr and --bandwidth of a transfer, as its source knows them (a destination does not)."""
    return {"priority": int(header.get("priority") or 0), "bandwidth": header.get("bandwidth")}


def count_metric(m: Metrics | None, a: Metric) -> None:
    """A Metric action of the source session, in the agent's metrics (if it keeps them)."""
    if m is None:
        return
    if a.name == "bytes_sent":
        m.bytes_sent += int(a.value)
    elif a.name == "recovery_started":
        m.recovery_started()
    elif a.name == "recovery_ended":
        m.recovery_ended(a.value)


class SourceTransfer:
    """One transfer's source session (agent.core.source_session) with its files, store and broker."""

    def __init__(self, ctx: AgentContext, rec: TransferRecord, restarted: bool = False) -> None:
        self.ctx = ctx
        self.rec = rec
        self.tid = wire_id(rec)  # a fan-out leg's row is f"{tid}/{dest}" (agent/fanout.py); the wire has the tid
        self.dest = rec.peer
        self.fanout: Any = None  # the fan-out transfer this session is a leg of (agent/fanout.py), or None
        self.completed: dict[str, Any] | None = None  # a leg's completed fields, for its fan-out's event
        self.restarted = restarted
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        now = time.monotonic()
        since = None
        if rec.recovering_since is not None and S(rec.state).is_recovery:
            since = now - max(0.0, time.time() - rec.recovering_since)
        self.session = SourceSession(
            self.tid, rec.peer, rec.files, ctx, now=now, bundle_entry_bytes=BUNDLE_ENTRY.size,
            max_bundle_files=MAX_BUNDLE_FILES, state=S(rec.state), epoch=rec.epoch,
            recovery_timeout=rec.recovery_timeout, recovering_since=since, recoveries=rec.recoveries,
            last_stall=rec.last_stall, checksum=rec.header.get("checksum", "sha256"),
            clock_text=lambda mono: _iso(_wall(mono)))
        # the open source files: reads, digests, and whether each is still the one requested (agent/source_files.py)
        self.reads = SourceFiles(self.session.files, self.session.checksum, ctx.sandbox)
        self._pending: set[asyncio.Task[None]] = set()
        self.programs = ProgramCaller(ctx, rec)
        # --bandwidth under agentMaxBandwidth: data goes when both have the tokens (agent.core.ratelimit)
        self.pace = TransferPace(ctx.bandwidth, int(rec.header.get("bandwidth") or 0), ctx.chunk_size, time.monotonic)

    # ------------------------------------------------------------------ public

    @property
    def key(self) -> bytes | None:
        return transfer_key(self.rec.header)

    def bind(self, peer_kx: str) -> None:
        """Derive the transfer key from the destination's (verified) key exchange value."""
        private = self.rec.header.get("kx_private")
        if not private:
            return
        key = derive_key(base64.b64decode(private), peer_kx, self.tid)
        if transfer_key(self.rec.header) != key:
            self.rec.header["transfer_key"] = base64.b64encode(key).decode()
            self.ctx.store.update_transfer(self.rec, header=True)

    @property
    def state(self) -> S:
        return self.session.state

    def post(self, *item: Any) -> None:
        self.inbox.put_nowait(item)

    def summary(self) -> dict[str, Any]:
        s, lc = self.session, self.session.lifecycle
        tally = s.tally
        tally.refresh()  # the sums over the files, kept as they change (agent.core.progress_tally)
        return {
            "transfer_id": self.tid, "role": "source", "state": self.state.value,
            "source_agent": self.ctx.name, "destination_agent": self.dest,
            "bytes_total": tally.bytes_total, "bytes_done": tally.bytes_done,
            "files_total": len(s.files), "files_done": tally.files_done,
            "recoveries": lc.recoveries, "last_stall": s.stall_reason,
            "recovery_timeout": lc.recovery_timeout,
            "recovery_deadline": _iso(_wall(lc.recovery_deadline)),
            "recovering_since": _iso(_wall(lc.recovering_since)),
            "result_code": lc.result_code,
            "created": _iso(self.rec.created), "updated": _iso(self.rec.updated),
            "seconds": round(time.monotonic() - s.started, 3),
            "bytes_resent": s.bytes_resent, "job_name": self.rec.header.get("job_name"),
        }

    async def run(self) -> None:
        s = self.session
        try:
            self._do(await self.programs.before(s))  # -presrc, -predst: a failure fails it before any byte moves
            self._do(s.start(time.monotonic(), restarted=self.restarted, link_up=self.ctx.link_up(),
                             peer=self.ctx.peer_status(self.dest)))
            while not s.state.is_terminal:
                await self._step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an IO error must end the transfer visibly, not hang it
            log.exception("transfer %s failed", self.tid)
            self._do(s.fail(f"internal error: {exc}", time.monotonic()))
        finally:
            self.reads.close_all()
        try:
            await self._finish()
        finally:
            self.reads.dirs.close()

    # ------------------------------------------------------------------ the loop

    async def _step(self) -> None:
        s = self.session
        if s.state == S.IN_PROGRESS:
            await self._pump()
            if s.state.is_terminal:
                return
        deadline = s.get_timer()
        # at most a second: the agent's budget (ctx.budget), which the session does not see, is asked again
        wait = 1.0 if deadline is None else max(0.0, min(deadline - time.monotonic(), 1.0))
        wait = self.pace.wait(wait, self.ctx.chunk_size) if s.state == S.IN_PROGRESS else wait
        try:
            item = await asyncio.wait_for(self.inbox.get(), timeout=wait)
        except asyncio.TimeoutError:
            item = None
        if item is not None:
            self._handle(item)
        now = time.monotonic()
        deadline = s.get_timer()
        if item is None or (deadline is not None and deadline <= now):
            self._do(s.handle_timer(now))

    def _handle(self, item: tuple[Any, ...]) -> None:
        s, now, kind = self.session, time.monotonic(), item[0]
        if kind == "control":
            if self.fanout is not None:  # a fan-out leg: membership of the shared stream, credits (agent/fanout_stream.py)
                self.fanout.stream.control(self, item[1])
            actions = s.receive(item[1], now)
        elif kind in ("link_down", "link_up"):
            actions = s.link_changed(kind == "link_up", now)
        elif kind == "send_failed":
            actions = s.send_failed(now)
        elif kind == "peer":
            actions = s.peer_status(item[1], now)
        elif kind == "cancel":
            actions = s.cancel(now, item[1] if len(item) > 1 else "cancelled by request")
        else:
            return  # "wake": the agent's budget has room again; the loop sends
        self._do(actions)

    def _do(self, actions: list[Action]) -> None:
        """Carry out what the session asked, in order (agent.core.source_actions)."""
        s = self.session
        for a in actions:
            match a:
                case PersistState():
                    self._persist()
                case SaveFiles():
                    self.ctx.store.save_files(self.rec.transfer_id, "source", list(a.files))
                case PublishProgress():
                    self._publish_progress()
                case Log():
                    self.ctx.log.emit(self.rec, a.action, **a.fields)
                case Metric():
                    count_metric(self.ctx.metrics, a)
                case ReleaseBudget():
                    for tid in self.ctx.budget.release(self.rec.transfer_id):
                        self.ctx.wake(tid)
                case CloseFile():
                    self.reads.close(a.index)
                case ResendFrom():
                    self.reads.resend_from(a.index, a.offset)
                case UseFeatures():
                    self.reads.mac_no_crc = "mac_no_crc" in a.features
                    key = self.key
                    self.reads.sealer = ChunkSealer(key, "gmac" in a.features, encrypted(self.rec.header)) if key else None
                case CheckSources():
                    self._do(s.sources_checked({i: self.reads.check(i, self.tid) for i in a.indexes}, time.monotonic()))
                case SendResync():
                    self._do(self._send_resync(a))

    def _persist(self) -> None:
        s, rec = self.session, self.rec
        rec.state = s.state.value
        rec.recoveries = s.lifecycle.recoveries
        rec.recovering_since = _wall(s.lifecycle.recovering_since)
        rec.last_stall = s.stall_reason
        self.ctx.store.update_transfer(rec)
        self.ctx.on_state_change()

    # ------------------------------------------------------------------ sending

    def _send_resync(self, a: SendResync) -> list[Action]:
        self.rec.epoch = a.epoch
        self.ctx.store.update_transfer(self.rec)
        h, files = self.rec.header, self.session.files
        msg = Resync(
            kind="resync", transfer_id=self.tid, epoch=a.epoch, source_agent=self.ctx.name,
            destination_agent=self.dest, exist=h.get("exist", "error"), checksum=h.get("checksum", "sha256"),
            chunk_size=self.ctx.chunk_size, job_name=h.get("job_name"), metadata=h.get("metadata") or {},
            files=[FileOffer(index=f.index, source=f.source, destination=f.destination, size=f.size, mtime=f.mtime)
                   for f in (files[i] for i in a.indexes)],
            kx=h.get("kx_public"), text=TextConversion(**h["text"]) if h.get("text") else None,
            directories=h.get("directories"),
            fanout=FanoutOffer(**h["fanout"]) if h.get("fanout") else None,  # a fan-out leg, encrypted (agent/fanout.py)
        )
        # Fire and forget, like the data (_publish_data). Awaiting the PUBACK here froze this session's loop,
        # its ack and recovery timers included, for as long as a silent broker path (hung broker, dropped
        # packets) took to be declared dead: stall detection and the -rt timeout fired many seconds late
        # (tests/fault/test_network.py::test_silent_partition_...). An unanswered resync is retried by the
        # timers anyway, and a failed publish posts send_failed (_published). offer_for: encrypted, when it is.
        topic, payload = self.ctx.topics.control(self.dest, self.tid), offer_for(h, seal(msg, None, self.ctx.identity), self.tid)
        try:
            self.ctx.check_size(topic, payload)
        except MessageTooLarge as exc:
            # sent anyway, the broker would throw this agent out, at every attempt, and the transfer would
            # recover for ever: the session fails it, saying what to do
            return self.session.resync_done(time.monotonic(), sent=False, refused=str(exc))
        if not self.ctx.link_up():
            return self.session.resync_done(time.monotonic(), sent=False)
        self._publish(topic, payload, 1)
        return self.session.resync_done(time.monotonic())

    async def _pump(self) -> None:
        s = self.session
        if self.fanout is not None and self.fanout.stream.holding(self):
            return  # a fan-out leg waits a moment for the others to join the shared stream (agent/fanout_stream.py)
        window_left = s.sending.window_left()
        own = s.sending.window_bytes - window_left  # in flight now
        allowed = self.ctx.budget.allowance(self.rec.transfer_id, own, self.ctx.chunk_size)  # within the agent's cap
        budget = window_left if allowed is None else min(window_left, allowed)
        # agentMaxBandwidth, --bandwidth; a fan-out leg's credits first in line publish nothing: not paced
        free = self.fanout.stream.credited(self) if self.fanout is not None else 0
        budget = self.pace.budget(budget, self.ctx.chunk_size, free)
        s.sending.start(budget)
        try:
            while (send := s.sending.next_send()) is not None:
                if not await self._send(send):
                    s.sending.stop()
        finally:
            # in flight now: what was before, plus what was sent (the rest of the reservation goes back)
            for tid in self.ctx.budget.report(self.rec.transfer_id, own + budget - s.sending.budget_left):
                self.ctx.wake(tid)
        self._do(s.sent(time.monotonic()))

    async def _send(self, send: Send) -> bool:
        """Carry out one send; False if nothing more can go now (the link is down)."""
        if isinstance(send, SendBundle):
            return await self._send_bundle(send.indexes)
        if isinstance(send, SendFileEnd):
            return await self._send_file_end(send.index)
        if self.fanout is not None and (shared := self.fanout.stream.send(self, send)) is not None:
            return shared  # a fan-out leg's chunk: published once for the legs, or a credit of it taken
        f = self.session.files[send.index]
        try:
            frame = self.reads.read_frame(send, self.session.epoch)
        except SourceChanged as exc:
            return self._failed(send.index, str(exc))
        except OSError as exc:
            return self._failed(send.index, read_failed(f.source, exc))
        if frame is None:  # it ended early
            return self._failed(send.index, self.reads.changed(send.index) or source_changed(f"size {f.size} -> less"))
        return self._publish_data(frame)

    async def _send_file_end(self, idx: int) -> bool:
        f = self.session.files[idx]
        try:
            digest = await self.reads.digest(idx)
            # after the last read (and the digest's): the bytes sent are one version of one file
            changed = self.reads.changed(idx)
        except OSError as exc:
            return self._failed(idx, read_failed(f.source, exc))
        if changed is not None:
            return self._failed(idx, changed)
        end = FileEnd(kind="file_end", transfer_id=self.tid, epoch=self.session.epoch, index=idx, size=f.size,
                      digest=digest)
        if not self._publish_data(envelope_for(self.rec.header, seal(end, self.key), self.tid), control=True):
            return False
        self.session.sending.file_end_sent(idx)
        self.reads.close(idx)
        return True

    async def _send_bundle(self, batch: tuple[int, ...]) -> bool:
        """Read, hash and send whole files in one frame."""
        s = self.session
        items = await self.reads.read_whole(batch)
        entries = []
        for j, (data, digest, error) in zip(batch, items):
            if data is None:
                self._failed(j, error or "")
                continue
            s.sending.bundled(j)
            entries.append((j, digest, data))
        if not entries:
            return True
        sealer = self.reads.sealer
        frame = encode_bundle(s.epoch, entries, sealer.flag if sealer is not None else 0)
        if sealer is not None:
            frame = sealer.finish(frame)
        if not self._publish_data(frame):
            return False
        s.sending.bundle_sent(sum(len(e[2]) for e in entries))
        return True

    def _failed(self, idx: int, supplement: str) -> bool:
        """The source file cannot be sent as requested (the session fails it); sending goes on."""
        log.warning("transfer %s: %s: %s", self.tid, self.session.files[idx].source, supplement)
        self._do(self.session.source_failed(idx, supplement, time.monotonic()))
        return True

    def _publish_data(self, payload: bytes, control: bool = False) -> bool:
        """Publish without waiting for the broker's ack: the window, not PUBACKs, paces the flow."""
        if not self.ctx.link_up():
            self.post("send_failed")
            return False
        self._publish(self.ctx.topics.control(self.dest, self.tid) if control
                      else self.ctx.topics.data(self.dest, self.tid), payload, DATA_QOS)
        return True

    def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.pace.sent(len(payload))  # data, resends, file ends and resyncs alike
        task = asyncio.ensure_future(self.ctx.publish(topic, payload, qos, False))
        self._pending.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: "asyncio.Task[None]") -> None:
        self._pending.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            if isinstance(exc, MessageTooLarge):
                log.error("transfer %s: %s; not sent", self.tid, exc)
            self.post("send_failed")

    # ------------------------------------------------------------------ the end

    def _publish_progress(self) -> None:
        if self.fanout is not None:
            self.fanout.publish_progress()  # the transfer's, summed over its legs
            return
        if not self.ctx.link_up():
            return
        s = self.summary()
        elapsed = max(1e-6, time.monotonic() - self.session.started)
        current = self.session.tally.current()
        s.update(time=_iso(time.time()), rate_bytes_per_second=int(s["bytes_done"] / elapsed),
                 current_file=current.source if current else None)
        build_progress(s)  # strictly its model (docs/log-events.md#live-progress), as the log's events are
        topic = self.ctx.topics.progress(self.ctx.name, self.tid)
        payload = provenance.sign_payload(json.dumps(s).encode(), provenance.EVENT, topic, self.ctx.identity)
        task = asyncio.ensure_future(self.ctx.publish(topic, payload, 0, False))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _finish(self) -> None:
        """Log the outcome, apply the disposition, and tell the destination (which cleans up)."""
        for t in list(self._pending):
            t.cancel()
        s = self.session
        actions, reason, changed = s.finish(time.monotonic())
        self._do(actions)
        st = s.state
        if st == S.COMPLETE and self.rec.header.get("disposition") == "delete" and self.fanout is None:
            changed = list(s.files.values())
            for f in changed:
                try:
                    self.reads.dirs.unlink(f.source)
                except OSError as exc:
                    f.result_code = results.FILE_WARNING
                    f.supplement = f"transferred, but the source was not deleted: {os_error_at(exc)}"
        fields = await self.programs.after(st, s.completed_fields(reason, time.monotonic()))  # -postdst, -postsrc
        self.ctx.store.update_transfer(self.rec, header=True, files=changed)
        if self.fanout is not None:  # a leg: the fan-out logs one completed event for all its legs
            self.completed = fields
            self.fanout.publish_progress()  # this destination is done (or failed): its line in the progress
            await send_complete(self.ctx, self.rec)
            return
        if self.ctx.metrics is not None:
            self.ctx.metrics.transfer_finished(st.value, s.result_code, fields["statistics"])
        self.ctx.log.emit(self.rec, "completed", **fields, encryption=encryption_of(self.rec.header))
        self._publish_progress()
        self.ctx.on_state_change()
        await send_complete(self.ctx, self.rec)


async def send_complete(ctx: AgentContext, rec: TransferRecord) -> None:
    """Tell the destination the outcome (repeated by the agent until it confirms)."""
    tid = wire_id(rec)
    msg = Complete(kind="complete", transfer_id=tid, source_agent=ctx.name, state=rec.state,
                   result_code=rec.result_code if rec.result_code is not None else results.FAILED)
    payload = envelope_for(rec.header, seal(msg, transfer_key(rec.header)), tid)
    try:
        await ctx.publish(ctx.topics.control(rec.peer, tid), payload, 1, False)
    except ConnectionError:
        pass


def wire_id(rec: TransferRecord) -> str:
    """The transfer id on the wire of a source row: a fan-out leg's row is f"{tid}/{destination}"."""
    return str(rec.header.get("leg_of") or rec.transfer_id)


def encryption_of(header: dict[str, Any]) -> str:
    """What the `started` and `completed` events say of the transfer's payload."""
    return ENCRYPTION if encrypted(header) else "none"
