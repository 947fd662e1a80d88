"""Agents and commands as a user runs them: console scripts in subprocesses, a real FTE_CONFIG_HOME.

`FteEnv` owns one configuration home and one broker URL. Agents are `fte-start-agent NAME -F`
processes, so that fault tests can SIGKILL / SIGSTOP them; commands are the `fte-<verb>` scripts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def script(verb: str) -> str:
    """The `fte-<verb>` console script installed beside this Python (falls back to `python -m cli.main`)."""
    p = BIN / f"fte-{verb}"
    return str(p)


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout.strip().splitlines()[-1])

    def __str__(self) -> str:
        return f"{' '.join(self.args)} -> {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@dataclass
class AgentProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no STOPPED status (the broker publishes the will: UNREACHABLE)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class FteEnv:
    home: Path
    broker_url: str
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FTE_")}
        env.update(FTE_CONFIG_HOME=str(self.home), FTE_BROKER_URL=self.broker_url, PYTHONUNBUFFERED="1")
        return env

    def run(self, verb: str, *args: str, timeout: float = 120, input: str | None = None) -> Result:
        cmd = [script(verb), *args]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL if input is None else None, input=input)
        return Result(cmd, p.returncode, p.stdout, p.stderr)

    def popen(self, verb: str, *args: str) -> subprocess.Popen[str]:
        """A command left running (e.g. `fte-create-transfer -w` during a fault)."""
        return subprocess.Popen([script(verb), *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

    def agent_dir(self, name: str) -> Path:
        return self.home / "agents" / name

    def create_agent(self, name: str, sandbox: Path | str | None = None, **properties: Any) -> Path:
        args = ["-agentName", name, "--broker", self.broker_url]
        if sandbox is not None:
            args += ["--sandbox", str(sandbox)]
        r = self.run("create-agent", *args)
        assert r.returncode == 0, str(r)
        path = self.agent_dir(name) / "agent.properties"
        if properties:
            with open(path, "a") as fh:
                for k, v in properties.items():
                    fh.write(f"{k}={v}\n")
        return path

    def start_agent(self, name: str, wait_ready: bool = True, timeout: float = 20,
                    extra_env: dict[str, str] | None = None, wrapper: list[str] | None = None) -> AgentProcess:
        """`fte-start-agent NAME -F` as a process; `extra_env` is added to its environment (e.g. a PYTHONPATH
        with a sitecustomize.py that makes it behave as an older version); `wrapper` runs it under another
        command (e.g. strace: the process is then the wrapper's, and the agent's own pid is in its status)."""
        log = self.agent_dir(name) / "test-agent.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")
        proc = subprocess.Popen([*(wrapper or []), script("start-agent"), name, "-F"],
                                env={**self.env, **(extra_env or {})}, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL)
        fh.close()
        agent = AgentProcess(name, proc, log)
        self.agents[name] = agent
        if wait_ready:
            self.wait_status(name, {"READY", "ACTIVE"}, timeout=timeout, pid=None if wrapper else proc.pid,
                             process=agent)
        return agent

    def start_agents(self, names: list[str], timeout: float = 20) -> list[AgentProcess]:
        """`start_agent` for each of `names`, the processes started together, then each waited for (READY or
        ACTIVE within `timeout` s of the wait for it): agents whose start is spent waiting on the broker (a NATS
        cluster: 4-5 s each) start side by side instead of one after another."""
        started = [self.start_agent(name, wait_ready=False) for name in names]
        for agent in started:
            self.wait_status(agent.name, {"READY", "ACTIVE"}, timeout=timeout, pid=agent.proc.pid, process=agent)
        return started

    def status(self, name: str) -> dict[str, Any] | None:
        """The agent's retained status, read in-process (fast enough to poll)."""
        import asyncio

        import aiomqtt

        from cli.client import ClientError, FteClient

        async def read() -> dict[str, Any] | None:
            try:
                async with FteClient(self.broker_url) as c:
                    st = await c.agent_status(name, settle=0.3)
                    return st.model_dump() if st else None
            except (ClientError, aiomqtt.MqttError, asyncio.TimeoutError):
                # a connection the broker dropped (amqtt does now and then, see test_cli_e2e's notes):
                # no answer this time; callers poll again
                return None

        async def bounded() -> dict[str, Any] | None:
            try:
                return await asyncio.wait_for(read(), 6)
            except asyncio.TimeoutError:
                return None

        return asyncio.run(bounded())

    def wait_status(self, name: str, wanted: set[str], timeout: float = 20, pid: int | None = None,
                    process: AgentProcess | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if process is not None and not process.alive():
                raise AssertionError(f"agent {name} exited ({process.proc.returncode}):\n{process.log_tail()}")
            last = self.status(name)
            if last and last.get("status") in wanted and (pid is None or last.get("pid") == pid):
                return last
            time.sleep(0.1)
        raise AssertionError(f"agent {name} did not reach {wanted} within {timeout} s (last: {last})\n"
                             + (process.log_tail() if process else ""))

    def stop_all(self) -> None:
        for a in self.agents.values():
            if a.alive():
                a.resume()
                a.terminate()


def start_pair(home: Path, url: str, sandbox: Path | str, names: tuple[str, ...] = ("A1", "A2"),
               **properties: Any) -> FteEnv:
    """Agents `names` (A1 and A2) created (sandbox `sandbox`, agent.properties `properties`) and started;
    everything started is stopped again if one of them fails to start."""
    env = FteEnv(home, url)
    try:
        for name in names:
            env.create_agent(name, sandbox=sandbox, **properties)
        for name in names:
            env.start_agent(name)
    except BaseException:
        env.stop_all()
        raise
    return env


@contextmanager
def running_agents(home: Path, url: str, sandbox: Path | str, names: tuple[str, ...] = ("A1", "A2"),
                   **properties: Any) -> Iterator[FteEnv]:
    """`start_pair` for the length of a `with`: the agents are stopped at its end, whatever happened."""
    env = start_pair(home, url, sandbox, names, **properties)
    try:
        yield env
    finally:
        env.stop_all()


def sandbox_dir(tmp_path: Path, *subdirs: str) -> Path:
    """tmp_path/data, the agents' sandbox, with the subdirectories `subdirs` (e.g. "in", "out")."""
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    for sub in subdirs:
        (data / sub).mkdir()
    return data


def wait_until(predicate: Any, timeout: float, message: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {message}")


# -- helpers for the end-to-end tests (tests/integration/test_cli_e2e.py, test_transfers.py) ---------


def run_fte(env: FteEnv, verb: str, *args: str, timeout: float = 120) -> Result:
    """`fte <verb> ARGS`: the single `fte` entry point, as opposed to the `fte-<verb>` script of `env.run`."""
    cmd = [str(BIN / "fte"), verb, *args]
    p = subprocess.run(cmd, env=env.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(cmd, p.returncode, p.stdout, p.stderr)


def pid_gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def stop_command(proc: subprocess.Popen[str]) -> None:
    """A command left running (`FteEnv.popen`) ended: SIGTERM, then SIGKILL if it has not exited in 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def signed_probe(env: FteEnv, agent: str, topic: str, payload: bytes) -> bytes:
    """`payload` signed as agent `agent`'s event on `topic`, by a key the commands of `env` trust (they show
    no other): the agent's own key when it is configured in `env`, else a probe key added to its
    trusted_agents (agent.wire.provenance)."""
    from agent.wire import provenance
    from agent.auth import public_text
    from agent.wire.binding import load_or_create_agent_key
    from cli.trusted_agents import trust_agent

    local = env.agent_dir(agent)
    if (local / "agent.key").exists():  # `-a A1`: the probes are A1's, with its key
        key = load_or_create_agent_key(local)
    else:
        key = load_or_create_agent_key(env.home / "probe-keys" / agent)
        trust_agent(env.home, agent, public_text(key.public_key()))
    return provenance.sign_payload(payload, provenance.EVENT, topic, key)


class LogFollower:
    """`fte-logs --follow --json [ARGS]` left running; its stdout lines are read by a thread.

    `wait_subscribed()` proves the subscription is live (a probe event published on a Log topic comes
    out), so events produced afterwards cannot be missed. Always `close()` it (it is a context manager).
    """

    probe_agent = "fte_test_probe"

    def __init__(self, env: FteEnv, *args: str) -> None:
        import queue
        import threading

        self.env = env
        if "-t" in args or "--transfer" in args:
            raise ValueError("LogFollower cannot prove a -t subscription; filter the events instead")
        # probes go where the follower listens: its -a agent, if any
        for flag in ("-a", "--agent"):
            if flag in args:
                self.probe_agent = args[args.index(flag) + 1]
        self.proc = env.popen("logs", "--follow", "--json", *args)
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.seen: list[str] = []

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def __enter__(self) -> "LogFollower":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        stop_command(self.proc)
        self._thread.join(5)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def _next(self, deadline: float) -> str | None:
        import queue

        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            line = self.lines.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            self.lines.put(None)  # stays at end of stream
            raise EOFError
        self.seen.append(line)
        return line

    def events_until(self, done: Any, timeout: float = 30) -> list[dict[str, Any]]:
        """Parsed JSON events read until `done(event)` is true (that event included); bounded."""
        deadline = time.monotonic() + timeout
        events: list[dict[str, Any]] = []
        while True:
            try:
                line = self._next(deadline)
            except TimeoutError:
                raise AssertionError(f"fte-logs --follow: no matching event within {timeout} s; lines seen:\n"
                                     + "\n".join(self.seen[-20:])) from None
            except EOFError:
                raise AssertionError(f"fte-logs --follow exited ({self.proc.poll()}) before the event; lines seen:\n"
                                     + "\n".join(self.seen[-20:]) + "\nstderr: " + self.stderr()) from None
            if not line or not line.lstrip().startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                raise AssertionError(f"fte-logs --json printed a line that is not JSON: {line!r}") from None
            events.append(ev)
            if done(ev):
                return events

    def wait_subscribed(self, timeout: float = 20) -> None:
        """Publish probe events on a Log topic until the follower prints one (bounded)."""
        import asyncio
        import secrets

        import aiomqtt

        from tests.support.brokers import split_url

        tid = secrets.token_hex(24)
        topic = f"SYSTEM.FTE/Log/{self.probe_agent}/{tid}"
        payload = signed_probe(self.env, self.probe_agent, topic, json.dumps(
            {"transfer_id": tid, "action": "probe", "state": "probe", "agent": self.probe_agent}).encode())
        host, port = split_url(self.env.broker_url)
        deadline = time.monotonic() + timeout

        async def publish_once() -> None:
            async with aiomqtt.Client(host, port, timeout=5) as c:
                await c.publish(topic, payload, qos=1)

        while True:
            try:
                asyncio.run(asyncio.wait_for(publish_once(), 6))
            except (aiomqtt.MqttError, asyncio.TimeoutError):
                pass  # a dropped connection: the loop publishes again
            try:
                self.events_until(lambda ev: ev.get("transfer_id") == tid,
                                  timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                return
            except AssertionError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"fte-logs --follow exited ({self.proc.returncode}): {self.stderr()}")
                if time.monotonic() >= deadline:
                    raise AssertionError(f"fte-logs --follow did not subscribe within {timeout} s") from None
