"""The section "stock" of bench/run.py: one big file through a stock Mosquitto and a tuned one in the same
run, against scp, rsync -e ssh (bench/ssh_baseline.py) and the floor (bench/floor.py), all interleaved.

Stock: Mosquitto's defaults as Debian ships them (no `set_tcp_nodelay`: Nagle's algorithm on the broker's
side; `max_inflight_messages` 20, `max_queued_messages` 1000), persistence off. Tuned: the benchmark's own
broker (tests/support/brokers.MosquittoProcess: `set_tcp_nodelay true`, no inflight limit, deep queues).
Every copy is timed with an fsync of the written file (the agents' destination fsyncs before done).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import BENCH, ROOT, BenchError, fmt, fmt_ratio, human_bytes, mbps, median, ratio, remove, \
    sha256_file, table
from ssh_baseline import PrivateSshd, ensure_sshd, timed_copy_with_fsync
from tests.support.brokers import MosquittoProcess


class StockMosquitto(MosquittoProcess):
    """Mosquitto with its defaults: the generated configuration without the lines that tune it."""

    TUNING = ("set_tcp_nodelay", "max_inflight_messages", "max_inflight_bytes", "max_queued_messages",
              "max_queued_bytes")

    def config_text(self) -> str:
        lines = [line for line in super().config_text().splitlines() if not line.startswith(self.TUNING)]
        return "\n".join(lines) + "\n"


def floor_seconds(url: str, src: Path, dst: Path, chunk: int, window: int, digest: str) -> float:
    """end − start of bench/floor.py's receiver and sender (their Python start-ups not timed)."""
    topic = f"fte-bench/floor/{secrets.token_hex(4)}"
    remove(dst)
    rx = subprocess.Popen([sys.executable, str(BENCH / "floor.py"), "receive", "--url", url, "--topic", topic,
                           "--bytes", str(src.stat().st_size), "--out", str(dst)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        assert rx.stdout is not None
        if rx.stdout.readline().strip() != "ready":
            raise BenchError(f"floor receiver did not start: {rx.stderr.read()[-300:] if rx.stderr else ''}")
        tx = subprocess.run([sys.executable, str(BENCH / "floor.py"), "send", "--url", url, "--topic", topic,
                             "--file", str(src), "--chunk", str(chunk), "--window", str(window)],
                            capture_output=True, text=True, timeout=900, cwd=str(ROOT))
        if tx.returncode != 0:
            raise BenchError(f"floor sender -> {tx.returncode}: {tx.stderr.strip()[-300:]}")
        out, err = rx.communicate(timeout=300)
        if rx.returncode != 0:
            raise BenchError(f"floor receiver -> {rx.returncode}: {err.strip()[-300:]}")
    finally:
        if rx.poll() is None:
            rx.kill()
    sent, got = json.loads(tx.stdout.strip().splitlines()[-1]), json.loads(out.strip().splitlines()[-1])
    if not (sent["sha256"] == got["sha256"] == digest):
        raise BenchError("the floor's file arrived damaged")
    remove(dst)
    return float(got["end"]) - float(sent["start"])


def measure_stock_and_tuned(bench: Any, s: Any, src: Path, digest: str) -> None:
    cfg = bench.cfg
    out = bench.data / "out"
    out.mkdir(exist_ok=True)
    tuned = bench.mosquitto()
    stock = StockMosquitto(workdir=bench.w / "mosquitto-stock")
    stock.start()
    why_no_ssh = ensure_sshd()
    sshd = None
    if why_no_ssh is None:
        try:
            sshd = PrivateSshd(bench.w / "sshd").start()
        except Exception as exc:  # noqa: BLE001 - the ssh rows say why, the others are measured
            why_no_ssh = f"the private sshd did not start: {exc}"
    has_rsync = shutil.which("rsync") is not None
    keys: tuple[str, ...] = ("tuned", "stock", "floor_tuned", "floor_stock", "scp", "rsync_ssh")
    if cfg.quick:  # the smoke test: one of each kind (their rows say so)
        keys = ("tuned", "stock", "floor_tuned", "scp")
    rows: dict[str, list[float | None]] = {k: [] for k in keys}
    try:
        for r in range(cfg.runs):
            order = list(keys) if r % 2 == 0 else list(reversed(keys))  # machine noise hits them alike
            for k in order:
                bench_log(f"stock: run {r + 1}/{cfg.runs}: {k}")
                if k in ("tuned", "stock"):
                    broker = tuned if k == "tuned" else stock
                    with bench.pair(broker.url) as pair:
                        t = bench.one_transfer(pair, src, digest, out / "stock.bin")
                    rows[k].append(t["seconds"])
                elif k.startswith("floor_"):
                    broker = tuned if k == "floor_tuned" else stock
                    rows[k].append(floor_seconds(broker.url, src, out / "floor.bin", cfg.chunk, cfg.window, digest))
                elif sshd is not None and (k == "scp" or has_rsync):
                    dst = out / f"{k}.bin"
                    remove(dst)
                    cmd = sshd.scp(src, dst) if k == "scp" else sshd.rsync(src, dst)
                    rows[k].append(timed_copy_with_fsync(cmd, dst))
                    if sha256_file(dst) != digest:
                        raise BenchError(f"{k}'s copy arrived damaged")
                    remove(dst)
    finally:
        stock.stop()
        if sshd is not None:
            sshd.stop()
    med = {k: median(rows.get(k, [])) for k in ("tuned", "stock", "floor_tuned", "floor_stock", "scp", "rsync_ssh")}
    rate = {k: mbps(cfg.big, v) for k, v in med.items()}
    s.data.update(seconds=med, mbps=rate, runs=rows, no_ssh=why_no_ssh)
    missing_ssh = f"not measured: {why_no_ssh}" if why_no_ssh else None

    def row(label: str, k: str, against: str) -> list[str]:
        if k not in rows:
            return [label, "not measured with --quick", "", ""]
        if med[k] is None:
            return [label, missing_ssh or "n/a", "", ""]
        return [label, fmt(med[k], 2), fmt(rate[k]), fmt_ratio(ratio(rate[against], rate[k]))]

    size = human_bytes(cfg.big)
    body = [
        row("**mqtt-fte**, tuned Mosquitto (`set_tcp_nodelay true`)", "tuned", "tuned"),
        row("**mqtt-fte**, stock Mosquitto (its defaults, as Debian ships it)", "stock", "tuned"),
        row("floor (bench/floor.py: read, sha256, publish QoS 1; receive, write, sha256, fsync), tuned", "floor_tuned",
            "tuned"),
        row("floor, stock Mosquitto", "floor_stock", "tuned"),
        row("`scp` over loopback (private sshd), + fsync", "scp", "tuned"),
        row("`rsync -a -e ssh` over loopback, + fsync", "rsync_ssh", "tuned"),
    ]
    runs_text = "; ".join(f"{k} " + ", ".join(fmt(x, 2) for x in v if x is not None) for k, v in rows.items() if v)
    s.markdown = "\n".join([
        table(["measurement", "seconds", "MB/s", "mqtt-fte (tuned) ÷ this"], body),
        "",
        f"- **stock / tuned broker = {fmt(ratio(med['stock'], med['tuned']), 2)}×** the time; "
        f"**mqtt-fte ÷ scp = {fmt(ratio(med['tuned'], med['scp']), 2)}×** the time (target < 1: faster than scp); "
        f"mqtt-fte ÷ floor = {fmt(ratio(med['tuned'], med['floor_tuned']), 2)}× the time.",
        f"- Fresh agents for each transfer; {size}, chunk {human_bytes(cfg.chunk)}, window {cfg.window}; the six "
        "interleaved, the order reversed every other run. Stock: Mosquitto without `set_tcp_nodelay`, "
        "`max_inflight_messages`, `max_queued_messages` (defaults: Nagle on, 20, 1000).",
        f"- Runs (s): {runs_text}.",
    ])


def bench_log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
