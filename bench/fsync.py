"""What durability costs: transfers with agentFsync=true (the default) and false, against `cp` + `sync FILE`.

    .venv/bin/python bench/fsync.py [--files 1000] [--size 4096] [--big-mib 64] [--runs 2]

One Mosquitto, two agent pairs (one per setting), the same data each time: a tree of small files (the case
where one fsync per file shows) and one bigger file. The baseline is what a careful script does to get the
same guarantee: `cp -r` then `sync` of every copied file (GNU coreutils' `sync FILE` fsyncs that file).
Prints a Markdown table (the figures in docs/performance.md, "Durability (fsync)").
"""

from __future__ import annotations

import argparse
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
        rows: dict[str, dict[str, list[float]]] = {}
        try:
            for label, on in (("fte, agentFsync=true (default)", True), ("fte, agentFsync=false", False)):
                times: dict[str, list[float]] = {"tree": [], "big": []}
                with Pair(w / f"home-{on}", broker.url, data, {"agentFsync": str(on).lower()}) as pair:
                    for r in range(args.runs):
                        dest = data / f"out-{on}-{r}"
                        res = pair.submit([tree_transfer(tree, dest)], timeout=600)
                        check_results(res)
                        ok, why = tree_matches(dest / tree.name, digests)
                        if not ok:
                            raise SystemExit(f"the tree differs: {why}")
                        times["tree"].append(res["transfers"][0]["seconds"])
                        res = pair.submit([file_transfer(big, dest / "big.bin")], timeout=600)
                        check_results(res)
                        times["big"].append(res["transfers"][0]["seconds"])
                        remove(dest)
                rows[label] = times
            times = {"tree": [], "big": []}
            for r in range(args.runs):
                times["tree"].append(cp_and_sync(tree, data / "cp-tree"))
                times["big"].append(cp_and_sync(big, data / "cp-big.bin"))
            rows["cp + sync FILE (baseline)"] = times
        finally:
            broker.stop()
    out = []
    for label, t in rows.items():
        tr, bg = median(t["tree"]), median(t["big"])
        out.append([label, fmt(tr, 2, " s"), fmt(args.files / tr if tr else None, 0, " files/s"),
                    fmt(bg, 2, " s"), fmt(args.big_mib * MiB / bg / MB if bg else None, 0, " MB/s")])
    info = machine_info()
    print(table(["", f"{args.files} x {args.size} B files", "files/s", f"{args.big_mib} MiB file", "MB/s"], out))
    print(f"\nMedian of {args.runs} runs; {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, "
          f"Mosquitto {info['mosquitto']}, commit {info['commit']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
