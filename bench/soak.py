"""The soak: many agents, many transfers in waves, through one broker; every transfer checked.

    python bench/soak.py                        # 20 agents, 1,000 transfers in 10 waves, Mosquitto and NATS;
                                                #   writes the Soak section of docs/performance.md
    python bench/soak.py --quick                # 4 agents, 40 transfers in 4 waves, both brokers, print only
    python bench/soak.py --broker mosquitto     # one broker (mosquitto, nats-cluster, nats)
    python bench/soak.py --agents 4 --transfers 20 --waves 2 --no-write
    python bench/soak.py --limits               # step up agents per broker and transfers per agent

Not a timed test: it reports what it measured and fails (exit 1) only when a transfer did not arrive
intact, a `completed` event was missing or came twice, or a part file was left behind.

Everything is a real process, started by the harness's helpers (bench/harness.py, tests/support):

* the broker: Mosquitto with config/mosquitto.conf as shipped (only its listener moved to a free port, plus
  `user` and a log file: `StockMosquitto`); or a 3-node NATS cluster (tests/support/nats_cluster.py) with an
  MQTT listener per node, the agents spread over the nodes; or one nats-server (`NatsMqttProcess`);
* the agents: `fte-start-agent NAME -F` in one FTE_CONFIG_HOME (`tests.support.agents.FteEnv`), all
  with one sandbox;
* each wave: one bench/submit.py process sends the wave's `create_transfer` requests (random source and
  destination agents, a mix of small files and a few MiB) and waits for their `completed` events;
* a separate MQTT subscriber on `<prefix>/Log/#` for the whole soak counts the `completed` events of each
  transfer (exactly one each, checked after the last wave and a short settle);
* a sampler reads VmRSS and the open descriptors of every agent and broker process twice a second; at the
  end VmHWM (peak RSS) of each from /proc/<pid>/status, and the CPU seconds each used.

`run_soak(SoakConfig(...))` is the function (tests/integration/test_soak_smoke.py runs it at tiny scale).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (MB, KiB, MiB, ROOT, BenchError, cpu_seconds, file_transfer, fmt,  # noqa: E402
                           machine_info, make_random_file, proc_status, remove, run_submit, sha256_file, table)
from tests.support.agents import AgentProcess, FteEnv  # noqa: E402
from tests.support.brokers import BrokerProcess, MosquittoProcess  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
BROKERS = ("mosquitto", "nats-cluster", "nats")
NATS_PREFIX = "SYSTEM_FTE"  # NATS 2.9 refuses a '.' in an MQTT topic (docs/brokers.md)

# (size, weight): mostly small files, some of 256 KiB - 1 MiB, a few of a few MiB
SIZE_MIX: tuple[tuple[int, float], ...] = (
    (1 * KiB, 0.15), (4 * KiB, 0.20), (16 * KiB, 0.15), (64 * KiB, 0.10),
    (256 * KiB, 0.15), (1 * MiB, 0.15), (2 * MiB, 0.06), (4 * MiB, 0.04),
)
FILES_PER_SIZE = 3  # distinct random files of each size in the source pool


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ brokers


class StockMosquitto(MosquittoProcess):
    """Mosquitto with config/mosquitto.conf as users run it: only the `listener` line moves to a private port;
    `user` (mosquitto, started as root, would switch to user `mosquitto`) and a log file are added."""

    def config_text(self) -> str:
        lines = []
        for line in (ROOT / "config" / "mosquitto.conf").read_text().splitlines():
            if line.strip().startswith("listener "):
                line = f"listener {self.port} {self.host}"
            lines.append(line)
        lines += ["", "# added by bench/soak.py", f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                  f"log_dest file {self.log_path}", "log_timestamp true"]
        return "\n".join(lines) + "\n"


@dataclass
class Brokers:
    """The broker(s) of one soak: the MQTT URL each agent uses (round robin), their processes, a label."""

    kind: str
    label: str
    urls: list[str]
    processes: list[BrokerProcess]
    close: Callable[[], None]
    prefix: str = "SYSTEM.FTE"
    note: str = ""

    def pids(self) -> dict[str, int]:
        return {f"broker{i + 1}" if len(self.processes) > 1 else "broker": p.pid
                for i, p in enumerate(self.processes) if p.pid}


def start_brokers(kind: str, workdir: Path) -> Brokers:
    if kind == "mosquitto":
        b = StockMosquitto(workdir=workdir / "mosquitto")
        b.start()
        return Brokers(kind, "Mosquitto, config/mosquitto.conf", [b.url], [b], b.close)
    from tests.support.more_brokers import NatsMqttProcess, nats_version

    version = nats_version() or "?"
    if kind == "nats-cluster":
        try:
            from tests.support import nats_cluster
        except ImportError:  # an older tree without it
            nats_cluster = None  # type: ignore[assignment]
        if nats_cluster is not None:
            cluster = nats_cluster.NatsCluster(workdir=workdir / "nats-cluster")
            cluster.start()
            nodes = list(cluster.nodes)
            return Brokers(kind, f"NATS {version}, 3-node cluster (JetStream, MQTT on each node)",
                           [n.url for n in nodes], nodes, cluster.close, prefix=nats_cluster.CLUSTER_PREFIX)
        note = "tests/support/nats_cluster.py is not on this branch: one nats-server instead of the cluster"
        log(note)
    else:
        note = ""
    b = NatsMqttProcess(workdir=workdir / "nats")
    b.start()
    return Brokers("nats", f"NATS {version}, one node (JetStream, MQTT listener)", [b.url], [b], b.close,
                   prefix=NATS_PREFIX, note=note)


# ------------------------------------------------------------------------------------------ counting events


class EventCounter:
    """A real MQTT subscriber on `<prefix>/Log/#` for the whole soak, in a thread of its own: how many
    `completed` events each transfer had (bench/submit.py's Watcher, which counts them)."""

    def __init__(self, url: str, prefix: str) -> None:
        from bench.submit import Watcher

        self.watcher = Watcher(url, f"{prefix}/Log/#")
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="soak-events", daemon=True)
        self.last_event = time.monotonic()

    def _main(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            task = asyncio.create_task(self.watcher.run())
            await asyncio.wait_for(self.watcher.subscribed.wait(), 30)
            await self.watcher.prove()
            self._ready.set()
            while not self._stop.is_set():
                self.watcher.changed.clear()
                waiter = asyncio.create_task(self.watcher.changed.wait())
                stopper = asyncio.create_task(self._stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                self.last_event = time.monotonic()
            task.cancel()
            try:
                await task  # the MQTT connection closed inside the loop, before it ends
            except asyncio.CancelledError:
                pass

        try:
            self._loop.run_until_complete(main())
        finally:
            self._ready.set()

    def start(self) -> "EventCounter":
        self._thread.start()
        if not self._ready.wait(40) or not self.watcher.subscribed.is_set():
            raise BenchError("the event counter did not subscribe within 30 s")
        return self

    def counts(self) -> dict[str, int]:
        return dict(self.watcher.completed)

    def settle(self, wanted: set[str], quiet: float, timeout: float) -> None:
        """Until every wanted transfer has its event, then `quiet` seconds without a new one (a duplicate
        published late, e.g. by an outbox after a reconnection, would arrive then); bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted <= set(self.counts()) and time.monotonic() - self.last_event >= quiet:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


# ------------------------------------------------------------------------------------------ sampling


class Sampler:
    """VmRSS and open descriptors of named processes, every `interval` seconds, in a thread; the maxima."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self.max_rss: dict[str, int] = {}
        self.max_fds: dict[str, int] = {}
        self.load_max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    rss = proc_status(pid).get("VmRSS", 0)
                    fds = len(os.listdir(f"/proc/{pid}/fd"))
                except OSError:
                    continue
                self.max_rss[name] = max(self.max_rss.get(name, 0), rss)
                self.max_fds[name] = max(self.max_fds.get(name, 0), fds)
            self.load_max = max(self.load_max, os.getloadavg()[0])
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def fd_limit(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


# ------------------------------------------------------------------------------------------ the soak


@dataclass
class SoakConfig:
    agents: int = 20
    transfers: int = 1000
    waves: int = 10
    broker: str = "mosquitto"
    workdir: Path | None = None  # None: a new directory in $TMPDIR, removed at the end
    seed: int = 16
    sizes: tuple[tuple[int, float], ...] = SIZE_MIX
    properties: dict[str, Any] = field(default_factory=dict)  # extra agent.properties of every agent
    wave_timeout: float = 900.0
    settle: float = 2.0  # quiet seconds after the last event before the counts are final
    refusals_ok: bool = False  # --limits: a refused request is an outcome, not a failure
    pairs: tuple[tuple[int, int], ...] | None = None  # fixed (source, destination) indexes instead of random
    idle: float = 0.0  # seconds to measure the agents' CPU while idle, before the first wave


@dataclass
class SoakResult:
    cfg: SoakConfig
    broker_label: str = ""
    broker_note: str = ""
    transfers: list[dict[str, Any]] = field(default_factory=list)
    waves: list[dict[str, Any]] = field(default_factory=list)
    intact: int = 0
    damaged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    not_completed: list[str] = field(default_factory=list)
    completed_counts: dict[str, int] = field(default_factory=dict)
    part_files: list[str] = field(default_factory=list)
    wall: float = 0.0  # first request of the first wave to the last `completed` event of the last
    start_seconds: float = 0.0  # creating and starting the agents
    bytes: int = 0
    agent_hwm: dict[str, int] = field(default_factory=dict)
    agent_fds: dict[str, int] = field(default_factory=dict)
    agent_fd_limit: int | None = None
    broker_hwm: dict[str, int] = field(default_factory=dict)
    broker_rss_max: dict[str, int] = field(default_factory=dict)
    broker_fds: dict[str, int] = field(default_factory=dict)
    cpu_agents: float = 0.0
    cpu_brokers: float = 0.0
    cpu_idle_agents: float | None = None  # CPU seconds of all agents over cfg.idle seconds before the waves
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_max: float = 0.0
    errors: list[str] = field(default_factory=list)

    # -- verdicts --

    def exactly_once(self) -> int:
        return sum(1 for t in self.transfers if self.completed_counts.get(t["transfer_id"]) == 1)

    def duplicates(self) -> list[str]:
        return [tid for tid, n in self.completed_counts.items() if n > 1]

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [t for t in self.transfers if "refused" not in t]

    @property
    def ok(self) -> bool:
        n = len(self.accepted)
        return (not self.errors and not self.damaged and not self.not_completed and not self.part_files
                and self.intact == n and self.exactly_once() == n and not self.duplicates()
                and (self.cfg.refusals_ok or not self.refused))

    @property
    def wave_seconds(self) -> float:
        """The waves' own time, summed (each: its first request → its last `completed`); the wall time
        also holds the checks of each wave's files between waves."""
        return sum(w["seconds"] for w in self.waves)

    def rate(self) -> float | None:
        """Transfers per second of the waves' own time."""
        return len(self.accepted) / self.wave_seconds if self.wave_seconds > 0 else None

    def latencies(self, key: str = "seconds") -> list[float]:
        return sorted(t[key] for t in self.accepted if isinstance(t.get(key), (int, float)))


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Soak:
    def __init__(self, cfg: SoakConfig, brokers: Brokers, workdir: Path) -> None:
        self.cfg = cfg
        self.brokers = brokers
        self.w = workdir
        self.data = workdir / "data"  # the agents' sandbox (one for all)
        self.rng = random.Random(cfg.seed)
        self.names = [f"A{i + 1:02d}" for i in range(cfg.agents)]  # no '.', as NATS needs
        self.envs: list[FteEnv] = []
        self.agents: list[AgentProcess] = []
        self.pool: dict[int, list[tuple[Path, str]]] = {}

    # -- setup --

    def env_vars(self) -> dict[str, str]:
        env = dict(self.envs[0].env)
        if self.brokers.prefix != "SYSTEM.FTE":
            env["FTE_TOPIC_PREFIX"] = self.brokers.prefix
        return env

    def make_pool(self) -> None:
        for size, _ in self.cfg.sizes:
            self.pool[size] = []
            for k in range(FILES_PER_SIZE):
                p = self.data / "src" / f"s{size}-{k}.bin"
                self.pool[size].append((p, make_random_file(p, size)))

    def start_agents(self) -> None:
        home = self.w / "home"
        remove(home)
        props = dict(self.cfg.properties)
        if self.brokers.prefix != "SYSTEM.FTE":
            props.setdefault("topicPrefix", self.brokers.prefix)
        # one FteEnv per broker node, all with the same home: agent i connects to node i mod nodes.
        # The first agent alone (concurrent fte-create-agent in a fresh home race on the user's signing key:
        # harness.Pair), the others four at a time once the key exists
        self.envs = [FteEnv(home, url) for url in self.brokers.urls]

        def create(i: int) -> None:
            self.envs[i % len(self.envs)].create_agent(self.names[i], sandbox=self.data, **props)

        create(0)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, range(1, len(self.names))))
        for i, name in enumerate(self.names):
            self.agents.append(self.envs[i % len(self.envs)].start_agent(name, wait_ready=False))
        for i, a in enumerate(self.agents):
            self.envs[i % len(self.envs)].wait_status(a.name, {"READY", "ACTIVE"}, timeout=180, pid=a.pid,
                                                      process=a)

    def stop_agents(self) -> None:
        for a in self.agents:  # all at once, then each waited for (FteEnv.stop_all waits one by one)
            if a.alive():
                a.proc.send_signal(signal.SIGTERM)
        for env in self.envs:
            env.stop_all()

    # -- waves --

    def plan(self) -> list[list[dict[str, Any]]]:
        sizes, weights = zip(*self.cfg.sizes)
        waves: list[list[dict[str, Any]]] = []
        per = [self.cfg.transfers // self.cfg.waves + (1 if i < self.cfg.transfers % self.cfg.waves else 0)
               for i in range(self.cfg.waves)]
        n = 0
        for w, count in enumerate(per):
            wave = []
            for _ in range(count):
                if self.cfg.pairs:
                    s, d = self.cfg.pairs[n % len(self.cfg.pairs)]
                else:
                    s, d = self.rng.sample(range(len(self.names)), 2)
                size = self.rng.choices(sizes, weights)[0]
                src, digest = self.rng.choice(self.pool[size])
                dst = self.data / "out" / self.names[d] / f"w{w:02d}" / f"t{n:05d}-{src.name}"
                t = file_transfer(src, dst)
                t.update(source_agent=self.names[s], destination_agent=self.names[d])
                wave.append({"spec": t, "digest": digest, "dst": dst, "size": size})
                n += 1
            waves.append(wave)
        return waves

    def run_wave(self, w: int, wave: list[dict[str, Any]], res: SoakResult) -> None:
        request = {"broker": self.brokers.urls[0], "source_agent": self.names[0],
                   "destination_agent": self.names[1], "transfers": [t["spec"] for t in wave],
                   "timeout": self.cfg.wave_timeout, "refusals_ok": self.cfg.refusals_ok}
        t0 = time.time()
        out = run_submit(request, self.env_vars())
        ended = [t["completed_at"] for t in out["transfers"] if t.get("completed_at")]
        wave_bytes = 0
        for planned, got in zip(wave, out["transfers"]):
            got.update(size=planned["size"], dst=str(planned["dst"]))
            res.transfers.append(got)
            tid = got["transfer_id"]
            if "refused" in got:
                res.refused.append(f"{tid[:12]}: {got['refused']}")
                continue
            if got.get("result_code") != 0:
                res.not_completed.append(f"{tid[:12]} {got.get('state')} ({got.get('result_code')}): "
                                         f"{got.get('message')}")
                continue
            dst = planned["dst"]
            if dst.is_file() and sha256_file(dst) == planned["digest"]:
                res.intact += 1
                wave_bytes += planned["size"]
            else:
                res.damaged.append(f"{tid[:12]} {dst}")
        res.bytes += wave_bytes
        first = out["submitted_at"]
        last = max(ended) if ended else time.time()
        accept = sorted(t["accepted_at"] - t["submitted_at"] for t in out["transfers"] if t.get("accepted_at"))
        res.waves.append({"wave": w + 1, "transfers": len(wave), "seconds": last - first, "started": t0,
                          "first": first, "last": last, "bytes": wave_bytes,
                          "accept_median": _percentile(accept, 0.5), "accept_max": accept[-1] if accept else None})
        log(f"{self.brokers.kind}: wave {w + 1}/{len(self.plan_waves)}: {len(wave)} transfers in {last - first:.1f} s"
            f" ({len(res.damaged)} damaged, {len(res.not_completed)} not completed, {len(res.refused)} refused so far)")

    def run(self) -> SoakResult:
        cfg = self.cfg
        res = SoakResult(cfg, self.brokers.label, self.brokers.note)
        res.load_start = os.getloadavg()
        self.data.mkdir(parents=True, exist_ok=True)
        self.make_pool()
        t0 = time.monotonic()
        log(f"{self.brokers.kind}: creating and starting {cfg.agents} agents")
        try:
            self.start_agents()
            res.start_seconds = time.monotonic() - t0
            log(f"{self.brokers.kind}: {cfg.agents} agents ready in {res.start_seconds:.1f} s")
            agent_pids = {a.name: a.pid for a in self.agents}
            broker_pids = self.brokers.pids()
            res.agent_fd_limit = fd_limit(self.agents[0].pid)
            if cfg.idle > 0:
                before = [cpu_seconds(p) or 0.0 for p in agent_pids.values()]
                time.sleep(cfg.idle)  # measuring idle CPU is waiting on purpose
                res.cpu_idle_agents = sum((cpu_seconds(p) or 0.0) - b for p, b in zip(agent_pids.values(), before))
            counter = EventCounter(self.brokers.urls[-1], self.brokers.prefix).start()
            try:
                self.plan_waves = self.plan()
                cpu0 = {k: cpu_seconds(p) or 0.0 for k, p in {**agent_pids, **broker_pids}.items()}
                with Sampler({**agent_pids, **broker_pids}) as sampler:
                    for w, wave in enumerate(self.plan_waves):
                        try:
                            self.run_wave(w, wave, res)
                        except BenchError as exc:
                            res.errors.append(f"wave {w + 1}: {exc}")
                            log(f"wave {w + 1} failed: {exc}")
                            break
                    wanted = {t["transfer_id"] for t in res.accepted if t.get("result_code") == 0}
                    counter.settle(wanted, quiet=cfg.settle, timeout=60)
                cpu1 = {k: cpu_seconds(p) or 0.0 for k, p in {**agent_pids, **broker_pids}.items()}
                res.completed_counts = counter.counts()
            finally:
                counter.stop()
            res.cpu_agents = sum(cpu1[k] - cpu0[k] for k in agent_pids)
            res.cpu_brokers = sum(cpu1[k] - cpu0[k] for k in broker_pids)
            res.load_max = sampler.load_max
            res.agent_fds = {k: v for k, v in sampler.max_fds.items() if k in agent_pids}
            res.broker_fds = {k: v for k, v in sampler.max_fds.items() if k in broker_pids}
            res.broker_rss_max = {k: v for k, v in sampler.max_rss.items() if k in broker_pids}
            if res.waves:
                res.wall = max(w["last"] for w in res.waves) - res.waves[0]["first"]
            for a in self.agents:
                if a.alive():
                    res.agent_hwm[a.name] = proc_status(a.pid)["VmHWM"]
                else:
                    res.errors.append(f"agent {a.name} exited ({a.proc.returncode}): {a.log_tail(5)}")
            for k, pid in broker_pids.items():
                try:
                    res.broker_hwm[k] = proc_status(pid)["VmHWM"]
                except OSError:
                    res.errors.append(f"{k} (pid {pid}) is gone")
        finally:
            self.stop_agents()
        res.part_files = [str(p.relative_to(self.data)) for p in self.data.rglob("*.part")]
        res.load_end = os.getloadavg()
        return res


def run_soak(cfg: SoakConfig) -> SoakResult:
    """One soak through one broker (started and stopped here): every transfer checked, see the module."""
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="fte-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    brokers = start_brokers(cfg.broker, workdir)
    # FteEnv.status (waiting for the agents) reads its statuses in this process, under FTE_TOPIC_PREFIX
    saved = os.environ.get("FTE_TOPIC_PREFIX")
    os.environ["FTE_TOPIC_PREFIX"] = brokers.prefix
    try:
        return Soak(cfg, brokers, workdir).run()
    finally:
        if saved is None:
            os.environ.pop("FTE_TOPIC_PREFIX", None)
        else:
            os.environ["FTE_TOPIC_PREFIX"] = saved
        brokers.close()
        if cfg.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ reporting


def mib(n: int | None) -> str:
    return fmt(None if n is None else n / MiB, 1)


def summary_rows(r: SoakResult) -> list[list[str]]:
    lat = r.latencies()
    hwm = sorted(r.agent_hwm.values())
    n = len(r.accepted)
    dup = r.duplicates()
    rows = [
        ["agents · transfers · waves", f"{r.cfg.agents} · {len(r.transfers)} · {len(r.waves)}"],
        ["data moved (verified)", f"{r.bytes / MB:,.1f} MB in {r.intact:,} files"],
        ["**intact** (sha256 of each destination file = its source)", f"**{r.intact:,} of {n:,}**"
         + (f"; damaged: {len(r.damaged)}" if r.damaged else "")],
        ["**exactly one `completed` event** (subscriber on `<prefix>/Log/#`)", f"**{r.exactly_once():,} of {n:,}**"
         + (f"; {len(dup)} twice or more" if dup else "")],
        ["part files left in the sandbox", f"{len(r.part_files)}"],
        ["refused / not completed", f"{len(r.refused)} / {len(r.not_completed)}"],
        ["agents created and started (s)", fmt(r.start_seconds, 1)],
        ["**wall time** (first request → last `completed`; with the digest checks between waves, s)",
         f"**{fmt(r.wall, 1)}**"],
        ["time in waves (each: first request → last `completed`; summed, s)", fmt(r.wave_seconds, 1)],
        ["**transfers/s** (of the time in waves)", f"**{fmt(r.rate(), 1)}**"],
        ["MB/s (of the time in waves)", fmt(r.bytes / MB / r.wave_seconds if r.wave_seconds else None, 1)],
        ["transfer time, request → `completed` (s): median · p95 · max",
         f"{fmt(_percentile(lat, 0.5), 2)} · {fmt(_percentile(lat, 0.95), 2)} · {fmt(lat[-1] if lat else None, 2)}"],
        ["request → accepted reply (s): median · max (the source's command path under load)",
         f"{fmt(_percentile(sorted(w['accept_median'] for w in r.waves if w['accept_median'] is not None), 0.5), 3)}"
         f" · {fmt(max((w['accept_max'] for w in r.waves if w['accept_max'] is not None), default=None), 2)}"],
        ["**agents' peak RSS** (VmHWM, MiB): min · median · max",
         f"**{mib(hwm[0] if hwm else None)} · {mib(int(statistics.median(hwm)) if hwm else None)} · "
         f"{mib(hwm[-1] if hwm else None)}**"],
        ["agents' peak RSS, sum (MiB)", mib(sum(hwm))],
        ["**broker peak RSS** (VmHWM, MiB)", "**" + " · ".join(f"{mib(v)}" for v in r.broker_hwm.values()) + "**"
         + (f" ({', '.join(r.broker_hwm)})" if len(r.broker_hwm) > 1 else "")],
        ["CPU seconds during the waves: all agents · broker(s)",
         f"{fmt(r.cpu_agents, 1)} · {fmt(r.cpu_brokers, 1)} (of {fmt(r.wall * (os.cpu_count() or 1), 0)} "
         f"on {os.cpu_count()} CPUs)"],
        ["open descriptors, peak: an agent's max · broker(s)",
         f"{max(r.agent_fds.values(), default=0)} (limit {r.agent_fd_limit}) · "
         + " · ".join(str(v) for v in r.broker_fds.values())],
        ["load average (1 min) at the start · max · end", f"{r.load_start[0]:.2f} · {r.load_max:.2f} · {r.load_end[0]:.2f}"],
    ]
    return rows


def render_result(r: SoakResult, when: datetime, command: str, info: dict[str, str]) -> str:
    out = [f"#### {r.broker_label}", "",
           f"_Measured {when:%Y-%m-%d %H:%M} UTC by `{command}`, code at {info['commit']}; "
           f"**on a loaded, shared machine** ({info['nproc']} CPUs, {info['cpu']}; other sessions' tests "
           f"ran beside it): load average (1/5/15 min) {' '.join(f'{x:.2f}' for x in r.load_start)} at the "
           f"start, {' '.join(f'{x:.2f}' for x in r.load_end)} at the end. Rerun on a quiet machine to compare._",
           ""]
    if r.broker_note:
        out += [f"**Note:** {r.broker_note}.", ""]
    out += [table(["soak", "value"], summary_rows(r)), ""]
    waves = [[str(w["wave"]), str(w["transfers"]), fmt(w["seconds"], 1),
              fmt(w["transfers"] / w["seconds"] if w["seconds"] else None, 1), fmt(w["bytes"] / MB, 1)]
             for w in r.waves]
    out += ["Waves: " + "; ".join(f"{w[0]}: {w[2]} s ({w[3]}/s)" for w in waves) + ".", ""]
    problems = (r.errors + [f"damaged: {d}" for d in r.damaged[:5]] + [f"not completed: {d}" for d in r.not_completed[:5]]
                + [f"refused: {d}" for d in r.refused[:5]] + [f"part file left: {p}" for p in r.part_files[:5]]
                + [f"{tid[:12]}: {r.completed_counts[tid]} `completed` events" for tid in r.duplicates()[:5]])
    if problems:
        out += ["Problems:", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(out)


def write_block(name: str, text: str) -> None:
    """Replace what is between `<!-- soak:NAME:start -->` and `<!-- soak:NAME:end -->` in docs/performance.md
    (the rest of the file is left as it is); a missing block is added at the end of the Soak section, or of
    the file under a new "## Soak" heading."""
    start, end = f"<!-- soak:{name}:start -->", f"<!-- soak:{name}:end -->"
    doc = DOC.read_text()
    if start in doc and end in doc:
        head, rest = doc.split(start, 1)
        _, tail = rest.split(end, 1)
        DOC.write_text(f"{head}{start}\n{text.rstrip()}\n{end}{tail}")
        return
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    if "<!-- soak:end -->" in doc:
        doc = doc.replace("<!-- soak:end -->", block + "<!-- soak:end -->", 1)
    else:
        doc = doc.rstrip("\n") + "\n\n## Soak\n\n<!-- soak:start -->\n" + block + "<!-- soak:end -->\n"
    DOC.write_text(doc)


# ------------------------------------------------------------------------------------------ limits


def run_limits(args: argparse.Namespace, command: str, info: dict[str, str]) -> tuple[str, bool]:
    """Step up agents per broker (same work, more agents) and concurrent transfers per agent (two agents,
    limits raised, one wave of N small files), and report where it bends first."""
    when = datetime.now(timezone.utc)
    agent_steps = [int(x) for x in args.agent_steps.split(",")]
    # "N": limits raised to N; "Nd": the default limits (maxSourceTransfers 25 + maxQueuedTransfers 1000)
    conc_steps = [(int(x.rstrip("d")), x.endswith("d")) for x in args.concurrency_steps.split(",") if x]
    ok = True
    rows_a = []
    for n in agent_steps:
        log(f"limits: {n} agents on Mosquitto, {args.limit_transfers} transfers in 2 waves")
        r = run_soak(SoakConfig(agents=n, transfers=args.limit_transfers, waves=2, broker="mosquitto",
                                idle=10.0, settle=1.0))
        ok &= r.ok
        hwm = sorted(r.agent_hwm.values())
        lat = r.latencies()
        rows_a.append([str(n), "yes" if r.ok else "**no**", fmt(r.start_seconds, 0),
                       fmt(r.cpu_idle_agents / 10.0 * 100 if r.cpu_idle_agents is not None else None, 0) + " %",
                       fmt(r.rate(), 1), fmt(_percentile(lat, 0.5), 2), fmt(lat[-1] if lat else None, 2),
                       fmt(r.cpu_agents, 0) + " · " + fmt(r.cpu_brokers, 1),
                       fmt(r.cpu_agents / r.wave_seconds * 100 if r.wave_seconds else None, 0) + " %",
                       mib(int(statistics.median(hwm)) if hwm else None) + " · " + fmt(sum(hwm) / (1 << 30), 2),
                       mib(max(r.broker_hwm.values(), default=None)), f"{r.load_start[0]:.1f} → {r.load_max:.1f}"])
    rows_c = []
    for c, defaults in conc_steps:
        props = {} if defaults else {"maxSourceTransfers": c, "maxDestinationTransfers": c}
        log(f"limits: 2 agents, {c} concurrent transfers A01 → A02 "
            f"({'default limits' if defaults else f'limits raised to {c}'})")
        r = run_soak(SoakConfig(agents=2, transfers=c, waves=1, broker="mosquitto", pairs=((0, 1),),
                                sizes=((16 * KiB, 1.0),), properties=props, settle=1.0, refusals_ok=True))
        ok &= r.ok
        lat = r.latencies()
        hwm = r.agent_hwm
        acc = [t["accepted_at"] - t["submitted_at"] for t in r.accepted if t.get("accepted_at")]
        rows_c.append([f"{c} (default limits)" if defaults else str(c), "yes" if r.ok else "**no**", str(len(r.refused)), fmt(r.rate(), 1),
                       fmt(_percentile(lat, 0.5), 2), fmt(lat[-1] if lat else None, 2),
                       fmt(max(acc) if acc else None, 2),
                       f"{mib(hwm.get('A01'))} · {mib(hwm.get('A02'))}",
                       f"{r.agent_fds.get('A01', 0)} · {r.agent_fds.get('A02', 0)} (limit {r.agent_fd_limit})",
                       fmt(r.cpu_agents, 1), f"{r.load_start[0]:.1f} → {r.load_max:.1f}"])
        if r.refused:
            rows_c[-1].append(r.refused[0][:80])
    out = [f"_Measured {when:%Y-%m-%d %H:%M} UTC by `{command}`, code at {info['commit']}, Mosquitto "
           f"(config/mosquitto.conf), **on a loaded, shared machine** ({info['nproc']} CPUs); load average at "
           f"each step in the last column._", "",
           f"Agents per broker: {args.limit_transfers} transfers (the soak's size mix) in 2 waves, random pairs; "
           "idle CPU over 10 s after all agents are ready, before the first wave.", "",
           table(["agents", "all intact, one `completed` each", "start (s)", "idle CPU, all agents (of one core)",
                  "transfers/s", "median transfer (s)", "slowest (s)", "CPU s: agents · broker",
                  "agents' CPU ÷ wall", "peak RSS median (MiB) · sum (GiB)", "broker peak RSS (MiB)", "load"], rows_a),
           "", "Concurrent transfers per agent: A01 → A02 only, `maxSourceTransfers` = `maxDestinationTransfers` = N "
           "(\"default limits\": 25 each, and `maxQueuedTransfers` 1000), N transfers of 16 KiB submitted at once "
           "(one wave).", "",
           table(["N", "all intact, one `completed` each", "refused", "transfers/s", "median transfer (s)",
                  "slowest (s)", "slowest accept (s)", "peak RSS A01 · A02 (MiB)", "peak fds A01 · A02",
                  "CPU s, both agents", "load"] + (["first refusal"] if any(len(r) > 11 for r in rows_c) else []),
                 rows_c)]
    return "\n".join(out) + "\n", ok


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 agents, 40 transfers in 4 waves, print only (~1-2 min)")
    ap.add_argument("--broker", default=None, help=f"comma-separated, of {', '.join(BROKERS)} "
                                                   "(default mosquitto,nats-cluster)")
    ap.add_argument("--agents", type=int, default=None, help="agents (default 20)")
    ap.add_argument("--transfers", type=int, default=None, help="transfers in all (default 1000)")
    ap.add_argument("--waves", type=int, default=None, help="waves, each submitted at once (default 10)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--limits", action="store_true", help="step up agents and concurrency (Mosquitto) instead")
    ap.add_argument("--agent-steps", default="20,40,80", help="--limits: agents per broker (default 20,40,80)")
    ap.add_argument("--concurrency-steps", default="25,100,400,1100d",
                    help="--limits: concurrent transfers per agent, limits raised to each; a trailing d: with "
                         "the default limits (default 25,100,400,1100d)")
    ap.add_argument("--limit-transfers", type=int, default=200, help="--limits: transfers per agent step")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (kept; default: a new one)")
    a = ap.parse_args(argv)
    write = not a.no_write and not a.quick
    command = "python bench/soak.py" + "".join(" " + x for x in (argv if argv is not None else sys.argv[1:]))
    info = machine_info()
    if a.limits:
        text, ok = run_limits(a, command, info)
        print(text)
        if write:
            write_block("limits", text)
            log(f"wrote the limits into {DOC}")
        return 0 if ok else 1
    kinds = [k.strip() for k in (a.broker or "mosquitto,nats-cluster").split(",") if k.strip()]
    bad = [k for k in kinds if k not in BROKERS]
    if bad:
        ap.error(f"unknown broker(s) {bad}; known: {', '.join(BROKERS)}")
    agents = a.agents or (4 if a.quick else 20)
    transfers = a.transfers or (40 if a.quick else 1000)
    waves = a.waves or (4 if a.quick else 10)
    if agents < 2 or transfers < 1 or not 1 <= waves <= transfers:
        ap.error("need at least 2 agents, 1 transfer, and 1 ≤ waves ≤ transfers")
    all_ok = True
    for kind in kinds:
        when = datetime.now(timezone.utc)
        r = run_soak(SoakConfig(agents=agents, transfers=transfers, waves=waves, broker=kind, seed=a.seed,
                                workdir=a.workdir / kind if a.workdir else None))
        text = render_result(r, when, command, machine_info())
        print(text)
        all_ok &= r.ok
        if write:
            write_block(kind, text)
            log(f"wrote {kind} into {DOC}")
        log(f"{kind}: {'OK' if r.ok else 'FAILED'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
