"""The sandbox holds against a rename race (docs/security.md#the-sandbox).

A local user who may rename entries inside an agent's sandbox swaps a directory for a symbolic link to a
directory outside it and back, in a tight loop (renameat2 RENAME_EXCHANGE: the name is never missing),
while dozens of transfers of small files run through a real broker between real agents. What is checked
afterwards is what the agents did, on the real file system:

* destination side: nothing was written outside (no file, no `.part`), and every file either arrived inside
  with its content or failed with a reason;
* source side: the file outside (same names, same sizes, other content) was never sent.

Before agent/fsops.py the agents checked real paths and then used the path string again: 29 of 400
transfers wrote outside, 51 of 325 sent the file from outside.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import FteEnv, running_agents, sandbox_dir

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
TRANSFERS = 40
FILES = 6
SIZE = 2000
RENAME_EXCHANGE = 2


def _renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


AT_FDCWD = -100


class Swapper(threading.Thread):
    """Exchanges `directory` with a symbolic link to `target`, and back, until stopped."""

    def __init__(self, directory: Path, target: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.link = directory.with_name(directory.name + ".link")
        self.link.symlink_to(target, target_is_directory=True)
        self.stopping = threading.Event()
        self.swaps = 0
        self.error: str | None = None
        self._exchange = _renameat2()

    def _swap(self) -> None:
        a, b = os.fsencode(self.directory), os.fsencode(self.link)
        if self._exchange(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._swap()  # the link in the directory's place
                self._swap()  # and back
                self.swaps += 1
        except OSError as exc:
            self.error = str(exc)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        assert self.error is None, f"the swapper stopped: {self.error}"
        assert self.directory.is_dir() and not self.directory.is_symlink()


def _submit(env: FteEnv, transfers: list[dict[str, Any]], timeout: float = 180) -> list[dict[str, Any]]:
    """All the transfers at once through bench/submit.py (the request fte-create-transfer sends); their
    outcomes with their per-file results, or the agent's refusal."""
    request = {"broker": env.broker_url, "source_agent": "A1", "destination_agent": "A2", "transfers": transfers,
               "timeout": timeout, "refusals_ok": True, "files": True}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "submit.py")], input=json.dumps(request), env=env.env,
                       capture_output=True, text=True, timeout=timeout + 60, cwd=str(ROOT))
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert p.returncode == 0 and lines, f"submit.py -> {p.returncode}: {p.stderr[-2000:]}"
    return list(json.loads(lines[-1])["transfers"])


@pytest.fixture
def fte(tmp_path: Path, broker_url: str) -> Iterator[FteEnv]:
    if _renameat2() is None:
        pytest.skip("renameat2 is not in this C library: the swap cannot be made atomic")
    with running_agents(tmp_path / "fte_home", broker_url, sandbox_dir(tmp_path), agentChunkSize=65536,
                        transferAckTimeout=5000, transferAckTimeoutRetries=3) as env:
        yield env


def _race(fte: FteEnv, swapper: Swapper, transfers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The transfers submitted while `swapper` swaps; their `_outcomes`, once it is sure the race was run."""
    swapper.start()
    try:
        done = _submit(fte, transfers)
    finally:
        swapper.stop()
    files, reasons = _outcomes(done)
    assert swapper.swaps > 100, f"only {swapper.swaps} swaps: the race was not run"
    return files, reasons


def _report(swapper: Swapper, arrived: list[dict[str, Any]], files: list[dict[str, Any]], reasons: list[str]) -> None:
    print(f"{swapper.swaps} swaps; {len(arrived)} of {len(files)} files arrived, "
          f"{len(files) - len(arrived)} failed; {len(reasons)} transfers refused")


def _outcomes(done: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(every file result, the reasons of transfers refused or failed as a whole); asserts that each transfer
    ended (no transfer left waiting) and that every failed file says why."""
    files, reasons = [], []
    for t in done:
        if "refused" in t:
            assert t["refused"], t
            reasons.append(t["refused"])
            continue
        assert t.get("state") in ("complete", "partial", "failed"), t
        for f in t["files"]:
            if f["result_code"] != 0:
                assert f.get("supplement"), f"file failed without a reason: {f}"
            files.append(f)
    return files, reasons


def test_a_destination_directory_swapped_for_a_link_is_never_written_through(fte: FteEnv, tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    src = data / "src"
    src.mkdir()
    contents = {}
    for i in range(FILES):
        contents[f"f{i}"] = os.urandom(SIZE)
        (src / f"f{i}").write_bytes(contents[f"f{i}"])
    racy = data / "out" / "racy"
    racy.mkdir(parents=True)
    swapper = Swapper(racy, outside)
    transfers = [{"items": [{"source": str(src / f"f{i}"), "destination": str(racy / f"t{t}" / f"f{i}"),
                             "destination_type": "file"} for i in range(FILES)], "exist": "overwrite"}
                 for t in range(TRANSFERS)]
    # half the transfers write into the racy directory itself, half into directories below it
    for t in transfers[::2]:
        for item in t["items"]:
            item["destination"] = str(racy / f"{Path(item['destination']).parent.name}-{Path(item['destination']).name}")
    files, reasons = _race(fte, swapper, transfers)
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == [], "written outside the sandbox"
    arrived = [f for f in files if f["result_code"] == 0]
    for f in arrived:
        got = Path(f["destination"])
        assert got.is_file() and got.resolve().is_relative_to(data), f"reported at {got}, which is not there"
        assert got.read_bytes() == contents[Path(f["source"]).name], f"{got} differs"
    assert not list(data.rglob("*.part")), "part files left behind"
    _report(swapper, arrived, files, reasons)


def test_a_source_directory_swapped_for_a_link_never_sends_the_file_outside(fte: FteEnv, tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    racy = data / "src" / "racy"
    racy.mkdir(parents=True)
    secret = b"S" * SIZE  # same names, same sizes: only the content tells them apart
    inside = {}
    for i in range(FILES):
        inside[f"f{i}"] = os.urandom(SIZE)
        (racy / f"f{i}").write_bytes(inside[f"f{i}"])
        (outside / f"f{i}").write_bytes(secret)
    out = data / "out"
    swapper = Swapper(racy, outside)
    transfers = [{"items": [{"source": str(racy / f"f{i}"), "destination": str(out / f"t{t}" / f"f{i}"),
                             "destination_type": "file"} for i in range(FILES)], "exist": "overwrite"}
                 for t in range(TRANSFERS)]
    files, reasons = _race(fte, swapper, transfers)
    leaked = [str(p) for p in out.rglob("*") if p.is_file() and p.read_bytes() == secret]
    assert not leaked, f"{len(leaked)} files were read from outside the sandbox, e.g. {leaked[:3]}"
    arrived = [f for f in files if f["result_code"] == 0]
    for f in arrived:
        assert Path(f["destination"]).read_bytes() == inside[Path(f["source"]).name]
    _report(swapper, arrived, files, reasons)
