"""What durability costs: transfers with agentFsync=true (the default) and false, against `cp` + `sync FILE`.

    .venv/bin/python bench/fsync.py [--files 1000] [--size 4096] [--big-mib 64] [--runs 2]

One Mosquitto, two agent pairs (one per setting, both running, taking turns), the same data each time: a tree of small files (the case
where one fsync per file shows) and one bigger file. The baseline is what a careful script does to get the
same guarantee: `cp -r` then `sync` of every copied file (GNU coreutils' `sync FILE` fsyncs that file).
Prints a Markdown table (the figures in docs/performance.md, "Durability (fsync)").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (MB, MiB, Pair, check_results, fmt, make_random_file, make_tree, median,  # noqa: E402
                           remove, table, tree_matches, tree_transfer, file_transfer, machine_info)
from tests.support.brokers import MosquittoProcess  # noqa: E402


def cp_and_sync(src: Path, dst: Path) -> float:
    remove(dst)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    files = [str(p) for p in dst.rglob("*") if p.is_file()] if dst.is_dir() else [str(dst)]
    for i in range(0, len(files), 500):
        subprocess.run(["sync", *files[i:i + 500]], check=True)
    subprocess.run(["sync", str(dst if dst.is_dir() else dst.parent)], check=True)  # the directory entries
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--big-mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fte-bench-fsync-") as tmp:
        w = Path(tmp)
        data = w / "data"
        tree = data / "src" / "tree"
        digests = make_tree(tree, args.files, args.size)
        big = data / "src" / "big.bin"
        make_random_file(big, args.big_mib * MiB)
        broker = MosquittoProcess(workdir=w / "mosquitto")
        broker.start()
        labels = {True: "fte, agentFsync=true (default)", False: "fte, agentFsync=false"}
        rows: dict[str, dict[str, list[float]]] = {labels[on]: {"tree": [], "big": []} for on in (True, False)}
        rows["cp + sync FILE (baseline)"] = {"tree": [], "big": []}
        pairs: dict[bool, Pair] = {}
        try:
            # both pairs up at once and the order alternating between runs: machine noise hits both alike
            for on, names in ((True, ("A1", "A2")), (False, ("A3", "A4"))):
                pairs[on] = Pair(w / f"home-{on}", broker.url, data, {"agentFsync": str(on).lower()},
                                 names=names).start()
            for r in range(args.runs):
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    times = rows[labels[on]]
                    dest = data / f"out-{on}-{r}"
                    res = pairs[on].submit([tree_transfer(tree, dest)], timeout=600)
                    check_results(res)
                    ok, why = tree_matches(dest / tree.name, digests)
                    if not ok:
                        raise SystemExit(f"the tree differs: {why}")
                    times["tree"].append(res["transfers"][0]["seconds"])
                    res = pairs[on].submit([file_transfer(big, dest / "big.bin")], timeout=600)
                    check_results(res)
                    times["big"].append(res["transfers"][0]["seconds"])
                    remove(dest)
                times = rows["cp + sync FILE (baseline)"]
                times["tree"].append(cp_and_sync(tree, data / "cp-tree"))
                times["big"].append(cp_and_sync(big, data / "cp-big.bin"))
            load = os.getloadavg()
        finally:
            for pair in pairs.values():
                pair.stop()
            broker.stop()
    out = []
    for label, t in rows.items():
        tr, bg = median(t["tree"]), median(t["big"])
        out.append([label, fmt(tr, 2, " s"), fmt(args.files / tr if tr else None, 0, " files/s"),
                    fmt(bg, 2, " s"), fmt(args.big_mib * MiB / bg / MB if bg else None, 0, " MB/s")])
    info = machine_info()
    print(table(["", f"{args.files} x {args.size} B files", "files/s", f"{args.big_mib} MiB file", "MB/s"], out))
    print(f"\nMedian of {args.runs} runs (the two settings interleaved); load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} at the end; {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, "
          f"Mosquitto {info['mosquitto']}, commit {info['commit']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
