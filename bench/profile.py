"""Profile both agents during one transfer with py-spy and print where their CPU time goes.

    .venv/bin/pip install py-spy
    python bench/profile.py [--size-mib 1024] [--rate 100] [--outdir DIR] [-p agentChunkSize=N ...]

Starts a private Mosquitto and two fresh agents (real `fte-start-agent -F` processes), attaches
`py-spy record --format raw` to each agent, runs one transfer of a random file, and prints, for the source
and the destination: samples, CPU seconds per process (/proc), and the top functions by self time and by
inclusive time (all threads: the event loop and the asyncio.to_thread workers). The raw collapsed stacks
stay in --outdir (feed them to flamegraph.pl or https://www.speedscope.app).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (MB, MiB, CpuMeter, Pair, check_results, file_transfer, make_random_file, make_tree,  # noqa: E402
                     sha256_file, tree_matches, tree_transfer)

from tests.support.brokers import MosquittoProcess  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def short(frame: str) -> str:
    """'pread (agent/source.py:12)' -> 'pread (agent/source.py)'; site-packages and stdlib paths shortened."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{m.group('func')} ({path})"


# Leaf frames in which a thread waits rather than runs (py-spy cannot always tell, e.g. a thread pool worker
# blocked in SimpleQueue.get or the event loop in epoll_wait): counted apart, not as CPU.
WAITING = re.compile(r"^(EpollSelector\.select|_worker|Condition\.wait|Event\.wait|Thread\.join|sleep) ")


def summarise(raw: Path, top: int) -> tuple[int, int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples running, samples waiting, top self, top inclusive); percentages are of the running samples."""
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [short(f) for f in stack.split(";") if f and not f.startswith("process ") and
                  not f.startswith("thread ")]
        if not frames:
            continue
        if WAITING.match(frames[-1]):
            waiting += count
            continue
        total += count
        self_count[frames[-1]] += count
        for f in set(frames):
            incl_count[f] += count
    boring = re.compile(r"^(run|Runner\.run|BaseEventLoop\.|Thread\.|_main|_single|_invoke|<module>|Command\.|"
                        r"Context\.|Typer|TyperGroup|get_callback|start_agent|Handle\._run|_worker|"
                        r"_WorkItem\.run)")
    incl = [(f, n) for f, n in incl_count.most_common() if not boring.match(f)][:top]
    return total, waiting, self_count.most_common(top), incl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--tree", type=int, default=0, metavar="N",
                    help="instead of one file: N files of 4 KiB in one transfer (-dd DIR -r SRC_DIR)")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--outdir", type=Path, default=None)
    ap.add_argument("-p", "--property", action="append", default=[], help="agent.properties KEY=VALUE for both")
    a = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(pyspy, os.X_OK):
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 1
    props = dict(kv.split("=", 1) for kv in a.property)
    outdir = a.outdir or Path(tempfile.mkdtemp(prefix="fte-profile-"))
    outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fte-profile-work-"))
    size = a.tree * 4096 if a.tree else a.size_mib * MiB
    what = f"{a.tree} × 4 KiB files" if a.tree else f"{a.size_mib} MiB"
    try:
        if a.tree:
            src = work / "data" / "tree"
            digests = make_tree(src, a.tree, 4096)
            dst = work / "data" / "copy"
            request = tree_transfer(src, dst)
        else:
            src = work / "data" / "src.bin"
            digest = make_random_file(src, size)
            dst = work / "data" / "dst.bin"
            request = file_transfer(src, dst)
        with MosquittoProcess(workdir=work / "mosquitto") as broker, \
                Pair(work / "home", broker.url, work / "data", props) as pair:
            spies = {}
            for role, agent in (("source", pair.source), ("destination", pair.destination)):
                out = outdir / f"{role}.raw.txt"
                spies[role] = (subprocess.Popen([pyspy, "record", "--pid", str(agent.pid), "--rate", str(a.rate),
                                                 "--format", "raw", "-o", str(out)],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out)
            time.sleep(1.0)  # py-spy attached
            meter = CpuMeter({"source": pair.source.pid, "destination": pair.destination.pid,
                              "mosquitto": broker.pid}).start()
            t0 = time.perf_counter()
            res = pair.submit([request], timeout=max(600, size / (0.5 * MB)))
            wall = time.perf_counter() - t0
            cpu = meter.stop()
            check_results(res)
            for proc, _ in spies.values():
                proc.send_signal(signal.SIGINT)
            for role, (proc, _) in spies.items():
                try:
                    _, err = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    _, err = proc.communicate()
                if proc.returncode not in (0, -2, 130):
                    print(f"py-spy ({role}) exited {proc.returncode}: {err.strip()[-300:]}", file=sys.stderr)
        ok = tree_matches(dst / "tree", digests)[0] if a.tree else sha256_file(dst) == digest
        t = res["transfers"][0]
        print(f"# profile of one transfer of {what} {'(intact)' if ok else '(CORRUPTED)'}: "
              f"{t['seconds']:.2f} s transfer, {size / t['seconds'] / MB:.1f} MB/s; properties {props or 'defaults'}")
        print("CPU seconds during the transfer: " + ", ".join(f"{k} {v:.1f} s ({100 * v / wall:.0f}% of a core)"
                                                              for k, v in cpu.items() if v is not None))
        for role, (_, out) in spies.items():
            if not out.exists():
                print(f"\n## {role}: no py-spy output")
                continue
            total, waiting, selfs, incl = summarise(out, a.top)
            print(f"\n## {role} agent: {total} samples running (≈ {total / a.rate:.1f} s at {a.rate} Hz), "
                  f"{waiting} more waiting in epoll / the thread pool queue (left out)")
            print("\n| self % | function (self time) |\n|---|---|")
            for f, n in selfs:
                print(f"| {100 * n / total:5.1f} | `{f}` |")
            print("\n| incl % | function (inclusive; event loop and thread plumbing left out) |\n|---|---|")
            for f, n in incl:
                print(f"| {100 * n / total:5.1f} | `{f}` |")
        print(f"\nraw stacks: {outdir}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
