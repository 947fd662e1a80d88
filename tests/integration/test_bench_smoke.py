"""The benchmark runs end to end (bench/run.py --quick --no-write) and prints every table.

A smoke test only: tiny sizes, one run, and no assertion about any time or rate (the numbers of a loaded
CI machine mean nothing). It proves the benchmark still works against the current code: brokers, agents as
processes, every transfer intact (the benchmark exits non-zero otherwise), and docs/ left alone.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.brokers import find_mosquitto

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

EXPECTED = [
    # section headings
    "### 8 MiB file A1→A2 through Mosquitto, against cp, rsync and the raw broker",
    "### 8 MiB on a stock and a tuned Mosquitto, against scp, rsync -e ssh and the floor",
    "| **mqtt-fte**, stock Mosquitto (its defaults, as Debian ships it) |",
    "| floor, stock Mosquitto |",
    "| `scp` over loopback (private sshd), + fsync |",
    "**stock / tuned broker = ",
    "### 200 × 4 KiB files in one transfer, against rsync",
    "### Peak memory of each agent",
    "### Concurrent transfers between two agents",
    "### Recovery: broker killed (SIGKILL) mid-transfer and restarted",
    "### The embedded amqtt broker, for reference",
    "### Throughput against chunk size and window",
    # rows
    "| **mqtt-fte** A1→A2 (chunk ",
    "| `cp` (same file, same disk) |",
    "| `rsync -a` |",
    "| raw MQTT QoS 1 (aiomqtt pub+sub, one process,",
    "| raw MQTT QoS 0 (same) |",
    "**project / cp = ",
    "**project / raw QoS 1 = ",
    "| **mqtt-fte** one transfer, `-dd DIR -r SRC_DIR` |",
    "**project time / rsync time = ",
    "| idle, just started |",
    "| after a 1 MiB transfer |",
    "| after a 8 MiB transfer |",
    "| 8 concurrent × ",
    "| 64 concurrent × ",
    "broker back → first new byte at the destination (s)",
    "bytes re-sent",
    "| **mqtt-fte** 8 MiB A1→A2 |",
    "| raw MQTT QoS 1 through amqtt |",
    "| chunk 64 KiB |",
    "| chunk 256 KiB |",
    "### Fan-out: 4 MiB to 1, 2 destinations, against N transfers and N × scp",
    "| destinations N | N separate transfers (s) | bytes published | one fan-out transfer (s) |",
    "| 1 | ",
    "| 2 | ",
    "scp ÷ fan-out to 2 = ",
    "Machine: ",
    "`python bench/run.py --quick --no-write",
]


def _digest_docs() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in DOCS.glob("performance*") if p.is_file()}


@pytest.mark.timeout(440)
def test_quick_benchmark_prints_every_table(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    before = _digest_docs()
    try:
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--no-write",
                            "--workdir", str(tmp_path / "bench")],
                           cwd=str(ROOT), capture_output=True, text=True, timeout=420, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"the quick benchmark did not finish in 420 s; its last steps:\n{err[-4000:]}")
    report = f"exit {p.returncode}\n--- stdout ---\n{p.stdout}\n--- stderr (tail) ---\n{p.stderr[-4000:]}"
    assert p.returncode == 0, report
    missing = [row for row in EXPECTED if row not in p.stdout]
    assert not missing, f"rows missing from the benchmark output: {missing}\n{report}"
    assert "ERROR" not in p.stdout, report
    assert _digest_docs() == before, "--no-write must leave docs/performance* alone"


@pytest.mark.timeout(200)
def test_fanout_bench_alone_measures_every_way(tmp_path: Path) -> None:
    """bench/fanout.py on its own: 2 destinations, each of the three ways measured, every copy verified (the
    script exits non-zero otherwise); the fan-out column is a time, or "not available" where the code has
    no fan-out, never an error."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    before = _digest_docs()
    try:
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "fanout.py"), "--quick", "--counts", "2",
                            "--size-mib", "1", "--workdir", str(tmp_path / "fanout")],
                           cwd=str(ROOT), capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"bench/fanout.py --quick did not finish in 180 s; its last steps:\n{err[-4000:]}")
    report = f"exit {p.returncode}\n--- stdout ---\n{p.stdout}\n--- stderr (tail) ---\n{p.stderr[-4000:]}"
    assert p.returncode == 0, report
    row = next((line for line in p.stdout.splitlines() if line.startswith("| 2 | ")), None)
    assert row is not None, report
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 6, report
    assert float(cells[1]) > 0, report  # 2 separate transfers: seconds
    # their bytes published (the broker's $SYS counter): each copy once, plus the acks and events
    times_file = float(cells[2].split("(")[1].split("×")[0])
    assert 2.0 <= times_file < 2.5, report
    assert cells[3] == "not available" or float(cells[3]) > 0, report
    assert cells[5] == "not measured" or float(cells[5]) > 0, report  # scp (no sshd: says so)
    assert "- Machine: " in p.stdout and " cores (" in p.stdout, report
    assert _digest_docs() == before, "--quick must leave docs/performance* alone"


@pytest.mark.timeout(200)
@pytest.mark.parametrize("args, rows", [
    (["paho", "--mib", "4", "--runs", "1"], ["| paho `_packet_read` (", "| paho `_packet.decode_publish` ("]),
    (["worker", "--mib", "4", "--runs", "1"], ["| event loop | ", "| one worker thread | "]),
    (["negotiation", "--files", "30", "--runs", "1"], ["| 1 | offer → answer (", "| 1 | **whole transfer** ("]),
], ids=["paho", "worker", "negotiation"])
def test_ideas_bench_runs_each_mode(tmp_path: Path, args: list[str], rows: list[str]) -> None:
    """bench/ideas.py (issue 18's three ideas) at tiny sizes: each mode runs through and prints its rows (it
    checks the digest of what it wrote and every copied tree itself, and exits non-zero otherwise)."""
    if args[0] == "negotiation" and find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    before = _digest_docs()
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "ideas.py"), *args], cwd=str(ROOT),
                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    report = f"exit {p.returncode}\n--- stdout ---\n{p.stdout}\n--- stderr (tail) ---\n{p.stderr[-4000:]}"
    assert p.returncode == 0, report
    missing = [row for row in rows if row not in p.stdout]
    assert not missing, f"rows missing: {missing}\n{report}"
    assert _digest_docs() == before, "bench/ideas.py must leave docs/performance* alone"
