"""The section "fanout" of bench/run.py (issue 18, "One transfer, many destinations"); also runs alone:

    python bench/fanout.py                      # 1 GiB to 1, 4 and 8 destinations, medians of 3; writes docs/
    python bench/fanout.py --quick --no-write   # 4 MiB to 1 and 2 destinations, 1 run, print only
    python bench/fanout.py --size-mib 256 --counts 1,4,8 --runs 1 --no-write

For N destinations: agents A2 … A(N+1) on this host, each with a sandbox directory of its own that is also
its transferRoot; A1 the source; one private Mosquitto. Three ways to get the same file to the N of them,
in the same run, interleaved (the order reversed every other run):

1. **separate**: N `fte-create-transfer -sa A1 -da Ak -df fanout.bin -de overwrite -w` processes started
   together, one per destination;
2. **fan-out**: one `fte-create-transfer -sa A1 -da A2,…,A(N+1) -df fanout.bin -de overwrite -w` (for N = 1
   that is the separate transfer itself, so it is not measured twice). An agent or CLI without fan-out
   refuses the list; the row then says "not available" and the rest is measured;
3. **scp**: N `scp` runs of the file into the same N directories through a private sshd
   (bench/ssh_baseline.py), started together, each followed by an fsync of the file it wrote.

Wall time: first process started → last one exited, so command start-ups are in it (N Python start-ups for
(1), one for (2), N `scp` for (3)). Every copy's sha256 is checked afterwards (not timed).

**Bytes published**: the broker's own counter `$SYS/broker/publish/bytes/received` (payload bytes of every
PUBLISH it received), read before and after each measurement (the broker runs with `sys_interval 1`; a
read publishes a 1-byte probe and takes the first counter update that arrives after the probe's PUBACK on
the same connection, so the value includes everything received before; the probes are subtracted). It
counts every client: the source's chunks, and the acks, control messages and events of all agents (a few
hundred bytes per chunk of 256 KiB). A sniffer subscribed to `<prefix>/Data/#` and `<prefix>/Fanout/#`
would count the source's chunks alone, but it is one more subscriber that the broker sends every
published byte: N× the file for separate transfers and 1× for a fan-out, a load that would favour the
fan-out in the timing. So the counter, which costs nothing.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (replace_between, MB, MiB, ROOT, BenchError, CpuMeter, fmt, human_bytes, machine_info, make_random_file,  # noqa: E402
                     median, ratio, remove, sha256_file, table)
from ssh_baseline import PrivateSshd, ensure_sshd, timed_copy_with_fsync  # noqa: E402
from stock_broker import StockMosquitto  # noqa: E402

from tests.support.agents import FteEnv, script  # noqa: E402
from tests.support.brokers import MosquittoProcess, find_mosquitto  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- fanout:start -->", "<!-- fanout:end -->"
TARGET = 4.0  # issue 18: fan-out to 8 destinations at least 4x faster than 8 separate scp runs
MODES = ("separate", "fanout", "scp")
DEST_FILE = "fanout.bin"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ broker


class _SysInterval:
    """Mosquitto with `$SYS` updated every second (the benchmark's brokers turn it off: sys_interval 0)."""

    def config_text(self) -> str:
        lines = [line for line in super().config_text().splitlines()  # type: ignore[misc]
                 if not line.startswith("sys_interval")]
        return "\n".join(lines + ["sys_interval 1"]) + "\n"


class SysMosquitto(_SysInterval, MosquittoProcess):
    """The benchmark's tuned Mosquitto (`set_tcp_nodelay true`, deep queues), with $SYS."""


class SysStockMosquitto(_SysInterval, StockMosquitto):
    """Mosquitto's defaults (bench/stock_broker.py), with $SYS."""


class PublishedBytes:
    """`$SYS/broker/publish/bytes/received` of one Mosquitto, read on demand (see the module's docstring)."""

    TOPIC = "$SYS/broker/publish/bytes/received"

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.host, self.port = host, port
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fte-bench-sys-" + secrets.token_hex(4))
        self.cond = threading.Condition()
        self.updates = 0  # counter messages received so far
        self.value: int | None = None
        self.acked: dict[int, int] = {}  # probe mid -> self.updates when its PUBACK arrived
        self.subscribed = False
        self.probes = 0  # payload bytes of our own probes
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            try:
                self.value = int(msg.payload)
            except ValueError:
                return
            self.updates += 1
            self.cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        with self.cond:
            self.acked[mid] = self.updates
            self.cond.notify_all()

    def _on_subscribe(self, *args: Any) -> None:
        with self.cond:
            self.subscribed = True
            self.cond.notify_all()

    def _wait(self, ok: Any, timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(ok, timeout):
                raise BenchError(f"$SYS counter: {what} within {timeout:g} s")

    def start(self, timeout: float = 15) -> "PublishedBytes":
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(self.TOPIC, qos=0)
        self._wait(lambda: self.subscribed, timeout, "no SUBACK")
        return self

    def read(self, timeout: float = 15) -> int:
        """Bytes of PUBLISH payload the broker received up to now (our probes not counted)."""
        info = self.client.publish("fte-bench/sys-probe", b"p", qos=1)
        self.probes += 1
        self._wait(lambda: info.mid in self.acked, timeout, "no PUBACK for the probe")
        after = self.acked.pop(info.mid)
        self._wait(lambda: self.updates > after, timeout, "no update after the probe (is sys_interval on?)")
        assert self.value is not None
        return self.value - self.probes

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ------------------------------------------------------------------------------------------ agents


@dataclass
class Group:
    """A1 (the source, sandbox `src_dir`) and destinations A2 … A(n+1), each sandbox = transferRoot of its own."""

    home: Path
    broker_url: str
    src_dir: Path
    dest_root: Path
    destinations: int
    env: FteEnv | None = None
    dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f"A{i}" for i in range(2, self.destinations + 2)]

    def start(self, timeout: float = 120) -> "Group":
        remove(self.home)
        self.env = FteEnv(self.home, self.broker_url)
        # one after the other: concurrent fte-create-agent race on the user's signing key (harness.Pair)
        self.env.create_agent("A1", sandbox=self.src_dir)
        for n in self.names:
            d = self.dest_root / n
            remove(d)
            d.mkdir(parents=True)
            self.dirs[n] = d
            self.env.create_agent(n, sandbox=d, transferRoot=d)
        agents = [self.env.start_agent(n, wait_ready=False) for n in ["A1", *self.names]]
        for a in agents:
            self.env.wait_status(a.name, {"READY", "ACTIVE"}, timeout=timeout, pid=a.pid, process=a)
        return self

    def stop(self) -> None:
        if self.env is not None:
            self.env.stop_all()

    def logs(self, names: list[str], n: int = 8) -> str:
        assert self.env is not None
        return "\n".join(f"{k} log:\n{self.env.agents[k].log_tail(n)}" for k in ["A1", *names])


def run_together(cmds: list[list[str]], env: dict[str, str], timeout: float) -> tuple[float, list[tuple[int, str]]]:
    """Start every command at once; wall seconds until the last one exited, and each (exit code, stderr tail)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    outs: list[tuple[int, str]] = []
    try:
        for p in procs:
            left = max(1.0, timeout - (time.perf_counter() - t0))
            out, err = p.communicate(timeout=left)
            outs.append((p.returncode, (err or out or "").strip()[-400:]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return time.perf_counter() - t0, outs


# ------------------------------------------------------------------------------------------ measurement


@dataclass
class FanoutConfig:
    size: int
    counts: tuple[int, ...]
    runs: int
    broker: str = "tuned"  # or "stock"

    def timeout(self, n: int) -> float:
        return max(120.0, n * self.size / (0.5 * MB))  # slower than 0.5 MB/s per destination counts as hung


class FanoutBench:
    def __init__(self, cfg: FanoutConfig, workdir: Path, src: Path, digest: str) -> None:
        self.cfg, self.w, self.src, self.digest = cfg, workdir, src, digest
        self.samples: dict[tuple[int, str], list[tuple[float, int | None]]] = {}
        self.cpu: dict[tuple[int, str], list[dict[str, float]]] = {}  # CPU s of the source, destinations, broker
        self.broker_pid: int | None = None
        self.fanout_missing: str | None = None  # why the fan-out rows are "not available"
        self.failures: dict[int, str] = {}  # N -> why a fan-out to N failed (the other ways are still measured)
        self.no_ssh: str | None = None
        self.group: Group | None = None
        self.counter: PublishedBytes | None = None
        self.sshd: PrivateSshd | None = None

    def pids(self, n: int) -> dict[str, int | None]:
        assert self.group is not None and self.group.env is not None
        agents = self.group.env.agents
        return {"broker": self.broker_pid, "A1": agents["A1"].pid, **{k: agents[k].pid for k in self.group.names[:n]}}

    def outputs(self, n: int) -> list[Path]:
        assert self.group is not None
        return [self.group.dirs[k] / DEST_FILE for k in self.group.names[:n]]

    def clean(self, n: int) -> None:
        for p in self.outputs(n):
            remove(p)

    def verify(self, n: int, mode: str) -> None:
        bad = [str(p) for p in self.outputs(n) if not p.exists() or sha256_file(p) != self.digest]
        if bad:
            raise BenchError(f"{mode}, {n} destination(s): {len(bad)} cop(ies) missing or damaged: {bad[:2]}")

    def cli(self, destinations: str, n: int) -> list[str]:
        """`fte-create-transfer` as a user types it; -w bounded (exit 2 when the wait runs out)."""
        return [script("create-transfer"), "-sa", "A1", "-da", destinations, "-df", DEST_FILE, "-de", "overwrite",
                "-w", str(int(self.cfg.timeout(n))), str(self.src)]

    def separate(self, n: int) -> tuple[float, int | None]:
        assert self.group is not None and self.group.env is not None and self.counter is not None
        names = self.group.names[:n]
        before = self.counter.read()
        secs, outs = run_together([self.cli(k, n) for k in names], self.group.env.env, self.cfg.timeout(n) + 60)
        published = self.counter.read() - before
        bad = [(k, rc, err) for k, (rc, err) in zip(names, outs) if rc != 0]
        if bad:
            k, rc, err = bad[0]
            raise BenchError(f"fte-create-transfer -da {k} -> {rc}: {err}\n{self.group.logs([k])}")
        self.verify(n, "separate")
        return secs, published

    def fanout(self, n: int) -> tuple[float, int | None] | None:
        """None when the agents or the CLI refuse a list of destinations (fan-out not built)."""
        assert self.group is not None and self.group.env is not None and self.counter is not None
        names = self.group.names[:n]
        before = self.counter.read()
        secs, [(rc, err)] = run_together([self.cli(",".join(names), n)], self.group.env.env, self.cfg.timeout(n) + 60)
        published = self.counter.read() - before
        if rc != 0:
            arrived = [p for p in self.outputs(n) if p.exists()]
            if not arrived and published < self.cfg.size // 2:  # refused before the data moved: not built here
                self.fanout_missing = (err.splitlines() or [f"exit {rc}"])[-1].strip()[:200]
                log(f"fanout: not available: {self.fanout_missing}")
                return None
            self.failures[n] = f"exit {rc}, {len(arrived)} of {n} copies arrived: {err.splitlines()[-1] if err else ''}"
            log(f"fanout: FAILED to {n}: {err}\n{self.group.logs(names)}")
            return None
        try:
            self.verify(n, "fan-out")
        except BenchError as exc:
            self.failures[n] = str(exc)
            return None
        return secs, published

    def scp(self, n: int) -> tuple[float, int | None] | None:
        if self.sshd is None:
            return None
        outs = self.outputs(n)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(lambda dst: timed_copy_with_fsync(self.sshd.scp(self.src, dst), dst),  # type: ignore[union-attr]
                          outs))
        secs = time.perf_counter() - t0
        self.verify(n, "scp")
        return secs, None

    def run(self) -> None:
        cfg = self.cfg
        broker_cls = SysStockMosquitto if cfg.broker == "stock" else SysMosquitto
        broker = broker_cls(workdir=self.w / f"mosquitto-fanout-{cfg.broker}")
        broker.start()
        self.broker_pid = broker.pid
        self.no_ssh = ensure_sshd()
        try:
            self.counter = PublishedBytes(broker.host, broker.port).start()
            if self.no_ssh is None:
                try:
                    self.sshd = PrivateSshd(self.w / "sshd-fanout").start()
                except Exception as exc:  # noqa: BLE001 - the scp column says why; the rest is measured
                    self.no_ssh = f"the private sshd did not start: {exc}"
            log(f"fanout: starting A1 and {max(cfg.counts)} destination agents")
            self.group = Group(self.w / "fanout-home", broker.url, self.src.parent, self.w / "fanout-dest",
                               max(cfg.counts)).start()
            for r in range(cfg.runs):
                for n in cfg.counts:
                    order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                    for mode in order:
                        if mode == "fanout" and (n == 1 or self.fanout_missing or n in self.failures):
                            continue
                        if mode == "scp" and self.sshd is None:
                            continue
                        log(f"fanout: run {r + 1}/{cfg.runs}: {human_bytes(cfg.size)} to {n}: {mode}")
                        self.clean(n)
                        meter = CpuMeter(self.pids(n)).start()
                        got = getattr(self, mode)(n)
                        used = meter.stop()
                        self.clean(n)
                        if got is not None:
                            self.samples.setdefault((n, mode), []).append(got)
                            if mode != "scp":  # scp's work is in sshd's children, not measured
                                self.cpu.setdefault((n, mode), []).append({
                                    "source": used["A1"] or 0.0, "broker": used["broker"] or 0.0,
                                    "destinations": sum(v or 0.0 for k, v in used.items() if k not in ("A1", "broker"))})
        finally:
            if self.group is not None:
                self.group.stop()
            if self.counter is not None:
                self.counter.stop()
            if self.sshd is not None:
                self.sshd.stop()
            broker.stop()

    # ---------------------------------------------------------------- results

    def seconds(self, n: int, mode: str) -> float | None:
        return median(s for s, _ in self.samples.get((n, mode), []))

    def published(self, n: int, mode: str) -> float | None:
        return median(b for _, b in self.samples.get((n, mode), []) if b is not None)

    def data(self) -> dict[str, Any]:
        return {"seconds": {f"{n}/{m}": self.seconds(n, m) for n in self.cfg.counts for m in MODES},
                "published": {f"{n}/{m}": self.published(n, m) for n in self.cfg.counts for m in MODES},
                "runs": {f"{n}/{m}": v for (n, m), v in self.samples.items()},
                "cpu": {f"{n}/{m}": v for (n, m), v in self.cpu.items()},
                "fanout_missing": self.fanout_missing, "no_ssh": self.no_ssh}

    def markdown(self) -> str:
        cfg = self.cfg
        size = cfg.size

        def cell_s(n: int, mode: str) -> str:
            if mode == "fanout" and n == 1:
                return "= separate"
            if mode == "fanout" and self.fanout_missing:
                return "not available"
            if mode == "fanout" and n in self.failures:
                return "**failed**"
            if mode == "scp" and self.no_ssh:
                return "not measured"
            return fmt(self.seconds(n, mode), 2)

        def cell_b(n: int, mode: str) -> str:
            if mode == "fanout" and n == 1:
                return "= separate"
            b = self.published(n, mode)
            if b is None:
                return "n/a"
            return f"{b / MiB:,.1f} MiB ({b / size:.2f}× the file)"

        rows = [[str(n), cell_s(n, "separate"), cell_b(n, "separate"), cell_s(n, "fanout"),
                 "not available" if self.fanout_missing and n > 1 else cell_b(n, "fanout"), cell_s(n, "scp")]
                for n in cfg.counts]
        top = max(cfg.counts)
        fan_top = self.seconds(top, "fanout") if top > 1 else self.seconds(top, "separate")
        scp_top = self.seconds(top, "scp")
        sep_top = self.seconds(top, "separate")
        speedup = ratio(scp_top, fan_top)
        if top != 8:
            verdict = f"this run's largest N is {top}"
        elif self.fanout_missing:
            verdict = "**not measured**: fan-out not available"
        elif speedup is None:
            verdict = "**not measured**"
        else:
            verdict = "**met**" if speedup >= TARGET else "**not met**"

        def times(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f}×"

        info = machine_info()
        runs_text = "; ".join(f"{m} to {n}: " + ", ".join(fmt(s, 2) for s, _ in v)
                              for (n, m), v in sorted(self.samples.items()))
        lines = [
            table(["destinations N", "N separate transfers (s)", "bytes published", "one fan-out transfer (s)",
                   "bytes published", "N × `scp` + fsync (s)"], rows),
            "",
            f"- **{top} × scp ÷ fan-out to {top} = {times(speedup)}** (how many times faster the fan-out is; "
            f"target ≥ {TARGET:g}× for 8 destinations: {verdict}); {top} separate transfers ÷ fan-out = "
            f"{times(ratio(sep_top, fan_top))}, {top} separate transfers ÷ {top} × scp = "
            f"{times(ratio(sep_top, scp_top))} the time.",
            f"- {human_bytes(size)} to N agents on this host (one sandbox directory each), one private Mosquitto "
            f"({'stock: its defaults' if cfg.broker == 'stock' else 'tuned: `set_tcp_nodelay true`'}, "
            "`sys_interval 1`); "
            f"{'median of ' + str(cfg.runs) + ' runs' if cfg.runs > 1 else '1 run'}, the three interleaved. Wall "
            "time from the first command started to the last one exited (their start-ups included); every "
            "copy's sha256 checked afterwards. Bytes published: the broker's `$SYS/broker/publish/bytes/received` "
            "difference (every client's PUBLISH payloads: the source's chunks and all agents' acks and events). "
            "N = 1: a fan-out to one destination is the ordinary transfer (\"= separate\").",
            f"- Machine: {info['nproc']} cores ({info['cpu']}), load average {info['load']} at the end; "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC; code at {info['commit']}.",
        ]
        if self.fanout_missing:
            lines.append(f"- Fan-out not available in this code: `fte-create-transfer -da A2,A3…` → "
                         f"`{self.fanout_missing}`.")
        for n, why in sorted(self.failures.items()):
            lines.append(f"- **The fan-out to {n} failed**: {why}.")
        if self.no_ssh:
            lines.append(f"- scp not measured: {self.no_ssh}.")
        cpu_text = []
        for (n, m), v in sorted(self.cpu.items()):
            part = {k: median(x[k] for x in v) for k in ("source", "destinations", "broker")}
            cpu_text.append(f"{'fan-out' if m == 'fanout' else m} to {n}: source {fmt(part['source'], 1)}, "
                            f"destinations {fmt(part['destinations'], 1)}, broker {fmt(part['broker'], 1)}")
        if cpu_text:
            lines.append(f"- CPU seconds used (medians; {info['nproc']} cores): " + "; ".join(cpu_text) + ".")
        if runs_text:
            lines.append(f"- Runs (s): {runs_text}.")
        return "\n".join(lines)


def measure_fanout(bench: Any, s: Any) -> None:
    """bench/run.py's section: its Bench (scratch directory, the source file) and Section."""
    cfg = bench.cfg
    size = cfg.fanout_size or cfg.big
    src, digest = bench.source_file(size)
    fb = FanoutBench(FanoutConfig(size=size, counts=cfg.fanout_counts, runs=cfg.runs), bench.w, src, digest)
    fb.run()
    s.data.update(fb.data())
    s.markdown = fb.markdown()
    if fb.failures:  # the table stays (the other ways were measured); the run exits non-zero
        s.error = "; ".join(f"fan-out to {n}: {why}" for n, why in sorted(fb.failures.items()))


# ------------------------------------------------------------------------------------------ alone


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/fanout.py",
                                 description="One file to N destinations: fan-out, N transfers, N scp, one run.")
    ap.add_argument("--quick", action="store_true", help="4 MiB to 1 and 2 destinations, 1 run, print only")
    ap.add_argument("--runs", type=int, default=None, help="runs, medians reported (default 3; --quick: 1)")
    ap.add_argument("--size-mib", type=int, default=None, help="the file (default 1024; --quick: 4)")
    ap.add_argument("--counts", default=None, help="numbers of destinations (default 1,4,8; --quick: 1,2)")
    ap.add_argument("--broker", choices=("tuned", "stock"), default="tuned",
                    help="tuned: the benchmark's Mosquitto (set_tcp_nodelay true); stock: its defaults")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md alone")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new one in $TMPDIR)")
    a = ap.parse_args(argv)
    counts = tuple(int(x) for x in (a.counts or ("1,2" if a.quick else "1,4,8")).split(","))
    if not counts or min(counts) < 1 or max(counts) > 16:
        ap.error("--counts: 1 to 16 destinations each")
    runs = a.runs or (1 if a.quick else 3)
    if runs < 1:
        ap.error("--runs must be at least 1")
    size = (a.size_mib or (4 if a.quick else 1024)) * MiB
    if find_mosquitto() is None:
        print("bench/fanout.py: mosquitto is not installed (apt install mosquitto)", file=sys.stderr)
        return 1
    cfg = FanoutConfig(size=size, counts=counts, runs=runs, broker=a.broker)
    command = "python bench/fanout.py" + "".join(" " + x for x in (argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="fte-fanout-") as tmp:
        w = a.workdir or Path(tmp)
        w.mkdir(parents=True, exist_ok=True)
        src = w / "src" / f"random-{size}.bin"
        log(f"making {human_bytes(size)} of random data")
        digest = make_random_file(src, size)
        load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
        t0 = time.monotonic()
        fb = FanoutBench(cfg, w, src, digest)
        fb.run()
    block = "\n".join([f"_Measured by `{command}` in {(time.monotonic() - t0) / 60:.1f} min; load average at the "
                       f"start {load0}._", "", fb.markdown(), ""])
    print(block)
    if not (a.quick or a.no_write):
        replace_between(DOC, START, END, block)
        log(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if fb.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
