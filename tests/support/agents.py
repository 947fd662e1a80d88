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

    def start_agent(self, name: str, wait_ready: bool = True, timeout: float = 20) -> AgentProcess:
        log = self.agent_dir(name) / "test-agent.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")
        proc = subprocess.Popen([script("start-agent"), name, "-F"], env=self.env, stdout=fh, stderr=fh,
                                stdin=subprocess.DEVNULL)
        fh.close()
        agent = AgentProcess(name, proc, log)
        self.agents[name] = agent
        if wait_ready:
            self.wait_status(name, {"READY", "ACTIVE"}, timeout=timeout, pid=proc.pid, process=agent)
        return agent

    def status(self, name: str) -> dict[str, Any] | None:
        """The agent's retained status, read in-process (fast enough to poll)."""
        import asyncio

        from cli.client import ClientError, FteClient

        async def read() -> dict[str, Any] | None:
            try:
                async with FteClient(self.broker_url) as c:
                    st = await c.agent_status(name, settle=0.3)
                    return st.model_dump() if st else None
            except ClientError:
                return None

        return asyncio.run(read())

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


def wait_until(predicate: Any, timeout: float, message: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {message}")
