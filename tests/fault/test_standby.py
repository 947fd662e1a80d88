"""Standby pairs (agent.standby): two processes of agent A1 on two "hosts" (two FTE_CONFIG_HOMEs sharing the
agent's directory - its properties and key - and one PostgreSQL store); exactly one is active."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support.agents import AgentProcess, wait_until
from tests.support.brokers import ThreadedTcpProxy

from .conftest import Dirs
from .helpers import MiB, FaultEnv, finish, make_file, part_files, sha256, wait_part

pytestmark = pytest.mark.timeout(180)

TAKEOVER_MS = 6000  # standbyTakeoverTimeout of these tests: ttl 4 s, the active stops at 2.4 s without renewal


def _with_port(url: str, host: str, port: int) -> str:
    u = urlsplit(url)
    user = u.netloc.rsplit("@", 1)[0]
    return urlunsplit((u.scheme, f"{user}@{host}:{port}", u.path, u.query, u.fragment))


def _standby_env(env: FaultEnv, home2: Path, name: str, store_url: str) -> FaultEnv:
    """The second host: a home of its own holding a copy of the agent's directory (agent.properties, keys) with
    its own agentStore URL (here: direct, where the first may go through a proxy) and its own state dir."""
    env2 = FaultEnv(home2, env.broker_url)
    src, dst = env.agent_dir(name), env2.agent_dir(name)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("state", "logs", "*.log", "*.pid"))
    props = dst / "agent.properties"
    props.write_text("\n".join(f"agentStore={store_url}" if line.startswith("agentStore=") else line
                               for line in props.read_text().splitlines()) + "\n")
    return env2


def _standing_by(agent: AgentProcess, timeout: float = 30) -> None:
    wait_until(lambda: "waiting as the standby" in agent.log.read_text(errors="replace") or not agent.alive(),
               timeout, "the second process did not report itself the standby")
    assert agent.alive(), agent.log_tail()


def _lease(url: str) -> tuple[str, int]:
    with psycopg.connect(url) as c:
        row = c.execute("SELECT holder, epoch FROM public.mqtt_fte_lease WHERE agent='A1'").fetchone()
    assert row
    return str(row[0]), int(row[1])


def _pair(env: FaultEnv, tmp_path: Path, dirs: Dirs, store_url: str, active_store: str | None = None
          ) -> tuple[FaultEnv, AgentProcess, AgentProcess]:
    env.add_agent("A1", dirs.src, agentStore=active_store or store_url, standbyTakeoverTimeout=TAKEOVER_MS)
    env.add_agent("A2", dirs.dst)
    env2 = _standby_env(env, tmp_path / "host2", "A1", store_url)
    active = env.start_agent("A1")
    env.start_agent("A2")
    standby = env2.start_agent("A1", wait_ready=False)
    _standing_by(standby)
    return env2, active, standby


def test_sigkill_of_the_active_mid_transfer_standby_takes_over_and_completes(
        env: FaultEnv, dirs: Dirs, tmp_path: Path, postgres_url: str) -> None:
    env2, active, standby = _pair(env, tmp_path, dirs, postgres_url)
    try:
        watcher = env.watch()
        src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
        digest = make_file(src, 64 * MiB)
        client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "--json", str(src))
        tid = watcher.wait_any("started", 20)["transfer_id"]
        wait_part(dst, 16 * MiB, 30, env)
        active.kill()
        # the standby takes over within standbyTakeoverTimeout (+ its start: connect, probe, status)
        env2.wait_status("A1", {"READY", "ACTIVE"}, timeout=TAKEOVER_MS / 1000 + 15, pid=standby.pid, process=standby)
        r = finish(client, 90, env)
        assert r.returncode == 0, f"{r}\n{env.logs()}\n{env2.logs()}"
        assert sha256(dst) == digest
        assert part_files(dirs.dst) == []
        watcher.wait(tid, "completed", 10)
        assert len(watcher.of(tid, "completed")) == 1, watcher.of(tid)
        assert _lease(postgres_url)[1] == 2  # one takeover: epoch 1 -> 2
    finally:
        env2.close()


def test_a_network_cut_active_stops_before_the_standby_starts(
        env: FaultEnv, dirs: Dirs, tmp_path: Path, postgres_url: str) -> None:
    u = urlsplit(postgres_url)
    proxy = ThreadedTcpProxy(u.hostname or "127.0.0.1", int(u.port or 5432)).start()
    p = urlsplit(proxy.url)
    env.proxies["pg"] = proxy
    env2, active, standby = _pair(env, tmp_path, dirs, postgres_url,
                                  active_store=_with_port(postgres_url, p.hostname or "127.0.0.1", int(p.port or 0)))
    try:
        assert _lease(postgres_url)[1] == 1
        proxy.cut()  # the active keeps running, its broker connection intact; its database is gone
        wait_until(lambda: not active.alive(), TAKEOVER_MS / 1000 + 10, "the cut-off active kept running")
        # it stopped acting before the standby could take the lease: the lease is still the old epoch's
        holder, epoch = _lease(postgres_url)
        assert epoch == 1, (holder, epoch)
        assert active.proc.returncode == 75, active.log_tail()
        assert "lease lost" in active.log.read_text(errors="replace")
        env2.wait_status("A1", {"READY", "ACTIVE"}, timeout=TAKEOVER_MS / 1000 + 15, pid=standby.pid, process=standby)
        assert _lease(postgres_url)[1] == 2
    finally:
        env2.close()


def test_restart_both_one_active_one_standby(env: FaultEnv, dirs: Dirs, tmp_path: Path, postgres_url: str) -> None:
    env2, first, second = _pair(env, tmp_path, dirs, postgres_url)
    watch, out = dirs.src / "watch", dirs.dst / "out"
    watch.mkdir()
    out.mkdir()
    r = env.run("create-monitor", "-ma", "A1", "-mn", "M1", "-md", str(watch), "-tr", "match,*.csv",
                "-pi", "1", "-pu", "seconds", "-da", "A2", "-dd", str(out))
    assert r.returncode == 0, str(r)
    try:
        first.terminate()
        second.terminate()
        assert not first.alive() and not second.alive()
        a = env.start_agent("A1", wait_ready=False)
        b = env2.start_agent("A1", wait_ready=False)
        st = env.wait_status("A1", {"READY", "ACTIVE"}, timeout=30)
        active, other = (a, b) if st["pid"] == a.pid else (b, a)
        assert st["pid"] == active.pid
        _standing_by(other)
        holder, _ = _lease(postgres_url)
        assert f":{active.pid}:" in holder
        assert "lease taken" not in other.log.read_text(errors="replace").split("=== start at")[-1]
        # the monitor lives in the shared store: the active runs it, the standby does not (no duplicate transfers)
        watcher = env.watch()
        for n in (1, 2):
            (watch / f"f{n}.csv").write_text(f"file {n}\n")
            wait_until(lambda: (out / f"f{n}.csv").exists(), 40, f"the monitor did not transfer f{n}.csv")
            wait_until(lambda: len([e for e in watcher.events if e.get("action") == "completed"]) >= n, 20,
                       "no completed event")
        started = [e for e in watcher.events if e.get("action") == "started"]
        done = [e for e in watcher.events if e.get("action") == "completed"]
        assert len(started) == 2 and len(done) == 2, watcher.events
        assert other.alive()
    finally:
        env2.close()
