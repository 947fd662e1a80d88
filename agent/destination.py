"""The destination side of one transfer: the IO driver of agent.core.destination_session.

The session decides (which messages to take, what the destination holds, when a file is verified, renamed
or failed, what to answer, when to ask the source for recovery); this module carries its actions out: part
files (opened without following links, agent/fsops.py), pwrite and hashing, fsync (agent/durability.py),
rename, the state store, publishing, and the one timer. The destination decides where a file lands (its own
sandbox); the part file *is* the checkpoint: after a restart the destination reports its size as the bytes
it holds, and the source resumes there.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .wire.binding import derive_key, new_ephemeral, seal, seal_body, transfer_key
from .wire.encryption import ENCRYPTION, encrypted, envelope_for, seal_reply
from .context import AgentContext
from .core import destination_session as ds
from .core import results
from .core.destination_session import DestinationSession
from .core.file_status import FileEvent, next_file_status
from .fanout_destination import SharedStream, take_offer
from .fsops import ConfinedDirs, split
from .link import MessageTooLarge
from .fileio import shorten
from .part_files import NAME_MAX, PART_SUFFIX, PartFiles, part_name, part_path
from .wire.protocol import (MAX_PATH_CHARS, Ack, Bundle, Chunk, Complete, CompleteAck, FileEnd, FileOutcome,
                       FileResult, FileResults, RequestRecovery, Resync, ResyncReply)
from .sandbox import SandboxError
from .store import FileRecord, TransferRecord
from .text_parts import convert_part, text_mode

# part_name, part_path, PART_SUFFIX and NAME_MAX live in agent/part_files.py; named here too, where the agent
# and the tests have always found them
__all__ = ["FEATURES", "NAME_MAX", "PART_SUFFIX", "DestinationTransfer", "not_a_directory", "part_name", "part_path"]

log = logging.getLogger("fte.destination")

# What this destination understands beyond the base protocol, told to the source in every ResyncReply
# (docs/protocol.md): bundles of small files, FLAG_NO_ACK chunks, FLAG_NO_CRC frames of a bound transfer, and
# AES-GMAC trailers (FLAG_GMAC) instead of HMAC-SHA256 on them, and AES-GCM encrypted frames (FLAG_AEAD).
FEATURES = ("bundle", "sparse_ack", "mac_no_crc", "gmac", "aes-gcm")


def not_a_directory(parent: str, cache: dict[str, str | None]) -> str | None:
    """Why `parent` cannot be made a directory (a file where it or one of its ancestors should be), or None.

    Said before any byte travels, in words: mkdir would fail later with a bare "[Errno 17] File exists"."""
    if parent not in cache:
        problem, probe = None, parent
        while not os.path.isdir(probe):
            if os.path.lexists(probe):
                what = "a file, not a directory" if os.path.isfile(probe) else "not a directory"
                problem = (f'"{probe}" is {what}; the directories of a destination must be directories or not '
                           f'exist yet (check -dd / -df)')
                break
            up = os.path.dirname(probe)
            if up == probe:
                break
            probe = up  # does not exist: made when the first file arrives, if its parent can hold it
        cache[parent] = problem
    return cache[parent]


class DestinationTransfer:
    def __init__(self, ctx: AgentContext, rec: TransferRecord, dirs: ConfinedDirs | None = None, *,
                 fresh: bool = False) -> None:
        self.ctx = ctx
        self.rec = rec
        self.tid = rec.transfer_id
        self.source_agent = rec.peer
        self.files = {f.index: f for f in rec.files}
        self._pending: set[asyncio.Task[None]] = set()  # replies being published
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        header = rec.header
        checksum = header.get("checksum", "sha256")
        settings = ctx.settings
        fsync = True if settings is None else bool(getattr(settings, "agentFsync", True))
        self.text = text_mode(header.get("text"))  # -t text: how files are converted (None: binary)
        self.parts = PartFiles(dirs or ConfinedDirs(ctx.sandbox), checksum, fsync, self.tid, self.text is not None)
        self.fds = self.parts.fds  # the agent closes them when it stops
        self.key = transfer_key(header)  # set at the offer (accept), never after
        self.stream = SharedStream(ctx, rec)  # fan-out: the shared topic (agent.fanout_destination)
        now = time.monotonic()
        self.session = DestinationSession(
            rec.files, agent=ctx.name, peer=rec.peer, state=rec.state, epoch=rec.epoch, checksum=checksum,
            exist_error=header.get("exist") == "error", cancel_requested=header.get("cancel_requested"),
            ack_timeout=ctx.ack_timeout, fresh=fresh, now=now, text=self.text is not None,
            shared=self.stream.key is not None)
        self._carry_out_now(self.session.start(now))  # killed between verifying and renaming: finish the renames

    # ------------------------------------------------------------------ creation

    @classmethod
    def accept(cls, ctx: AgentContext, msg: Resync, busy: dict[str, str] | None = None) -> "DestinationTransfer":
        """A new transfer: check every destination against the sandbox and -de, before writing anything."""
        header = {"source_agent": msg.source_agent, "destination_agent": msg.destination_agent,
                  "exist": msg.exist, "checksum": msg.checksum, "job_name": msg.job_name,
                  "metadata": dict(msg.metadata)}
        if msg.text is not None:
            header["text"] = msg.text.model_dump()
        if msg.kx:
            # our half of the key exchange: the transfer key binds every later message to this transfer
            private, public = new_ephemeral()
            key = derive_key(private, msg.kx, msg.transfer_id)
            header.update(kx_public=public, transfer_key=base64.b64encode(key).decode())
            if msg._encrypted:  # it came encrypted (agent.router): everything of it goes back encrypted
                header.update(encryption=ENCRYPTION)
            take_offer(header, msg, ctx.name)  # fan-out: the group key, kept with the transfer
        rec = TransferRecord(msg.transfer_id, "destination", "in_progress", msg.source_agent, header, epoch=msg.epoch)
        parents: dict[str, str] = {}
        dirs = ConfinedDirs(ctx.sandbox)
        blocked: dict[str, str | None] = {}  # parent directory -> why it cannot be one (a file in the way)
        absent: set[str] = set()  # parent directories not there (yet): nothing in them exists
        for offer in msg.files:
            f = FileRecord(offer.index, offer.source, offer.destination, offer.size, offer.mtime)
            try:
                real = f.destination = ctx.sandbox.resolve_text(offer.destination, write=True, parents=parents)
                problem = not_a_directory(split(real)[0], blocked)
                if problem:
                    raise NotADirectoryError(problem)
                there = dirs.lstat(f.destination, absent)
                if msg.exist == "error" and there is not None:
                    raise FileExistsError(f'BFGIO0006E: File "{real}" already exists.')
                if there is not None and stat.S_ISDIR(there.st_mode):
                    raise IsADirectoryError(f'destination "{real}" is a directory')
                if busy and real in busy:
                    # two transfers writing one part file would interleave their data
                    raise FileExistsError(f'destination "{real}" already exists as the part file of transfer '
                                          f'{busy[real]}, which is writing it')
            except (SandboxError, OSError) as exc:
                f.status = next_file_status(f.status, FileEvent.FAILED)
                f.result_code, f.supplement = results.FILE_FAILED, str(exc)
            rec.files.append(f)
        for d in msg.directories or []:  # the empty directories of a -r transfer
            try:
                dirs.makedirs(str(ctx.sandbox.resolve(d, write=True, parents=parents)))
            except (SandboxError, OSError) as exc:
                log.warning("transfer %s: empty directory %s not created: %s", msg.transfer_id, d, exc)
        ctx.store.save_transfer(rec)
        return cls(ctx, rec, dirs, fresh=True)

    # ------------------------------------------------------------------ inputs

    async def on_resync(self, msg: Resync) -> None:
        await self._feed(self.session.receive(msg, time.monotonic()))

    async def on_chunk(self, chunk: Chunk) -> None:
        await self._feed(self.session.receive(chunk, time.monotonic()))

    async def on_shared(self, chunk: Chunk) -> None:
        """A chunk from the fan-out transfer's shared topic (opened with the group key by agent.router)."""
        await self._feed(self.session.receive_shared(chunk, time.monotonic()))

    async def on_bundle(self, bundle: Bundle) -> None:
        await self._feed(self.session.receive(bundle, time.monotonic()))

    async def on_file_end(self, msg: FileEnd) -> None:
        await self._feed(self.session.receive(msg, time.monotonic()))

    async def on_complete(self, msg: Complete) -> None:
        """The source's outcome: remove the part files of whatever did not arrive, then confirm."""
        await self._feed(self.session.receive(msg, time.monotonic()))

    async def request_recovery(self, reason: str, cancel: bool = False) -> None:
        now = time.monotonic()
        await self._feed(self.session.cancel(reason, now) if cancel else self.session.request_recovery(reason, now))

    async def link_changed(self, up: bool) -> None:
        await self._feed(self.session.link_changed(up, time.monotonic()))

    def cleanup(self) -> list[str]:
        """The files not finished fail and their part files are removed: the paths of those that were there."""
        [remove] = self.session.abandon()
        assert isinstance(remove, ds.RemoveParts)
        return self._remove_parts(remove)

    # ------------------------------------------------------------------ what the agent reads

    @property
    def active(self) -> bool:
        return self.session.active

    @property
    def last_activity(self) -> float:
        return self.session.last_activity

    def summary(self) -> dict[str, Any]:
        return {"transfer_id": self.tid, "role": "destination", "state": self.session.state.value,
                "source_agent": self.source_agent, "destination_agent": self.ctx.name, **self.session.progress()}

    # ------------------------------------------------------------------ carrying out the session's actions

    async def _feed(self, actions: list[ds.Action]) -> None:
        await self._carry_out(actions)
        self._arm()

    async def _carry_out(self, actions: list[ds.Action]) -> None:
        for action in actions:
            do = _NOW.get(type(action))
            more = do(self, action) if do is not None else await _AWAITED[type(action)](self, action)
            if more:
                await self._carry_out(more)

    def _carry_out_now(self, actions: list[ds.Action]) -> None:
        """The actions that need no waiting (a restart's renames, a timer's request)."""
        for action in actions:
            more = (_NOW.get(type(action)) or _AT_RESTART[type(action)])(self, action)
            if more:
                self._carry_out_now(more)

    def _arm(self) -> None:
        """The one timer, at the session's deadline. Data pushes the deadline later: the timer, when it fires,
        asks again rather than being moved at every chunk."""
        deadline = self.session.get_timer()
        if deadline is None or (self._timer is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if not self.ctx.link_up():
            return  # nothing can be asked now; the reconnection asks (agent.daemon), and arms again
        self._carry_out_now(self.session.handle_timer(time.monotonic()))
        self._arm()

    def _write_chunk(self, a: ds.WriteChunk) -> list[ds.Action]:
        error = self.parts.write(a.file, a.offset, a.data)
        if error is not None:
            return self.session.write_failed(a.file, error, time.monotonic())
        if self.ctx.metrics is not None:
            self.ctx.metrics.bytes_received += len(a.data)
        return self.session.chunk_written(a, time.monotonic())

    async def _write_files(self, a: ds.WriteFiles) -> list[ds.Action]:
        outcomes = await self.parts.write_whole(a.entries)
        if self.ctx.metrics is not None:
            self.ctx.metrics.bytes_received += sum(len(data) for _, data, _ in a.entries)
        return self.session.files_written(a, outcomes, time.monotonic())

    async def _seal(self, a: ds.SealPart) -> list[ds.Action]:
        error = self.parts.create_empty(a.file)
        if error is not None:
            return self.session.write_failed(a.file, error, time.monotonic())
        digest, error = await self.parts.seal(a.file)
        return self.session.sealed(a, digest, error, time.monotonic())

    def _rename(self, a: ds.RenameParts) -> list[ds.Action]:
        return self.session.renamed(a, self.parts.rename(a.files, a.noreplace, a.restart, a.converted),
                                    time.monotonic())

    def _measure(self, a: ds.MeasureParts) -> list[ds.Action]:
        return self.session.measured(a, self.parts.sizes(a.files), time.monotonic())

    def _remove_parts(self, a: ds.RemoveParts) -> list[str]:
        if self._timer is not None:  # the transfer ended: nothing more to ask
            self._timer.cancel()
            self._timer = None
        self.stream.leave()
        return self.parts.remove(a.files)

    def _parts_removed(self, a: ds.RemoveParts) -> list[ds.Action]:
        return self.session.parts_removed(a, self._remove_parts(a), time.monotonic())

    def _save_transfer(self, a: ds.SaveTransfer) -> None:
        s, rec = self.session, self.rec
        rec.state, rec.epoch, rec.peer_confirmed = s.state.value, s.epoch, s.peer_confirmed or rec.peer_confirmed
        if s.result_code is not None:
            rec.result_code = s.result_code
        if a.header:
            rec.header["cancel_requested"] = s.cancel_requested
        self.ctx.store.update_transfer(rec, header=a.header, files=list(a.files) or None)

    def _reply(self, a: Any) -> None:
        for msg in _REPLIES[type(a)](a, self.tid, self.rec.header.get("kx_public")):
            self._send(msg)
        if self.stream.joined and (self.session.shared is ds.Shared.LEFT
                                   or isinstance(a, ds.SendResults) and not self.session.active):
            self.stream.leave()  # every file has its result, or shared chunks proved bad: none is of use any more

    def _log(self, a: ds.LogCleanedUp | ds.LogWarning) -> None:
        if isinstance(a, ds.LogWarning):
            log.warning("transfer %s %s", self.tid, a.text)
        else:
            self.ctx.log.emit(self.rec, "cleaned_up", result_code=a.result_code, message=a.message,
                              part_files_removed=list(a.part_files_removed))

    def _close(self, idx: int) -> None:
        self.parts.close(idx)

    def _send(self, msg: Any) -> None:
        # the negotiation answer is signed (it carries our key exchange value); the rest carries a MAC
        identity = self.ctx.identity if isinstance(msg, (ResyncReply, ReplyBody)) else None
        # Not waiting for the broker's PUBACK: the destination handles one message at a time, and waiting a
        # round trip per ack held up the next chunk. A reply lost with the broker is recovered by a resync.
        payload = seal_body(msg.body, self.key, identity) if isinstance(msg, ReplyBody) else seal(msg, self.key, identity)
        if identity is not None and encrypted(self.rec.header) and self.key is not None:
            payload = seal_reply(payload, self.key, self.rec.header["kx_public"], self.tid)
        elif identity is None:
            payload = envelope_for(self.rec.header, payload, self.tid)
        task = asyncio.ensure_future(self.ctx.publish(self.ctx.topics.control(self.source_agent, self.tid),
                                                      payload, 1, False))
        self._pending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: "asyncio.Task[None]") -> None:
        self._pending.discard(task)
        if not task.cancelled():
            exc = task.exception()  # retrieved: a ConnectionError here is handled by the source's resync
            if isinstance(exc, MessageTooLarge):
                log.error("transfer %s: %s; not sent", self.tid, exc)


# ------------------------------------------------------------------ -t text: the conversions (agent/text_parts.py)


def _conversions(t: DestinationTransfer, a: ds.ConvertParts) -> list[tuple[str | None, str | None]]:
    assert t.text is not None
    return [convert_part(t.parts.dirs, f, t.text, t.parts.checksum, t.parts.fsync) for f in a.files]


async def _convert(t: DestinationTransfer, a: ds.ConvertParts) -> list[ds.Action]:
    # the files of one action (a bundle's) in one worker-thread call, not one call per small file
    return t.session.converted(a, await asyncio.to_thread(_conversions, t, a), time.monotonic())


def _convert_now(t: DestinationTransfer, a: ds.ConvertParts) -> list[ds.Action]:
    """A restart's conversions (the transfer is loaded outside a task): done before the agent goes on."""
    return t.session.converted(a, _conversions(t, a), time.monotonic())


# ------------------------------------------------------------------ fan-out (agent/fanout_destination.py)


async def _subscribe(t: DestinationTransfer, a: ds.Subscribe) -> list[ds.Action]:
    """Fan-out: the shared topic subscribed (SUBACK awaited, bounded) before the resync is answered."""
    return t.session.subscribed(a, await t.stream.join(), time.monotonic())


# ------------------------------------------------------------------ the session's replies as messages


@dataclass(frozen=True, slots=True)
class ReplyBody:
    """A ResyncReply in its JSON form, as ResyncReply(...).model_dump(mode="json", exclude_none=True) gives it
    (tests/unit/test_destination_reply.py compares the two). Built from this agent's own records, which were
    checked when they came in: neither validated again nor made models (a transfer of 10,000 files answers
    with 10,000 holdings; FileHolding.model_construct cost 5-10 µs each, their dump 1 µs)."""

    body: dict[str, Any]


def _sent(supplement: str | None) -> str | None:
    """A supplement as sent: every string on the wire is at most MAX_PATH_CHARS (the source refuses a longer one,
    and with it the whole answer: the transfer stalled), and a refusal that quotes a path near that length is
    longer. Shortened around an ellipsis, as a command's refusal is; the destination's own records keep it whole."""
    return None if supplement is None else shorten(supplement, MAX_PATH_CHARS)


def _holding(h: ds.Holding) -> dict[str, Any]:
    d = {"index": h.index, "held": h.held, "status": str(h.status), "result_code": h.result_code,
         "supplement": _sent(h.supplement), "destination": h.destination, "digest": h.digest,
         "written_digest": h.written_digest}
    return {k: v for k, v in d.items() if v is not None}


def _resync_reply(a: ds.SendResyncReply, tid: str, kx: str | None) -> list[Any]:
    body = {"kind": "resync_reply", "transfer_id": tid, "epoch": a.epoch, "files": [_holding(h) for h in a.holdings],
            "kx": kx, "features": list(FEATURES), "fanout": a.fanout}
    return [ReplyBody({k: v for k, v in body.items() if v is not None})]


def _results(a: ds.SendResults, tid: str, kx: str | None) -> list[Any]:
    if a.together:
        # this agent's own records: not validated again (the source validates what it receives)
        return [FileResults(kind="file_results", transfer_id=tid, results=[
            FileOutcome.model_construct(index=f.index, result_code=f.result_code, supplement=_sent(f.supplement),
                                        destination=f.destination, digest=f.digest, **_written(f.written_digest))
            for f in a.files])]
    return [FileResult(kind="file_result", transfer_id=tid, index=f.index, result_code=f.result_code,
                       supplement=_sent(f.supplement), destination=f.destination, digest=f.digest,
                       **_written(f.written_digest)) for f in a.files]


def _written(digest: str | None) -> dict[str, str]:
    """-t text: the digest of what was written, told to the source; absent for a binary file (as before)."""
    return {} if digest is None else {"written_digest": digest}


_REPLIES: dict[type, Callable[[Any, str, str | None], list[Any]]] = {
    ds.SendResyncReply: _resync_reply,
    ds.SendResults: _results,
    ds.SendAck: lambda a, tid, kx: [Ack(kind="ack", transfer_id=tid, epoch=a.epoch, index=a.index, offset=a.offset,
                                        rewind=a.rewind)],
    ds.SendRequestRecovery: lambda a, tid, kx: [RequestRecovery(kind="request_recovery", transfer_id=tid,
                                                                reason=a.reason, cancel=a.cancel)],
    ds.SendCompleteAck: lambda a, tid, kx: [CompleteAck(kind="complete_ack", transfer_id=tid,
                                                        removed_part_files=a.removed_part_files)],
}

# What carries out each action: at once, or awaited (fsync in threads, hashing a resumed part file).
_NOW: dict[type, Callable[[DestinationTransfer, Any], Any]] = {
    ds.WriteChunk: DestinationTransfer._write_chunk,
    ds.RenameParts: DestinationTransfer._rename,
    ds.DiscardPart: lambda self, a: self.parts.discard(a.file),
    ds.MeasureParts: DestinationTransfer._measure,
    ds.RemoveParts: DestinationTransfer._parts_removed,
    ds.SaveFiles: lambda self, a: self.ctx.store.save_files(self.tid, "destination", list(a.files)),
    ds.SaveTransfer: DestinationTransfer._save_transfer,
    ds.LogCleanedUp: DestinationTransfer._log,
    ds.LogWarning: DestinationTransfer._log,
    **{kind: DestinationTransfer._reply for kind in _REPLIES},
}
_AWAITED: dict[type, Callable[[DestinationTransfer, Any], Any]] = {
    ds.WriteFiles: DestinationTransfer._write_files, ds.SealPart: DestinationTransfer._seal,
    ds.ConvertParts: _convert, ds.Subscribe: _subscribe,
}
# ...and at a restart, where the session's first actions are carried out before the agent goes on
_AT_RESTART: dict[type, Callable[[DestinationTransfer, Any], Any]] = {ds.ConvertParts: _convert_now}
