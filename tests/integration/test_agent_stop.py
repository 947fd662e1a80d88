"""A stopped agent reads STOPPED on the broker, even when it stops while messages flow to it.

CI once saw an agent stopped by fte-stop-agent read UNREACHABLE afterwards: the broker had published the agent's
last will over its STOPPED status. A socket closed with unread data sends a reset; Mosquitto, failing to write
to it, dropped the connection before it read the DISCONNECT. The agent now unsubscribes before its last words.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiomqtt

from agent.wire.protocol import Topics
from tests.support.agents import FteEnv

STOPS = 5  # each stop lost the race most of the time before the fix (70 % in a raw-socket experiment)


class Flood:
    """Messages published without pause on a topic the agent subscribes to (another agent's status topic;
    the agent logs and drops them: they are not JSON), from a thread of its own, until stopped."""

    def __init__(self, url: str, topic: str) -> None:
        self.url, self.topic = url, topic
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        host, port = self.url.removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port), identifier="flood") as client:
            while not self._stop.is_set():
                for _ in range(20):
                    await client.publish(self.topic, b"x" * 8192, qos=0)
                    self.sent += 1
                await asyncio.sleep(0.001)  # the agent and the broker keep up; data is always in flight

    def __enter__(self) -> "Flood":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_stop_while_messages_flow_in_leaves_stopped_not_unreachable(tmp_path: Path, broker_url: str) -> None:
    env = FteEnv(tmp_path / "home", broker_url)
    env.create_agent("S1", sandbox=tmp_path)
    try:
        with Flood(broker_url, Topics().agent_status("Z9")) as flood:
            for _ in range(STOPS):
                agent = env.start_agent("S1")
                agent.terminate()  # SIGTERM: an immediate stop, the agent's last word is STOPPED
                assert agent.proc.returncode == 0, agent.log_tail()
                status = env.status("S1")
                assert status is not None and status["pid"] == agent.pid, status
                assert status["status"] == "STOPPED", f"{status}\n{agent.log_tail()}"
        assert flood.sent > 0
    finally:
        env.stop_all()
