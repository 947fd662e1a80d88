"""File operations confined to the sandbox: what was checked is what is used.

`Sandbox.resolve` checks a path string (its real path within the allowed roots, outside the excluded
ones). Using that string again later (open, rename, unlink) would follow whatever the path names *then*: a
local user who can rename entries inside the sandbox could swap a checked directory for a symbolic link to
a directory outside it, between the check and the use, and have the agent write or read there.

So every file operation of a transfer goes through `ConfinedDirs`: directories are opened from the allowed
root, component by component, each with O_NOFOLLOW relative to its parent's descriptor, and files are then
opened, renamed and removed relative to their directory's descriptor (openat, renameat, unlinkat), never
through a symbolic link. A link found where the checked path had a directory is refused. The descriptors
are kept per transfer (one walk per directory, not one per file: 10,000 small files in one directory cost
one walk), at most `DIR_FDS` of them, and closed when the transfer ends.

With no sandbox (no allow list) directories are opened by their path, as before; the leaf is still never
followed where it was not before (part files, destinations).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
import weakref
from typing import Iterator

from .sandbox import Sandbox, SandboxError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Open directory descriptors kept per transfer set; the oldest is closed beyond this (and opened again by a
# walk if it is needed again). Far below the usual limit of 1024 descriptors per process.
DIR_FDS = 64
RENAME_NOREPLACE = 1  # linux/fs.h


def _load_renameat2() -> object | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Rename `src` to `dst` (relative to their directory descriptors) unless `dst` exists: FileExistsError
    then, and nothing changed. renameat2(RENAME_NOREPLACE) where the C library and the file system have it
    (os has no wrapper); otherwise a hard link (which never replaces) and the removal of the old name."""
    if _renameat2 is not None:
        if _renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), RENAME_NOREPLACE) == 0:  # type: ignore[operator]
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # EINVAL: the file system lacks the flag
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    os.unlink(src, dir_fd=src_dir)


def split(path: str) -> tuple[str, str]:
    """(directory, name) of an absolute path: "/a/b" -> ("/a", "b"), "/b" -> ("/", "b")."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class ConfinedDirs:
    """Directory descriptors of one transfer set, opened from the sandbox's roots without following links,
    and the file operations done relative to them. Thread-safe: a worker thread reading a bundle and the
    event loop share one (each operation holds the lock, so that no descriptor is closed under it)."""

    def __init__(self, sandbox: Sandbox, limit: int = DIR_FDS) -> None:
        self.sandbox = sandbox
        self.limit = max(2, limit)
        self._fds: dict[str, int] = {}
        self._lock = threading.RLock()
        # sessions are dropped without a call at times (a finished destination session): close with them
        self._finalizer = weakref.finalize(self, _close_all, self._fds)

    def close(self) -> None:
        with self._lock:
            _close_all(self._fds)

    # ------------------------------------------------------------------ directories

    def _root_of(self, path: str) -> str:
        best = ""
        for root in self.sandbox._allow_text:
            if (path == root or path.startswith(root if root.endswith("/") else root + "/")) and len(root) > len(best):
                best = root
        if not best:
            self.sandbox.check(path)  # raises: outside every allowed root
        return best

    def _dir(self, path: str, create: bool) -> int:
        """The descriptor of directory `path` (absolute, as resolved by the sandbox), created if `create`."""
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        if not self.sandbox.enabled:
            if create:
                os.makedirs(path, exist_ok=True)
            fd = os.open(path, _DIR)
        else:
            self.sandbox.check(path)  # the excluded subtrees: every directory walked through is checked
            root = self._root_of(path)
            if path == root:
                if create:
                    os.makedirs(path, exist_ok=True)
                fd = os.open(path, _DIR)  # the configured root itself: resolved when the agent started
            else:
                parent, name = split(path)
                fd = self._child(self._dir(parent, create), name, path, create)
        self._fds[path] = fd
        while len(self._fds) > self.limit:
            oldest = next(iter(self._fds))
            os.close(self._fds.pop(oldest))
        return fd

    @staticmethod
    def _child(parent_fd: int, name: str, path: str, create: bool) -> int:
        try:
            return os.open(name, _DIR | _NOFOLLOW, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SandboxError(f"{path!r} is no longer a directory (a symbolic link or a file was put in "
                                   "its place after it was checked): not followed") from None
            raise
        try:
            os.mkdir(name, 0o777, dir_fd=parent_fd)
        except FileExistsError:
            pass  # made meanwhile by another transfer: opened below, without following a link
        return ConfinedDirs._child(parent_fd, name, path, False)

    # ------------------------------------------------------------------ files

    def _leaf(self, path: str, create: bool = False) -> tuple[int, str]:
        if self.sandbox.enabled:
            self.sandbox.check(path)
        parent, name = split(path)
        return self._dir(parent, create), name

    def open(self, path: str, flags: int, mode: int = 0o644, *, create_dirs: bool = False,
             follow: bool = False) -> int:
        """A descriptor of the regular file `path`, opened relative to its directory. The leaf is not followed
        (unless `follow`, and no sandbox); anything but a regular file is refused."""
        with self._lock:
            d, name = self._leaf(path, create_dirs)
            nofollow = 0 if follow and not self.sandbox.enabled else _NOFOLLOW
            try:
                fd = os.open(name, flags | nofollow | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=d)
            except OSError as exc:
                if exc.errno == errno.ELOOP and nofollow:
                    raise SandboxError(f"{path!r} is a symbolic link, which is not followed") from None
                raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxError(f"{path!r} is not a regular file")
            if not flags & os.O_NONBLOCK:
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat(self, path: str, absent: set[str] | None = None) -> os.stat_result | None:
        """What is at `path` (a link itself, not its target), or None if nothing (or no directory) is there.

        `absent`: for many paths at once (the check of an offer), the directories found missing so far; a path
        in one of them is None without another walk (a failed walk is not kept in the descriptors, and 10,000
        files in directories still to be made cost a failed walk each, up to the first existing ancestor)."""
        with self._lock:
            parent = split(path)[0]
            try:
                if absent is not None and parent in absent:
                    if self.sandbox.enabled:
                        self.sandbox.check(path)
                    return None
                d, name = self._leaf(path)
            except (FileNotFoundError, NotADirectoryError):
                if absent is not None:
                    absent.add(parent)
                return None
            try:
                return os.stat(name, dir_fd=d, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None

    def unlink(self, path: str) -> None:
        with self._lock:
            d, name = self._leaf(path)
            os.unlink(name, dir_fd=d)

    def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        """Rename, both relative to their directories' descriptors. With replace=False an existing `dst` is
        never replaced, atomically (FileExistsError): `-de error` checks that the destination does not exist
        when the transfer starts and again before the rename, but a file created between that check and a
        plain rename would be overwritten."""
        with self._lock:
            sd, sname = self._leaf(src)
            dd, dname = self._leaf(dst)
            if replace:
                os.rename(sname, dname, src_dir_fd=sd, dst_dir_fd=dd)
            else:
                rename_noreplace(sd, sname, dd, dname)

    def makedirs(self, directory: str) -> None:
        """Create `directory` (absolute, as resolved by the sandbox) and its missing parents, each relative to
        its parent without following a link (an empty directory of a -r transfer)."""
        with self._lock:
            self._dir(directory, True)

    def fsync_dir(self, directory: str) -> None:
        """Make the directory's entries (a rename into it) durable. The fsync (milliseconds: a journal commit)
        runs on a duplicate of the cached descriptor, outside the lock, which the worker threads creating the
        next files' part files need meanwhile."""
        with self._lock:
            fd = os.dup(self._dir(directory, False))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def regular_files(self, top: str, recursive: bool, skipped: list[tuple[str, str]] | None = None,
                      empty: list[str] | None = None) -> Iterator[tuple[str, os.stat_result]]:
        """(path, lstat) of the regular files in `top` (and below, if `recursive`); links are neither followed
        nor listed; subdirectories are opened relative to their parent, without following links.
        `skipped` gets (path, why) of what is left out (links, FIFOs, sockets, devices); with `recursive`,
        `empty` gets the directories (`top` included) that hold neither a file nor a directory."""
        with self._lock:
            top_fd = os.dup(self._dir(top, False))
        stack = [(top, top_fd)]
        try:
            while stack:
                path, fd = stack.pop()
                holds = False
                try:
                    with os.scandir(fd) as entries:
                        for e in entries:
                            child = path + "/" + e.name if path != "/" else "/" + e.name
                            if e.is_dir(follow_symlinks=False):
                                if recursive:
                                    if self.sandbox.enabled:
                                        self.sandbox.check(child)
                                    stack.append((child, self._child(fd, e.name, child, False)))
                                    holds = True
                            elif e.is_file(follow_symlinks=False):
                                if self.sandbox.deny:
                                    self.sandbox.check(child)
                                holds = True
                                yield child, e.stat(follow_symlinks=False)
                            elif skipped is not None:
                                skipped.append((child, "a symbolic link, not followed" if e.is_symlink()
                                                else "not a regular file (a FIFO, socket or device)"))
                finally:
                    os.close(fd)
                if recursive and not holds and empty is not None:
                    empty.append(path)
        finally:
            for _, fd in stack:
                os.close(fd)
