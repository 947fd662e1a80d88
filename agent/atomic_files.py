"""Configuration files (keys, trust files) that several processes update: written whole, under a lock.

`fte-create-agent` run many times at once in one FTE_CONFIG_HOME rewrote each other's trust files: each
read a file, added a line and wrote it back, and the last writer won (20 agents created in parallel lost
trust entries, and their transfers were refused with 53). Every such update is now a read-modify-write
under `locked()` (an fcntl.flock on a lock file beside what it guards), and every write is
`write_atomic()`: a temporary file in the same directory, fsync, rename, fsync of the directory, so that a
reader sees the old file or the new one, never half of one, and a crash leaves one of the two.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"

# flock belongs to an open file: a second open of the same lock file in this process would wait for the
# first forever. The lock is therefore taken once per process and path, and nested uses count.
_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth)
_guard = threading.RLock()


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Exclusive, across processes, for everything guarded by `directory`/.lock (nested use is fine)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = str(directory / LOCK_FILE)
    with _guard:
        fd, depth = _held.get(path, (-1, 0))
        if depth == 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        _held[path] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[path]
            if depth == 1:
                del _held[path]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            else:
                _held[path] = (fd, depth - 1)


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, replace: bool = True) -> None:
    """`path` holds `data` whole, durably, with `mode`. replace=False: FileExistsError if `path` exists
    (linked into place, so that of two writers at once exactly one wins and nobody is overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError when another writer was first
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # renamed into place
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)
