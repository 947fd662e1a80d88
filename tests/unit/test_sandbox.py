"""The sandbox on real directories and real symlinks: what an agent may read and write.

Layout (under tmp_path):

    root/                    the allowed root (also the base for relative paths)
      sub/a.txt
      private/secret.txt     excluded ('!' entry)
      link_out -> ../outside             a directory symlink leading out
      file_link -> ../outside/secret.txt a file symlink leading out
      in_link -> sub                     a symlink that stays inside
      dangling -> ../outside/missing     a dangling symlink leading out
    root2/b.txt              a sibling whose name starts with the root's (no string-prefix matching)
    outside/secret.txt       never to be touched
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.sandbox import Sandbox, SandboxError
from agent.settings import load_agent_settings, properties_path


@dataclass
class Tree:
    root: Path
    root2: Path
    outside: Path
    private: Path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root, root2, outside = tmp_path / "root", tmp_path / "root2", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a")
    (root / "private").mkdir()
    (root / "private" / "secret.txt").write_text("private")
    root2.mkdir()
    (root2 / "b.txt").write_text("b")
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "file_link").symlink_to(outside / "secret.txt")
    (root / "in_link").symlink_to(root / "sub", target_is_directory=True)
    (root / "dangling").symlink_to(outside / "missing")
    return Tree(root, root2, outside, root / "private")


@pytest.fixture
def box(tree: Tree) -> Sandbox:
    return Sandbox(allow=[tree.root], deny=[tree.private], base=tree.root)


def _path(tree: Tree, spec: str) -> str:
    """Expand {root}, {root2}, {outside} placeholders of the tables."""
    return spec.format(root=tree.root, root2=tree.root2, outside=tree.outside)


# ----------------------------------------------------------------------------------------- allowed

ALLOWED = [
    # (path, write, expected real path relative to tmp_path)
    pytest.param("sub/a.txt", False, "root/sub/a.txt", id="relative-read-against-base"),
    pytest.param("new.txt", True, "root/new.txt", id="relative-write-against-base"),
    pytest.param("{root}/sub/a.txt", False, "root/sub/a.txt", id="absolute-read-inside"),
    pytest.param("{root}/sub/new.txt", True, "root/sub/new.txt", id="absolute-write-inside"),
    pytest.param("{root}/not/yet/there.txt", True, "root/not/yet/there.txt", id="write-missing-parents"),
    pytest.param("in_link/a.txt", False, "root/sub/a.txt", id="symlink-staying-inside-read"),
    pytest.param("in_link/new.txt", True, "root/sub/new.txt", id="symlink-staying-inside-write"),
    pytest.param("{root}", False, "root", id="the-root-itself"),
    pytest.param("./sub/./a.txt", False, "root/sub/a.txt", id="dot-components"),
    pytest.param("{root}//sub//a.txt", False, "root/sub/a.txt", id="doubled-slashes"),
]


@pytest.mark.parametrize(("spec", "write", "expected"), ALLOWED)
def test_allowed(tree: Tree, box: Sandbox, spec: str, write: bool, expected: str) -> None:
    real = box.resolve(_path(tree, spec), write=write)
    assert real == tree.root.parent / expected
    assert real.is_absolute()
    # the string form (the check of an offer): exactly str() of the Path, which file records and messages hold
    assert box.resolve_text(_path(tree, spec), write=write, parents={}) == str(real)


# ----------------------------------------------------------------------------------------- refused

REFUSED = [
    # (path, write, words the message must contain besides the path)
    pytest.param("../outside/secret.txt", False, "'..'", id="dotdot-relative"),
    pytest.param("sub/../../outside/new", True, "'..'", id="dotdot-write"),
    pytest.param("{root}/sub/../sub/a.txt", False, "'..'", id="dotdot-even-when-staying-inside"),
    pytest.param("{outside}/secret.txt", False, "outside the agent's sandbox", id="absolute-outside-read"),
    pytest.param("{outside}/new.txt", True, "outside the agent's sandbox", id="absolute-outside-write"),
    pytest.param("/etc/passwd", False, "outside the agent's sandbox", id="etc-passwd"),
    pytest.param("/etc/cron.d/evil", True, "outside the agent's sandbox", id="etc-cron-write"),
    pytest.param("{root2}/b.txt", False, "outside the agent's sandbox", id="sibling-sharing-a-prefix"),
    pytest.param("link_out/secret.txt", False, "outside the agent's sandbox", id="symlinked-dir-out-read"),
    pytest.param("link_out/new.txt", True, "outside the agent's sandbox", id="symlinked-dir-out-write"),
    pytest.param("link_out", False, "outside the agent's sandbox", id="symlinked-dir-itself"),
    pytest.param("dangling/new.txt", True, "outside the agent's sandbox", id="dangling-symlink-out"),
    pytest.param("file_link", False, "outside the agent's sandbox", id="symlinked-file-out-read"),
    pytest.param("file_link", True, "symbolic link", id="symlinked-file-write"),
    pytest.param("in_link", True, "symbolic link", id="symlink-inside-as-write-target"),
    pytest.param("sub/a\x00.txt", False, "not a valid file name", id="nul-read"),
    pytest.param("{root}/x\x00/../../etc/passwd", True, "not a valid file name", id="nul-write"),
    pytest.param("", False, "not a valid file name", id="empty-read"),
    pytest.param("", True, "not a valid file name", id="empty-write"),
    pytest.param("sub/new.txt.part", True, "not a plain file name", id="part-suffix"),
    pytest.param(".part", True, "not a plain file name", id="only-part"),
    pytest.param("/", True, "not a plain file name", id="root-dir-as-file"),
    pytest.param("private/secret.txt", False, "excluded", id="excluded-read"),
    pytest.param("private/new.txt", True, "excluded", id="excluded-write"),
    pytest.param("{root}/private", False, "excluded", id="excluded-dir-itself"),
    pytest.param("x" * 300, True, "too long", id="name-over-255-bytes"),
    pytest.param("{root}/" + "d/" * 2100 + "f", True, "too long", id="path-over-4095-bytes"),
    pytest.param("\udcff\ud800", True, "not a valid file name", id="unencodable"),
]


@pytest.mark.parametrize(("spec", "write", "reason"), REFUSED)
def test_refused(tree: Tree, box: Sandbox, spec: str, write: bool, reason: str) -> None:
    path = _path(tree, spec)
    with pytest.raises(SandboxError) as info:
        box.resolve(path, write=write)
    message = str(info.value)
    assert repr(path) in message, message  # the message names the path as given...
    assert reason in message, message  # ...and the reason
    # nothing was created by the check
    assert sorted(p.name for p in tree.outside.iterdir()) == ["secret.txt"]


def test_outside_message_lists_the_roots(tree: Tree, box: Sandbox) -> None:
    with pytest.raises(SandboxError, match="outside the agent's sandbox") as info:
        box.resolve(str(tree.outside / "x"), write=True)
    assert str(tree.root) in str(info.value)


def test_sandbox_error_is_a_permission_error(box: Sandbox) -> None:
    # callers that catch OSError (the destination's accept) also catch refusals
    with pytest.raises(PermissionError):
        box.resolve("/etc/passwd", write=False)


def test_tilde_expands_to_the_agents_home_and_is_still_checked(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree.outside))
    box = Sandbox(allow=[tree.root], base=tree.root)
    with pytest.raises(SandboxError, match="outside the agent's sandbox"):
        box.resolve("~/secret.txt", write=False)
    monkeypatch.setenv("HOME", str(tree.root))
    assert box.resolve("~/sub/a.txt", write=False) == tree.root / "sub" / "a.txt"


def test_relative_paths_use_the_base_even_when_it_is_outside(tree: Tree) -> None:
    box = Sandbox(allow=[tree.root], base=tree.outside)
    with pytest.raises(SandboxError, match="outside the agent's sandbox"):
        box.resolve("new.txt", write=True)
    assert box.resolve(str(tree.root / "new.txt"), write=True) == tree.root / "new.txt"


def test_symlinked_root_is_resolved(tree: Tree, tmp_path: Path) -> None:
    """A sandbox root given through a symlink protects (and allows) the real directory."""
    alias = tmp_path / "alias"
    alias.symlink_to(tree.root, target_is_directory=True)
    box = Sandbox(allow=[alias], base=alias)
    assert box.resolve("sub/a.txt", write=False) == tree.root / "sub" / "a.txt"
    assert box.resolve(str(alias / "sub" / "a.txt"), write=False) == tree.root / "sub" / "a.txt"
    with pytest.raises(SandboxError):
        box.resolve("link_out/secret.txt", write=False)


def test_several_roots(tree: Tree) -> None:
    box = Sandbox(allow=[tree.root, tree.root2], base=tree.root)
    assert box.resolve(str(tree.root2 / "b.txt"), write=False) == tree.root2 / "b.txt"
    with pytest.raises(SandboxError, match=r"outside the agent's sandbox \(.*root.*, .*root2.*\)"):
        box.resolve(str(tree.outside / "secret.txt"), write=False)


def test_check_on_real_paths(tree: Tree, box: Sandbox) -> None:
    """check() is what recursive walks use on every file they find."""
    box.check(tree.root / "sub" / "a.txt")
    with pytest.raises(SandboxError, match="outside"):
        box.check(Path(os.path.realpath(tree.root / "link_out" / "secret.txt")))
    with pytest.raises(SandboxError, match="excluded"):
        box.check(tree.private / "secret.txt", "shown-name")


# -------------------------------------------------------------------------- exclusions from settings


def test_exclusions_come_from_bang_entries_of_sandbox_root(tree: Tree, tmp_path: Path) -> None:
    env = {"FTE_CONFIG_HOME": str(tmp_path / "fte")}
    path = properties_path("A1", env)
    path.parent.mkdir(parents=True)
    path.write_text(f"agentName=A1\nsandboxRoot={tree.root}{os.pathsep}!{tree.private}\n"
                    f"transferRoot={tree.root}\n")
    s = load_agent_settings("A1", env)
    assert (s.sandbox_allow, s.sandbox_deny) == ([tree.root], [tree.private])
    box = Sandbox(s.sandbox_allow, s.sandbox_deny, s.transferRoot)
    assert box.resolve("sub/a.txt", write=False) == tree.root / "sub" / "a.txt"
    with pytest.raises(SandboxError, match="excluded"):
        box.resolve("private/secret.txt", write=False)


def test_exclusion_through_a_symlink(tree: Tree) -> None:
    """An excluded directory reached through another name is still excluded (checked on real paths)."""
    (tree.root / "alias_private").symlink_to(tree.private, target_is_directory=True)
    box = Sandbox(allow=[tree.root], deny=[tree.private], base=tree.root)
    with pytest.raises(SandboxError, match="excluded"):
        box.resolve("alias_private/secret.txt", write=False)
    with pytest.raises(SandboxError, match="excluded"):
        box.resolve("alias_private/new.txt", write=True)


# ----------------------------------------------------------------------------------------- no sandbox


@pytest.mark.parametrize(("spec", "write"), [
    ("{outside}/secret.txt", False),
    ("{outside}/new.txt", True),
    ("/etc/passwd", False),
    ("link_out/secret.txt", False),
    ("file_link", False),
])
def test_no_sandbox_allows_every_place(tree: Tree, spec: str, write: bool) -> None:
    box = Sandbox(base=tree.root)
    assert not box.enabled
    real = box.resolve(_path(tree, spec), write=write)
    assert real.is_absolute()
    box.check(real)


@pytest.mark.parametrize(("spec", "write", "reason"), [
    ("../outside/secret.txt", False, "'..'"),
    ("a\x00b", True, "not a valid file name"),
    ("new.part", True, "not a plain file name"),
    ("file_link", True, "symbolic link"),
])
def test_no_sandbox_still_refuses_names_that_are_not_plain(tree: Tree, spec: str, write: bool, reason: str) -> None:
    """Without roots every place is allowed, but a name is still checked."""
    with pytest.raises(SandboxError, match=reason):
        Sandbox(base=tree.root).resolve(spec, write=write)


def test_empty_allow_list_is_no_sandbox(tree: Tree) -> None:
    assert not Sandbox(allow=[], deny=[tree.private]).enabled
    Sandbox(allow=[], deny=[tree.private]).check(tree.private / "secret.txt")


# The resolution works on strings (10,000 destinations per transfer); it must name exactly what pathlib named.
_PIECES = ["", "a", ".", "b.txt", "c d", "é", "x.part", "~"]


def _shapes() -> list[str]:
    out = []
    for lead in ("/", "//", "///"):
        for a in _PIECES:
            for b in _PIECES:
                for trail in ("", "/", "//", "/."):
                    out.append(f"{lead}{a}/{b}{trail}")
                    out.append(f"{lead}{a}//./{b}{trail}")
    return out


def test_string_resolution_names_what_pathlib_names() -> None:
    from agent.sandbox import _as_pathlib

    wrong = [(raw, _as_pathlib(raw), str(Path(raw))) for raw in _shapes() if _as_pathlib(raw) != str(Path(raw))]
    assert not wrong, f"{len(wrong)} of {len(_shapes())} differ, e.g. (path, ours, pathlib's): {wrong[:3]}"


@pytest.mark.parametrize("raw", ["/x", "//x", "/a/b", "//a/b", "/a/b/c.txt", "/é/ü"])
def test_written_name_and_parent_are_pathlib_s(tmp_path: Path, raw: str) -> None:
    # no sandbox: what resolve returns for a path whose parents do not exist is realpath(parent) / name
    got = Sandbox([]).resolve(raw, write=True)
    p = Path(raw)
    assert got == Path(os.path.realpath(p.parent)) / p.name


# ------------------------------------------------------------------- a link swapped during the check


@pytest.fixture
def swap_at_readlink(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> Path:
    """{root}/d is a symbolic link (to sub, inside) when realpath() looks at it, and a real directory when
    realpath() reads the link a moment later: the rename race a local user wins now and then
    (renameat2 RENAME_EXCHANGE in a loop). The swap is done for real, on the file system, at that moment."""
    d, spare = tree.root / "d", tree.root / "spare"
    d.symlink_to(tree.root / "sub", target_is_directory=True)
    spare.mkdir()
    (spare / "a.txt").write_text("spare")
    real_readlink = os.readlink

    def readlink(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(path) == str(d) and spare.exists():
            os.rename(d, tree.root / "old_link")
            os.rename(spare, d)
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", readlink)
    return d


@pytest.mark.parametrize("write", [False, True], ids=["read", "write"])
def test_a_link_swapped_for_a_directory_while_resolving_is_refused_in_words(
        box: Sandbox, swap_at_readlink: Path, write: bool) -> None:
    # before: realpath's readlink raised EINVAL, and the transfer was refused (source) or the file failed
    # (destination) with the bare "[Errno 22] Invalid argument: '/.../d'"
    with pytest.raises(SandboxError) as caught:
        box.resolve(f"{swap_at_readlink}/{'new' if write else 'a'}.txt", write=write)
    assert "Errno" not in str(caught.value)
    assert "changed while it was checked" in str(caught.value)


@pytest.mark.parametrize("write", [False, True])
def test_a_relative_path_refused_because_transfer_root_is_outside_names_transfer_root(tree: Tree,
                                                                                      write: bool) -> None:
    """transferRoot (the base of relative paths) defaults to the user's home: with a sandbox elsewhere, a
    relative `-dd in` is refused, and the refusal says why rather than leave the user looking for a typo."""
    box = Sandbox(allow=[tree.root], base=tree.outside)
    with pytest.raises(SandboxError) as info:
        box.resolve("in/new.txt", write=write)
    message = str(info.value)
    assert "outside the agent's sandbox" in message and f"transferRoot ({tree.outside})" in message, message
    assert str(tree.outside / "in" / "new.txt") in message, message


def test_a_relative_path_leaving_through_a_link_does_not_blame_transfer_root(tree: Tree, box: Sandbox) -> None:
    with pytest.raises(SandboxError) as info:
        box.resolve("link_out/secret.txt", write=False)
    assert "transferRoot" not in str(info.value), str(info.value)


def test_a_destination_made_too_long_by_a_link_on_the_way_is_refused(tree: Tree, box: Sandbox) -> None:
    """Within the limit as given, over it once a link is resolved: refused, since every path on the wire is at
    most 4096 characters, and an answer naming the resolved path would be refused whole by its reader. (A
    source there is refused by its stat(), ENAMETOOLONG: tests/integration/test_clear_errors.py.)"""
    long_dir = tree.root
    while len(str(long_dir)) < 3000:
        long_dir = long_dir / ("l" * 200)
    long_dir.mkdir(parents=True)
    (tree.root / "short").symlink_to(long_dir)
    tail = "/".join(["t" * 200] * 6)  # 1,205 bytes: the real path is over 4,095, the one given is not
    path = str(tree.root / "short" / tail / "f.bin")
    assert len(path) <= 4095 < len(str(long_dir / tail / "f.bin"))
    with pytest.raises(SandboxError, match="resolves to .* bytes through a symbolic link"):
        box.resolve(path, write=True)
