"""An agent's process on this machine: its pid file, running it in the foreground (fte-start-agent -F),
starting it in the background and waiting until it is on its broker. The commands are in cli/agents.py."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.core.statuses import AGENT_RUNNING

from .app import fail, out
from .client import ClientError, FteClient, broker_url
from .safe_text import SafeLogFormatter


def pid_file(name: str) -> Path:
    from agent.settings import agent_dir

    return agent_dir(name) / "agent.pid"


def running_pid(name: str) -> int | None:
    try:
        pid = int(pid_file(name).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def run_in_foreground(name: str, settings: Any, verbose: bool) -> None:
    """fte-start-agent -F: agent `name` in this process, logging to stderr, its pid in agent.pid meanwhile."""
    from agent.link import BrokerConfigError
    from agent.settings import timeout_warnings

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("amqtt", "transitions", "aiomqtt", "mqtt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for w in timeout_warnings(settings):
        logging.getLogger("fte.agent").warning("%s", w)
    pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    pid_file(name).write_text(str(os.getpid()))
    try:
        asyncio.run(_run_agent(settings))
    except BrokerConfigError as exc:
        fail(f"agent {name}: {exc}")
    finally:
        try:
            if pid_file(name).read_text().strip() == str(os.getpid()):
                pid_file(name).unlink()
        except OSError:
            pass


async def _run_agent(settings: Any) -> None:
    from agent.daemon import Agent

    agent = Agent(settings, settings.state_dir)
    loop = asyncio.get_running_loop()
    # SIGTERM/SIGINT: an immediate stop; running transfers resume from their checkpoints at restart
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop, True)
    logging.getLogger("fte.agent").info("agent %s starting (broker %s, state %s)", settings.agentName,
                                        settings.brokerUrl, settings.state_dir)
    await agent.run()
    logging.getLogger("fte.agent").info("agent %s stopped", settings.agentName)


def start_background(name: str, home: Path) -> None:
    """fte-start-agent: agent `name` as a process of its own (python -m cli.scripts start-agent NAME -F, which
    imports the agent command's module only), logging to its logs/output0.log; returns once its verified
    status says it runs (or after 20 s, saying so)."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    logfile = logs / "output0.log"
    with open(logfile, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cli.scripts", "start-agent", name, "-F"], stdout=fh,
                                stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
            fail(f"agent {name} exited at start (code {proc.returncode}): {' | '.join(tail)}")
        if running_pid(name) == proc.pid and _agent_ready(name, proc.pid):
            out.print(f"Agent {name} started (pid {proc.pid}); log: {logfile}")
            return
        time.sleep(0.2)
    out.print(f"Agent {name} started (pid {proc.pid}) but has not reached its broker yet; log: {logfile}")


def _agent_ready(name: str, pid: int) -> bool:
    async def check() -> bool:
        try:
            async with FteClient(broker_url(None, name)) as c:
                st = await c.agent_status(name, settle=0.5)
                return bool(st and st.verified and st.pid == pid and st.status in AGENT_RUNNING)
        except ClientError:
            return False

    return asyncio.run(check())
