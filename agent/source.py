"""The source side of one transfer: negotiate, send chunks within a window, recover, finish.

The rules (states, recovery counter, precedence) are in `agent.core`; this is the IO shell around
them. Everything that happens to the transfer arrives in `inbox` (control messages from the
destination, broker up/down, the destination's status, cancel) and is handled by one task, so the
session never races with itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

from .core.errors import FteError
from .binding import ChunkSealer, derive_key, seal, transfer_key
from .context import AgentContext
from . import provenance
from .core import results
from .fsops import ConfinedDirs
from .core.lifecycle import TransferEvent as E
from .core.lifecycle import TransferLifecycle
from .core.lifecycle import TransferState as S
from .core.window import AckRequests, SendWindow
from .fileio import (SourceStat, changed_since_request, changed_while_read, os_error_at, read_failed,
                     source_changed, stat_path)
from .link import MessageTooLarge
from .protocol import (BUNDLE_ENTRY, CHUNK_HEADER, MAX_BUNDLE_FILES, Ack, Complete, FileEnd, FileOffer, FileResult,
                       FileResults, RequestRecovery, Resync, ResyncReply, encode_bundle, finish_chunk)
from .core.policy import (CHECKPOINT_INTERVAL, PROGRESS_INTERVAL, RESULTS_BATCH, RESULTS_INTERVAL, RESYNC_WAIT,
                          resync_delay)
from .store import FileRecord, TransferRecord
from .core.statuses import AGENT_GONE, AGENT_LEAVING, AGENT_RUNNING, FileStatus

log = logging.getLogger("fte.source")

DATA_QOS = 1
# Files up to this size (and half a chunk) travel whole, many to a frame, when the destination supports it.
BUNDLE_FILE_MAX = 64 * 1024


def _wall(mono: float | None) -> float | None:
    return None if mono is None else time.time() - (time.monotonic() - mono)


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SourceChanged(FteError):
    """The source file is not (any more) the one the transfer was requested for; str() is the supplement."""


def _open_read(path: str, dirs: ConfinedDirs) -> int:
    """A source file opened for reading through `dirs` (no link followed inside the sandbox)."""
    return dirs.open(path, os.O_RDONLY, follow=True)


def read_whole_files(items: list[tuple[str, int]], algorithm: str, mtimes: list[float],
                     dirs: ConfinedDirs) -> list[tuple[bytes | None, str | None, str | None]]:
    """(content, hex digest, error) of each small file (path, expected size, and the mtime recorded at the
    request); run in a worker thread. A file that is not as requested, or that changes while it is read, is
    an error (agent.fileio), never sent. Opened through `dirs` (agent/fsops.py)."""
    out: list[tuple[bytes | None, str | None, str | None]] = []
    for i, (path, size) in enumerate(items):
        try:
            with open(_open_read(path, dirs), "rb") as fh:
                before = SourceStat.of_fd(fh.fileno())
                data = fh.read(size + 1)
                changed = changed_since_request(before, size, mtimes[i]) or \
                    changed_while_read(before, SourceStat.of_fd(fh.fileno()), stat_path(path, dirs))
        except OSError as exc:
            out.append((None, None, read_failed(path, exc)))
            continue
        if changed is None and len(data) != size:
            changed = source_changed(f"size {size} -> {len(data) if len(data) <= size else 'more'}")
        if changed is not None:
            out.append((None, None, changed))
            continue
        out.append((data, None if algorithm == "none" else hashlib.new(algorithm, data).hexdigest(), None))
    return out


def read_chunk_frame(fd: int, epoch: int, index: int, offset: int, length: int, last: bool, ack: bool,
                     hasher: Any, sealer: ChunkSealer | None, mac_no_crc: bool) -> bytearray | None:
    """Read a chunk straight into its frame (header, data, MAC trailer of a bound transfer) and seal it; the
    data is hashed on the way when `hasher` is given. None if the file ended early. One buffer, no copy of
    the data: this runs for every 256 KiB of every file."""
    size = CHUNK_HEADER.size + length
    frame = bytearray(size + (sealer.trailer if sealer is not None else 0))
    view = memoryview(frame)
    data = view[CHUNK_HEADER.size:size]
    if os.preadv(fd, [data], offset) != length:
        return None
    if hasher is not None:
        hasher.update(data)
    finish_chunk(frame, epoch, index, offset, length, last=last, ack=ack, crc=sealer is None or not mac_no_crc,
                 mac_flag=sealer.flag if sealer is not None else 0)
    if sealer is not None:
        view[size:] = sealer.seal(view[:size])
    return frame


def hash_file(path: str, algorithm: str, dirs: ConfinedDirs) -> str | None:
    if algorithm == "none":
        return None
    h = hashlib.new(algorithm)
    with open(_open_read(path, dirs), "rb") as fh:
        while block := fh.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


class SourceTransfer:
    def __init__(self, ctx: AgentContext, rec: TransferRecord, restarted: bool = False) -> None:
        self.ctx = ctx
        self.rec = rec
        self.tid = rec.transfer_id
        self.dest = rec.peer
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        since = None
        if rec.recovering_since is not None and S(rec.state).is_recovery:
            since = time.monotonic() - max(0.0, time.time() - rec.recovering_since)
        self.lc = TransferLifecycle(rec.recovery_timeout, time.monotonic, state=S(rec.state), recovering_since=since,
                                    recoveries=rec.recoveries)
        self.files = {f.index: f for f in rec.files}
        self.windows = {f.index: SendWindow(f.size, ctx.chunk_size, 1 << 30, start_offset=f.offset)
                        for f in rec.files if f.status == FileStatus.READY}
        self.end_sent: set[int] = set()
        self._order = sorted(self.windows)  # the send order
        self._first = 0  # position in _order of the first file without a result
        self._dirty: set[int] = set()  # files whose checkpoint moved since the last save
        self.hashers: dict[int, tuple[Any, int]] = {}
        self.fds: dict[int, int] = {}
        # what each open source file was when this session opened it (agent.fileio): compared after its last
        # read and at every resync, so that a file changed while it was sent never yields success
        self.stats: dict[int, SourceStat] = {}
        # every source file is opened through these (no link followed inside the sandbox: agent/fsops.py)
        self.dirs = ConfinedDirs(ctx.sandbox)
        self.restarted = restarted
        self.epoch = rec.epoch
        self.last_progress = time.monotonic()
        self.ack_misses = 0
        self.resync_attempts = 0
        self.next_resync_at = 0.0
        self.resync_sent_at = 0.0
        self.bytes_resent = 0
        self.stall_reason: str | None = rec.last_stall
        self.end_reason: str | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._last_progress_pub = 0.0
        self._last_checkpoint = 0.0
        self.started_mono = time.monotonic()
        self._budget_left = 0  # what _send_within has not used of its budget (for the agent's in-flight count)
        # what the destination said it understands (ResyncReply.features)
        self.bundles = False
        self.acks = AckRequests(ctx.window_chunks)  # .sparse: FLAG_NO_ACK on the chunks that need no ack
        self.mac_no_crc = False  # FLAG_NO_CRC on a bound transfer
        self.sealer: ChunkSealer | None = None  # the chunks' MAC on a bound transfer (HMAC, or GMAC: "gmac")
        self._resulted: list[FileRecord] = []  # results not yet saved and logged (_flush_results)
        self._last_results_flush = time.monotonic()

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
        return self.lc.state

    def post(self, *item: Any) -> None:
        self.inbox.put_nowait(item)

    def summary(self) -> dict[str, Any]:
        total = sum(f.size for f in self.files.values())
        acked = sum(self._acked(f) for f in self.files.values())
        return {
            "transfer_id": self.tid, "role": "source", "state": self.state.value,
            "source_agent": self.ctx.name, "destination_agent": self.dest,
            "bytes_total": total, "bytes_done": acked, "files_total": len(self.files),
            "files_done": sum(1 for f in self.files.values() if f.status != FileStatus.READY),
            "recoveries": self.lc.recoveries, "last_stall": self.stall_reason,
            "recovery_timeout": self.lc.recovery_timeout,
            "recovery_deadline": _iso(_wall(self.lc.recovery_deadline)),
            "recovering_since": _iso(_wall(self.lc.recovering_since)),
            "result_code": self.lc.result_code,
            "created": _iso(self.rec.created), "updated": _iso(self.rec.updated),
            "seconds": round(time.monotonic() - self.started_mono, 3),
            "bytes_resent": self.bytes_resent, "job_name": self.rec.header.get("job_name"),
        }

    async def run(self) -> None:
        try:
            if self.state == S.QUEUED:
                self._event(E.START)
                await self._send_resync()
                peer = self.ctx.peer_status(self.dest)
                if peer in AGENT_GONE and not self.state.is_terminal:
                    # no point waiting an ack timeout for an answer that cannot come: recover now
                    self._stall(f"destination agent {self.dest} is {peer}", "peer_unreachable")
            elif self.restarted and self.state in (S.IN_PROGRESS, S.NEGOTIATING, S.RESYNCHRONISING):
                self._stall("the source agent restarted", "agent_restart")
            elif self.restarted and self.state == S.RECOVERING:
                self.next_resync_at = 0.0
            while not self.state.is_terminal:
                await self._step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an IO error must end the transfer visibly, not hang it
            log.exception("transfer %s failed", self.tid)
            if not self.state.is_terminal:
                self.end_reason = f"internal error: {exc}"
                self._event(E.FAIL)
        finally:
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()
        try:
            await self._finish()
        finally:
            self.dirs.close()

    # ------------------------------------------------------------------ the loop

    async def _step(self) -> None:
        self._flush_results()
        if self.lc.poll().is_terminal:
            self._persist_state()
            return
        if self.state == S.IN_PROGRESS:
            await self._pump()
            if self._all_resulted():
                self._finish_ok()
                return
        try:
            item = await asyncio.wait_for(self.inbox.get(), timeout=self._wait_time())
        except asyncio.TimeoutError:
            item = None
        if item is None:
            await self._on_timer()
        else:
            await self._handle(item)

    def _wait_time(self) -> float:
        now = time.monotonic()
        st = self.state
        if st in (S.IN_PROGRESS, S.NEGOTIATING):
            t = self.last_progress + self.ctx.ack_timeout - now
        elif st == S.RESYNCHRONISING:
            t = self.resync_sent_at + self._resync_wait() - now
        else:  # recovering
            t = self.next_resync_at - now
        left = self.lc.seconds_until_timeout()
        if left is not None:
            t = min(t, left)
        if self._resulted:
            t = min(t, self._last_results_flush + RESULTS_INTERVAL - now)
        return max(0.0, min(t, 1.0))

    def _resync_wait(self) -> float:
        return min(RESYNC_WAIT, self.ctx.ack_timeout)

    async def _on_timer(self) -> None:
        now = time.monotonic()
        st = self.state
        if st in (S.IN_PROGRESS, S.NEGOTIATING) and now >= self.last_progress + self.ctx.ack_timeout:
            self.ack_misses += 1
            if self.ack_misses >= max(1, self.ctx.ack_retries):
                waited = self.ctx.ack_timeout * max(1, self.ctx.ack_retries)
                what = "answer to the negotiation" if st == S.NEGOTIATING else "acknowledgement"
                self._stall(f"no {what} from {self.dest} for {waited:g} s "
                            f"(transferAckTimeout × transferAckTimeoutRetries)", "ack_timeout")
            else:
                # a lost chunk, ack or file end: ask the destination where it stands (a quiet resync)
                self.last_progress = now
                await self._send_resync()
        elif st == S.RESYNCHRONISING and now >= self.resync_sent_at + self._resync_wait():
            self._event(E.STALL)  # the resync went unanswered: back to recovering, counter still running
        elif st == S.RECOVERING and now >= self.next_resync_at:
            await self._attempt_resync()

    async def _attempt_resync(self) -> None:
        self.resync_attempts += 1
        self.next_resync_at = time.monotonic() + resync_delay(self.resync_attempts)
        if not self.ctx.link_up():
            return
        if self.ctx.peer_status(self.dest) in AGENT_LEAVING:
            return
        if await self._send_resync():
            self._event(E.RESYNC_SENT)
            self.resync_sent_at = time.monotonic()

    async def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "control":
            await self._on_control(item[1])
        elif kind == "link_down":
            if self.state in (S.IN_PROGRESS, S.NEGOTIATING, S.RESYNCHRONISING):
                self._stall("lost the connection to the broker", "broker_connection")
        elif kind == "link_up":
            if self.state == S.RECOVERING:
                self.resync_attempts = 0
                self.next_resync_at = 0.0
        elif kind == "peer":
            status = item[1]
            if status in AGENT_GONE and \
                    self.state in (S.IN_PROGRESS, S.NEGOTIATING, S.RESYNCHRONISING):
                self._stall(f"destination agent {self.dest} is {status}", "peer_unreachable")
            elif status in AGENT_RUNNING and self.state == S.RECOVERING:
                self.resync_attempts = 0
                self.next_resync_at = 0.0
        elif kind == "cancel":
            self.end_reason = item[1] if len(item) > 1 else "cancelled by request"
            self._event(E.CANCEL)

    async def _on_control(self, msg: Any) -> None:
        if isinstance(msg, ResyncReply):
            if msg.epoch != self.epoch:
                return
            self.bundles = "bundle" in msg.features
            self.acks.sparse = "sparse_ack" in msg.features
            self.mac_no_crc = "mac_no_crc" in msg.features
            key = self.key
            self.sealer = ChunkSealer(key, "gmac" in msg.features) if key is not None else None
            self._apply_holdings(msg)
            self.last_progress = time.monotonic()
            self.ack_misses = 0
            if self.state == S.NEGOTIATING:
                self._event(E.NEGOTIATED)
            elif self.state.is_recovery:
                was = self.lc.recovering_since
                if self._event(E.RESYNCED) == S.IN_PROGRESS:
                    if self.ctx.metrics is not None and was is not None:
                        self.ctx.metrics.recovery_ended(time.monotonic() - was)
                    held = sum(self._acked(f) for f in self.files.values())
                    self.ctx.log.emit(self.rec, "resumed", message_id=results.BFGTR0082I,
                                      message=f"BFGTR0082I: transfer {self.tid} resumed after recovery",
                                      bytes_held_by_destination=held,
                                      recovering_since=_iso(_wall(was)))
                    self.resync_attempts = 0
        elif isinstance(msg, Ack):
            if msg.epoch != self.epoch or msg.index not in self.windows:
                return
            w = self.windows[msg.index]
            if msg.offset < w.acked:
                return
            before = w.acked
            if msg.rewind and msg.offset < w.next_offset:
                self.bytes_resent += w.next_offset - msg.offset
                w.rewind(msg.offset)
                self.end_sent.discard(msg.index)
            elif w.on_ack(msg.offset):
                if self.ctx.metrics is not None:
                    self.ctx.metrics.bytes_sent += w.acked - before
                self.last_progress = time.monotonic()
                self.ack_misses = 0
            self.files[msg.index].offset = w.acked
            self._dirty.add(msg.index)
            self._checkpoint()
        elif isinstance(msg, (FileResult, FileResults)):
            for r in msg.results if isinstance(msg, FileResults) else [msg]:
                f = self.files.get(r.index)
                if f is None or f.status != FileStatus.READY:
                    continue  # unknown, or answered already (a repeated message)
                self.last_progress = time.monotonic()
                self.ack_misses = 0
                self._file_resulted(f, FileStatus.DONE if r.result_code == results.FILE_SUCCESS else FileStatus.FAILED,
                                    r.result_code, r.supplement, r.destination, r.digest)
        elif isinstance(msg, RequestRecovery) and msg.cancel:
            self.end_reason = f"cancelled at the destination agent {self.dest}: {msg.reason}"
            self._event(E.CANCEL)
        elif isinstance(msg, RequestRecovery):
            if self.state in (S.IN_PROGRESS, S.NEGOTIATING, S.RESYNCHRONISING):
                self._stall(f"the destination asked for recovery: {msg.reason}", "destination_request")
            if self.state == S.RECOVERING:
                self.resync_attempts = 0
                self.next_resync_at = 0.0

    # ------------------------------------------------------------------ sending

    def _frontier(self) -> tuple[int, int]:
        """(position in send order where sending continues, bytes still allowed in flight).

        Files are sent in index order, so the windows after the first one with something left to send
        have nothing in flight: the scan stops there, and a transfer of 10,000 files costs no more per
        chunk than a transfer of one."""
        while self._first < len(self._order) and self._order[self._first] not in self.windows:
            self._first += 1
        budget = self.ctx.window_chunks * self.ctx.chunk_size
        for pos in range(self._first, len(self._order)):
            idx = self._order[pos]
            w = self.windows.get(idx)
            if w is None:
                continue
            budget -= w.in_flight_bytes
            if w.can_send() or idx not in self.end_sent:
                return pos, budget
        return len(self._order), budget

    def _bundleable(self, idx: int) -> bool:
        """Small, and nothing of it sent in this epoch: it can travel whole in a bundle."""
        w = self.windows.get(idx)
        f = self.files[idx]
        return (w is not None and f.status == FileStatus.READY and w.next_offset == 0 and idx not in self.end_sent
                and f.size <= min(BUNDLE_FILE_MAX, self.ctx.chunk_size // 2))

    def _needs_sending(self, idx: int) -> bool:
        w = self.windows.get(idx)
        return w is not None and (w.can_send() or idx not in self.end_sent)

    def _limit(self, budget: int) -> int:
        """`budget` (what the window allows) within what the agent's cap on data in flight allows."""
        own = self.ctx.window_chunks * self.ctx.chunk_size - budget
        allowed = self.ctx.budget.allowance(self.tid, own, self.ctx.chunk_size)
        return budget if allowed is None else min(budget, allowed)

    def _report_in_flight(self, own: int) -> None:
        for tid in self.ctx.budget.report(self.tid, own):
            self.ctx.wake(tid)

    async def _pump(self) -> None:
        start, window_left = self._frontier()
        budget = self._limit(window_left)
        try:
            await self._send_within(start, budget)
        finally:
            # in flight now: what was before, plus what was sent (the rest of the reservation goes back)
            sent = budget - self._budget_left
            self._report_in_flight(self.ctx.window_chunks * self.ctx.chunk_size - window_left + sent)
        self._publish_progress()

    async def _send_within(self, start: int, budget: int) -> None:
        self._budget_left = budget
        order = self._order
        pos = start
        while pos < len(order) and budget > 0 and self.state == S.IN_PROGRESS:
            idx = order[pos]
            if self.bundles and self._bundleable(idx):
                if budget < self.ctx.chunk_size // 2 < self.ctx.window_chunks * self.ctx.chunk_size - budget:
                    # little room, and bundles in flight whose answers will make more: wait for a fuller
                    # bundle rather than send a train of one-file frames (each costs a message both ways)
                    break
                # consecutive small files, up to a chunk's worth of bytes, in one frame
                batch: list[int] = []
                room = min(self.ctx.chunk_size, budget)
                # the answer (one FileResults, a few hundred bytes a file) must pass the broker too
                most = max(1, min(MAX_BUNDLE_FILES, self.ctx.chunk_size // 512))
                while pos < len(order) and len(batch) < most:
                    j = order[pos]
                    if self._bundleable(j):
                        cost = self.files[j].size + BUNDLE_ENTRY.size + 64
                        if batch and cost > room:
                            break
                        batch.append(j)
                        room -= cost
                    elif self._needs_sending(j):
                        break  # sent by chunks, in its turn
                    pos += 1
                sent = await self._send_bundle(batch)
                if sent < 0:
                    return
                budget -= sent
                self._budget_left = budget
                continue
            pos += 1
            if idx not in self.windows:
                continue
            f = self.files[idx]
            if f.status != FileStatus.READY:
                continue
            w = self.windows[idx]
            while budget > 0 and w.can_send() and self.state == S.IN_PROGRESS:
                offset, length = w.take()
                budget -= length
                last = offset + length >= f.size
                ack = self.acks.ask(last, budget)
                try:
                    frame = self._read_frame(idx, offset, length, last, ack)
                except SourceChanged as exc:
                    self._source_failed(f, str(exc))
                    break
                except OSError as exc:
                    self._source_failed(f, read_failed(f.source, exc))
                    break
                if frame is None:  # it ended early
                    self._source_failed(f, self._changed(idx) or source_changed(f"size {f.size} -> less"))
                    break
                self._budget_left = budget
                if not self._publish_data(frame):
                    return
            if f.status == FileStatus.READY and w.next_offset >= f.size and idx not in self.end_sent:
                try:
                    digest = await self._digest(idx)
                    # after the last read (and the digest's): the bytes sent are one version of one file
                    changed = self._changed(idx)
                except OSError as exc:
                    self._source_failed(f, read_failed(f.source, exc))
                    continue
                if changed is not None:
                    self._source_failed(f, changed)
                    continue
                end = FileEnd(kind="file_end", transfer_id=self.tid, epoch=self.epoch, index=idx, size=f.size,
                              digest=digest)
                if not self._publish_data(seal(end, self.key), control=True):
                    return
                self.end_sent.add(idx)
                self._close(idx)

    async def _send_bundle(self, batch: list[int]) -> int:
        """Read, hash and send whole files in one frame. The bytes now in flight, or -1 if the link is down."""
        algo = self.rec.header.get("checksum", "sha256")
        items = await asyncio.to_thread(read_whole_files, [(self.files[j].source, self.files[j].size) for j in batch],
                                        algo, [self.files[j].mtime for j in batch], self.dirs)
        entries = []
        for j, (data, digest, error) in zip(batch, items):
            f = self.files[j]
            if data is None:
                self._source_failed(f, error)
                continue
            w = self.windows[j]
            if f.size:
                w.take()  # the whole file: size <= half a chunk
            self.end_sent.add(j)
            entries.append((j, digest, data))
        if not entries:
            return 0
        sealer = self.sealer
        frame = encode_bundle(self.epoch, entries, sealer.flag if sealer is not None else 0)
        if sealer is not None:
            frame += sealer.seal(frame)
        if not self._publish_data(frame):
            return -1
        return sum(len(e[2]) for e in entries)

    def _publish_data(self, payload: bytes, control: bool = False) -> bool:
        """Publish without waiting for the broker's ack: the window, not PUBACKs, paces the flow."""
        if not self.ctx.link_up():
            self.post("link_down")
            return False
        topic = (self.ctx.topics.control(self.dest, self.tid) if control
                 else self.ctx.topics.data(self.dest, self.tid))
        task = asyncio.ensure_future(self.ctx.publish(topic, payload, DATA_QOS, False))
        self._pending.add(task)
        task.add_done_callback(self._published)
        return True

    def _published(self, task: "asyncio.Task[None]") -> None:
        self._pending.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            if isinstance(exc, MessageTooLarge):
                log.error("transfer %s: %s; not sent", self.tid, exc)
            self.post("link_down")

    def _read_frame(self, idx: int, offset: int, length: int, last: bool, ack: bool) -> bytearray | None:
        """The chunk [offset, offset+length) of file `idx` as a frame ready to publish (None: short read)."""
        fd = self.fds.get(idx)
        if fd is None:
            fd = self.fds[idx] = _open_read(self.files[idx].source, self.dirs)
            self._opened(idx, fd)
        hasher = None
        algo = self.rec.header.get("checksum", "sha256")
        if algo != "none":
            hasher, pos = self.hashers.get(idx) or (hashlib.new(algo), 0)
            if pos != offset:
                hasher = None  # not sequential (a resend): the digest is computed apart at the end
        # In the event loop, not a worker thread: on two cores shared with the broker and the destination, the
        # hand-off to a thread and back cost more CPU than it freed (docs/performance.md, "Threads")
        frame = read_chunk_frame(fd, self.epoch, idx, offset, length, last, ack, hasher, self.sealer, self.mac_no_crc)
        if frame is not None and hasher is not None:
            self.hashers[idx] = (hasher, offset + length)
        return frame

    async def _digest(self, idx: int) -> str | None:
        algo = self.rec.header.get("checksum", "sha256")
        if algo == "none":
            return None
        f = self.files[idx]
        entry = self.hashers.get(idx)
        if entry and entry[1] == f.size:
            return str(entry[0].hexdigest())
        digest = await asyncio.to_thread(hash_file, f.source, algo, self.dirs)
        self.hashers[idx] = (hashlib.new(algo), -1)  # resync later: recompute, never trust a partial hash
        return digest

    def _close(self, idx: int) -> None:
        fd = self.fds.pop(idx, None)
        if fd is not None:
            os.close(fd)
        self.stats.pop(idx, None)

    def _opened(self, idx: int, fd: int) -> None:
        """Remember what the file just opened is; SourceChanged if it is not what the transfer was requested
        for (its size and mtime then): after a restart, the bytes sent before were of that version."""
        f = self.files[idx]
        st = SourceStat.of_fd(fd)
        changed = changed_since_request(st, f.size, f.mtime)
        if changed is not None:
            raise SourceChanged(changed)
        self.stats[idx] = st

    def _changed(self, idx: int) -> str | None:
        """Why file `idx` is not what it was when this session first opened it (or, not open, when the
        transfer was requested), or None."""
        f = self.files[idx]
        fd, before = self.fds.get(idx), self.stats.get(idx)
        if fd is None or before is None:
            now = stat_path(f.source, self.dirs)
            return source_changed("removed") if now is None else changed_since_request(now, f.size, f.mtime)
        return changed_while_read(before, SourceStat.of_fd(fd), stat_path(f.source, self.dirs))

    def _source_failed(self, f: FileRecord, supplement: str) -> None:
        """The source file cannot be sent as it was requested (changed, unreadable): it fails, once logged.
        The destination removes what it holds of it when the outcome reaches it."""
        log.warning("transfer %s: %s: %s", self.tid, f.source, supplement)
        self._file_resulted(f, FileStatus.FAILED, results.FILE_FAILED, supplement)

    async def _send_resync(self) -> bool:
        self.epoch += 1
        self.rec.epoch = self.epoch
        self.ctx.store.update_transfer(self.rec)
        h = self.rec.header
        msg = Resync(
            kind="resync", transfer_id=self.tid, epoch=self.epoch, source_agent=self.ctx.name,
            destination_agent=self.dest, exist=h.get("exist", "error"), checksum=h.get("checksum", "sha256"),
            chunk_size=self.ctx.chunk_size, job_name=h.get("job_name"), metadata=h.get("metadata") or {},
            files=[FileOffer(index=f.index, source=f.source, destination=f.destination, size=f.size, mtime=f.mtime)
                   for f in self.files.values() if f.status == FileStatus.READY],
            kx=h.get("kx_public"),
        )
        # Fire and forget, like the data (_publish_data). Awaiting the PUBACK here froze this session's loop,
        # its ack and recovery timers included, for as long as a silent broker path (hung broker, dropped
        # packets) took to be declared dead: stall detection and the -rt timeout fired many seconds late
        # (tests/fault/test_network.py::test_silent_partition_...). An unanswered resync is retried by the
        # timers anyway, and a failed publish posts link_down (_published).
        topic, payload = self.ctx.topics.control(self.dest, self.tid), seal(msg, None, self.ctx.identity)
        try:
            self.ctx.check_size(topic, payload)
        except MessageTooLarge as exc:
            # sent anyway, the broker would throw this agent out, at every attempt, and the transfer would
            # recover for ever: fail it now, saying what to do
            self.end_reason = (f"the negotiation of this transfer ({len(msg.files)} files) does not fit through "
                               f"the broker: {exc}; send the files in smaller transfers, or raise the broker's "
                               f"maximum message size (max_packet_size, max_payload)")
            self._event(E.FAIL)
            return False
        if not self.ctx.link_up():
            return False
        task = asyncio.ensure_future(self.ctx.publish(topic, payload, 1, False))
        self._pending.add(task)
        task.add_done_callback(self._published)
        return True

    def _apply_holdings(self, msg: ResyncReply) -> None:
        for h in msg.files:
            f = self.files.get(h.index)
            if f is None or f.status != FileStatus.READY:
                continue
            if h.status == FileStatus.DONE:
                self._file_resulted(f, FileStatus.DONE, results.FILE_SUCCESS, h.supplement, h.destination, h.digest)
            elif h.status == FileStatus.FAILED:
                self._file_resulted(f, FileStatus.FAILED, h.result_code or results.FILE_FAILED, h.supplement, h.destination)
            else:
                try:
                    changed = self._changed(h.index)
                except OSError as exc:
                    changed = read_failed(f.source, exc)
                if changed is not None:
                    self._source_failed(f, changed)
                    continue
                w = self.windows[h.index]
                held = min(h.held, f.size)
                if held < w.next_offset:
                    self.bytes_resent += w.next_offset - held
                if w.chunk_size != self.ctx.chunk_size:
                    # the broker probe (agent.broker_probe) changed the chunk size of this broker connection:
                    # offsets are byte offsets, so resuming at `held` with another chunk size is fine
                    w = self.windows[h.index] = SendWindow(f.size, self.ctx.chunk_size, w.window_chunks,
                                                           start_offset=held)
                w.rewind(held)
                if f.offset != held:  # a first negotiation of 10,000 files changes none: nothing to save
                    f.offset = held
                    self._dirty.add(h.index)
                self.end_sent.discard(h.index)
                entry = self.hashers.get(h.index)
                if entry and entry[1] != held:
                    self.hashers[h.index] = (entry[0], -1)  # not sequential any more
        self._first = 0  # rewinds may have moved the send frontier back
        self._checkpoint(force=True)

    # ------------------------------------------------------------------ state

    def _acked(self, f: FileRecord) -> int:
        if f.status == FileStatus.DONE:
            return f.size
        w = self.windows.get(f.index)
        return w.acked if w else f.offset

    def _all_resulted(self) -> bool:
        return not self.windows  # a file leaves `windows` when its result arrives

    def _file_resulted(self, f: FileRecord, status: str, code: int, supplement: str | None = None,
                       destination: str | None = None, digest: str | None = None) -> None:
        f.status = status
        f.result_code = code
        f.supplement = supplement
        if destination:
            f.destination = destination
        if digest:
            f.digest = digest
        if status == FileStatus.DONE:
            f.offset = f.size
        self.windows.pop(f.index, None)
        self._close(f.index)
        self._dirty.discard(f.index)
        self._resulted.append(f)
        self._flush_results()

    def _flush_results(self, force: bool = False) -> None:
        """Save the files that got a result and log them in one `progress` event: per file, a commit and an
        event cost more than sending a small file. A source killed before this runs learns them again from
        the destination at its restart (the resync), so nothing is lost."""
        if not self._resulted:
            return
        now = time.monotonic()
        if not force and len(self._resulted) < RESULTS_BATCH and now - self._last_results_flush < RESULTS_INTERVAL:
            return
        self._last_results_flush = now
        done, self._resulted = self._resulted, []
        self.ctx.store.save_files(self.tid, "source", done)
        if self.state.is_terminal:
            return  # the `completed` event lists every file with its result
        for i in range(0, len(done), RESULTS_BATCH):
            self.ctx.log.emit(self.rec, "progress", files=[self._file_view(f) for f in done[i:i + RESULTS_BATCH]])

    def _file_view(self, f: FileRecord) -> dict[str, Any]:
        return {"index": f.index, "source": f.source, "destination": f.destination, "size": f.size,
                "checksum_method": self.rec.header.get("checksum", "sha256"), "digest": f.digest,
                "result_code": f.result_code, "supplement": f.supplement}

    def _event(self, event: E) -> S:
        before = self.state
        after = self.lc.handle(event)
        if after == S.RECOVERING and not before.is_recovery:
            pass  # the caller logs 'recovering' with its reason
        self._persist_state()
        return after

    def _persist_state(self) -> None:
        self.rec.state = self.state.value
        self.rec.recoveries = self.lc.recoveries
        self.rec.recovering_since = _wall(self.lc.recovering_since)
        self.rec.last_stall = self.stall_reason
        self.ctx.store.update_transfer(self.rec)
        self.ctx.on_state_change()

    def _stall(self, reason: str, trigger: str) -> None:
        before = self.state
        if before.is_terminal or before == S.QUEUED:
            return
        self.stall_reason = reason
        for tid in self.ctx.budget.release(self.tid):  # nothing is sent while recovering: room for the others
            self.ctx.wake(tid)
        after = self._event(E.STALL)
        if before.is_recovery:
            return  # still recovering; the counter keeps running
        if self.ctx.metrics is not None:
            self.ctx.metrics.recovery_started()
        rt = self.lc.recovery_timeout
        deadline = _iso(_wall(self.lc.recovery_deadline))
        rt_text = ("recovers until successful (recovery timeout -1)" if rt < 0 else
                   "fails at once (recovery timeout 0)" if rt == 0 else f"recovery timeout {rt} s, until {deadline}")
        self.ctx.log.emit(self.rec, "recovering", message_id=results.BFGTR0081I,
                          message=f"BFGTR0081I: transfer {self.tid} entered recovery: {reason}; {rt_text}",
                          reason=reason, trigger=trigger, peer=self.dest, recovery_timeout=rt,
                          recovery_deadline=deadline, source_agent_time=_iso(time.time()),
                          recoveries=self.lc.recoveries)
        if after == S.RECOVERY_TIMED_OUT:
            self._persist_state()
        self.resync_attempts = 0
        self.next_resync_at = time.monotonic() + 0.2

    def _checkpoint(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            self._last_checkpoint = now
            # only what moved: O(files in flight), not O(files); in one commit (a resync can move thousands)
            moved = [self.files[idx] for idx in self._dirty if self.files[idx].status == FileStatus.READY]
            if moved:
                self.ctx.store.save_files(self.tid, "source", moved)
            self._dirty.clear()
        self._publish_progress()

    def _publish_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress_pub < PROGRESS_INTERVAL:
            return
        self._last_progress_pub = now
        s = self.summary()
        elapsed = max(1e-6, now - self.started_mono)
        current = next((f for f in self.files.values() if f.status == FileStatus.READY), None)
        s.update(time=_iso(time.time()), rate_bytes_per_second=int(s["bytes_done"] / elapsed),
                 current_file=current.source if current else None)
        import json
        if self.ctx.link_up():
            topic = self.ctx.topics.progress(self.ctx.name, self.tid)
            payload = provenance.sign_payload(json.dumps(s).encode(), provenance.EVENT, topic, self.ctx.identity)
            task = asyncio.ensure_future(self.ctx.publish(topic, payload, 0, False))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _finish_ok(self) -> None:
        self._flush_results(force=True)
        codes = [f.result_code if f.result_code is not None else results.FILE_FAILED for f in self.files.values()]
        rc = results.transfer_result(codes)
        self._event({results.SUCCESS: E.FINISH_OK, results.PARTIAL: E.FINISH_PARTIAL}.get(rc, E.FINISH_FAILED))

    async def _finish(self) -> None:
        """Log the outcome, apply the disposition, and tell the destination (which cleans up)."""
        for t in list(self._pending):
            t.cancel()
        for tid in self.ctx.budget.release(self.tid):
            self.ctx.wake(tid)
        self._flush_results(force=True)
        st = self.state
        rc = self.lc.result_code if self.lc.result_code is not None else results.FAILED
        if st == S.RECOVERY_TIMED_OUT:
            reason = f"BFGSS0081E: transfer {self.tid} failed: recovery timed out after {self.lc.recovery_timeout} s"
        elif st == S.CANCELLED:
            reason = self.end_reason or "cancelled"
        else:
            reason = self.end_reason
        changed = []  # the rows to save with the outcome (the results were saved as they came)
        for f in self.files.values():
            if f.status == FileStatus.READY:  # never report an unfinished file as a success
                f.status = FileStatus.FAILED
                f.result_code = results.FILE_FAILED
                f.supplement = reason or f"the transfer ended {st.value}"
                changed.append(f)
        if st == S.COMPLETE and self.rec.header.get("disposition") == "delete":
            changed = list(self.files.values())
            for f in self.files.values():
                try:
                    self.dirs.unlink(f.source)
                except OSError as exc:
                    f.result_code = results.FILE_WARNING
                    f.supplement = f"transferred, but the source was not deleted: {os_error_at(exc)}"
        self.rec.result_code = rc
        self.rec.state = st.value
        self.ctx.store.update_transfer(self.rec, header=True, files=changed)
        if self.ctx.metrics is not None:
            self.ctx.metrics.transfer_finished(st.value, rc)
        total = sum(f.size for f in self.files.values() if f.status == FileStatus.DONE)
        elapsed = time.monotonic() - self.started_mono
        self.ctx.log.emit(
            self.rec, "completed", result_code=rc, result=results.describe(rc),
            message_id=results.BFGSS0081E if st == S.RECOVERY_TIMED_OUT else None,
            message=reason, files=[self._file_view(f) for f in self.files.values()],
            statistics={"files": len(self.files),
                        "files_succeeded": sum(1 for f in self.files.values() if f.result_code in (0, 2)),
                        "files_failed": sum(1 for f in self.files.values() if f.result_code == 1),
                        "bytes": total, "seconds": round(elapsed, 3), "recoveries": self.lc.recoveries,
                        "bytes_resent": self.bytes_resent},
        )
        self._publish_progress(force=True)
        self.ctx.on_state_change()
        await send_complete(self.ctx, self.rec)


async def send_complete(ctx: AgentContext, rec: TransferRecord) -> None:
    """Tell the destination the outcome (repeated by the agent until it confirms)."""
    msg = Complete(kind="complete", transfer_id=rec.transfer_id, source_agent=ctx.name, state=rec.state,
                   result_code=rec.result_code if rec.result_code is not None else results.FAILED)
    try:
        await ctx.publish(ctx.topics.control(rec.peer, rec.transfer_id), seal(msg, transfer_key(rec.header)), 1,
                          False)
    except ConnectionError:
        pass
