"""Many small files in one transfer travel in bundles (docs/protocol.md#bundles-of-small-files).

What a user sees: every file arrives intact next to big ones, empty ones and ones that fail on their own;
the log reports the files' results in a few `progress` events (not one per file) and the transfer's
`completed` event lists them all. A broker killed mid-set (tests/fault) and the chunk path are tested
elsewhere; here the bundle path runs on both session brokers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import FteEnv, LogFollower, running_agents, sandbox_dir

pytestmark = pytest.mark.timeout(120)

PROPS = {"agentChunkSize": 65536, "agentWindowSize": 8, "transferAckTimeout": 3000, "transferAckTimeoutRetries": 3}


@pytest.fixture
def fte(tmp_path: Path, broker_url: str) -> Iterator[FteEnv]:
    with running_agents(tmp_path / "fte_home", broker_url, sandbox_dir(tmp_path), **PROPS) as env:
        yield env


def _tree(root: Path, count: int) -> dict[str, bytes]:
    """`count` small files (0 B to 20 KiB) in subdirectories, two bigger than a bundle entry may be."""
    content: dict[str, bytes] = {}
    for i in range(count):
        size = 0 if i % 50 == 7 else (i * 397) % 20000
        content[f"d{i // 40}/f{i}.txt"] = os.urandom(size)
    content["big/a.bin"] = os.urandom(300_000)  # by chunks, between bundles
    content["big/b.bin"] = os.urandom(40_000)   # more than half a 64 KiB chunk: by chunks too
    for rel, data in content.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return content


def test_a_tree_of_small_files_arrives_intact_in_few_events(fte: FteEnv, tmp_path: Path) -> None:
    src = tmp_path / "data" / "src"
    content = _tree(src, 400)
    out = tmp_path / "data" / "out"
    with LogFollower(fte, "-a", "A1") as follower:
        follower.wait_subscribed()
        r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(out), "-r", "--json", "-w", "60",
                    str(src))
        assert r.returncode == 0, r
        events = follower.events_until(lambda e: e.get("action") == "completed", timeout=30)
    for rel, data in content.items():
        got = out / "src" / rel
        assert got.exists(), f"{got} did not arrive"
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(data).digest(), f"{got} differs"
    assert not list(out.rglob("*.part")), "part files left behind"
    progress = [e for e in events if e.get("action") == "progress" and e.get("files")]
    reported = [f["index"] for e in progress for f in e["files"]]
    assert sorted(reported) == list(range(len(content))), "every file's result is logged exactly once"
    assert len(progress) < len(content) / 10, f"{len(progress)} progress events for {len(content)} files"
    completed = events[-1]
    assert completed["result_code"] == 0
    assert completed["statistics"]["files_succeeded"] == len(content)
    assert all(f["digest"] for f in completed["files"] if f["size"] > 0)


def test_one_bad_file_in_a_bundle_fails_alone(fte: FteEnv, tmp_path: Path) -> None:
    """-de error: the files that already exist fail with the reason; the rest of their bundle arrives (20)."""
    src = tmp_path / "data" / "src"
    content = _tree(src, 60)
    out = tmp_path / "data" / "out"
    clash = out / "src" / "d0" / "f3.txt"
    clash.parent.mkdir(parents=True)
    clash.write_bytes(b"already here")
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(out), "-r", "-de", "error", "--json",
                "-w", "60", str(src))
    assert r.returncode == 20, r
    assert clash.read_bytes() == b"already here", "an existing file was overwritten under -de error"
    for rel, data in content.items():
        if rel != "d0/f3.txt":
            assert (out / "src" / rel).read_bytes() == data, rel
    assert not list(out.rglob("*.part")), "part files left behind"
    shown = fte.run("show-transfer", r.json()["transfer_id"])
    assert shown.returncode == 0 and "already exists" in shown.stdout, shown
