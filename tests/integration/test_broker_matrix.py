"""The broker matrix: the same agents, as real processes, on every broker mqtt-fte claims to run on.

Brokers: the embedded amqtt and Mosquitto (the fixtures of tests/conftest.py: the session brokers, and a
broker of the test's own for the one that kills it), NATS with its MQTT gateway and RabbitMQ with its MQTT
plugin (private instances on free ports, one per module, tests/support/more_brokers.py; skipped when not
installed). For each broker, a representative subset of the integration suite:

* a transfer of a few MB arrives with identical content;
* the broker is SIGKILLed mid-transfer and restarted on the same port: the ``fte-create-transfer -w``
  run rides it out and exits 0, the file is intact (marked ``fault``: deselect with ``-m "not fault"``);
* the agents' retained statuses are read back (``fte-list-agents`` shows both READY; a source agent restarted
  after its destination can send to it) and the last will: a SIGKILLed agent is UNREACHABLE;
* raw MQTT probes of what the agents depend on: the largest chunk message, '.' in a topic level, and
  whether a retained status survives a broker kill and restart (``fault``).

What differs per broker is in ``PROFILES`` (the agent.properties each needs) and in docs/brokers.md,
which records this matrix. A failure that is a limitation of the broker, not a bug of ours, is an
``xfail(strict=True)`` with the reason; it turns into a failure the day the broker lifts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from agent.wire.protocol import MAX_CHUNK_BYTES, AgentStatus, dump, utc_now
from tests.support.agents import FteEnv, Result
from tests.support.brokers import BrokerProcess, split_url
from tests.support.more_brokers import (NatsMqttProcess, RabbitMqttProcess, find_nats_server, find_rabbitmq_server,
                                        nats_version, rabbitmq_version)

pytestmark = pytest.mark.timeout(150)

MiB = 1024 * 1024

# Timers short enough that a stall is noticed in a few seconds (the agent warns that 2 x 2 s is not longer
# than 2 x brokerKeepalive: intended here), long enough that a broker that keeps messages in a store
# (NATS JetStream, RabbitMQ queues) is not taken for a stalled one.
COMMON = {"transferAckTimeout": 2000, "transferAckTimeoutRetries": 2, "brokerKeepalive": 5}


@dataclass(frozen=True)
class Profile:
    """What an agent (agent.properties) and the commands (FTE_TOPIC_PREFIX) need on one broker."""

    prefix: str = "SYSTEM.FTE"

    def agent_properties(self) -> dict[str, object]:
        """Default chunking (agentChunkSize 256 KiB, agentWindowSize 32) on every broker: none needs less."""
        props: dict[str, object] = dict(COMMON)
        if self.prefix != "SYSTEM.FTE":
            props["topicPrefix"] = self.prefix
        return props


PROFILES = {
    "amqtt": Profile(),
    "mosquitto": Profile(),
    # NATS 2.9 refuses '.' in a topic (it is the NATS subject separator) and closes the connection;
    # 2.10+ maps it to '//'. Either way a prefix without '.' is the portable choice.
    "nats": Profile(prefix="SYSTEM_FTE"),
    # RabbitMQ swaps '/' and '.' between MQTT topics and AMQP routing keys: SYSTEM.FTE/Agents/A1 comes back
    # as SYSTEM/FTE/Agents/A1, which is no longer under the prefix, and every message is dropped.
    "rabbitmq": Profile(prefix="SYSTEM_FTE"),
}

BROKERS = [pytest.param(kind, id=kind) for kind in PROFILES]

RABBITMQ_RETAINED_WILDCARD = (
    "RabbitMQ {v} does not deliver retained messages to a subscription with a wildcard (a documented limitation "
    "of its MQTT plugin, rabbitmq-server issues #8096 and #8824): fte-list-agents without names subscribes to "
    "<prefix>/Agents/+ and cannot list an agent that is not configured on the machine it runs on (those it "
    "reads on their own topics). Exact-topic reads work: fte-list-agents NAME..., fte-show-agent-details, "
    "fte-ping-agent, and the agents themselves, which read an unknown peer's status on its own topic."
)

# Does the broker deliver retained messages to a subscription with a wildcard? (docs/brokers.md)
RETAINED_TO_WILDCARDS = {"amqtt": True, "mosquitto": True, "nats": True, "rabbitmq": False}


# --------------------------------------------------------------------------- brokers


def _skip_unless(found: object, what: str) -> None:
    if not found:
        pytest.skip(f"{what} not installed: the matrix runs on the brokers this machine has")


@pytest.fixture(scope="module")
def nats_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsMqttProcess]:
    _skip_unless(find_nats_server(), "nats-server (apt install nats-server)")
    with NatsMqttProcess(workdir=tmp_path_factory.mktemp("nats")) as broker:
        yield broker


@pytest.fixture(scope="module")
def rabbitmq_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMqttProcess]:
    _skip_unless(find_rabbitmq_server(), "RabbitMQ (apt install rabbitmq-server)")
    with RabbitMqttProcess(workdir=tmp_path_factory.mktemp("rabbitmq")) as broker:
        yield broker


_FIXTURE = {"amqtt": "amqtt_broker", "mosquitto": "mosquitto", "nats": "nats_broker", "rabbitmq": "rabbitmq_broker"}


@pytest.fixture(params=BROKERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mbroker(kind: str, request: pytest.FixtureRequest) -> BrokerProcess:
    """The broker of this kind, running (a test before may have killed it)."""
    proc: BrokerProcess = request.getfixturevalue(_FIXTURE[kind])
    return proc.ensure_running()


def broker_version(kind: str) -> str:
    if kind == "nats":
        return nats_version() or "?"
    if kind == "rabbitmq":
        return rabbitmq_version() or "?"
    return ""


# --------------------------------------------------------------------------- agents


@dataclass
class MatrixEnv(FteEnv):
    """FteEnv whose commands use the broker's topic prefix (FTE_TOPIC_PREFIX)."""

    prefix: str = "SYSTEM.FTE"

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env["FTE_TOPIC_PREFIX"] = self.prefix
        return env


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "in").mkdir(parents=True)
    (d / "out").mkdir()
    return d


def _agents(kind: str, broker: BrokerProcess, tmp_path: Path, data: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[MatrixEnv]:
    """Agents A1 and A2 started on ``broker`` with the profile of its kind.

    A1 is the source of every transfer here. The order does not matter, even on RabbitMQ, where a retained
    status does not reach a <prefix>/Agents/+ subscription: an agent reads the retained status of a peer
    it does not know on the peer's own topic (test_source_started_after_its_destination_can_send_to_it).
    """
    profile = PROFILES[kind]
    # FteEnv.status() reads statuses in this process, with the prefix from the environment
    monkeypatch.setenv("FTE_TOPIC_PREFIX", profile.prefix)
    env = MatrixEnv(tmp_path / "fte_home", broker.url, prefix=profile.prefix)
    try:
        for name in ("A1", "A2"):
            env.create_agent(name, sandbox=data, **profile.agent_properties())
        for name in ("A1", "A2"):
            env.start_agent(name, timeout=30)
        yield env
    finally:
        env.stop_all()


@pytest.fixture
def pair(kind: str, mbroker: BrokerProcess, tmp_path: Path, data: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[MatrixEnv]:
    """Agents A1 and A2 on the (shared) broker of this kind."""
    yield from _agents(kind, mbroker, tmp_path, data, monkeypatch)


@pytest.fixture
def killable(kind: str, request: pytest.FixtureRequest) -> BrokerProcess:
    """A broker of this kind the test may kill: amqtt and Mosquitto of the test's own (conftest's fresh_*
    fixtures, so the session brokers other tests use are left alone), the module's NATS / RabbitMQ."""
    if kind in ("amqtt", "mosquitto"):
        return request.getfixturevalue(f"fresh_{kind}")
    proc: BrokerProcess = request.getfixturevalue(_FIXTURE[kind])
    return proc.ensure_running()


@pytest.fixture
def killable_pair(kind: str, killable: BrokerProcess, tmp_path: Path, data: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[MatrixEnv]:
    """Agents A1 and A2 on ``killable``."""
    yield from _agents(kind, killable, tmp_path, data, monkeypatch)


# --------------------------------------------------------------------------- helpers


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            fh.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def part_size(dest: Path) -> int:
    try:
        return dest.with_name(dest.name + ".part").stat().st_size
    except OSError:
        return 0


def context(env: FteEnv, broker: BrokerProcess) -> str:
    parts = [f"--- agent {n} ---\n{a.log_tail(40)}" for n, a in env.agents.items()]
    parts.append(f"--- broker {broker!r} ---\n{broker.log_tail(30)}")
    return "\n".join(parts)


def last_json(r: Result) -> dict:
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- (a) a transfer


def test_transfer_of_a_few_mb_is_identical(pair: MatrixEnv, mbroker: BrokerProcess, data: Path) -> None:
    src, dst = data / "in" / "six.bin", data / "out" / "six.bin"
    digest = make_file(src, 6 * MiB + 12345)  # not a multiple of the chunk size
    t0 = time.monotonic()
    r = pair.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "--json", str(src), timeout=90)
    took = time.monotonic() - t0
    assert r.returncode == 0, f"{r}\n{context(pair, mbroker)}"
    assert last_json(r)["result_code"] == 0
    assert sha256(dst) == digest
    assert list((data / "out").glob("*.part")) == []
    print(f"{mbroker.kind}: 6 MiB in {took:.1f} s")


# --------------------------------------------------------------------------- (b) broker restart


@pytest.mark.fault
def test_transfer_rides_out_a_broker_kill_and_restart(killable_pair: MatrixEnv, killable: BrokerProcess,
                                                      data: Path) -> None:
    env, broker = killable_pair, killable
    src, dst = data / "in" / "big.bin", data / "out" / "big.bin"
    size = 32 * MiB
    digest = make_file(src, size)
    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "--json", str(src))
    try:
        deadline = time.monotonic() + 60
        while part_size(dst) < 4 * MiB:
            assert client.poll() is None, f"the transfer ended before the broker was killed: {client.communicate()}"
            assert time.monotonic() < deadline, f"no 4 MiB arrived in 60 s\n{context(env, broker)}"
            time.sleep(0.05)
        held = part_size(dst)
        broker.kill()  # SIGKILL: no goodbye to anyone
        assert held < size, "the transfer must still be running when the broker dies"
        time.sleep(1.0)
        broker.restart()
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, f"exit {client.returncode}\nstdout: {out}\nstderr: {err}\n{context(env, broker)}"
    done = json.loads(out.strip().splitlines()[-1])
    assert done["result_code"] == 0
    assert sha256(dst) == digest
    assert list((data / "out").glob("*.part")) == []
    # both agents really lost the broker and came back (not a transfer that outran the kill)
    for name in ("A1", "A2"):
        text = env.agents[name].log.read_text(errors="replace")
        assert text.count("connected to mqtt://") >= 2, f"{name} did not reconnect:\n{env.agents[name].log_tail()}"
    # and the source went through recovery (what its list_transfers reply says; -a: asked directly)
    r = env.run("logs", "-a", "A1", "--json", timeout=30)
    assert r.returncode == 0, str(r)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    row = next(t for t in rows if t["transfer_id"] == done["transfer_id"] and t["role"] == "source")
    assert row["state"] == "complete" and row["recoveries"] >= 1, row


# --------------------------------------------------------------------------- (c) retained status, last will


def test_source_started_after_its_destination_can_send_to_it(pair: MatrixEnv, kind: str, mbroker: BrokerProcess,
                                                            data: Path) -> None:
    """A source agent (re)started after its destination learns of it from its retained status, which it reads
    on the destination's own topic (a wildcard subscription does not get it on RabbitMQ). fte-list-agents
    lists the agents named, and without names the ones configured here, on every broker."""
    r = pair.run("list-agents", "A1", "A2", "--json", timeout=30)
    assert r.returncode == 0, str(r)
    assert {n: s["status"] for n, s in json.loads(r.stdout).items()} == {"A1": "READY", "A2": "READY"}, \
        f"{r}\n{context(pair, mbroker)}"
    # A2 has been up all along: a restarted A1 can only learn of it from A2's retained status
    pair.agents["A1"].terminate()
    pair.start_agent("A1", timeout=30)
    # without names: <prefix>/Agents/+, and A1 and A2 (configured in this FTE_CONFIG_HOME) on their own topics;
    # where the wildcard got no retained status, a note says why the list may be incomplete
    r = pair.run("list-agents", "--json", timeout=30)
    assert r.returncode == 0, str(r)
    statuses = json.loads(r.stdout)
    assert {n: s["status"] for n, s in statuses.items() if n in ("A1", "A2")} == {"A1": "READY", "A2": "READY"}, \
        f"{r}\n{context(pair, mbroker)}"
    blind = "this broker did not deliver the retained statuses on"
    assert (blind in r.stderr) == (not RETAINED_TO_WILDCARDS[kind]), str(r)
    src, dst = data / "in" / "small.txt", data / "out" / "small.txt"
    src.write_text("after a restart of the source\n")
    r = pair.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "30", str(src), timeout=60)
    assert r.returncode == 0, f"{r}\n{context(pair, mbroker)}"
    assert dst.read_text() == src.read_text()


def test_retained_statuses_reach_wildcard_subscribers(kind: str, mbroker: BrokerProcess, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    """fte-list-agents, run where the agent is not configured, finds its retained status through
    <prefix>/Agents/+ (a wildcard subscription) alone."""
    if kind == "rabbitmq":
        request.applymarker(pytest.mark.xfail(strict=True, reason=RABBITMQ_RETAINED_WILDCARD.format(
            v=broker_version(kind))))
    prefix = PROFILES[kind].prefix
    name = f"R{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}/Agents/{name}"
    status = dump(AgentStatus(agent=name, status="READY", time=utc_now(), host="elsewhere"))

    async def retain(payload: bytes) -> None:
        async with _client(mbroker.url, 10) as c:
            await c.publish(topic, payload, qos=1, retain=True)

    asyncio.run(retain(status))
    try:
        env = MatrixEnv(tmp_path / "no_agents_here", mbroker.url, prefix=prefix)
        r = env.run("list-agents", "--json", timeout=30)
        assert r.returncode == 0, str(r)
        assert name in json.loads(r.stdout), str(r)
    finally:
        asyncio.run(retain(b""))  # an empty retained message deletes it


def test_killed_agent_is_unreachable_by_its_last_will(pair: MatrixEnv, mbroker: BrokerProcess) -> None:
    a2 = pair.agents["A2"]
    # the retained status, read back by clients that connect afterwards (exact topic)
    st = pair.status("A2")
    assert st is not None and st["status"] == "READY" and st["pid"] == a2.pid, st
    r = pair.run("show-agent-details", "A2", "--json", timeout=30)
    assert r.returncode == 0 and '"READY"' in r.stdout, str(r)
    a2.kill()  # SIGKILL: only the broker can tell the others, by publishing A2's will
    pair.wait_status("A2", {"UNREACHABLE"}, timeout=20)
    # the will is retained too: a client that connects now still reads UNREACHABLE
    st = pair.status("A2")
    assert st is not None and st["status"] == "UNREACHABLE", st
    # the surviving agent is untouched, and answers a command
    assert pair.wait_status("A1", {"READY"}, timeout=10)["pid"] == pair.agents["A1"].pid
    r = pair.run("ping-agent", "A1", timeout=30)
    assert r.returncode == 0, str(r)


# --------------------------------------------------------------------------- raw limits


def _client(url: str, timeout: float) -> aiomqtt.Client:
    host, port = split_url(url)
    return aiomqtt.Client(host, port, identifier=f"fte-matrix-{uuid.uuid4().hex[:10]}", timeout=timeout)


async def _round_trip(url: str, topic: str, payload: bytes, timeout: float = 20) -> aiomqtt.Message:
    async with _client(url, timeout) as sub:
        await sub.subscribe(topic, qos=1)
        async with _client(url, timeout) as pub:
            await pub.publish(topic, payload, qos=1)
        return await asyncio.wait_for(sub.messages.__anext__(), timeout)


def test_largest_chunk_message_passes(kind: str, mbroker: BrokerProcess) -> None:
    """agentChunkSize may be up to 16 MiB; a chunk message is that plus a 32-byte frame header (QoS 1)."""
    payload = os.urandom(MAX_CHUNK_BYTES + 32)
    topic = f"{PROFILES[kind].prefix}/Data/matrix/{uuid.uuid4().hex}"
    m = asyncio.run(_round_trip(mbroker.url, topic, payload))
    assert bytes(m.payload) == payload  # type: ignore[arg-type]
    assert m.qos == 1


# What a SIGKILLed broker still has after its restart: the test brokers of amqtt (in memory) and Mosquitto
# (persistence false, as config/mosquitto.conf) keep nothing; NATS keeps retained messages in JetStream,
# RabbitMQ in its DETS store (written every few seconds, hence the wait before the kill).
RETAINED_SURVIVES_RESTART = {"amqtt": False, "mosquitto": False, "nats": True, "rabbitmq": True}


@pytest.mark.fault
def test_retained_status_after_a_broker_restart(kind: str, killable: BrokerProcess) -> None:
    topic = f"{PROFILES[kind].prefix}/Agents/R{uuid.uuid4().hex[:8]}"

    async def publish() -> None:
        async with _client(killable.url, 10) as c:
            await c.publish(topic, b'{"status": "READY"}', qos=1, retain=True)

    async def read() -> bytes | None:
        async with _client(killable.url, 10) as c:
            await c.subscribe(topic, qos=1)
            try:
                m = await asyncio.wait_for(c.messages.__anext__(), 2)
            except asyncio.TimeoutError:
                return None
            return bytes(m.payload)  # type: ignore[arg-type]

    asyncio.run(publish())
    assert asyncio.run(read()) == b'{"status": "READY"}'
    if kind == "rabbitmq":
        # its retained store reaches the disk only every few seconds (mqtt.retained_message_store_dets_sync_interval,
        # 2 s by default): measured, a message retained 2.5 s before a SIGKILL was lost, one retained 5 s before kept
        time.sleep(5)
    killable.kill()
    killable.restart()
    kept = asyncio.run(read()) is not None
    assert kept == RETAINED_SURVIVES_RESTART[kind]


def _dot_is_a_broker_limitation(kind: str) -> str | None:
    if kind == "rabbitmq":
        return (f"RabbitMQ {broker_version(kind)} maps MQTT '/' to AMQP '.' and back, so a '.' inside a topic level "
                "becomes a level separator: SYSTEM.FTE/Agents/A1 is delivered as SYSTEM/FTE/Agents/A1 "
                "(use topicPrefix=SYSTEM_FTE and agent names without '.')")
    if kind == "nats":
        v = nats_version() or "0"
        if tuple(int(x) for x in v.split(".")[:2]) < (2, 10):
            return (f"NATS {v} refuses '.' in MQTT topics ('characters ' ' and '.' not supported for MQTT topics') "
                    "and closes the connection; 2.10 maps it to '//' (nats-server PR #4243) "
                    "(use topicPrefix=SYSTEM_FTE and agent names without '.')")
    return None


def test_default_prefix_with_a_dot_round_trips(kind: str, mbroker: BrokerProcess,
                                               request: pytest.FixtureRequest) -> None:
    """The default topicPrefix SYSTEM.FTE has a '.' in a topic level: does the broker keep the topic as is?"""
    reason = _dot_is_a_broker_limitation(kind)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    topic = f"SYSTEM.FTE/Agents/A{uuid.uuid4().hex[:8]}"
    try:
        m = asyncio.run(_round_trip(mbroker.url, topic, b"{}", timeout=3))
    except (aiomqtt.MqttError, asyncio.TimeoutError) as exc:
        pytest.fail(f"{topic}: {type(exc).__name__}: {exc}")
    assert str(m.topic) == topic
