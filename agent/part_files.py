"""The part files of one transfer at the destination: written, hashed, made durable, renamed, removed.

A file arrives in `<name>.part` next to its destination and is renamed into place once it is complete,
durable and verified (agent.core.destination_session decides when). Every operation goes through a
ConfinedDirs (opened without following links: agent/fsops.py). Errors come back as the supplement a failed
file is reported with, not as exceptions: what they mean for the transfer is the session's to decide.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from .durability import each_in_workers
from .fileio import write_all, write_failed
from .fsops import ConfinedDirs, split
from .source_files import hash_file
from .store import FileRecord

log = logging.getLogger("fte.destination")

PART_SUFFIX = ".part"
# NAME_MAX: a part file name never exceeds it, whatever the length of the destination's name
NAME_MAX = 255
_PART_HASH = 16  # hex digits of sha256 of the whole name, which tell truncated names apart


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


def text_part_path(destination: str) -> str:
    """-t text: where a verified part file is converted to, before it is renamed into place: the part file's
    own part file (`<name>.part.part`), which no destination's part file can be (no destination ends in
    `.part`, and a shortened part name ends in `~<16 hex digits>.part`)."""
    return part_path(part_path(destination))


def _pwrite_and_hash(fd: int, data: Any, offset: int, hasher: Any) -> None:
    write_all(fd, data, offset)  # every byte, or the OSError (a full disk writes short first)
    if hasher is not None:
        hasher.update(data)


class PartFiles:
    def __init__(self, dirs: ConfinedDirs, checksum: str, fsync: bool, tid: str, text: bool = False) -> None:
        self.dirs = dirs
        self._text = text  # -t text: files are converted next to their part files (agent/text_parts.py)
        self.checksum = checksum  # "none": nothing is hashed
        self.fsync = fsync  # agentFsync
        self.tid = tid  # for the log
        self.fds: dict[int, int] = {}  # open part files, written chunk by chunk
        # digest computed as the data is written in order, so that the file is not read again at the end
        self.hashers: dict[int, tuple[Any, int]] = {}

    def write(self, f: FileRecord, offset: int, data: Any) -> str | None:
        """Write at `offset` of the part file (created, truncated when writing from 0), hashing the data if it
        continues what was hashed so far. None, or why it failed (the part file is then closed)."""
        try:
            fd = self.fds.get(f.index)
            if fd is None:
                fd = self.fds[f.index] = self.dirs.open(part_path(f.destination), os.O_WRONLY | os.O_CREAT, 0o644,
                                                        create_dirs=True)
                if offset == 0:
                    os.ftruncate(fd, 0)
            hasher = None
            if self.checksum != "none":
                h, pos = self.hashers.get(f.index) or (hashlib.new(self.checksum), 0)
                hasher = h if pos == offset else None
            # in the event loop: a worker thread cost more than it freed (docs/performance.md, "Threads")
            _pwrite_and_hash(fd, data, offset, hasher)
        except OSError as exc:
            self.close(f.index)
            return self._failure(exc, "write to", f)
        if hasher is not None:
            self.hashers[f.index] = (hasher, offset + len(data))
        return None

    def create_empty(self, f: FileRecord) -> str | None:
        """An empty file has no chunk: its part file is made here. None, or why it could not be."""
        try:
            if f.size == 0 and self.dirs.lstat(part_path(f.destination)) is None:
                return self.write(f, 0, b"")
        except OSError as exc:
            return self._failure(exc, "write to", f)
        return None

    async def seal(self, f: FileRecord) -> tuple[str | None, str | None]:
        """The part file complete: made durable, closed, and its digest computed. (digest, error or None)."""
        part = part_path(f.destination)
        synced = False
        if self.fsync and f.index in self.fds:
            try:
                # durable before the rename (a crash cannot leave a torn file); in a thread: the fsync of a big
                # file can take seconds, in which the agent's other tasks (commands, status, the link) go on
                await asyncio.to_thread(os.fsync, self.fds[f.index])
                synced = True
            except OSError:
                pass  # fsync again below, failing the file with the reason
        self.close(f.index)
        try:
            entry = self.hashers.pop(f.index, None)
            if self.checksum == "none":
                actual = None
            elif entry is not None and entry[1] == f.size:
                actual = entry[0].hexdigest()
            else:  # resumed after a restart: the part file is read once
                actual = await asyncio.to_thread(hash_file, part, self.checksum, self.dirs)
            if not synced:
                self._sync_path(part)  # written by an earlier process (restart), or the fsync above failed
        except (OSError, ValueError) as exc:
            return None, self._failure(exc, "rename to", f)
        return actual, None

    async def write_whole(self, entries: Sequence[tuple[FileRecord, Any, Any]]) -> list[tuple[str | None, str | None]]:
        """A bundle's files, each written whole to its part file, hashed, made durable and closed, several at
        once in worker threads (agent/durability.py: one file's creation overlaps the others' fsyncs); every
        one is done when this returns. (digest, error or None) for each."""
        for f, _, _ in entries:
            self.close(f.index)  # a partial part file of an earlier epoch, written chunk by chunk
            self.hashers.pop(f.index, None)
        return await each_in_workers(entries, self._write_whole)

    def _write_whole(self, entry: tuple[FileRecord, Any, Any]) -> tuple[str | None, str | None]:
        """In a worker thread: create, write, hash, fsync (durable before it is renamed and reported done)."""
        f, data, _ = entry
        try:
            fd = self.dirs.open(part_path(f.destination), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644,
                                create_dirs=True)
            try:
                write_all(fd, data, 0)  # every byte, or the OSError (a full disk writes short first)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            return None, self._failure(exc, "write to", f)
        return (None if self.checksum == "none" else hashlib.new(self.checksum, data).hexdigest()), None

    def rename(self, files: Sequence[FileRecord], noreplace: bool, restart: bool,
               converted: bool = False) -> list[str | None]:
        """Each part file renamed into place (never over an existing file with `noreplace`: -de error), then
        each directory made durable once. `restart`: an earlier process verified them; one whose part file is
        gone was renamed, one still there is made durable first. `converted` (-t text): the converted file
        (text_part_path) is what is renamed, and the part file it was made from is removed. The error of each,
        or None."""
        errors: list[str | None] = [None] * len(files)
        into: dict[str, list[int]] = {}  # directory -> the files renamed into it
        for i, f in enumerate(files):
            part = text_part_path(f.destination) if converted else part_path(f.destination)
            try:
                if restart:
                    if self.dirs.lstat(part) is None:
                        if converted:
                            self._unlink_quietly(part_path(f.destination))
                        continue
                    self._sync_path(part)
                self._rename_into_place(part, f.destination, noreplace)
                if converted:
                    self._unlink_quietly(part_path(f.destination))
                into.setdefault(split(f.destination)[0], []).append(i)
            except (OSError, ValueError) as exc:
                errors[i] = self._failure(exc, "rename to", f)
        for directory, renamed in into.items() if self.fsync else ():
            try:
                self.dirs.fsync_dir(directory)  # the renames durable (once per directory) before the report
            except OSError as exc:
                for i in renamed:
                    errors[i] = write_failed(f"fsync of directory {directory} (the file was renamed into place "
                                             f"but is not durable)", exc)
        return errors

    def _rename_into_place(self, part: str, destination: str, noreplace: bool) -> None:
        """With -de error an existing destination is never replaced, atomically (agent.fsops.rename_noreplace): it
        was checked when the transfer started, but a file created since would be overwritten by a plain rename."""
        if not noreplace:
            self.dirs.rename(part, destination)
            return
        try:
            self.dirs.rename(part, destination, replace=False)
        except FileExistsError:
            raise FileExistsError(f'BFGIO0006E: File "{destination}" already exists.') from None

    def discard(self, f: FileRecord) -> None:
        """Remove the part file of a file that failed, if it is there: the failure is what is reported, not
        a second error about the removal (remove(), which reports what it removed, does its own)."""
        self.close(f.index)
        self.hashers.pop(f.index, None)
        self._unlink_quietly(part_path(f.destination))
        if self._text:  # -t text: a converted file, whole or half made, goes too
            self._unlink_quietly(text_part_path(f.destination))

    def _unlink_quietly(self, path: str) -> None:
        try:
            self.dirs.unlink(path)
        except OSError:
            pass

    def sizes(self, files: Sequence[FileRecord]) -> list[int | None]:
        """The size of each file's part file (None: none there)."""
        sizes: list[int | None] = []
        for f in files:
            try:
                st = self.dirs.lstat(part_path(f.destination))
            except OSError:
                st = None
            sizes.append(None if st is None else st.st_size)
        return sizes

    def remove(self, files: Sequence[FileRecord]) -> list[str]:
        """The transfer ended: every part file closed, those of these files removed; the paths removed."""
        for idx in list(self.fds):
            self.close(idx)
        self.hashers.clear()
        removed = []
        for f in files:
            p = part_path(f.destination)
            try:
                self.dirs.unlink(p)
                removed.append(p)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove part file %s: %s", p, exc)
        self.dirs.close()  # the transfer ended: its directories are not needed any more
        return removed

    def close(self, idx: int) -> None:
        fd = self.fds.pop(idx, None)
        if fd is not None:
            os.close(fd)

    def _sync_path(self, path: str) -> None:
        """fsync a part file this process has not fsynced itself (an earlier process wrote it)."""
        if not self.fsync:
            return
        fd = self.dirs.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _failure(self, exc: BaseException, action: str, f: FileRecord) -> str:
        """What a failed file's supplement says; an error of the system is logged too (once)."""
        if not _is_io_error(exc):
            return str(exc)  # said in this module's own words (BFGIO0006E, a digest mismatch...)
        part = part_path(f.destination)
        text = write_failed(f"rename of {part} to {f.destination}" if action == "rename to" else f"{action} {part}",
                            exc)
        log.error("transfer %s: %s", self.tid, text)
        return text


def _is_io_error(exc: BaseException) -> bool:
    """An error of the system (ENOSPC, EDQUOT, EIO, EACCES...), not one this module raised with its own words
    (BFGIO0006E file exists)."""
    return isinstance(exc, OSError) and exc.errno is not None
