"""Small files, two versions of the agent code side by side: which is faster, in the same run.

    git archive OLD_COMMIT agent | tar -x -C /tmp/old     # the code to compare with (its agent/ package)
    python bench/ab_small.py --old /tmp/old [--files 3000] [--runs 5]

One Mosquitto, two agent pairs: A1→A2 run the code of this checkout, B1→B2 the `agent` package found in
--old (put first on their PYTHONPATH; the rest, cli/ included, is this checkout's). Each run sends the same
tree of 4 KiB files (100 per directory, `-dd DIR -r SRC_DIR`) with one pair, then the other (the order
reversed every other run, so that the noise of a shared machine hits both alike), then `rsync -a` of it;
each copy goes to a directory of its own (ext4 skips recently freed inodes: see bench/run.py). Prints the
times of each run and the medians, and the CPU seconds the two agents of each pair used (from /proc: less
disturbed by other work on a loaded machine than the wall time); exits non-zero if a copy differs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CpuMeter, Pair, check_results, make_tree, tree_matches, tree_transfer  # noqa: E402

from tests.support.agents import FteEnv  # noqa: E402
from tests.support.brokers import MosquittoProcess  # noqa: E402


class EnvPair(Pair):
    """A Pair whose agents get `extra` in their environment (PYTHONPATH of the old code)."""

    extra: dict[str, str] = {}

    def start(self, timeout: float = 60) -> "Pair":
        self.env = FteEnv(self.home, self.broker_url)
        for n in self.names:
            self.env.create_agent(n, sandbox=self.sandbox, **self.properties)
        agents = [self.env.start_agent(n, wait_ready=False, extra_env=self.extra) for n in self.names]
        for a in agents:
            self.env.wait_status(a.name, {"READY", "ACTIVE"}, timeout=timeout, pid=a.pid, process=a)
        return self


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="a directory holding the old code's agent/ package")
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if not (a.old / "agent" / "__init__.py").exists():
        ap.error(f"{a.old}/agent/__init__.py not found")
    work = Path(tempfile.mkdtemp(prefix="fte-ab-"))
    times: dict[str, list[float]] = {"new": [], "old": [], "rsync": []}
    cpu: dict[str, list[float]] = {"new": [], "old": []}  # source + destination agent, per transfer
    cpu_dst: dict[str, list[float]] = {"new": [], "old": []}  # the destination agent alone
    try:
        data = work / "data"
        tree = data / "tree"
        digests = make_tree(tree, a.files, 4096)
        with MosquittoProcess(workdir=work / "mq") as broker:
            new = EnvPair(work / "home-new", broker.url, data)
            old = EnvPair(work / "home-old", broker.url, data, names=("B1", "B2"))
            old.extra = {"PYTHONPATH": str(a.old.resolve())}
            with new, old:
                for r in range(a.runs):
                    for name, pair in ((("new", new), ("old", old)) if r % 2 == 0 else (("old", old), ("new", new))):
                        dest = data / f"copy-{name}-{r}"
                        meter = CpuMeter({"src": pair.source.pid, "dst": pair.destination.pid}).start()
                        res = pair.submit([tree_transfer(tree, dest)], timeout=600)
                        used = meter.stop()
                        cpu[name].append(sum(v or 0.0 for v in used.values()))
                        cpu_dst[name].append(used["dst"] or 0.0)
                        check_results(res)
                        ok, why = tree_matches(dest / "tree", digests)
                        if not ok:
                            print(f"{name}: the copy differs: {why}", file=sys.stderr)
                            return 1
                        times[name].append(res["transfers"][0]["seconds"])
                    dest = data / f"copy-rsync-{r}"
                    dest.mkdir()
                    t0 = time.perf_counter()
                    subprocess.run(["rsync", "-a", str(tree), str(dest) + "/"], check=True)
                    times["rsync"].append(time.perf_counter() - t0)
                    print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()) +
                          "; agents' CPU " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in cpu.items()), flush=True)
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"median of {a.runs} ({a.files} x 4 KiB): new {m['new']:.2f} s, old {m['old']:.2f} s "
              f"(new / old {m['new'] / m['old']:.2f}x), rsync -a {m['rsync']:.2f} s; new / rsync "
              f"{m['new'] / m['rsync']:.1f}x, old / rsync {m['old'] / m['rsync']:.1f}x")
        c = {k: statistics.median(v) for k, v in cpu.items()}
        d = {k: statistics.median(v) for k, v in cpu_dst.items()}
        print(f"agents' CPU seconds per transfer (source + destination), median: new {c['new']:.2f} s, old "
              f"{c['old']:.2f} s (new / old {c['new'] / c['old']:.2f}x); the destination's alone: new "
              f"{d['new']:.2f} s, old {d['old']:.2f} s ({d['new'] / d['old']:.2f}x)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
