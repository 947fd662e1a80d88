"""Shared plumbing of the benchmark: brokers, agent pairs as real processes, process statistics, files.

Agents are started exactly as a user starts them (`fte-create-agent`, `fte-start-agent NAME -F`) through
`tests.support.agents.FteEnv`; brokers are `tests.support.brokers.MosquittoProcess` / `AmqttProcess` on free
ports. Transfers are submitted by `bench/submit.py` (one helper process per batch, see there).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.agents import AgentProcess, FteEnv  # noqa: E402
from tests.support.brokers import find_mosquitto  # noqa: E402

MB = 1_000_000  # throughput is in decimal MB/s, like cp/rsync/dd report it
MiB = 1 << 20
KiB = 1 << 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A measurement could not be made (the row says so; the run exits non-zero)."""


# ------------------------------------------------------------------------------------------ numbers


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def mbps(nbytes: int, seconds: float | None) -> float | None:
    if not seconds or seconds <= 0:
        return None
    return nbytes / seconds / MB


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v: float | None, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def fmt_ratio(v: float | None) -> str:
    return "n/a" if v is None else f"**{v:.2f}×**"


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ files


def make_random_file(path: Path, size: int) -> str:
    """Write `size` incompressible bytes; return their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    block = 4 * MiB
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            data = os.urandom(min(block, left))
            h.update(data)
            fh.write(data)
            left -= len(data)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def make_tree(root: Path, count: int, size: int, per_dir: int = 100) -> dict[str, str]:
    """`count` files of `size` random bytes in subdirectories of `per_dir` files; {relative path: sha256}."""
    digests = {}
    for i in range(count):
        rel = f"d{i // per_dir:04d}/f{i:06d}.bin"
        p = root / rel
        if i % per_dir == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        p.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def tree_matches(root: Path, digests: dict[str, str]) -> tuple[bool, str]:
    """Every file present with the right content, and nothing else."""
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    if found != set(digests):
        missing = len(set(digests) - found)
        extra = len(found - set(digests))
        return False, f"{missing} file(s) missing, {extra} unexpected"
    for rel, digest in digests.items():
        if hashlib.sha256((root / rel).read_bytes()).hexdigest() != digest:
            return False, f"{rel} differs"
    return True, "ok"


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def timed_command(cmd: list[str], timeout: float = 3600) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()[:300]}")
    return elapsed


# ------------------------------------------------------------------------------------------ processes


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process in bytes (from /proc/<pid>/status)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (its threads included)."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU seconds used by some processes between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.before: dict[str, float | None] = {}
        self.used: dict[str, float | None] = {}

    def start(self) -> "CpuMeter":
        self.before = {k: cpu_seconds(p) for k, p in self.pids.items()}
        return self

    def stop(self) -> dict[str, float | None]:
        for k, p in self.pids.items():
            a, b = self.before.get(k), cpu_seconds(p)
            self.used[k] = None if a is None or b is None else b - a
        return self.used


# ------------------------------------------------------------------------------------------ machine


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mosq = find_mosquitto()
    mosq_version = "not installed"
    if mosq:
        p = subprocess.run([mosq, "-h"], capture_output=True, text=True)
        first = (p.stdout or p.stderr).strip().splitlines()
        mosq_version = first[0].replace("mosquitto version ", "") if first else "unknown"
    rsync = shutil.which("rsync")
    rsync_version = "not installed"
    if rsync:
        p = subprocess.run([rsync, "--version"], capture_output=True, text=True)
        words = p.stdout.split()
        rsync_version = words[2] if len(words) > 2 and words[1] == "version" else "unknown"
    try:
        mem = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                   if l.startswith("MemTotal")) * 1024
        mem_text = f"{mem / (1 << 30):.0f} GiB"
    except (OSError, StopIteration):
        mem_text = "unknown"
    commit = "unknown"
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit = head + (" + uncommitted changes" if dirty else "") if head else "unknown"
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem_text,
        "python": platform.python_version(),
        "mosquitto": mosq_version,
        "rsync": rsync_version,
        "kernel": platform.release(),
        "commit": commit,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# ------------------------------------------------------------------------------------------ agents


_CREATED: dict[tuple[str, tuple[str, ...], str], Path] = {}  # (broker URL, names, sandbox) -> a home to copy


@dataclass
class Pair:
    """Two agents (`A1` source, `A2` destination) as `fte-start-agent NAME -F` processes on one broker."""

    home: Path
    broker_url: str
    sandbox: Path
    properties: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, str] = ("A1", "A2")
    env: FteEnv | None = None

    def start(self, timeout: float = 60) -> "Pair":
        remove(self.home)
        # a copy of the configuration fte-create-agent made for the first pair of these names on this broker
        # (agents, keys, trust: nothing in it names its directory), the properties of this pair added: two
        # command processes less for each pair (a quick run starts 13 pairs)
        shutil.copytree(self._created(), self.home, symlinks=True)
        self.env = FteEnv(self.home, self.broker_url)
        for n in self.names:
            with open(self.env.agent_dir(n) / "agent.properties", "a") as fh:
                fh.writelines(f"{k}={v}\n" for k, v in self.properties.items())
        agents = [self.env.start_agent(n, wait_ready=False) for n in self.names]
        for a in agents:
            self.env.wait_status(a.name, {"READY", "ACTIVE"}, timeout=timeout, pid=a.pid, process=a)
        return self

    def _created(self) -> Path:
        key = (self.broker_url, self.names, str(self.sandbox))
        made = _CREATED.get(key)
        if made is None or not made.is_dir():
            made = self.home.parent / f"created-{len(_CREATED)}-{'-'.join(self.names)}"
            remove(made)
            env = FteEnv(made, self.broker_url)
            # one after the other: concurrent fte-create-agent in a fresh FTE_CONFIG_HOME race on the user's
            # signing key (the loser reports "agent ... already exists"); the agents then start side by side
            for n in self.names:
                env.create_agent(n, sandbox=self.sandbox)
            _CREATED[key] = made
        return made

    @property
    def source(self) -> AgentProcess:
        assert self.env is not None
        return self.env.agents[self.names[0]]

    @property
    def destination(self) -> AgentProcess:
        assert self.env is not None
        return self.env.agents[self.names[1]]

    def peak_rss(self) -> dict[str, int]:
        return {a.name: proc_status(a.pid)["VmHWM"] for a in (self.source, self.destination)}

    def stop(self) -> None:
        if self.env is not None:
            self.env.stop_all()

    def __enter__(self) -> "Pair":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit(self, transfers: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
        """Submit transfers (all at once) and wait for their `completed` events: see bench/submit.py."""
        assert self.env is not None
        request = {"broker": self.broker_url, "source_agent": self.names[0], "destination_agent": self.names[1],
                   "transfers": transfers, "timeout": timeout}
        try:
            return run_submit(request, self.env.env)
        except BenchError as exc:
            raise BenchError(f"{exc}\nA1 log:\n{self.source.log_tail(15)}\n"
                             f"A2 log:\n{self.destination.log_tail(15)}") from None

    def submit_async(self, transfers: list[dict[str, Any]], timeout: float) -> subprocess.Popen[str]:
        assert self.env is not None
        request = {"broker": self.broker_url, "source_agent": self.names[0], "destination_agent": self.names[1],
                   "transfers": transfers, "timeout": timeout}
        p = subprocess.Popen([sys.executable, str(BENCH / "submit.py")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env.env, text=True,
                             cwd=str(ROOT))
        assert p.stdin is not None
        p.stdin.write(json.dumps(request))
        p.stdin.close()
        p.stdin = None  # so that communicate() does not touch it again
        return p


def run_submit(request: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """One bench/submit.py process for `request` (its stdin, see there) with the environment `env`
    (FTE_CONFIG_HOME, FTE_TOPIC_PREFIX, ...); its JSON answer."""
    timeout = float(request.get("timeout", 600))
    p = subprocess.run([sys.executable, str(BENCH / "submit.py")], input=json.dumps(request), env=env,
                       capture_output=True, text=True, timeout=timeout + 120, cwd=str(ROOT))
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        raise BenchError(f"bench/submit.py -> {p.returncode}: {(p.stderr or p.stdout).strip()[-800:]}")
    return json.loads(lines[-1])


def file_transfer(source: Path, destination: Path) -> dict[str, Any]:
    """`fte-create-transfer -df DESTINATION -de overwrite SOURCE`, as a request for bench/submit.py."""
    return {"items": [{"source": str(source), "destination": str(destination), "destination_type": "file"}],
            "exist": "overwrite"}


def tree_transfer(source_dir: Path, destination_dir: Path) -> dict[str, Any]:
    """`fte-create-transfer -dd DESTINATION_DIR -r SOURCE_DIR`."""
    return {"items": [{"source": str(source_dir), "destination": str(destination_dir),
                       "destination_type": "directory", "recursive": True}], "exist": "overwrite"}


def check_results(result: dict[str, Any]) -> None:
    bad = [t for t in result["transfers"] if t.get("result_code") != 0]
    if bad:
        t = bad[0]
        raise BenchError(f"transfer {t.get('transfer_id', '?')[:12]} ended {t.get('state')} "
                         f"(result {t.get('result_code')}): {t.get('message')}")


def settings_default(name: str) -> Any:
    """The default of an agent.properties property, as the agent itself has it."""
    from agent.settings import AgentSettings

    return AgentSettings.model_fields[name].default


def replace_between(doc: Path, start: str, end: str, block: str) -> None:
    """Rewrite the part of `doc` between the markers `start` and `end` (kept) with `block`: a section of
    docs/performance.md that one benchmark owns."""
    text = doc.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{block}{end}{tail}")
