"""Bandwidth limits measured (issue 17): a 100 MiB transfer at --bandwidth 20M, and the same under the
agent's agentMaxBandwidth=20M, through a private Mosquitto, agents as `fte-start-agent -F` processes.

    python bench/bandwidth.py             # 3 runs of each, rewrites the block in docs/performance.md
    python bench/bandwidth.py --runs 1 --no-write

What is timed: the source session's own `seconds` (its start to its outcome, from the `completed` event) and
request → `completed` as bench/submit.py sees it. The figure to meet: 104,857,600 B / 20,000,000 B/s =
5.24 s, ± 10 %. Every copy is checked against the source's sha256.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (MiB, ROOT, BenchError, Pair, file_transfer, fmt, machine_info, make_random_file,  # noqa: E402
                     median, sha256_file, table)

from tests.support.brokers import MosquittoProcess  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- bandwidth:start -->", "<!-- bandwidth:end -->"
RATE = 20_000_000
SIZE = 100 * MiB


def measure(pair: Pair, source: Path, digest: str, out: Path, bandwidth: int | None, runs: int) -> list[list[float]]:
    timings = []
    for i in range(runs):
        dest = out / f"copy{i}.bin"
        transfer = file_transfer(source, dest)
        if bandwidth:
            transfer["bandwidth"] = bandwidth
        result = pair.submit([transfer], timeout=120)["transfers"][0]
        if result["result_code"] != 0 or sha256_file(dest) != digest:
            raise BenchError(f"transfer {i} did not arrive intact: {result}")
        timings.append([float(result["statistics"]["seconds"]), float(result["seconds"])])
        dest.unlink()
    return timings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    expected = SIZE / RATE
    rows = []
    with tempfile.TemporaryDirectory(prefix="fte-bw-") as tmp:
        w = Path(tmp)
        data = w / "data"
        (data / "out").mkdir(parents=True)
        source = data / "source.bin"
        digest = make_random_file(source, SIZE)
        broker = MosquittoProcess(workdir=w / "mosquitto")
        broker.start()
        try:
            cases = [("--bandwidth 20M", None, RATE), ("agentMaxBandwidth=20M", RATE, None),
                     ("no limit", None, None)]
            for n, (label, agent_rate, transfer_rate) in enumerate(cases):
                props = {"agentMaxBandwidth": agent_rate} if agent_rate else {}
                with Pair(w / f"home{n}", broker.url, data, props) as pair:
                    t = measure(pair, source, digest, data / "out", transfer_rate, args.runs)
                session = median(x[0] for x in t)
                limited = agent_rate or transfer_rate
                rows.append([label, str(len(t)), fmt(session, 2, " s"), fmt(median(x[1] for x in t), 2, " s"),
                             " / ".join(f"{x[0]:.2f}" for x in t),
                             f"{100 * (session - expected) / expected:+.1f} %" if limited and session else "—"])
                print(f"{label}: {t}", file=sys.stderr, flush=True)
        finally:
            broker.stop()
    info = machine_info()
    block = "\n".join([
        START,
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {info.get('nproc', '?')} × {info.get('cpu', '?')} (load {info.get('load', '?')}), commit "
        f"{info.get('commit', '?')}: 100 MiB (104,857,600 B) A1 → A2, Mosquitto, default agent properties; "
        f"expected at 20 MB/s: {expected:.2f} s.",
        "",
        table(["limit", "runs", "session (median)", "request → completed (median)", "session, each run (s)",
               "vs 5.24 s"], rows),
        END])
    print(block)
    if not args.no_write:
        text = DOC.read_text(encoding="utf-8")
        if START not in text:
            raise BenchError(f"{DOC} has no {START} block")
        head, rest = text.split(START, 1)
        DOC.write_text(head + block + rest.split(END, 1)[1], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
