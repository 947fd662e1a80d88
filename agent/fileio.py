"""What a transfer's file IO promises: every byte written or a clear failure, and a source read as one file.

Two small guarantees the sessions build on (agent/source.py, agent/destination.py):

* `write_all`: a write to a full disk may write part of the data and return the count (tmpfs, ext4 near
  full): unchecked, the part file silently lacked its tail while the digest, computed over what was *meant*
  to be written, still matched. A short write is retried until the error shows (ENOSPC, EDQUOT, EIO).
* `SourceStat`: what the source file was when it was first opened; compared again after its last read,
  with the file descriptor (fstat) and with the path (a file renamed over the original), so that a file
  appended to, rewritten in place, truncated or replaced while it was being sent never yields success.

The message ids are this project's own (FTEIO..., in agent.core.results): the reference system has no
message with exactly these meanings (docs/result-codes.md).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from .core.results import FTEIO0001E, FTEIO0002E, FTEIO0003E


def describe_os_error(exc: BaseException) -> str:
    """'No space left on device (ENOSPC)': the words and the errno name an operator can search for."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return str(exc)


def shorten(text: str, limit: int = 200) -> str:
    """`text`, or its start and end around an ellipsis when it is longer than `limit`: a path of 4,000
    characters in a message hides the words around it, and a reply has a size limit of its own."""
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return f"{text[:keep]}...{text[-keep:]}"


def os_error_at(exc: BaseException) -> str:
    """'/in/x: Permission denied (EACCES)': the path the error names (shortened), then describe_os_error."""
    name = getattr(exc, "filename", None)
    where = f"{shorten(os.fsdecode(name))}: " if isinstance(name, (str, bytes)) else ""
    return where + describe_os_error(exc)


def write_failed(what: str, exc: BaseException) -> str:
    """The supplement of a file whose part file could not be written (`what`: "write to /in/x.part"):
    FTEIO0001E."""
    return f"{FTEIO0001E}: {what} failed: {describe_os_error(exc)}"


def read_failed(path: str, exc: BaseException) -> str:
    """The supplement of a file whose source could not be read: FTEIO0002E."""
    return f"{FTEIO0002E}: read of {path} failed: {describe_os_error(exc)}"


def write_all(fd: int, data: Any, offset: int) -> None:
    """pwrite every byte of `data` at `offset`, or raise the OSError that stopped it."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:  # not seen on Linux (it raises instead), but never loop for ever on it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n


@dataclass(frozen=True)
class SourceStat:
    """The identity and version of a source file: an inode (device, number) and what any write changes."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> "SourceStat":
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    @classmethod
    def of_fd(cls, fd: int) -> "SourceStat":
        return cls.of(os.fstat(fd))

    def same_file(self, other: "SourceStat") -> bool:
        return (self.ino, self.dev) == (other.ino, other.dev)


def changed_since_request(now: SourceStat, size: int, mtime: float) -> str | None:
    """Why the file opened now is not the one the transfer was requested for (size, mtime recorded then), or
    None. A recorded mtime of 0 means unknown (records of older versions): only the size is compared."""
    if now.size != size:
        return source_changed(f"size {size} -> {now.size}")
    if mtime and abs(now.mtime_ns / 1e9 - mtime) > 1e-6:  # (a float of seconds holds ~0.2 µs now)
        return source_changed("modified since the transfer was requested")
    return None


def changed_while_read(before: SourceStat, fd_now: SourceStat, path_now: SourceStat | None) -> str | None:
    """Why the file read between `before` (its first open) and now is not one version of one file, or None.
    `path_now` is what its path names now (None: nothing any more)."""
    # the path first: renaming over or removing the file also changes the ctime of the inode still open
    if path_now is None:
        return source_changed("removed")
    if not path_now.same_file(before):
        return source_changed("replaced by another file")
    if fd_now.size != before.size:
        return source_changed(f"size {before.size} -> {fd_now.size}")
    if (fd_now.mtime_ns, fd_now.ctime_ns) != (before.mtime_ns, before.ctime_ns):
        return source_changed("rewritten at the same size")
    return None


def source_changed(how: str) -> str:
    return f"{FTEIO0003E}: source file changed while it was being sent ({how}); resend it"


def stat_path(path: str, dirs: Any) -> SourceStat | None:
    """What `path` names now (not following a final symbolic link), or None if nothing. Through `dirs` (an
    agent.fsops.ConfinedDirs): the same directory descriptors the file was opened through."""
    try:
        st = dirs.lstat(path)
    except OSError:
        return None
    return None if st is None else SourceStat.of(st)
