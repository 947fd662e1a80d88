"""Where an agent may read and write: checked on resolved real paths, for every file.

Nothing in a message can push a file outside the roots: `..` components, NUL bytes, symlinks leading
out and paths outside every allowed root are refused with a reason that ends up in the transfer log.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .core.errors import FteError


# Linux limits (NAME_MAX, PATH_MAX less its NUL). A longer name makes lstat()/stat() raise ENAMETOOLONG, an
# OSError that is not a SandboxError: on the source it escaped the command handler (is_dir() in
# daemon._resolve_sources) and left the command without a reply. Such a name is not a plain file name.
NAME_MAX = 255
PATH_MAX = 4095


def _as_pathlib(absolute: str) -> str:
    """str(Path(absolute)): empty and '.' components dropped, a leading '//' kept (POSIX), no trailing '/'.
    Not os.path.normpath, which also folds 'a/b/..' to 'a' without looking at symbolic links."""
    lead = "//" if absolute.startswith("//") and not absolute.startswith("///") else "/"
    return lead + "/".join(c for c in absolute.split("/") if c and c != ".")


def _is_symlink(path: str) -> bool:
    """Path(path).is_symlink(): False when nothing is there; other errors (EACCES...) are raised."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise


def _realpath(path: str, shown: str) -> str:
    """os.path.realpath, but a link replaced while it is being read is a refusal in words.

    realpath lstat()s each component and readlink()s the links: a local user who swaps a link for a
    directory between the two makes readlink fail with EINVAL (or ENOENT, if it went away), which used to
    reach the transfer log as the bare "[Errno 22] Invalid argument: '/in/d'"."""
    try:
        return os.path.realpath(path)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise SandboxError(f"{shown!r} changed while it was checked: a symbolic link on the way{where} was "
                           "replaced or removed at that moment; refused (send it again)") from None


def _within(path: str, root: str) -> bool:
    """`path` is `root` or below it (both absolute and resolved)."""
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


class SandboxError(FteError, PermissionError):
    """A path the agent must not touch."""


class Sandbox:
    def __init__(self, allow: list[Path] | None = None, deny: list[Path] | None = None,
                 base: Path | None = None) -> None:
        # No allow list means no sandbox (the agent warns about it at start).
        self.allow = [Path(os.path.realpath(p)) for p in (allow or [])]
        self.deny = [Path(os.path.realpath(p)) for p in (deny or [])]
        self.base = Path(base or Path.home())
        self._base_text = str(self.base)
        self._allow_text = [str(p) for p in self.allow]
        self._deny_text = [str(p) for p in self.deny]

    @property
    def enabled(self) -> bool:
        return bool(self.allow)

    def resolve(self, path: str, *, write: bool, parents: dict[str, str] | None = None) -> Path:
        """The absolute path `path` names, after checking that the agent may use it.

        `parents`: for many files at once (a transfer set), resolved parent directories remembered between
        calls, so that a directory of 10,000 destinations is resolved once, not 10,000 times."""
        return Path(self.resolve_text(path, write=write, parents=parents))

    def resolve_text(self, path: str, *, write: bool, parents: dict[str, str] | None = None) -> str:
        """`resolve`, as the string str(Path) would give (normalised: no empty or '.' components, no trailing
        '/'). Strings, not Paths, throughout: a transfer of 10,000 files resolves 10,000 of them (pathlib cost
        18 µs each)."""
        if not path or "\x00" in path:
            raise SandboxError(f"path {path!r} is not a valid file name")
        raw = os.path.expanduser(path)
        if ".." in raw.split("/"):
            raise SandboxError(f"path {path!r} contains '..', which is refused")
        relative = not raw.startswith("/")
        if relative:
            raw = os.path.join(self._base_text, raw)
        raw = _as_pathlib(raw)
        try:
            encoded = os.fsencode(raw)
        except UnicodeEncodeError:  # a lone surrogate: no file system name can hold it
            raise SandboxError(f"path {path!r} is not a valid file name (it cannot be encoded)") from None
        if len(encoded) > PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
            raise SandboxError(f"path {path!r} is too long to be a file name ({NAME_MAX} bytes per name, "
                               f"{PATH_MAX} in all)")
        if write:
            parent, _, name = raw.rpartition("/")
            if not parent or (parent == "/" and raw.startswith("//")):
                parent = raw[:len(raw) - len(name)]  # "/x" -> "/", "//x" -> "//" (as pathlib)
            if name in ("", ".", "..") or name.endswith(".part"):
                raise SandboxError(f"{path!r} is not a plain file name that can be written")
            if _is_symlink(raw):
                raise SandboxError(f"destination {path!r} is a symbolic link, which is refused")
            # the file may not exist yet: resolve its nearest existing parent
            if parents is None:
                real_parent = _realpath(parent, path)
            else:
                real_parent = parents.get(parent) or parents.setdefault(parent, _realpath(parent, path))
            real = os.path.join(real_parent, name)
        else:
            real = _realpath(raw, path)
        # a destination only: a source's stat() then fails with ENAMETOOLONG, which its refusal names
        if write and len(real) > PATH_MAX:  # characters <= bytes: a cheap test first (a link made it longer)
            if len(os.fsencode(real)) > PATH_MAX:
                # every path on the wire is at most MAX_PATH_CHARS: an answer naming it would be refused whole
                raise SandboxError(f"path {path!r} resolves to {len(os.fsencode(real))} bytes through a symbolic "
                                   f"link, more than a path may have ({PATH_MAX})")
        self.check(real, path, relative)
        return real

    def _within_allowed(self, real: str) -> bool:
        return any(_within(real, a) for a in self._allow_text)

    def check(self, real: Path | str, shown: str | None = None, relative: bool = False) -> None:
        """Refuse `real` (resolved) outside the allowed roots or inside a denied one; `relative`: `shown` was
        a relative path, taken from transferRoot: a transferRoot outside the sandbox is named in the refusal
        (else the user looks for a typo in the path)."""
        shown = shown or str(real)
        if not self.enabled:
            return
        # string prefixes of resolved absolute paths (Path.parents builds a Path per level: slow per file)
        text = str(real)
        if any(_within(text, d) for d in self._deny_text):
            raise SandboxError(f"{shown!r} is inside an excluded part of the agent's sandbox")
        if not self._within_allowed(text):
            roots = ", ".join(str(a) for a in self.allow)
            where = (f": a relative path is taken from the agent's transferRoot ({self._base_text}), which makes it "
                     f"{real}; give an absolute path, or set transferRoot in agent.properties to a directory "
                     f"inside the sandbox" if relative and not self._within_allowed(os.path.realpath(self._base_text))
                     else "")
            raise SandboxError(f"{shown!r} is outside the agent's sandbox ({roots}){where}")
