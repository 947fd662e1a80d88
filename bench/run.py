"""The benchmark: mqtt-fte against its baselines, measured in the same run on this machine.

    python bench/run.py                 # full run (1 GiB; several minutes), writes docs/performance.md
    python bench/run.py --runs 1        # one run of everything instead of 3 (medians of 1)
    python bench/run.py --quick         # smoke test: small sizes, 1 run (well under a minute)
    python bench/run.py --no-write      # print the tables only; leave docs/ alone
    python bench/run.py --only big,small --no-write   # some sections only (never writes docs)

Sections (docs/performance.md explains each one and how it is measured):
  big          1 GiB A1→A2 through a private Mosquitto vs `cp` vs `rsync -a` vs the raw broker ceiling
               (aiomqtt publisher+subscriber in one process, same chunk size and window, QoS 1 and QoS 0)
  small        10,000 × 4 KiB files in one transfer (-dd DIR -r SRC_DIR) vs `rsync -a`
  rss          peak RSS (VmHWM) of each agent for a 1 MiB and a 1 GiB transfer, fresh agents each time
  concurrency  8 and 64 concurrent transfers between two agents, aggregate MB/s, every file verified
  recovery     kill -9 the broker mid-transfer, restart it: broker back → first new byte, bytes re-sent
  amqtt        the 1 GiB transfer and the raw ceiling on the embedded amqtt broker
  sweep        chunk size × window for a 256 MiB file (→ docs/performance-chunks.png with matplotlib)
  fanout       the big file to 1, 4 and 8 destination agents: N transfers, one fan-out transfer, N × scp
               (bench/fanout.py; also runs alone)

Everything runs as real processes: the broker (tests.support.brokers), the agents (`fte-start-agent -F`
via tests.support.agents.FteEnv), the submitting client (bench/submit.py), the raw ceiling
(bench/raw_ceiling.py). Exit code 0 when every measurement was made and every transfer arrived intact.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (BENCH, KiB, MB, MiB, ROOT, BenchError, CpuMeter, Pair, check_results,  # noqa: E402
                     file_transfer, fmt, fmt_ratio, human_bytes, machine_info, make_random_file, make_tree,
                     mbps, median, ratio, remove, settings_default, sha256_file, table, timed_command,
                     tree_matches, tree_transfer)

from tests.support.brokers import AmqttProcess, MosquittoProcess, find_mosquitto  # noqa: E402
from stock_broker import measure_stock_and_tuned  # noqa: E402
from fanout import measure_fanout  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
CHART = ROOT / "docs" / "performance-chunks.png"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SECTIONS = ("big", "stock", "small", "rss", "concurrency", "recovery", "amqtt", "sweep", "fanout")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Config:
    quick: bool
    runs: int
    big: int
    sweep_size: int
    small_count: int
    small_size: int
    rss_small: int
    conc_total: int
    conc_counts: tuple[int, ...]
    rec_size: int
    rec_down: float
    chunks: tuple[int, ...]
    windows: tuple[int, ...]
    chunk: int  # the agents' default chunk size and window: what the headline measures
    window: int
    workdir: Path
    sections: tuple[str, ...]
    fanout_counts: tuple[int, ...] = (1, 4, 8)  # destinations of the fanout section
    fanout_size: int = 0  # its file; 0: the big file

    @classmethod
    def from_args(cls, a: argparse.Namespace, workdir: Path) -> "Config":
        chunk, window = int(settings_default("agentChunkSize")), int(settings_default("agentWindowSize"))
        if a.quick:
            big = (a.size_mib or 8) * MiB
            return cls(quick=True, runs=a.runs or 1, big=big, sweep_size=min(4 * MiB, big), small_count=200,
                       small_size=4 * KiB, rss_small=1 * MiB, conc_total=min(8 * MiB, big), conc_counts=(8, 64),
                       rec_size=max(32 * MiB, big), rec_down=1.0, chunks=(64 * KiB, 256 * KiB), windows=(4, 16),
                       chunk=chunk, window=window, workdir=workdir, sections=a.sections, fanout_counts=(1, 2),
                       fanout_size=min(4 * MiB, big))
        big = (a.size_mib or 1024) * MiB
        return cls(quick=False, runs=a.runs or 3, big=big, sweep_size=min(256 * MiB, big), small_count=10_000,
                   small_size=4 * KiB, rss_small=1 * MiB, conc_total=min(512 * MiB, big), conc_counts=(8, 64),
                   rec_size=min(256 * MiB, big), rec_down=3.0, chunks=(64 * KiB, 256 * KiB, 1 * MiB),
                   windows=(4, 16, 32, 64), chunk=chunk, window=window, workdir=workdir, sections=a.sections)

    def timeout_for(self, nbytes: int) -> float:
        return max(120.0, nbytes / (0.5 * MB))  # a transfer slower than 0.5 MB/s counts as hung


@dataclass
class Section:
    name: str
    title: str
    markdown: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Bench:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.w = cfg.workdir
        self.data = self.w / "data"  # the agents' sandbox
        self.data.mkdir(parents=True, exist_ok=True)
        self.broker: MosquittoProcess | None = None
        self._files: dict[int, tuple[Path, str]] = {}
        self._homes = 0
        self.big_results: dict[str, Any] = {}

    # ---------------------------------------------------------------- helpers

    def source_file(self, size: int) -> tuple[Path, str]:
        """A random file of `size` bytes (made once) and its sha256."""
        if size not in self._files:
            path = self.data / "src" / f"random-{size}.bin"
            log(f"making {human_bytes(size)} of random data")
            self._files[size] = (path, make_random_file(path, size))
        return self._files[size]

    def pair(self, url: str | None = None, names: tuple[str, str] = ("A1", "A2"), **properties: Any) -> Pair:
        self._homes += 1
        assert url or self.broker
        return Pair(self.w / f"home{self._homes}", url or self.broker.url, self.data, properties, names=names)

    def mosquitto(self) -> MosquittoProcess:
        if self.broker is None or not self.broker.is_running:
            self.broker = MosquittoProcess(workdir=self.w / "mosquitto")
            self.broker.start()
        return self.broker

    def raw(self, url: str, nbytes: int, chunk: int, window: int, qos: int) -> float:
        # The baseline client has no recovery of its own (amqtt, on a loaded machine, sometimes drops its
        # connection mid-run): one more attempt, logged, before the measurement counts as failed.
        for attempt in (1, 2):
            p = subprocess.run([sys.executable, str(BENCH / "raw_ceiling.py"), "--url", url, "--bytes", str(nbytes),
                                "--chunk", str(chunk), "--window", str(window), "--qos", str(qos)],
                               capture_output=True, text=True, timeout=900, cwd=str(ROOT))
            if p.returncode == 0:
                return float(json.loads(p.stdout.strip().splitlines()[-1])["seconds"])
            err = f"raw_ceiling.py -> {p.returncode}: {p.stderr.strip()[-500:]}"
            if attempt == 1:
                log(f"raw ceiling failed, measuring again: {err.splitlines()[-1] if err else ''}")
        raise BenchError(err)

    def one_transfer(self, pair: Pair, src: Path, digest: str, dst: Path) -> dict[str, Any]:
        remove(dst)
        res = pair.submit([file_transfer(src, dst)], timeout=self.cfg.timeout_for(src.stat().st_size))
        check_results(res)
        t = res["transfers"][0]
        got = sha256_file(dst)
        if got != digest:
            raise BenchError(f"{dst} arrived with sha256 {got[:16]}…, expected {digest[:16]}…")
        remove(dst)
        return t

    # ---------------------------------------------------------------- big

    def sec_big(self, s: Section) -> None:
        cfg = self.cfg
        broker = self.mosquitto()
        src, digest = self.source_file(cfg.big)
        out = self.data / "out"
        out.mkdir(exist_ok=True)
        rows: dict[str, list[float | None]] = {k: [] for k in ("project", "cp", "rsync", "raw1", "raw0")}
        cpu: dict[str, list[float | None]] = {"A1": [], "A2": [], "broker": []}
        hwm: list[dict[str, int]] = []
        has_rsync = bool(shutil_which("rsync"))
        for r in range(cfg.runs):
            log(f"big: run {r + 1}/{cfg.runs}: project ({human_bytes(cfg.big)}, fresh agents)")
            with self.pair() as pair:
                meter = CpuMeter({"A1": pair.source.pid, "A2": pair.destination.pid, "broker": broker.pid}).start()
                t = self.one_transfer(pair, src, digest, out / "big.bin")
                used = meter.stop()
                hwm.append(pair.peak_rss())
            rows["project"].append(t["seconds"])
            for k in cpu:
                cpu[k].append(used[k])
            log("big: cp")
            rows["cp"].append(timed_command(["cp", str(src), str(out / "big.cp")]))
            remove(out / "big.cp")
            if has_rsync:
                log("big: rsync -a")
                rows["rsync"].append(timed_command(["rsync", "-a", str(src), str(out / "big.rsync")]))
                remove(out / "big.rsync")
            log("big: raw broker ceiling, QoS 1 and QoS 0")
            rows["raw1"].append(self.raw(broker.url, cfg.big, cfg.chunk, cfg.window, 1))
            rows["raw0"].append(self.raw(broker.url, cfg.big, cfg.chunk, cfg.window, 0))
        med = {k: median(v) for k, v in rows.items()}
        rate = {k: mbps(cfg.big, v) for k, v in med.items()}
        self.big_results = {"seconds": med, "mbps": rate, "hwm": hwm}
        s.data.update(seconds=med, mbps=rate, cpu={k: median(v) for k, v in cpu.items()})
        label = f"chunk {human_bytes(cfg.chunk)}, window {cfg.window}"
        body = [
            [f"**mqtt-fte** A1→A2 ({label}, sha256 verified)", fmt(med["project"], 2), fmt(rate["project"]), "1.00×"],
            ["`cp` (same file, same disk)", fmt(med["cp"], 2), fmt(rate["cp"]), fmt_ratio(ratio(rate["project"], rate["cp"]))],
            ["`rsync -a`", fmt(med["rsync"], 2) if has_rsync else "rsync not installed", fmt(rate["rsync"]),
             fmt_ratio(ratio(rate["project"], rate["rsync"]))],
            [f"raw MQTT QoS 1 (aiomqtt pub+sub, one process, {label}, no disk)", fmt(med["raw1"], 2),
             fmt(rate["raw1"]), fmt_ratio(ratio(rate["project"], rate["raw1"]))],
            ["raw MQTT QoS 0 (same)", fmt(med["raw0"], 2), fmt(rate["raw0"]), fmt_ratio(ratio(rate["project"], rate["raw0"]))],
        ]
        c = s.data["cpu"]
        proj = med["project"]
        util = " · ".join(f"{k} {fmt(v, 1)} s ({fmt(100 * v / proj if v is not None and proj else None, 0)}% of a core)"
                          for k, v in c.items())
        s.markdown = "\n".join([
            table(["measurement", "seconds", "MB/s", "mqtt-fte ÷ this"], body),
            "",
            f"- **project / cp = {fmt(ratio(rate['project'], rate['cp']), 2)}×** (target ≥ 0.8×); "
            f"**project / raw QoS 1 = {fmt(ratio(rate['project'], rate['raw1']), 2)}×** (target ≥ 0.9×); "
            f"project / raw QoS 0 = {fmt(ratio(rate['project'], rate['raw0']), 2)}×.",
            f"- CPU used during the transfer (median): {util}.",
            "- mqtt-fte time: from the `create_transfer` request to the source's `completed` log event "
            "(the destination has verified the sha256 and renamed the file by then); the sha256 check of "
            "the bench itself is not timed. cp/rsync: wall time of the command.",
        ])

    # ---------------------------------------------------------------- stock

    def sec_stock(self, s: Section) -> None:
        src, digest = self.source_file(self.cfg.big)
        measure_stock_and_tuned(self, s, src, digest)

    # ---------------------------------------------------------------- rss

    def sec_rss(self, s: Section) -> None:
        cfg = self.cfg
        self.mosquitto()
        src, digest = self.source_file(cfg.rss_small)
        dst = self.data / "out" / "small-rss.bin"
        dst.parent.mkdir(exist_ok=True)
        log(f"rss: {human_bytes(cfg.rss_small)} with fte-create-transfer -w (fresh agents)")
        with self.pair() as pair:
            idle = pair.peak_rss()
            assert pair.env is not None
            t0 = time.perf_counter()
            r = pair.env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-de", "overwrite",
                             "-w", str(src), timeout=300)
            cli_wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise BenchError(f"fte-create-transfer -> {r.returncode}: {r.stderr.strip()[-300:]}")
            small = pair.peak_rss()
        if sha256_file(dst) != digest:
            raise BenchError(f"{dst} arrived corrupted")
        remove(dst)
        if not self.big_results.get("hwm"):
            log(f"rss: {human_bytes(cfg.big)} (fresh agents; the big section did not run)")
            bsrc, bdigest = self.source_file(cfg.big)
            with self.pair() as pair:
                self.one_transfer(pair, bsrc, bdigest, self.data / "out" / "big-rss.bin")
                self.big_results["hwm"] = [pair.peak_rss()]
        big = {k: max(h[k] for h in self.big_results["hwm"]) for k in ("A1", "A2")}
        s.data.update(idle=idle, small=small, big=big, cli_wall=cli_wall)
        mib = lambda v: fmt(v / MiB, 1)  # noqa: E731
        rows = [
            ["idle, just started", mib(idle["A1"]), mib(idle["A2"])],
            [f"after a {human_bytes(cfg.rss_small)} transfer", mib(small["A1"]), mib(small["A2"])],
            [f"after a {human_bytes(cfg.big)} transfer", mib(big["A1"]), mib(big["A2"])],
        ]
        grow = max(big[k] - small[k] for k in big)
        s.markdown = "\n".join([
            table(["peak RSS (VmHWM, MiB)", "A1 (source)", "A2 (destination)"], rows),
            "",
            f"- Growth from {human_bytes(cfg.rss_small)} to {human_bytes(cfg.big)}: "
            f"{fmt(grow / MiB, 1)} MiB at most (target: ≤ 100 MiB per agent whatever the file size: "
            f"{'met' if max(big.values()) <= 100 * MiB else '**not met**'}).",
            f"- The {human_bytes(cfg.rss_small)} transfer as a user runs it: `fte-create-transfer -w` took "
            f"{fmt(cli_wall, 2)} s wall, CLI start-up included.",
        ])

    # ---------------------------------------------------------------- small files

    def sec_small(self, s: Section) -> None:
        cfg = self.cfg
        self.mosquitto()
        tree = self.data / "tree"
        remove(tree)
        log(f"small: making {cfg.small_count} × {human_bytes(cfg.small_size)} files")
        digests = make_tree(tree, cfg.small_count, cfg.small_size)
        has_rsync = bool(shutil_which("rsync"))
        # rsync >= 3.2.4 can fsync every file it writes: the baseline with the agent's guarantee
        rsync_fsync = has_rsync and "--fsync" in subprocess.run(["rsync", "--help"], capture_output=True,
                                                                 text=True).stdout
        proj: list[float | None] = []
        proj_nosync: list[float | None] = []  # agentFsync=false: what the durability costs
        rs: list[float | None] = []
        rs_fsync: list[float | None] = []
        cp: list[float | None] = []
        # Each copy goes to a directory of its own, and none is removed before the section ends: ext4 skips
        # inodes freed in the last 60-300 s when it allocates one (ialloc.c, recently_deleted), so a tool run
        # right after another tool's copy was deleted paid for that deletion (the same tree took 2.8 to 5.1 s
        # when each copy was removed before the next). The order of the tools alternates between runs.
        copies: list[Path] = []

        def fresh(name: str) -> Path:
            d = self.data / f"tree-copy-{name}-{len(copies)}"
            remove(d)
            copies.append(d)
            return d

        def transfer(p: Pair, name: str, times: list[float | None]) -> None:
            dest = fresh(name)
            log(f"small: run {r + 1}/{cfg.runs}: {name} (-dd DIR -r SRC_DIR, {cfg.small_count} files)")
            res = p.submit([tree_transfer(tree, dest)], timeout=max(600.0, cfg.small_count * 0.5))
            check_results(res)
            ok, why = tree_matches(dest / tree.name, digests)
            if not ok:
                raise BenchError(f"the transferred tree differs: {why}")
            times.append(res["transfers"][0]["seconds"])

        def project() -> None:
            transfer(pair, "project", proj)

        def project_nosync() -> None:
            transfer(nosync, "project-nofsync", proj_nosync)

        def rsync_with(options: list[str], times: list[float | None]) -> None:
            dest = fresh("rsync")
            log(f"small: rsync {' '.join(options)}")
            times.append(timed_command(["rsync", *options, str(tree), str(dest) + "/"]))
            ok, why = tree_matches(dest / tree.name, digests)
            if not ok:
                raise BenchError(f"rsync's copy differs: {why}")

        def rsync() -> None:
            if has_rsync:
                rsync_with(["-a"], rs)
            if rsync_fsync:
                rsync_with(["-a", "--fsync"], rs_fsync)

        def cp_r() -> None:
            dest = fresh("cp")
            log("small: cp -r")
            cp.append(timed_command(["cp", "-r", str(tree), str(dest)]))

        try:
            with self.pair() as pair, self.pair(agentFsync="false", names=("A3", "A4")) as nosync:
                for r in range(cfg.runs):
                    steps = (project, project_nosync, rsync, cp_r)
                    for step in (steps if r % 2 == 0 else steps[::-1]):
                        step()
        finally:
            for d in copies:
                remove(d)
        def rounded(xs: list[float | None]) -> list[float]:
            return [round(x, 2) for x in xs if x]

        log(f"small: seconds per run: project {rounded(proj)}, agentFsync=false {rounded(proj_nosync)}, "
            f"rsync {rounded(rs)}, rsync --fsync {rounded(rs_fsync)}, cp {rounded(cp)}")
        m_p, m_n, m_r, m_rf, m_c = median(proj), median(proj_nosync), median(rs), median(rs_fsync), median(cp)
        total = cfg.small_count * cfg.small_size

        def row(label: str, m: float | None) -> list[str]:
            return [label, fmt(m, 2), fmt(mbps(total, m), 2), fmt(cfg.small_count / m if m else None, 0),
                    fmt_ratio(ratio(m_p, m))]

        s.data.update(project=m_p, project_nofsync=m_n, rsync=m_r, rsync_fsync=m_rf, cp=m_c)
        rows = [
            row("**mqtt-fte** one transfer, `-dd DIR -r SRC_DIR`", m_p)[:4] + ["1.00×"],
            row("mqtt-fte, the same with `agentFsync=false`", m_n),
            row("`rsync -a` (no fsync)", m_r) if has_rsync else ["`rsync -a`", "rsync not installed", "", "", ""],
            row("`rsync -a --fsync` (every file fsynced)", m_rf) if rsync_fsync else
            ["`rsync -a --fsync`", "this rsync has no --fsync (3.2.4 or later)", "", "", ""],
            row("`cp -r` (no fsync)", m_c),
        ]
        s.markdown = "\n".join([
            table(["measurement", "seconds", "MB/s", "files/s", "mqtt-fte time ÷ this"], rows),
            "",
            "- mqtt-fte with `agentFsync=true`, the default: every file fsynced before it is reported done.",
            f"- **project time / rsync time = {fmt(ratio(m_p, m_r), 1)}×** (target ≤ 2×; rsync does not fsync); "
            f"{fmt((m_p or 0) / cfg.small_count * 1000, 2)} ms per file. With the same guarantee on both sides: "
            f"project / `rsync -a --fsync` = {fmt(ratio(m_p, m_rf), 1)}×; without it: project with "
            f"`agentFsync=false` / `rsync -a` = {fmt(ratio(m_n, m_r), 1)}×.",
        ])

    # ---------------------------------------------------------------- concurrency

    def sec_concurrency(self, s: Section) -> None:
        cfg = self.cfg
        self.mosquitto()
        rows = []
        most = max(cfg.conc_counts)
        with self.pair(maxSourceTransfers=most, maxDestinationTransfers=most) as pair:
            for n in cfg.conc_counts:
                each = cfg.conc_total // n
                srcs = []
                for i in range(n):
                    p = self.data / "conc" / f"{n}" / f"f{i:03d}.bin"
                    if not p.exists():
                        make_random_file(p, each)
                    srcs.append(p)
                digests = {p: sha256_file(p) for p in srcs}
                aggs, slow, med_each = [], [], []
                for r in range(cfg.runs):
                    out = self.data / "conc-out" / f"{n}"
                    remove(out)
                    out.mkdir(parents=True)
                    log(f"concurrency: run {r + 1}/{cfg.runs}: {n} × {human_bytes(each)}")
                    res = pair.submit([file_transfer(p, out / p.name) for p in srcs],
                                      timeout=cfg.timeout_for(cfg.conc_total))
                    check_results(res)
                    bad = [p.name for p in srcs if sha256_file(out / p.name) != digests[p]]
                    if bad:
                        raise BenchError(f"{len(bad)} of {n} files arrived corrupted ({bad[:3]})")
                    ts = res["transfers"]
                    span = max(t["completed_at"] for t in ts) - min(t["submitted_at"] for t in ts)
                    aggs.append(mbps(n * each, span))
                    slow.append(max(t["seconds"] for t in ts))
                    med_each.append(median(t["seconds"] for t in ts))
                    remove(out)
                agg = median(aggs)
                single = (self.big_results.get("mbps") or {}).get("project")
                rows.append([f"{n} concurrent × {human_bytes(each)}", fmt(agg), fmt(median(med_each), 2),
                             fmt(median(slow), 2), "all intact (sha256)", fmt_ratio(ratio(agg, single))])
                s.data[str(n)] = agg
            s.data["hwm"] = pair.peak_rss()
        h = s.data["hwm"]
        s.markdown = "\n".join([
            table(["transfers", "aggregate MB/s", "median transfer (s)", "slowest (s)", "files",
                   f"aggregate ÷ one {human_bytes(cfg.big)} transfer (big section)"], rows),
            "",
            f"- Agents with `maxSourceTransfers` = `maxDestinationTransfers` = {most} (default 25), so all run at "
            f"once. Aggregate = all bytes ÷ (last `completed` − first request). Peak RSS afterwards: "
            f"A1 {fmt(h['A1'] / MiB, 1)} MiB, A2 {fmt(h['A2'] / MiB, 1)} MiB.",
        ])

    # ---------------------------------------------------------------- recovery

    def sec_recovery(self, s: Section) -> None:
        cfg = self.cfg
        broker = self.mosquitto()
        src, digest = self.source_file(cfg.rec_size)
        dst = self.data / "out" / "recovery.bin"
        dst.parent.mkdir(exist_ok=True)
        part = Path(str(dst) + ".part")
        results = []
        for r in range(cfg.runs):
            # fresh agents each run: the agents' reconnection backoff carries over from one outage to the next
            with self.pair() as pair:
                remove(dst)
                remove(part)
                log(f"recovery: run {r + 1}/{cfg.runs}: {human_bytes(cfg.rec_size)}, kill -9 the broker at ~30%")
                proc = pair.submit_async([file_transfer(src, dst)], timeout=cfg.timeout_for(cfg.rec_size) + 120)
                killed = False
                deadline = time.monotonic() + cfg.timeout_for(cfg.rec_size)
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        if part.stat().st_size >= 0.3 * cfg.rec_size:
                            broker.kill()
                            killed = True
                            break
                    except FileNotFoundError:
                        pass
                    time.sleep(0.002)
                row: dict[str, Any] = {}
                if killed:
                    t_kill = time.time()
                    time.sleep(cfg.rec_down)
                    st = part.stat() if part.exists() else None
                    snap = (st.st_size, st.st_mtime_ns) if st else (0, 0)
                    t_spawn = time.time()
                    broker.restart()
                    t_back = time.time()
                    t_first = None
                    while time.time() < t_back + 600:
                        try:
                            st = part.stat()
                            if (st.st_size, st.st_mtime_ns) != snap:
                                t_first = time.time()
                                break
                        except FileNotFoundError:
                            if dst.exists():  # finished (renamed) between two looks
                                t_first = time.time()
                                break
                        time.sleep(0.002)
                    row.update(held=snap[0], down=t_spawn - t_kill, answer=t_back - t_spawn,
                               first_byte=None if t_first is None else t_first - t_back)
                    row["_since"] = (t_spawn, t_back)
                out, err = proc.communicate(timeout=cfg.timeout_for(cfg.rec_size) + 180)
                lines = [l for l in out.splitlines() if l.startswith("{")]
                if proc.returncode != 0 or not lines:
                    raise BenchError(f"submit.py -> {proc.returncode}: {err.strip()[-500:]}")
                res = json.loads(lines[-1])
                check_results(res)
                if sha256_file(dst) != digest:
                    raise BenchError("the recovered file arrived corrupted")
                t = res["transfers"][0]
                st = t.get("statistics") or {}
                if killed:
                    t_spawn, t_back = row.pop("_since")
                    for key, agent in (("src_reconnect", pair.source), ("dst_reconnect", pair.destination)):
                        at = reconnected_at(agent.log, t_spawn)
                        row[key] = None if at is None else at - t_back
                row.update(killed=killed, seconds=t["seconds"], resent=st.get("bytes_resent"),
                           recoveries=st.get("recoveries"),
                           done_after=(t["completed_at"] - t_back) if killed else None)
                results.append(row)
                remove(dst)
        if not any(r["killed"] for r in results):
            s.data["killed"] = False
            s.markdown = (table(["measurement", "value"],
                                [["broker back → first new byte at the destination (s)",
                                  "n/a: the transfer finished before the kill"],
                                 ["bytes re-sent", "n/a"]]))
            return
        k = [r for r in results if r["killed"]]
        m = lambda key: median(r.get(key) for r in k)  # noqa: E731
        resent = m("resent")
        s.data.update(first_byte=m("first_byte"), resent=resent, recoveries=m("recoveries"))
        rows = [
            ["broker killed (SIGKILL) when the .part file held", f"~30% of {human_bytes(cfg.rec_size)}"],
            ["broker down for (s)", fmt(m("down"), 2)],
            ["restarted broker answering MQTT after (s)", fmt(m("answer"), 3)],
            ["broker back → source agent reconnected (s, from its log)", fmt(m("src_reconnect"), 2)],
            ["broker back → destination agent reconnected (s, from its log)", fmt(m("dst_reconnect"), 2)],
            ["**broker back → first new byte at the destination (s)**", fmt(m("first_byte"), 2)],
            ["broker back → transfer complete and verified (s)", fmt(m("done_after"), 2)],
            ["bytes held by the destination at the restart (MiB)", fmt((m("held") or 0) / MiB, 1)],
            ["**bytes re-sent** (`completed` statistics.bytes_resent)",
             "n/a" if resent is None else f"{int(resent):,} ({fmt(resent / MiB, 2)} MiB)"],
            ["recoveries (statistics.recoveries)", fmt(m("recoveries"), 0)],
            ["whole transfer incl. the outage (s)", fmt(m("seconds"), 2)],
        ]
        s.markdown = "\n".join([
            table(["recovery (median of runs)", "value"], rows),
            "",
            "- The destination's `.part` file is polled every 2 ms; \"first new byte\" is the first change of "
            "its size or mtime after the restart. \"Broker back\" is when the restarted broker first answers "
            "an MQTT CONNECT (polled every ≤ 100 ms).",
        ])

    # ---------------------------------------------------------------- amqtt

    def sec_amqtt(self, s: Section) -> None:
        cfg = self.cfg
        src, digest = self.source_file(cfg.big)
        proj, raw1 = [], []
        with AmqttProcess(workdir=self.w / "amqtt") as amqtt:
            with self.pair(url=amqtt.url) as pair:
                for r in range(cfg.runs):
                    log(f"amqtt: run {r + 1}/{cfg.runs}: project {human_bytes(cfg.big)} through the embedded broker")
                    proj.append(self.one_transfer(pair, src, digest, self.data / "out" / "amqtt.bin")["seconds"])
                    log("amqtt: raw ceiling QoS 1")
                    raw1.append(self.raw(amqtt.url, cfg.big, cfg.chunk, cfg.window, 1))
        p, q = mbps(cfg.big, median(proj)), mbps(cfg.big, median(raw1))
        mosq = (self.big_results.get("mbps") or {}).get("project")
        s.data.update(project=p, raw1=q)
        s.markdown = "\n".join([
            table(["embedded amqtt broker (`fte broker`)", "seconds", "MB/s", "mqtt-fte ÷ this"], [
                [f"**mqtt-fte** {human_bytes(cfg.big)} A1→A2", fmt(median(proj), 2), fmt(p), "1.00×"],
                ["raw MQTT QoS 1 through amqtt", fmt(median(raw1), 2), fmt(q), fmt_ratio(ratio(p, q))],
                ["mqtt-fte through Mosquitto (big section)", "", fmt(mosq), fmt_ratio(ratio(p, mosq))],
            ]),
        ])

    # ---------------------------------------------------------------- sweep

    def sec_sweep(self, s: Section) -> None:
        cfg = self.cfg
        broker = self.mosquitto()
        src, digest = self.source_file(cfg.sweep_size)
        grid: dict[tuple[int, int], dict[str, float | None]] = {}
        for c in cfg.chunks:
            for w in cfg.windows:
                proj, raw = [], []
                with self.pair(agentChunkSize=c, agentWindowSize=w) as pair:
                    for r in range(cfg.runs):
                        log(f"sweep: chunk {human_bytes(c)}, window {w}, run {r + 1}/{cfg.runs}")
                        proj.append(self.one_transfer(pair, src, digest, self.data / "out" / "sweep.bin")["seconds"])
                for r in range(cfg.runs):
                    raw.append(self.raw(broker.url, cfg.sweep_size, c, w, 1))
                grid[(c, w)] = {"project": mbps(cfg.sweep_size, median(proj)), "raw1": mbps(cfg.sweep_size, median(raw))}
        s.data["grid"] = {f"{c}/{w}": v for (c, w), v in grid.items()}
        rows = []
        for c in cfg.chunks:
            cells = []
            for w in cfg.windows:
                g = grid[(c, w)]
                cells.append(f"{fmt(g['project'])} ({fmt(ratio(g['project'], g['raw1']), 2)}× of {fmt(g['raw1'], 0)})")
            rows.append([f"chunk {human_bytes(c)}"] + cells)
        best = max(grid, key=lambda k: grid[k]["project"] or 0)
        s.markdown = "\n".join([
            f"{human_bytes(cfg.sweep_size)} file, MB/s of mqtt-fte (in brackets: share of the raw QoS 1 ceiling "
            "for the same chunk size and window, and that ceiling in MB/s):",
            "",
            table(["agentChunkSize \\ agentWindowSize"] + [f"window {w}" for w in cfg.windows], rows),
            "",
            f"- Fastest here: chunk {human_bytes(best[0])}, window {best[1]} "
            f"({fmt(grid[best]['project'])} MB/s); the defaults are chunk {human_bytes(cfg.chunk)}, window {cfg.window}.",
        ])
        s.data["chart_grid"] = grid

    # ---------------------------------------------------------------- fanout

    def sec_fanout(self, s: Section) -> None:
        measure_fanout(self, s)

    # ---------------------------------------------------------------- driver

    def run(self) -> list[Section]:
        titles = {
            "big": f"{human_bytes(self.cfg.big)} file A1→A2 through Mosquitto, against cp, rsync and the raw broker",
            "small": f"{self.cfg.small_count:,} × {human_bytes(self.cfg.small_size)} files in one transfer, against rsync",
            "stock": (f"{human_bytes(self.cfg.big)} on a stock and a tuned Mosquitto, against scp, rsync -e ssh "
                      "and the floor"),
            "rss": "Peak memory of each agent",
            "concurrency": "Concurrent transfers between two agents",
            "recovery": "Recovery: broker killed (SIGKILL) mid-transfer and restarted",
            "amqtt": "The embedded amqtt broker, for reference",
            "sweep": "Throughput against chunk size and window",
            "fanout": (f"Fan-out: {human_bytes(self.cfg.fanout_size or self.cfg.big)} to "
                       f"{', '.join(map(str, self.cfg.fanout_counts))} destinations, against N transfers and N × scp"),
        }
        sections = []
        order = [n for n in SECTIONS if n in self.cfg.sections]
        for name in order:
            s = Section(name, titles[name])
            t0 = time.monotonic()
            try:
                getattr(self, f"sec_{name}")(s)
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not hide the others
                s.error = f"{type(exc).__name__}: {exc}"
                log(f"{name}: FAILED: {s.error}")
                traceback.print_exc(file=sys.stderr)
                s.markdown = f"**ERROR: this measurement failed:** `{str(s.error).splitlines()[0][:300]}`"
            s.data["section_seconds"] = time.monotonic() - t0
            log(f"{name}: done in {s.data['section_seconds']:.0f} s")
            sections.append(s)
        return sections

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()


def reconnected_at(log_path: Path, since: float) -> float | None:
    """Wall time of the agent's first `connected to` log line at or after `since` (its log has ms)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if "fte.link: connected to" not in line:
            continue
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if stamp >= since - 0.001:
            return stamp
    return None


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


# ------------------------------------------------------------------------------------ report


def render(cfg: Config, sections: list[Section], info: dict[str, str], command: str, started: datetime,
           elapsed: float, chart: str | None) -> str:
    out = [
        f"_Measured {started.strftime('%Y-%m-%d %H:%M')} UTC by `{command}` in {elapsed / 60:.1f} min: "
        f"{'median of ' + str(cfg.runs) + ' runs' if cfg.runs > 1 else '1 run (no median)'} per number"
        f"{' (--quick: small sizes)' if cfg.quick else ''}._",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, Linux {info['kernel']}, "
        f"Python {info['python']}, mosquitto {info['mosquitto']}, rsync {info['rsync']}; "
        f"load average (1/5/15 min) {info['load']} at the start, {info.get('load_end', '?')} at the end; "
        f"code at {info['commit']}. "
        f"Defaults measured: agentChunkSize {human_bytes(cfg.chunk)}, agentWindowSize {cfg.window}. "
        f"MB = 10⁶ bytes.",
    ]
    out += ["", targets(cfg, {s.name: s for s in sections})]
    for s in sections:
        out += ["", f"### {s.title}", "", s.markdown]
        if s.name == "sweep" and chart and not s.error:
            out += ["", chart]
    return "\n".join(out) + "\n"


def targets(cfg: Config, by: dict[str, Section]) -> str:
    """The targets of issue 6 against this run: ratios, measured in the same run."""
    def got(name: str) -> dict[str, Any] | None:
        sec = by.get(name)
        return None if sec is None or sec.error else sec.data

    rows = []
    big = got("big")
    if big:
        r = big["mbps"]
        for label, base, goal in (("`cp`", "cp", 0.8), ("the raw broker ceiling (QoS 1)", "raw1", 0.9)):
            v = ratio(r["project"], r[base])
            rows.append([f"{human_bytes(cfg.big)} via Mosquitto ≥ {goal}× {label}", fmt_ratio(v),
                         "n/a" if v is None else ("met" if v >= goal else "**not met**")])
    small = got("small")
    if small:
        v = ratio(small["project"], small["rsync"])
        rows.append([f"{cfg.small_count:,} small files in ≤ 2× the time of `rsync -a`", f"**{fmt(v, 1)}×** the time",
                     "n/a" if v is None else ("met" if v <= 2 else "**not met**")])
    rss = got("rss")
    if rss:
        peak = max(rss["big"].values())
        rows.append([f"peak RSS ≤ 100 MiB per agent ({human_bytes(cfg.big)} transfer)", f"**{fmt(peak / MiB, 1)} MiB**",
                     "met" if peak <= 100 * MiB else "**not met**"])
    if not rows:
        return ""
    return "\n".join(["#### Targets (issue 6), measured in this run", "",
                      table(["target", "this run", ""], rows)])


def draw_chart(cfg: Config, grid: dict[tuple[int, int], dict[str, float | None]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    xs = [c // KiB for c in cfg.chunks]
    for i, w in enumerate(cfg.windows):
        color = f"C{i}"
        ax.plot(xs, [grid[(c, w)]["project"] for c in cfg.chunks], "o-", color=color, label=f"mqtt-fte, window {w}")
        ax.plot(xs, [grid[(c, w)]["raw1"] for c in cfg.chunks], "x--", color=color, alpha=0.6,
                label=f"raw MQTT QoS 1, window {w}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [human_bytes(c) for c in cfg.chunks])
    ax.set_xlabel("agentChunkSize (message size)")
    ax.set_ylabel("MB/s")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_title(f"{human_bytes(cfg.sweep_size)} through Mosquitto on {os.cpu_count()} CPUs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_doc(block: str) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
    else:
        head = text or "# Performance\n\n"
        tail = "\n"
        head = head.rstrip("\n") + "\n\n## Results\n\n"
    DOC.write_text(f"{head}{START}\n{block}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py", description="mqtt-fte against its baselines, in one run.")
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 run: a smoke test (< 1 min)")
    ap.add_argument("--runs", type=int, default=None, help="runs per measurement, medians reported (default 3; "
                                                           "--quick: 1)")
    ap.add_argument("--size-mib", type=int, default=None, help="size of the big file in MiB (default 1024; "
                                                               "--quick: 8)")
    ap.add_argument("--no-write", action="store_true", help="print the tables; do not write docs/")
    ap.add_argument("--only", default=None, help=f"comma-separated sections ({','.join(SECTIONS)}); implies "
                                                 "--no-write")
    ap.add_argument("--small-count", type=int, default=None, help="files of the small-files section (default "
                                                                  "10,000; --quick: 200)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new one in $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = ap.parse_args(argv)
    if a.runs is not None and a.runs < 1:
        ap.error("--runs must be at least 1")
    if a.only:
        wanted = tuple(x.strip() for x in a.only.split(",") if x.strip())
        unknown = [x for x in wanted if x not in SECTIONS]
        if unknown:
            ap.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
        a.sections, write = wanted, False
    else:
        a.sections, write = SECTIONS, not a.no_write
    if find_mosquitto() is None:
        print("bench/run.py: mosquitto is not installed (apt install mosquitto)", file=sys.stderr)
        return 1
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="fte-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = Config.from_args(a, workdir)
    if a.small_count:
        cfg.small_count = a.small_count
    command = "python bench/run.py" + "".join(" " + shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    info = machine_info()
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    log(f"scratch directory {workdir}; sections {', '.join(cfg.sections)}; runs {cfg.runs}")
    bench = Bench(cfg)
    try:
        sections = bench.run()
    finally:
        bench.close()
        if not a.keep and a.workdir is None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - t0
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    chart: str | None = None
    sweep = next((s for s in sections if s.name == "sweep" and not s.error), None)
    if sweep is not None:
        if not write:
            chart = "_(No chart with --no-write.)_"
        elif draw_chart(cfg, sweep.data["chart_grid"], CHART):
            chart = f"![throughput against chunk size and window]({CHART.name})"
        else:
            chart = "_(No chart: matplotlib is not installed; `pip install -e '.[bench]'`.)_"
    block = render(cfg, sections, info, command, started, elapsed, chart)
    print(block)
    if write:
        write_doc(block)
        log(f"wrote {DOC}" + (f" and {CHART}" if chart and "![" in chart else ""))
    failed = [s.name for s in sections if s.error]
    if failed:
        log(f"FAILED sections: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
