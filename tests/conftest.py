"""Shared fixtures. Broker machinery lives in tests/support; keep this file small.

Every test session starts its own brokers on free ports (never the machine's Mosquitto on 1883):

* ``mosquitto`` / ``amqtt_broker``  - session-wide brokers (restarted for the next test if one killed them)
* ``broker_url``                    - parametrized over both brokers, for tests that must pass on each
* ``fresh_mosquitto`` / ``fresh_amqtt`` / ``fresh_broker`` - a broker of the test's own, to kill at will
* ``fte_home``                      - an empty FTE_CONFIG_HOME for the test
* ``postgres`` / ``postgres_url``   - a PostgreSQL of the session's own; a new empty database per test
* ``nats_cluster``                  - a 3-node NATS cluster (JetStream, MQTT per node), all nodes running
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import itertools

import pytest

from tests.support.brokers import AmqttProcess, BrokerProcess, MosquittoProcess, find_mosquitto
from tests.support.ci import unavailable
from tests.support.nats_cluster import NatsCluster, find_nats_server
from tests.support.postgres import PG_MISSING, PostgresServer, find_pg_bindir

_db_ids = itertools.count(1)
MOSQUITTO_MISSING = "mosquitto binary not found; install mosquitto (apt install mosquitto) to run these tests"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: talks to real brokers over TCP (tests/integration)")
    config.addinivalue_line("markers", "fault: kills, freezes or partitions brokers and agents (tests/fault)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration and tests/fault get their marker automatically."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "fault" in parts:
            item.add_marker(pytest.mark.fault)


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        unavailable(MOSQUITTO_MISSING)


# -- session-wide brokers ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoProcess]:
    _require_mosquitto()
    with MosquittoProcess() as broker:
        yield broker


@pytest.fixture(scope="session")
def amqtt_broker() -> Iterator[AmqttProcess]:
    with AmqttProcess() as broker:
        yield broker


BROKER_KINDS = [pytest.param("amqtt", id="amqtt"), pytest.param("mosquitto", id="mosquitto")]
_SESSION_FIXTURE = {"amqtt": "amqtt_broker", "mosquitto": "mosquitto"}


@pytest.fixture(params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest) -> BrokerProcess:
    """The session broker of each kind in turn (made running again if an earlier test broke it)."""
    proc: BrokerProcess = request.getfixturevalue(_SESSION_FIXTURE[request.param])
    return proc.ensure_running()


@pytest.fixture
def broker_url(broker: BrokerProcess) -> str:
    """``mqtt://127.0.0.1:<port>`` of each session broker in turn (test ids ``[amqtt]``, ``[mosquitto]``)."""
    return broker.url


# -- brokers of the test's own (fault tests) ---------------------------------------------------------


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    _require_mosquitto()
    with MosquittoProcess(workdir=tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def fresh_amqtt(tmp_path: Path) -> Iterator[AmqttProcess]:
    with AmqttProcess(workdir=tmp_path / "amqtt") as broker:
        yield broker


@pytest.fixture(params=BROKER_KINDS)
def fresh_broker(request: pytest.FixtureRequest) -> BrokerProcess:
    """A started broker of each kind that the test may kill, pause and restart."""
    return request.getfixturevalue(f"fresh_{request.param}")


# -- configuration ------------------------------------------------------------------------------------


@pytest.fixture
def fte_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty configuration home, exported as FTE_CONFIG_HOME for the test (and its subprocesses)."""
    home = tmp_path / "fte_home"
    home.mkdir()
    monkeypatch.setenv("FTE_CONFIG_HOME", str(home))
    return home


# -- PostgreSQL (the logger's history, standby agents' shared store) ---------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own (initdb + pg_ctl on a free port), started on first use."""
    if find_pg_bindir() is None:
        unavailable(PG_MISSING)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the session's PostgreSQL, one per test."""
    if not postgres.is_running():
        postgres.start()
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40] + f"_{next(_db_ids)}"
    return postgres.create_database(name)


# -- a 3-node NATS cluster (issue 16: agents on different nodes, a node killed) -----------------------


@pytest.fixture(scope="session")
def nats_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    if find_nats_server() is None:
        pytest.skip("nats-server not found; install it (apt install nats-server) to run the cluster tests")
    with NatsCluster(tmp_path_factory.mktemp("nats-cluster")) as cluster:
        yield cluster


@pytest.fixture
def nats_cluster(nats_cluster_session: NatsCluster) -> NatsCluster:
    """The session's 3-node NATS cluster with every node running (a test before may have killed one)."""
    return nats_cluster_session.ensure_running()
