"""The open source files of one transfer's source session (agent/source.py): their reads, straight into
sealed chunk frames or whole for bundles, their digests (computed on the way when the reads are sequential),
and whether a file is still the one the transfer was requested for (agent.fileio).

Every source file is opened through a ConfinedDirs (no link followed inside the sandbox: agent/fsops.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

from .core.errors import FteError
from .core.source_actions import SendChunk
from .fileio import (SourceStat, changed_since_request, changed_while_read, read_failed, source_changed,
                     stat_path)
from .fsops import ConfinedDirs
from .wire.binding import ChunkSealer
from .wire.protocol import CHUNK_HEADER, finish_chunk

log = logging.getLogger("fte.source")


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
                     hasher: Any, sealer: ChunkSealer | None, mac_no_crc: bool) -> bytes | bytearray | None:
    """Read a chunk straight into its frame (header, data, MAC trailer of a bound transfer) and seal it; the
    data is hashed on the way when `hasher` is given. None if the file ended early. One buffer, no copy of
    the data: this runs for every 256 KiB of every file."""
    size = CHUNK_HEADER.size + length
    frame = bytearray(size + (sealer.room if sealer is not None else 0))
    view = memoryview(frame)
    data = view[CHUNK_HEADER.size:size]
    if os.preadv(fd, [data], offset) != length:
        return None
    if hasher is not None:
        hasher.update(data)
    finish_chunk(frame, epoch, index, offset, length, last=last, ack=ack, crc=sealer is None or not mac_no_crc,
                 mac_flag=sealer.flag if sealer is not None else 0)
    if sealer is not None:
        if sealer.aead:
            return sealer.finish(view)  # encrypted into a new buffer
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



class SourceFiles:
    """The source files of one transfer, by index (`files`: the session's SourceFile records), as one session
    reads them: open descriptors, what each file was when opened, the digests computed on the way, and the
    chunks' sealer (the MAC or AEAD of a bound transfer)."""

    def __init__(self, files: dict[int, Any], checksum: str, sandbox: Any) -> None:
        self.files = files
        self.checksum = checksum
        # a digest computed on the way, and where it stands; the legs of a fan-out share theirs (`share_hashers`)
        self.hashers: dict[int, tuple[Any, int]] = {}
        self.shared_hashers = False
        self.fds: dict[int, int] = {}
        # what each open source file was when this session opened it (agent.fileio): compared after its last
        # read and at every resync, so that a file changed while it was sent never yields success
        self.stats: dict[int, SourceStat] = {}
        self.dirs = ConfinedDirs(sandbox)
        self.mac_no_crc = False  # FLAG_NO_CRC on a bound transfer
        self.sealer: ChunkSealer | None = None  # the chunks' MAC on a bound transfer (HMAC, or GMAC: "gmac")

    def resend_from(self, idx: int, offset: int) -> None:
        if self.shared_hashers:
            return  # a fan-out leg resends: the shared digest covers the bytes read in order by any leg
        entry = self.hashers.get(idx)
        if entry and entry[1] != offset:
            self.hashers[idx] = (entry[0], -1)  # not sequential any more

    def read_frame(self, send: SendChunk, epoch: int, sealer: ChunkSealer | None = None) -> bytearray | None:
        """The chunk of `send` as a frame ready to publish (None: short read), sealed by `sealer` (default:
        the transfer's)."""
        idx, offset, length = send.index, send.offset, send.length
        fd = self.fds.get(idx)
        if fd is None:
            fd = self.fds[idx] = _open_read(self.files[idx].source, self.dirs)
            self._opened(idx, fd)
        hasher = None
        algo = self.checksum
        if algo != "none":
            hasher, pos = self.hashers.get(idx) or (hashlib.new(algo), 0)
            if pos != offset:
                hasher = None  # not sequential (a resend): the digest is computed apart at the end
        # In the event loop, not a worker thread: on two cores shared with the broker and the destination, the
        # hand-off to a thread and back cost more CPU than it freed (docs/performance.md, "Threads")
        frame = read_chunk_frame(fd, epoch, idx, offset, length, send.last, send.ack, hasher,
                                 self.sealer if sealer is None else sealer, self.mac_no_crc)
        if frame is not None and hasher is not None:
            self.hashers[idx] = (hasher, offset + length)
        return frame

    def skipped(self, idx: int, offset: int, length: int) -> None:
        """The chunk at `offset` of file `idx` went without this session reading it (a fan-out credit,
        agent/fanout.py): the digest is computed apart at the end unless it was already past, or the legs share
        their digests (the leg that read it fed the shared one)."""
        if self.shared_hashers:
            return
        entry = self.hashers.get(idx)
        if entry is None or entry[1] <= offset:
            self.hashers[idx] = (None, -1)

    def share_hashers(self, hashers: dict[int, tuple[Any, int]]) -> None:
        """Hash with the other legs of a fan-out: a file read in order by any of them (each chunk read once, by
        the leg that published it) is hashed once, not re-read at its end by every leg that took credits."""
        self.hashers, self.shared_hashers = hashers, True

    async def read_whole(self, batch: tuple[int, ...]) -> list[tuple[bytes | None, str | None, str | None]]:
        f = self.files
        return await asyncio.to_thread(read_whole_files, [(f[j].source, f[j].size) for j in batch], self.checksum,
                                       [f[j].mtime for j in batch], self.dirs)

    async def digest(self, idx: int) -> str | None:
        algo = self.checksum
        if algo == "none":
            return None
        f = self.files[idx]
        entry = self.hashers.get(idx)
        if entry and entry[1] == f.size:
            return str(entry[0].hexdigest())
        digest = await asyncio.to_thread(hash_file, f.source, algo, self.dirs)
        self.hashers[idx] = (hashlib.new(algo), -1)  # resync later: recompute, never trust a partial hash
        return digest

    def close(self, idx: int) -> None:
        fd = self.fds.pop(idx, None)
        if fd is not None:
            os.close(fd)
        self.stats.pop(idx, None)

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def _opened(self, idx: int, fd: int) -> None:
        """Remember what the file just opened is; SourceChanged if it is not what the transfer was requested
        for (its size and mtime then): after a restart, the bytes sent before were of that version."""
        f = self.files[idx]
        st = SourceStat.of_fd(fd)
        changed = changed_since_request(st, f.size, f.mtime)
        if changed is not None:
            raise SourceChanged(changed)
        self.stats[idx] = st

    def changed(self, idx: int) -> str | None:
        """Why file `idx` is not what it was when this session first opened it (or, not open, when the
        transfer was requested), or None."""
        f = self.files[idx]
        fd, before = self.fds.get(idx), self.stats.get(idx)
        if fd is None or before is None:
            now = stat_path(f.source, self.dirs)
            return source_changed("removed") if now is None else changed_since_request(now, f.size, f.mtime)
        return changed_while_read(before, SourceStat.of_fd(fd), stat_path(f.source, self.dirs))

    def check(self, idx: int, tid: str) -> str | None:
        """CheckSources for one file: why it is not the one requested, or None."""
        try:
            why = self.changed(idx)
        except OSError as exc:
            why = read_failed(self.files[idx].source, exc)
        if why is not None:
            log.warning("transfer %s: %s: %s", tid, self.files[idx].source, why)
        return why
