"""The destination side of one transfer: accept files, write a part file, verify, make durable, rename.

The destination decides where a file lands (its own sandbox); the part file *is* the checkpoint:
after a restart the destination reports its size as the bytes it holds, and the source resumes there.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
import stat
from typing import Any

from .binding import derive_key, new_ephemeral, seal, transfer_key
from .context import AgentContext
from .core import results
from .core.lifecycle import TERMINAL_STATE_VALUES
from .fileio import write_all, write_failed
from .durability import GROUP, fsync_and_close
from .fsops import ConfinedDirs, split
from .protocol import (Ack, Bundle, Chunk, Complete, CompleteAck, FileEnd, FileHolding, FileOutcome, FileResult,
                       FileResults, RequestRecovery, Resync, ResyncReply)
from .link import MessageTooLarge
from .sandbox import SandboxError
from .source import hash_file
from .store import FileRecord, TransferRecord
from .core.statuses import FileStatus

log = logging.getLogger("fte.destination")

PART_SUFFIX = ".part"
# NAME_MAX: a part file name never exceeds it, whatever the length of the destination's name
NAME_MAX = 255
_PART_HASH = 16  # hex digits of sha256 of the whole name, which tell truncated names apart
# What this destination understands beyond the base protocol, told to the source in every ResyncReply
# (docs/protocol.md): bundles of small files, FLAG_NO_ACK chunks, FLAG_NO_CRC frames of a bound transfer, and
# AES-GMAC trailers (FLAG_GMAC) instead of HMAC-SHA256 on them.
FEATURES = ("bundle", "sparse_ack", "mac_no_crc", "gmac")


def part_name(name: str) -> str:
    """The part file's name for a destination file name: `<name>.part`, or, when that would be longer than
    NAME_MAX bytes (a name of 251-255 bytes), `<the name cut to fit>~<16 hex digits of its sha256>.part`
    (255 bytes). Always ends in `.part`, which no destination may (Sandbox.resolve): a transfer never
    writes over a part file, and a part file never over a destination."""
    encoded = os.fsencode(name)
    if len(encoded) + len(PART_SUFFIX) <= NAME_MAX:
        return name + PART_SUFFIX
    tag = hashlib.sha256(encoded).hexdigest()[:_PART_HASH].encode()
    keep = NAME_MAX - len(PART_SUFFIX) - 1 - len(tag)
    return os.fsdecode(encoded[:keep] + b"~" + tag + PART_SUFFIX.encode())


def part_path(destination: str) -> str:
    parent, name = split(destination)
    return (parent if parent.endswith("/") else parent + "/") + part_name(name)


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


def _pwrite_and_hash(fd: int, data: Any, offset: int, hasher: Any) -> None:
    write_all(fd, data, offset)  # every byte, or the OSError (a full disk writes short first)
    if hasher is not None:
        hasher.update(data)


class DestinationTransfer:
    def __init__(self, ctx: AgentContext, rec: TransferRecord, dirs: ConfinedDirs | None = None) -> None:
        self.ctx = ctx
        self.rec = rec
        self.tid = rec.transfer_id
        self.source_agent = rec.peer
        self.files = {f.index: f for f in rec.files}
        self.fds: dict[int, int] = {}
        self.epoch = rec.epoch
        self.last_activity = time.monotonic()
        self.gap_reported: dict[int, int] = {}
        self._last_checkpoint = 0.0
        self._pending: set[asyncio.Task[None]] = set()
        # digest computed as the data is written in order, so that the file is not read again at the end
        self.hashers: dict[int, tuple[Any, int]] = {}
        # Bundle files renamed into place whose "done" is not saved yet: saved with the next commit (the next
        # bundle's, a resync's, the end's). Until then their row says "renaming", which a restart finishes
        # the same way (the part file is gone: the rename happened). One commit per bundle instead of two.
        self._renamed: list[FileRecord] = []
        # Accepted by this process (accept), not loaded at a restart: only the part files it opened itself hold
        # bytes of this transfer. A part file already lying where a new transfer writes is a leftover of
        # another one, not ours to resume (the first write truncates it); after a restart, the part files
        # may hold more than the last checkpoint, and their size is what the transfer holds.
        self._fresh = False
        self._opened: set[int] = set()  # files whose part file this session opened for writing
        # every file operation goes through these (opened without following links: agent/fsops.py)
        self.dirs = dirs or ConfinedDirs(ctx.sandbox)
        settings = ctx.settings
        self.fsync = True if settings is None else bool(getattr(settings, "agentFsync", True))
        for f in self.files.values():
            if f.status == FileStatus.RENAMING:  # killed between verifying and renaming: finish the rename
                part = part_path(f.destination)
                try:
                    if self.dirs.lstat(part) is not None:
                        self._sync_path(part)
                        self._rename_into_place(part, f.destination)
                        self._sync_dir(f.destination)
                    f.status, f.result_code, f.supplement = FileStatus.DONE, results.FILE_SUCCESS, None
                except OSError as exc:
                    f.status, f.result_code, f.supplement = FileStatus.FAILED, results.FILE_FAILED, str(exc)
                    self._discard_part(part)  # a failed file leaves no part file (BFGIO0006E: theirs is kept)
                ctx.store.save_file(self.tid, "destination", f)

    # ------------------------------------------------------------------ creation

    @classmethod
    def accept(cls, ctx: AgentContext, msg: Resync, busy: dict[str, str] | None = None) -> "DestinationTransfer":
        """A new transfer: check every destination against the sandbox and -de, before writing anything."""
        header = {"source_agent": msg.source_agent, "destination_agent": msg.destination_agent,
                  "exist": msg.exist, "checksum": msg.checksum, "job_name": msg.job_name,
                  "metadata": dict(msg.metadata)}
        if msg.kx:
            # our half of the key exchange: the transfer key binds every later message to this transfer
            private, public = new_ephemeral()
            key = derive_key(private, msg.kx, msg.transfer_id)
            header.update(kx_public=public, transfer_key=base64.b64encode(key).decode())
        rec = TransferRecord(msg.transfer_id, "destination", "in_progress", msg.source_agent, header, epoch=msg.epoch)
        parents: dict[str, str] = {}
        dirs = ConfinedDirs(ctx.sandbox)
        blocked: dict[str, str | None] = {}  # parent directory -> why it cannot be one (a file in the way)
        for offer in msg.files:
            f = FileRecord(offer.index, offer.source, offer.destination, offer.size, offer.mtime)
            try:
                real = ctx.sandbox.resolve(offer.destination, write=True, parents=parents)
                f.destination = str(real)
                problem = not_a_directory(str(real.parent), blocked)
                if problem:
                    raise NotADirectoryError(problem)
                there = dirs.lstat(f.destination)
                if msg.exist == "error" and there is not None:
                    raise FileExistsError(f'BFGIO0006E: File "{real}" already exists.')
                if there is not None and stat.S_ISDIR(there.st_mode):
                    raise IsADirectoryError(f'destination "{real}" is a directory')
                if busy and str(real) in busy:
                    # two transfers writing one part file would interleave their data
                    raise FileExistsError(f'destination "{real}" already exists as the part file of transfer '
                                          f'{busy[str(real)]}, which is writing it')
            except (SandboxError, OSError) as exc:
                f.status, f.result_code, f.supplement = FileStatus.FAILED, results.FILE_FAILED, str(exc)
            rec.files.append(f)
        ctx.store.save_transfer(rec)
        session = cls(ctx, rec, dirs)
        session._fresh = True
        return session

    # ------------------------------------------------------------------ messages

    async def on_resync(self, msg: Resync) -> None:
        self.last_activity = time.monotonic()
        if msg.epoch < self.epoch:
            return
        if self.rec.header.get("cancel_requested"):
            await self.request_recovery("")  # repeat the cancel; never resume a cancelled transfer
            return
        self.epoch = msg.epoch
        self.rec.epoch = msg.epoch
        self.gap_reported.clear()
        moved = []
        for offer in msg.files:  # files the source had not yet seen a result for
            f = self.files.get(offer.index)
            if f is None or f.status != FileStatus.READY:
                continue
            held = self._held(f)
            if held != f.offset:
                f.offset = held
                moved.append(f)
        self.ctx.store.update_transfer(self.rec)
        self._save(moved)
        # built from this agent's own records, which were checked when they came in: not validated again
        # (a transfer of 10,000 files builds 10,000 of them per resync)
        holdings = [FileHolding.model_construct(index=f.index, held=f.offset if f.status == FileStatus.READY else f.size,
                                                status=f.status, result_code=f.result_code or 0,
                                                supplement=f.supplement, destination=f.destination, digest=f.digest)
                    for f in self.files.values()]
        # files whose length is already complete may just be waiting for their FileEnd
        await self._send(ResyncReply(kind="resync_reply", transfer_id=self.tid, epoch=self.epoch, files=holdings,
                                     kx=self.rec.header.get("kx_public"), features=list(FEATURES)))

    async def on_chunk(self, chunk: Chunk) -> None:
        self.last_activity = time.monotonic()
        if chunk.epoch != self.epoch:
            return
        f = self.files.get(chunk.index)
        if f is None or f.status != FileStatus.READY:
            return
        end = chunk.offset + len(chunk.data)
        if end > f.size:
            log.warning("transfer %s file %d: chunk beyond the announced size dropped", self.tid, f.index)
            return
        if chunk.offset == f.offset:
            try:
                await self._write(f, chunk.offset, chunk.data)
            except OSError as exc:
                # a full disk, a quota, EIO: resending cannot cure it (it looped, re-sending for ever)
                await self._write_failed(f, exc)
                return
            f.offset = end
            if self.ctx.metrics is not None:
                self.ctx.metrics.bytes_received += len(chunk.data)
            self.gap_reported.pop(f.index, None)
            if f.offset == f.size and f.digest is not None:  # the FileEnd came first
                if await self._finalize(f):
                    return
            if chunk.ack:  # else a later chunk asks (FLAG_NO_ACK), and the ack then covers this one too
                await self._send(Ack(kind="ack", transfer_id=self.tid, epoch=self.epoch, index=f.index,
                                     offset=f.offset))
            self._checkpoint(f)
        elif chunk.offset > f.offset:
            # a chunk was lost before this one: ask for everything from our offset, once per gap
            if self.gap_reported.get(f.index) != f.offset:
                self.gap_reported[f.index] = f.offset
                await self._send(Ack(kind="ack", transfer_id=self.tid, epoch=self.epoch, index=f.index,
                                     offset=f.offset, rewind=True))

    async def on_bundle(self, bundle: Bundle) -> None:
        """Whole small files in one frame: each is written to its part file and verified; their part files are
        fsynced together (agent/durability.py); then all are marked verified in one commit, renamed, the
        directories fsynced, marked done in one commit, and answered in one FileResults."""
        self.last_activity = time.monotonic()
        if bundle.epoch != self.epoch:
            return
        algo = self.rec.header.get("checksum", "sha256")
        exist_error = self.rec.header.get("exist") == "error"
        verified: list[FileRecord] = []
        answered: list[FileRecord] = []
        # written and checked, their part files still open: made durable together (agent/durability.py)
        unsynced: list[tuple[FileRecord, int]] = []
        try:
            for entry in bundle.entries:
                f = self.files.get(entry.index)
                if f is None or f.status != FileStatus.READY or len(entry.data) != f.size:
                    continue  # not expected (any more): a resync will tell the source where this file stands
                try:
                    fd, actual = self._write_part(f, entry.data, entry.digest, algo, exist_error)
                    f.offset, f.digest = f.size, actual
                    if self.fsync:
                        unsynced.append((f, fd))
                    else:
                        os.close(fd)
                        f.status = FileStatus.RENAMING
                        verified.append(f)
                except (OSError, ValueError) as exc:
                    self._fail(f, exc)
                    answered.append(f)
                if self.ctx.metrics is not None:
                    self.ctx.metrics.bytes_received += len(entry.data)
                self.hashers.pop(f.index, None)
                if len(unsynced) >= GROUP:
                    await self._sync_group(unsynced, verified, answered)
        except BaseException:
            for _, fd in unsynced:  # an unexpected error: not left open
                os.close(fd)
            raise
        await self._sync_group(unsynced, verified, answered)
        # as in _finalize: "verified" is saved before the renames, so that a crash between them is finished
        # by the restart rather than turned into "already exists" when the source sends the file again
        self._save(verified + answered)
        failed = []
        renamed_into: dict[str, list[FileRecord]] = {}
        for f in verified:
            try:
                self._rename_into_place(part_path(f.destination), f.destination)
                renamed_into.setdefault(split(f.destination)[0], []).append(f)
            except (OSError, ValueError) as exc:
                self._fail(f, exc, "rename to")
                failed.append(f)
                answered.append(f)
        for directory, files in renamed_into.items():
            try:
                if self.fsync:
                    self.dirs.fsync_dir(directory)  # the renames durable (once per directory) before the report
                for f in files:
                    f.status, f.result_code, f.supplement = FileStatus.DONE, results.FILE_SUCCESS, None
                    self._renamed.append(f)
            except OSError as exc:
                for f in files:
                    f.status, f.result_code, f.supplement = FileStatus.FAILED, results.FILE_FAILED, \
                        write_failed(f"fsync of directory {directory} (the file was renamed into place but is not "
                                     f"durable)", exc)
                    failed.append(f)
            answered.extend(files)
        if failed:
            self._save(failed)
        if answered:
            # this agent's own records: not validated again (the source validates what it receives)
            await self._send(FileResults(kind="file_results", transfer_id=self.tid, results=[
                FileOutcome.model_construct(index=f.index, result_code=f.result_code, supplement=f.supplement,
                                            destination=f.destination, digest=f.digest) for f in answered]))

    def _write_part(self, f: FileRecord, data: bytes, digest: str | None, algo: str,
                    exist_error: bool) -> tuple[int, str | None]:
        """Write a bundle's file whole to its part file and check it: the descriptor, still open (not yet
        fsynced), and the digest computed."""
        self._close(f.index)  # a partial part file of an earlier epoch, written chunk by chunk
        fd = self.dirs.open(part_path(f.destination), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644,
                            create_dirs=True)
        self._opened.add(f.index)
        try:
            write_all(fd, data, 0)  # every byte, or the OSError (a full disk writes short first)
            actual = None if algo == "none" else hashlib.new(algo, data).hexdigest()
            if digest and actual != digest:
                raise ValueError(f"digest mismatch: the source sent {algo} {digest}, "
                                 f"the destination computed {actual}")
            if exist_error and self.dirs.lstat(f.destination) is not None:
                raise FileExistsError(f'BFGIO0006E: File "{f.destination}" already exists.')
        except BaseException:
            os.close(fd)
            raise
        return fd, actual

    async def _sync_group(self, unsynced: list[tuple[FileRecord, int]], verified: list[FileRecord],
                          answered: list[FileRecord]) -> None:
        """fsync these written part files together, and close them: each durable one is verified (to be
        renamed), each that failed is failed (its part file removed). Empties `unsynced`."""
        if not unsynced:
            return
        group, unsynced[:] = unsynced[:], []  # handed over: fsync_and_close closes them, even if cancelled
        errors = await fsync_and_close([fd for _, fd in group])  # durable before renamed and reported done
        for (f, _), error in zip(group, errors):
            if error is None:
                f.status = FileStatus.RENAMING
                verified.append(f)
            else:
                self._fail(f, error)
                answered.append(f)

    def _save(self, files: list[FileRecord]) -> None:
        """Save these file rows, with the renamed bundle files not saved yet, in one commit."""
        self.ctx.store.save_files(self.tid, "destination", self._with_renamed(files))

    def _with_renamed(self, files: list[FileRecord]) -> list[FileRecord]:
        """`files` and the renamed bundle files whose "done" is not saved yet (they go with this commit)."""
        files, self._renamed = self._renamed + files, []
        return files

    def _fail(self, f: FileRecord, exc: BaseException, action: str = "write to") -> None:
        part = part_path(f.destination)
        self._discard_part(part)
        f.status, f.result_code, f.supplement = FileStatus.FAILED, results.FILE_FAILED, _supplement(exc, action, part, f)
        if _is_io_error(exc):
            log.error("transfer %s: %s", self.tid, f.supplement)

    async def _write_failed(self, f: FileRecord, exc: OSError) -> None:
        """The part file cannot be written: the file fails now (part file removed, one log line), and the
        source is told, so that the transfer ends rather than re-sending what cannot be stored."""
        self._close(f.index)
        self.hashers.pop(f.index, None)
        self._fail(f, exc)
        self._save([f])
        await self._send(FileResult(kind="file_result", transfer_id=self.tid, index=f.index,
                                    result_code=f.result_code, supplement=f.supplement,
                                    destination=f.destination, digest=None))

    async def on_file_end(self, msg: FileEnd) -> None:
        self.last_activity = time.monotonic()
        f = self.files.get(msg.index)
        if f is None or f.status != FileStatus.READY or msg.size != f.size:
            return
        f.digest = msg.digest if msg.digest is not None else ""
        self.ctx.store.save_file(self.tid, "destination", f)
        if f.offset == f.size:
            await self._finalize(f)

    async def on_complete(self, msg: Complete) -> None:
        """The source's outcome: remove the part files of whatever did not arrive, then confirm."""
        unfinished = [f for f in self.files.values() if f.status == FileStatus.READY]  # cleanup() marks them failed
        removed = self.cleanup()
        self.rec.state = msg.state
        self.rec.result_code = msg.result_code
        self.rec.peer_confirmed = True
        self.ctx.store.update_transfer(self.rec, files=self._with_renamed(unfinished))
        if removed:
            self.ctx.log.emit(self.rec, "cleaned_up", result_code=msg.result_code,
                              message=f"removed {len(removed)} part file(s) of a transfer that ended {msg.state}",
                              part_files_removed=removed)
        await self._send(CompleteAck(kind="complete_ack", transfer_id=self.tid, removed_part_files=len(removed)))

    def cleanup(self) -> list[str]:
        removed = []
        for f in self.files.values():
            self._close(f.index)
            if f.status != FileStatus.READY:
                # done: in place; failed: refused before writing (the part file may be another transfer's)
                # or failed at the end, which removed its own part file
                continue
            p = part_path(f.destination)
            try:
                self.dirs.unlink(p)
                removed.append(p)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove part file %s: %s", p, exc)
            f.status, f.result_code = FileStatus.FAILED, results.FILE_FAILED
        self.dirs.close()  # the transfer ended: its directories are not needed any more
        return removed

    async def request_recovery(self, reason: str, cancel: bool = False) -> None:
        self.last_activity = time.monotonic()
        # A cancel accepted here is passed on to the source, which owns the outcome. Sent once, it was lost
        # when the source was away (cut off, restarting: nothing is queued for it), and the transfer then
        # resumed and completed although the user had cancelled it (tests/fault/test_network.py::
        # test_cancel_at_the_destination_while_the_source_is_cut_off). So it is remembered in the state
        # store and repeated by every later request (watchdog, reconnect) and resync until the outcome comes.
        pending = self.rec.header.get("cancel_requested")
        if cancel and not pending:
            self.rec.header["cancel_requested"] = reason
            self.ctx.store.save_transfer(self.rec)
        elif pending:
            reason, cancel = pending, True
        await self._send(RequestRecovery(kind="request_recovery", transfer_id=self.tid, reason=reason, cancel=cancel))

    @property
    def active(self) -> bool:
        """Still receiving. A transfer all of whose files were refused holds no capacity and asks nothing
        (a forged offer would otherwise occupy a maxDestinationTransfers slot for ever)."""
        return self.rec.state not in TERMINAL_STATE_VALUES and \
            any(f.status == FileStatus.READY for f in self.files.values())

    def summary(self) -> dict[str, Any]:
        return {"transfer_id": self.tid, "role": "destination", "state": self.rec.state,
                "source_agent": self.source_agent, "destination_agent": self.ctx.name,
                "bytes_total": sum(f.size for f in self.files.values()),
                "bytes_done": sum(f.size if f.status == FileStatus.DONE else f.offset for f in self.files.values()),
                "files_total": len(self.files),
                "files_done": sum(1 for f in self.files.values() if f.status != FileStatus.READY)}

    # ------------------------------------------------------------------ internals

    def _held(self, f: FileRecord) -> int:
        if self._fresh and f.index not in self._opened:
            return 0  # not a stat per file of a new transfer of 10,000 (and never a stranger's part file)
        try:
            st = self.dirs.lstat(part_path(f.destination))
        except OSError:
            return 0
        return 0 if st is None else min(st.st_size, f.size)

    async def _write(self, f: FileRecord, offset: int, data: Any) -> None:
        """Write at `offset` of the part file, and hash the data if it continues what was hashed so far."""
        fd = self.fds.get(f.index)
        if fd is None:
            fd = self.fds[f.index] = self.dirs.open(part_path(f.destination), os.O_WRONLY | os.O_CREAT, 0o644,
                                                    create_dirs=True)
            self._opened.add(f.index)
            if offset == 0:
                os.ftruncate(fd, 0)
        hasher = None
        algo = self.rec.header.get("checksum", "sha256")
        if algo != "none":
            h, pos = self.hashers.get(f.index) or (hashlib.new(algo), 0)
            hasher = h if pos == offset else None
        # in the event loop: a worker thread cost more than it freed (docs/performance.md, "Threads")
        _pwrite_and_hash(fd, data, offset, hasher)
        if hasher is not None:
            self.hashers[f.index] = (hasher, offset + len(data))

    async def _finalize(self, f: FileRecord) -> bool:
        """Verify the digest and rename the part file into place. True when a FileResult was sent."""
        if f.digest is None:
            return False  # the FileEnd (with the digest) has not arrived yet
        part = part_path(f.destination)
        try:
            if f.size == 0 and self.dirs.lstat(part) is None:
                await self._write(f, 0, b"")
        except OSError as exc:
            await self._write_failed(f, exc)
            return True
        synced = False
        if self.fsync and f.index in self.fds:
            try:
                # durable before the rename (a crash cannot leave a torn file); in a thread: the fsync of a big
                # file can take seconds, in which the agent's other tasks (commands, status, the link) go on
                await asyncio.to_thread(os.fsync, self.fds[f.index])
                synced = True
            except OSError:
                pass  # fsync again below, failing the file with the reason
        self._close(f.index)
        algo = self.rec.header.get("checksum", "sha256")
        try:
            entry = self.hashers.pop(f.index, None)
            if algo == "none":
                actual = None
            elif entry is not None and entry[1] == f.size:
                actual = entry[0].hexdigest()
            else:  # resumed after a restart: the part file is read once
                actual = await asyncio.to_thread(hash_file, part, algo, self.dirs)
            if f.digest and actual != f.digest:
                raise ValueError(f"digest mismatch: the source sent {algo} {f.digest}, "
                                 f"the destination computed {actual}")
            if self.rec.header.get("exist") == "error" and self.dirs.lstat(f.destination) is not None:
                raise FileExistsError(f'BFGIO0006E: File "{f.destination}" already exists.')
            if self.fsync and not synced:
                self._sync_path(part)  # written by an earlier process (restart), or the fsync above failed
            # verified: remember that before renaming, so that a crash between the rename and the next
            # save cannot turn a delivered file into "already exists" when the source resends it
            f.status, f.digest = FileStatus.RENAMING, actual
            self.ctx.store.save_file(self.tid, "destination", f)
            self._rename_into_place(part, f.destination)
            self._sync_dir(f.destination)
            f.status, f.result_code, f.supplement, f.digest = FileStatus.DONE, results.FILE_SUCCESS, None, actual
        except (OSError, ValueError) as exc:
            self._discard_part(part)
            f.status, f.result_code, f.supplement = FileStatus.FAILED, results.FILE_FAILED, _supplement(exc, "rename to", part, f)
        self.ctx.store.save_file(self.tid, "destination", f)
        await self._send(FileResult(kind="file_result", transfer_id=self.tid, index=f.index,
                                    result_code=f.result_code, supplement=f.supplement,
                                    destination=f.destination, digest=f.digest))
        return True

    def _rename_into_place(self, part: str, destination: str) -> None:
        """The part file renamed to its destination. With -de error an existing destination is never replaced,
        atomically (agent.fsops.rename_noreplace): it was checked when the transfer started and again just
        before, but a file created between that check and a plain rename would be overwritten."""
        if self.rec.header.get("exist") != "error":
            self.dirs.rename(part, destination)
            return
        try:
            self.dirs.rename(part, destination, replace=False)
        except FileExistsError:
            raise FileExistsError(f'BFGIO0006E: File "{destination}" already exists.') from None

    def _discard_part(self, part: str) -> None:
        """Remove the part file of a file that failed, if it is there: the failure is what is reported, not
        a second error about the removal (cleanup(), which reports what it removed, does its own)."""
        try:
            self.dirs.unlink(part)
        except OSError:
            pass

    def _sync_path(self, path: str) -> None:
        """fsync a file this session did not write itself (a part file of an earlier process)."""
        if not self.fsync:
            return
        fd = self.dirs.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_dir(self, destination: str) -> None:
        """fsync the directory a file was renamed into: the rename is durable before the file is reported."""
        if self.fsync:
            self.dirs.fsync_dir(split(destination)[0])

    def _checkpoint(self, f: FileRecord) -> None:
        now = time.monotonic()
        if now - self._last_checkpoint >= 0.5:
            self._last_checkpoint = now
            self.ctx.store.save_file(self.tid, "destination", f)

    def _close(self, idx: int) -> None:
        fd = self.fds.pop(idx, None)
        if fd is not None:
            os.close(fd)

    @property
    def key(self) -> bytes | None:
        return transfer_key(self.rec.header)

    async def _send(self, msg: Any) -> None:
        # the negotiation answer is signed (it carries our key exchange value); the rest carries a MAC
        identity = self.ctx.identity if isinstance(msg, ResyncReply) else None
        # Not waiting for the broker's PUBACK: the destination handles one message at a time, and waiting a
        # round trip per ack held up the next chunk. A reply lost with the broker is recovered by a resync.
        task = asyncio.ensure_future(self.ctx.publish(self.ctx.topics.control(self.source_agent, self.tid),
                                                      seal(msg, self.key, identity), 1, False))
        self._pending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: "asyncio.Task[None]") -> None:
        self._pending.discard(task)
        if not task.cancelled():
            exc = task.exception()  # retrieved: a ConnectionError here is handled by the source's resync
            if isinstance(exc, MessageTooLarge):
                log.error("transfer %s: %s; not sent", self.tid, exc)


def _is_io_error(exc: BaseException) -> bool:
    """An error of the system (ENOSPC, EDQUOT, EIO, EACCES...), not one this module raised with its own words
    (BFGIO0006E file exists, a digest mismatch)."""
    return isinstance(exc, OSError) and exc.errno is not None


def _supplement(exc: BaseException, action: str, part: str, f: FileRecord) -> str:
    if not _is_io_error(exc):
        return str(exc)
    return write_failed(f"rename of {part} to {f.destination}" if action == "rename to" else f"{action} {part}", exc)
