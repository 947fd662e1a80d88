"""agent/fsops.py on real directories and real symbolic links: what the sandbox checked is what is used.

Each test builds the check-then-swap situation by hand, deterministically: a directory is walked (and its
descriptor cached, as a transfer does), then replaced by a symbolic link to a directory outside the sandbox,
and the operation must stay inside (the original directory) or be refused, never reach outside.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.destination import NAME_MAX, PART_SUFFIX, part_name, part_path
from agent import fsops
from agent.fsops import ConfinedDirs
from agent.sandbox import Sandbox, SandboxError


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    (root / "private").mkdir()
    (root / "private" / "p.txt").write_text("private")
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    return root, outside


@pytest.fixture
def dirs(layout: tuple[Path, Path]) -> ConfinedDirs:
    root, _ = layout
    d = ConfinedDirs(Sandbox(allow=[root], deny=[root / "private"], base=root))
    yield d
    d.close()


def _swap_for_link(directory: Path, target: Path) -> Path:
    """Rename `directory` aside and put a symbolic link to `target` in its place (what an attacker does)."""
    aside = directory.with_name(directory.name + ".aside")
    directory.rename(aside)
    directory.symlink_to(target, target_is_directory=True)
    return aside


def test_a_directory_swapped_for_a_link_before_the_walk_is_refused(dirs: ConfinedDirs, layout: tuple[Path, Path]) -> None:
    root, outside = layout
    _swap_for_link(root / "d", outside)
    with pytest.raises(SandboxError, match="no longer a directory"):
        dirs.open(str(root / "d" / "secret.txt"), os.O_RDONLY)
    with pytest.raises(SandboxError, match="no longer a directory"):
        dirs.open(str(root / "d" / "new.txt"), os.O_WRONLY | os.O_CREAT, create_dirs=True)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_a_directory_swapped_after_the_walk_keeps_the_checked_directory(dirs: ConfinedDirs,
                                                                        layout: tuple[Path, Path]) -> None:
    """The cached descriptor is the directory that was checked: writes land in it (now renamed aside), not
    behind the link."""
    root, outside = layout
    fd = dirs.open(str(root / "d" / "a.part"), os.O_WRONLY | os.O_CREAT, create_dirs=True)
    os.close(fd)
    aside = _swap_for_link(root / "d", outside)
    fd = dirs.open(str(root / "d" / "b.part"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"data")
    os.close(fd)
    dirs.rename(str(root / "d" / "b.part"), str(root / "d" / "b"))
    dirs.fsync_dir(str(root / "d"))
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert sorted(p.name for p in aside.iterdir()) == ["a.part", "b"]


def test_a_leaf_link_is_never_followed(dirs: ConfinedDirs, layout: tuple[Path, Path]) -> None:
    root, outside = layout
    (root / "d" / "x.part").symlink_to(outside / "secret.txt")
    with pytest.raises(SandboxError, match="symbolic link"):
        dirs.open(str(root / "d" / "x.part"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with pytest.raises(SandboxError, match="symbolic link"):
        dirs.open(str(root / "d" / "x.part"), os.O_RDONLY, follow=True)  # follow only without a sandbox
    assert (outside / "secret.txt").read_text() == "secret"
    dirs.unlink(str(root / "d" / "x.part"))  # removes the link itself
    assert (outside / "secret.txt").exists() and not (root / "d" / "x.part").is_symlink()


def test_a_fifo_or_directory_is_not_opened_as_a_file(dirs: ConfinedDirs, layout: tuple[Path, Path]) -> None:
    root, _ = layout
    os.mkfifo(root / "d" / "fifo")
    with pytest.raises(SandboxError, match="not a regular file"):
        dirs.open(str(root / "d" / "fifo"), os.O_RDONLY)  # O_NONBLOCK: refused, not hung on the open
    with pytest.raises(OSError):
        dirs.open(str(root / "d"), os.O_RDONLY)


def test_the_excluded_subtree_and_the_outside_are_refused(dirs: ConfinedDirs, layout: tuple[Path, Path]) -> None:
    root, outside = layout
    with pytest.raises(SandboxError, match="excluded"):
        dirs.open(str(root / "private" / "p.txt"), os.O_RDONLY)
    with pytest.raises(SandboxError, match="outside"):
        dirs.open(str(outside / "secret.txt"), os.O_RDONLY)
    with pytest.raises(SandboxError, match="excluded"):
        list(dirs.regular_files(str(root), True))


def test_missing_directories_are_made_without_following_links(dirs: ConfinedDirs, layout: tuple[Path, Path]) -> None:
    root, _ = layout
    fd = dirs.open(str(root / "n1" / "n2" / "f.part"), os.O_WRONLY | os.O_CREAT, create_dirs=True)
    os.close(fd)
    assert (root / "n1" / "n2" / "f.part").is_file()
    assert dirs.lstat(str(root / "n1" / "nothing" / "f")) is None
    with pytest.raises(FileNotFoundError):
        dirs.open(str(root / "n3" / "f"), os.O_RDONLY)  # no create_dirs: nothing is made
    assert not (root / "n3").exists()


def test_lstat_remembers_missing_directories_and_still_checks_each_path(dirs: ConfinedDirs,
                                                                       layout: tuple[Path, Path]) -> None:
    """The check of an offer: a directory found missing is not walked again for its next files; a file that is
    there, in a directory that is, is still seen; the sandbox is still asked for every path."""
    root, outside = layout
    (root / "d" / "f").write_text("there")
    absent: set[str] = set()
    assert dirs.lstat(str(root / "new" / "a"), absent) is None
    assert absent == {str(root / "new")}
    assert dirs.lstat(str(root / "new" / "b"), absent) is None
    assert dirs.lstat(str(root / "d" / "nothing"), absent) is None  # the file is missing, not its directory
    assert absent == {str(root / "new")}
    st = dirs.lstat(str(root / "d" / "f"), absent)
    assert st is not None and st.st_size == 5
    absent |= {str(root / "private"), str(outside)}  # even a directory remembered as missing is checked
    with pytest.raises(SandboxError, match="excluded"):
        dirs.lstat(str(root / "private" / "p.txt"), absent)
    with pytest.raises(SandboxError, match="outside"):
        dirs.lstat(str(outside / "secret.txt"), absent)


def test_the_walk_lists_regular_files_and_does_not_enter_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "a" / "one.txt").write_text("1")
    (root / "a" / "b" / "two.txt").write_text("22")
    (root / "a" / "out").symlink_to(outside, target_is_directory=True)
    (root / "a" / "s.txt").symlink_to(outside / "secret.txt")
    d = ConfinedDirs(Sandbox(allow=[root], base=root))
    found = dict(d.regular_files(str(root / "a"), True))
    d.close()
    assert {os.path.relpath(p, root): st.st_size for p, st in found.items()} == {"a/one.txt": 1, "a/b/two.txt": 2}


def test_descriptors_are_bounded_and_reopened(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    d = ConfinedDirs(Sandbox(allow=[root], base=root), limit=4)
    for i in range(20):
        os.close(d.open(str(root / f"dir{i}" / "f.part"), os.O_WRONLY | os.O_CREAT, create_dirs=True))
    assert len(d._fds) <= 4
    assert d.lstat(str(root / "dir0" / "f.part")) is not None  # walked again
    d.close()
    assert not d._fds


def test_without_a_sandbox_directory_links_are_followed_as_before(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "f.txt").write_text("f")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    d = ConfinedDirs(Sandbox())
    fd = d.open(str(tmp_path / "link" / "f.txt"), os.O_RDONLY)
    assert os.read(fd, 10) == b"f"
    os.close(fd)
    d.close()


# ----------------------------------------------------------------------------------------- part names

@pytest.mark.parametrize("length", [1, 100, 250, 251, 254, 255])
def test_the_part_file_name_always_fits(length: int) -> None:
    name = "n" * length
    part = part_name(name)
    assert part.endswith(PART_SUFFIX) and len(os.fsencode(part)) <= NAME_MAX
    if length <= NAME_MAX - len(PART_SUFFIX):
        assert part == name + PART_SUFFIX  # as before: the usual names keep their usual part files


def test_long_part_names_differ_by_the_whole_name() -> None:
    a, b = "x" * 254 + "a", "x" * 254 + "b"
    assert part_name(a) != part_name(b) and part_name(a) == part_name(a)


def test_a_multibyte_name_cut_in_a_character_still_round_trips() -> None:
    name = "é" * 127  # 254 bytes
    part = part_name(name)
    assert len(os.fsencode(part)) == NAME_MAX
    assert part_path("/srv/in/" + name) == "/srv/in/" + part
    assert part_path("/" + name) == "/" + part


def test_a_part_file_of_a_255_byte_name_can_be_created(tmp_path: Path) -> None:
    name = "z" * 255
    d = ConfinedDirs(Sandbox(allow=[tmp_path], base=tmp_path))
    os.close(d.open(part_path(str(tmp_path / name)), os.O_WRONLY | os.O_CREAT, create_dirs=True))
    d.rename(part_path(str(tmp_path / name)), str(tmp_path / name))
    d.close()
    assert (tmp_path / name).is_file()


def test_a_rename_that_must_not_replace_never_does(dirs: ConfinedDirs, layout: tuple[Path, Path]) -> None:
    """-de error: a file that appears at the destination between the check and the rename is kept, and the
    part file stays for the cleanup; without an existing file the rename happens."""
    inside, _ = layout
    part, dest = inside / "f.part", inside / "f"
    part.write_text("new")
    dest.write_text("someone else's")
    with pytest.raises(FileExistsError):
        dirs.rename(str(part), str(dest), replace=False)
    assert dest.read_text() == "someone else's" and part.read_text() == "new"
    dest.unlink()
    dirs.rename(str(part), str(dest), replace=False)
    assert dest.read_text() == "new" and not part.exists()


def test_the_link_fallback_never_replaces_either(tmp_path: Path) -> None:
    """Where renameat2 is missing (or the file system lacks RENAME_NOREPLACE): a hard link, then the unlink."""
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            os.link("a", "b", src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        saved, fsops._renameat2 = fsops._renameat2, None
        try:
            with pytest.raises(FileExistsError):
                fsops.rename_noreplace(fd, "a", fd, "b")
            fsops.rename_noreplace(fd, "a", fd, "c")
        finally:
            fsops._renameat2 = saved
    finally:
        os.close(fd)
    assert (tmp_path / "b").read_text() == "b" and (tmp_path / "c").read_text() == "a"
    assert not (tmp_path / "a").exists()
