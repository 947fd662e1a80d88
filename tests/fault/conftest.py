"""Fixtures of the fault tests: a FaultEnv on the test's own broker, closed (every process killed) at the end."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.brokers import BrokerProcess

from .helpers import FaultEnv


@dataclass
class Dirs:
    src: Path
    dst: Path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    d = Dirs(tmp_path / "src", tmp_path / "dst")
    d.src.mkdir()
    d.dst.mkdir()
    return d


def _env(home: Path, broker: BrokerProcess) -> Iterator[FaultEnv]:
    env = FaultEnv(home, broker.url)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def env(fte_home: Path, fresh_mosquitto: BrokerProcess) -> Iterator[FaultEnv]:
    """Agents and commands on a Mosquitto of the test's own."""
    yield from _env(fte_home, fresh_mosquitto)


@pytest.fixture
def env_on(fte_home: Path, fresh_broker: BrokerProcess) -> Iterator[FaultEnv]:
    """The same on each broker in turn (amqtt and mosquitto): for the broker restart test."""
    yield from _env(fte_home, fresh_broker)
