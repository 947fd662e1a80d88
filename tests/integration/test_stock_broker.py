"""A stock Mosquitto (Nagle's algorithm on its side: no ``set_tcp_nodelay``, as Debian ships it)
against one with ``set_tcp_nodelay true``, agents as real processes.

* On the stock broker the agent's broker probe finds the delayed-ACK pattern (agent.core.ack_delay): its
  status's ``broker_check`` and its log say so once, with what to set; on the tuned broker they do not.
* A transfer through the stock broker arrives intact (the agents' quick ACKs, agent.quickack, are on).
* The embedded broker (`fte broker`) sets TCP_NODELAY on its clients' sockets: no warning there.
No timed assertion: the pattern is a step of ~40 ms against ~1 ms, docs/performance.md has the figures.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import FteEnv
from tests.support.brokers import AmqttProcess, MosquittoProcess, find_mosquitto

pytestmark = pytest.mark.timeout(120)

HELD = "the broker holds small messages back until the client acknowledges the previous one"


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt install mosquitto)")
    # the last set_tcp_nodelay line wins: Mosquitto's default, as Debian ships it
    with MosquittoProcess(workdir=tmp_path_factory.mktemp("mosq-stock"), extra_config=["set_tcp_nodelay false"]) as b:
        yield b


def _agents(tmp_path: Path, url: str, names: tuple[str, ...]) -> FteEnv:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    env = FteEnv(tmp_path / "fte_home", url)
    for name in names:
        env.create_agent(name, sandbox=data)
    return env


def test_the_probe_warns_of_a_broker_that_holds_small_messages(tmp_path: Path, stock: MosquittoProcess) -> None:
    env = _agents(tmp_path, stock.url, ("A1",))
    try:
        agent = env.start_agent("A1")
        st = env.status("A1")
        assert st is not None
        assert st["broker_check"].startswith("warning: "), st
        assert HELD in st["broker_check"] and "set_tcp_nodelay true" in st["broker_check"], st
        assert agent.log.read_text().count(HELD) == 1, agent.log_tail(20)
    finally:
        env.stop_all()


def test_no_warning_with_set_tcp_nodelay(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    env = _agents(tmp_path, mosquitto.ensure_running().url, ("A1",))
    try:
        agent = env.start_agent("A1")
        st = env.status("A1")
        assert st is not None
        assert st["broker_check"].startswith("ok: "), st
        assert HELD not in agent.log.read_text(), agent.log_tail(20)
    finally:
        env.stop_all()


def test_a_transfer_through_the_stock_broker_arrives_intact(tmp_path: Path, stock: MosquittoProcess) -> None:
    env = _agents(tmp_path, stock.url, ("A1", "A2"))
    try:
        env.start_agent("A1")
        env.start_agent("A2")
        src, dst = tmp_path / "data" / "in.bin", tmp_path / "data" / "out.bin"
        payload = os.urandom(3 * 1024 * 1024 + 17)
        src.write_bytes(payload)
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", str(src), timeout=90)
        assert r.returncode == 0, str(r)
        assert hashlib.sha256(dst.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
    finally:
        env.stop_all()


def test_no_warning_on_the_embedded_broker(tmp_path: Path, amqtt_broker: AmqttProcess) -> None:
    # `fte broker` sets TCP_NODELAY on its clients' sockets (asyncio did not, and the probe warned)
    env = _agents(tmp_path, amqtt_broker.url, ("A1",))
    try:
        agent = env.start_agent("A1")
        st = env.status("A1")
        assert st is not None
        assert HELD not in st["broker_check"], st
        assert HELD not in agent.log.read_text(), agent.log_tail(20)
    finally:
        env.stop_all()
