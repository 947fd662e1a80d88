"""The floor of the small-files target: only the destination's file work, in plain Python, against `rsync -a`.

    python bench/small_floor.py [--files 10000] [--runs 3]

No broker, no agent, no messages: a tree of 4 KiB files (100 per directory, as bench/run.py makes it) is
copied the way the destination writes a bundle, in groups of BUNDLE files: each file created as
`NAME.part` relative to its directory's descriptor, written, hashed (sha256) and, in the durable variant,
fsynced, by THREADS workers at once (agent/durability.py); then each renamed into place and each
directory of the group fsynced once (agent/part_files.py). The variants: durable (the agents'
agentFsync=true), without the fsyncs (agentFsync=false), and `rsync -a` of the same tree, taking turns,
each copy to a directory of its own (ext4 skips recently freed inodes: see bench/run.py). What the agents
cost beyond the first variant is messages, parsing and bookkeeping; what the first variant costs beyond
`rsync -a` no implementation with the same guarantee avoids on this file system. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import make_tree, tree_matches  # noqa: E402

BUNDLE = 62  # files of 4 KiB in one bundle of the default 256 KiB agentChunkSize
THREADS = 8  # agent/durability.py


def copy_like_the_destination(src: Path, dst: Path, durable: bool, pool: ThreadPoolExecutor) -> float:
    files = sorted(p for p in src.rglob("*") if p.is_file())
    blobs = [(p.relative_to(src), p.read_bytes()) for p in files]  # what the messages would carry
    start = time.perf_counter()
    dirs: dict[Path, int] = {}
    try:
        for rel, _ in blobs:
            if rel.parent not in dirs:
                (dst / rel.parent).mkdir(parents=True, exist_ok=True)
                dirs[rel.parent] = os.open(dst / rel.parent, os.O_RDONLY | os.O_DIRECTORY)

        def write(entry: tuple[Path, bytes]) -> str:
            rel, data = entry
            fd = os.open(rel.name + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644,
                         dir_fd=dirs[rel.parent])
            try:
                os.write(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            return hashlib.sha256(data).hexdigest()

        for at in range(0, len(blobs), BUNDLE):
            group = blobs[at:at + BUNDLE]
            list(pool.map(write, group))
            touched = set()
            for rel, _ in group:
                d = dirs[rel.parent]
                os.rename(rel.name + ".part", rel.name, src_dir_fd=d, dst_dir_fd=d)
                touched.add(d)
            if durable:
                for d in touched:
                    os.fsync(d)
        return time.perf_counter() - start
    finally:
        for d in dirs.values():
            os.close(d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fte-small-floor-"))
    times: dict[str, list[float]] = {"durable": [], "no fsync": [], "rsync -a": []}
    try:
        tree = work / "tree"
        digests = make_tree(tree, a.files, 4096)
        with ThreadPoolExecutor(THREADS) as pool:
            for r in range(a.runs):
                steps = ["durable", "no fsync", "rsync -a"]
                for name in steps if r % 2 == 0 else steps[::-1]:
                    dest = work / f"copy-{name.replace(' ', '-')}-{r}"
                    dest.mkdir()
                    if name == "rsync -a":
                        t0 = time.perf_counter()
                        subprocess.run(["rsync", "-a", str(tree), str(dest) + "/"], check=True)
                        times[name].append(time.perf_counter() - t0)
                    else:
                        times[name].append(copy_like_the_destination(tree, dest / "tree", name == "durable", pool))
                    ok, why = tree_matches(dest / "tree", digests)
                    if not ok:
                        print(f"{name}: the copy differs: {why}", file=sys.stderr)
                        return 1
                print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"median of {a.runs} ({a.files} x 4 KiB): durable {m['durable']:.2f} s, no fsync {m['no fsync']:.2f} s, "
              f"rsync -a {m['rsync -a']:.2f} s; durable / rsync {m['durable'] / m['rsync -a']:.1f}x, "
              f"no fsync / rsync {m['no fsync'] / m['rsync -a']:.1f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
