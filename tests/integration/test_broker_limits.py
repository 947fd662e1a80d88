"""The broker probe (agent/broker_probe.py) against real brokers, with agents as real processes.

* Mosquitto with ``max_packet_size 100000`` and agents with ``agentChunkSize`` 256 KiB: the broker would throw
  out any agent that sends a chunk (the transfer then recovers for ever). The source agent's probe finds that
  64 KiB chunks pass, says so once in its log and in its retained status, and a 2 MiB transfer arrives intact
  without the agent's own connection ever being thrown out.
* A transfer started with the probe off (stuck: the broker throws the source out on every chunk), resumed by
  the same agent restarted with the probe on: the windows built with 256 KiB chunks are rebuilt with the
  chunk size the probe found, and the transfer completes.
* A healthy broker: the status says ``ok``.
* NATS 2.9 with the default prefix ``SYSTEM.FTE``: the agent logs one clear error saying what to set, and runs on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.agents import AgentProcess, FteEnv, wait_until
from tests.support.brokers import MosquittoProcess, find_mosquitto
from tests.support.more_brokers import NatsMqttProcess, find_nats_server, nats_version

pytestmark = pytest.mark.timeout(90)

KiB, MiB = 1024, 1024 * 1024
LIMIT = 100_000  # Mosquitto max_packet_size: a 64 KiB chunk fits, a 128 KiB one does not
CHUNK = 256 * KiB
# a short ack timeout so that the stuck transfer of test_resumed_transfer... stalls within seconds
PROPERTIES = {"agentChunkSize": CHUNK, "transferAckTimeout": 2000, "transferAckTimeoutRetries": 2,
              "brokerKeepalive": 5}
LOWERED = (f"agentChunkSize lowered from {CHUNK} to {64 * KiB} for this broker connection; raise the broker's "
           f"max_packet_size/max_payload or set agentChunkSize={64 * KiB}")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt install mosquitto)")
    with MosquittoProcess(workdir=tmp_path_factory.mktemp("mosq-limited"),
                          extra_config=[f"max_packet_size {LIMIT}"]) as broker:
        yield broker


def _env(tmp_path: Path, url: str, names: tuple[str, ...] = ("A1", "A2"), **extra: object) -> Iterator[FteEnv]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    env = FteEnv(tmp_path / "fte_home", url)
    try:
        for name in names:
            env.create_agent(name, sandbox=data, **{**PROPERTIES, **extra})
        yield env
    finally:
        env.stop_all()


def make_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def oversize_kicks(broker: MosquittoProcess, client_prefix: str) -> int:
    """How many times Mosquitto threw out a client whose id starts with ``client_prefix`` for a big packet."""
    text = broker.log_path.read_text(errors="replace")
    return len(re.findall(rf"Client {re.escape(client_prefix)}\S* disconnected due to oversize packet", text))


LOSS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) WARNING fte\.link: broker connection to \S+ lost or refused",
                  re.M)


def losses(agent: AgentProcess) -> list[float]:
    """When (seconds, from the agent's log) the agent's broker connection was lost, in order."""
    text = agent.log.read_text(errors="replace")
    return [datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timestamp() + int(ms) / 1000 for day, ms in LOSS.findall(text)]


def test_the_probe_lowers_the_chunk_size_and_a_transfer_completes(tmp_path: Path, limited: MosquittoProcess) -> None:
    env_iter = _env(tmp_path, limited.url)
    env = next(env_iter)
    try:
        data = tmp_path / "data"
        for name in ("A1", "A2"):
            env.start_agent(name)
        st = env.status("A1")
        assert st is not None, "no status"
        assert st["chunk_size"] == 64 * KiB, st
        assert st["broker_check"].startswith("warning: topics come back as published; broker refused a "), st
        assert LOWERED in st["broker_check"], st

        src, dst = data / "two.bin", data / "out" / "two.bin"
        dst.parent.mkdir()
        want = make_file(src, 2 * MiB + 4321)
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "60", "--json", str(src),
                    timeout=90)
        assert r.returncode == 0, f"{r}\n{env.agents['A1'].log_tail()}\n{limited.log_tail()}"
        assert json.loads(r.stdout.strip().splitlines()[-1])["result_code"] == 0
        assert digest(dst) == want
        assert list(dst.parent.glob("*.part")) == []

        log = env.agents["A1"].log.read_text(errors="replace")
        assert log.count(LOWERED) == 1, log  # a WARNING, once
        assert re.search(r" WARNING fte\.agent: broker refused a \d+-byte message; " + re.escape(LOWERED), log), log
        # the probe's connections were thrown out (twice per refused size), never the agents' own
        assert oversize_kicks(limited, "fte-probe-A1-") == 4, limited.log_tail()
        assert oversize_kicks(limited, "fte-agent-") == 0, limited.log_tail()
        assert "recovering" not in env.run("logs", "-a", "A1", "--json", timeout=30).stdout
    finally:
        next(env_iter, None)


def test_resumed_transfer_takes_the_chunk_size_the_probe_found(tmp_path: Path, limited: MosquittoProcess) -> None:
    """A transfer stuck with 256 KiB chunks (probe off: the broker throws the source out on each one) completes
    once its agent restarts with the probe on: _apply_holdings rebuilds its window with 64 KiB chunks."""
    env_iter = _env(tmp_path, limited.url)
    env = next(env_iter)
    try:
        data = tmp_path / "data"
        props = env.agent_dir("A1") / "agent.properties"
        with open(props, "a") as fh:
            fh.write("brokerProbe=false\n")
        env.start_agent("A2")
        a1 = env.start_agent("A1")
        assert env.status("A1")["broker_check"] == "off (brokerProbe=false)"  # type: ignore[index]
        src, dst = data / "stuck.bin", data / "out" / "stuck.bin"
        dst.parent.mkdir()
        want = make_file(src, 1 * MiB + 17)
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "--json", str(src), timeout=30)
        assert r.returncode == 0, str(r)
        tid = json.loads(r.stdout.strip().splitlines()[-1])["transfer_id"]
        # the bug this probe fixes: the source agent is thrown out by the broker on its first chunk
        wait_until(lambda: oversize_kicks(limited, "fte-agent-A1") >= 1, 20,
                   f"the broker never threw A1 out:\n{limited.log_tail()}")
        # and again after each reconnection, but not in a storm: a connection thrown out soon after it came up
        # does not reset the backoff (agent.core.policy.STABLE_CONNECTION; it was about 60 reconnections a second). The
        # agent's own log stamps each loss to the millisecond; the test's view of Mosquitto's log lags. The
        # first connection may have lasted past STABLE_CONNECTION (a loaded machine took long to ask for the
        # transfer): the backoff then starts afresh after the first loss, so the three waits counted are those
        # after it (0.2 + 0.4 + 0.8 s either way, or longer).
        wait_until(lambda: len(losses(a1)) >= 5, 30, f"A1 was not thrown out again:\n{limited.log_tail()}")
        stamps = losses(a1)
        assert stamps[4] - stamps[1] >= 0.2 + 0.4 + 0.8 - 0.05, a1.log_tail()  # three backoff waits in between
        assert not dst.exists()
        a1.kill()
        with open(props, "a") as fh:
            fh.write("brokerProbe=true\n")  # the last one wins
        kicks = oversize_kicks(limited, "fte-agent-A1")
        env.start_agent("A1")
        wait_until(lambda: dst.exists() and digest(dst) == want, 40,
                   f"the resumed transfer did not complete:\n{env.agents['A1'].log_tail()}")
        rows = [json.loads(line) for line in env.run("logs", "-a", "A1", "--json", timeout=30).stdout.splitlines()
                if line.startswith("{")]
        row = next(t for t in rows if t["transfer_id"] == tid and t["role"] == "source")
        assert row["state"] == "complete" and row["recoveries"] >= 1, row
        assert oversize_kicks(limited, "fte-agent-A1") == kicks, limited.log_tail()  # never thrown out again
        assert list(dst.parent.glob("*.part")) == []
    finally:
        next(env_iter, None)


def test_a_transfer_too_big_to_negotiate_fails_at_once_and_says_why(tmp_path: Path, limited: MosquittoProcess) -> None:
    """1,000 files make a negotiation message of about 200 KB, which this broker (max_packet_size 100000) throws
    an agent out for. It was sent at every reconnection (thousands a minute: 2,406 in 40 s), and the transfer
    recovered for ever. Now the source fails the transfer at once with what to do, is never thrown out, and its
    "completed" event (too big with its 1,000 files) is published without the file list."""
    env_iter = _env(tmp_path, limited.url)
    env = next(env_iter)
    kicks = oversize_kicks(limited, "fte-agent-")  # the broker's log is the module's (earlier tests' kicks)
    try:
        data = tmp_path / "data"
        for name in ("A1", "A2"):
            env.start_agent(name)
        tree = data / "tree"
        for i in range(1000):
            (tree / f"d{i // 100}").mkdir(parents=True, exist_ok=True)
            (tree / f"d{i // 100}" / f"f{i:04d}.bin").write_bytes(os.urandom(100))
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), "-r", "-w", "60",
                    str(tree), timeout=90)
        assert r.returncode == 40, f"{r}\n{env.agents['A1'].log_tail()}"
        assert "does not fit through the broker" in r.stdout + r.stderr, str(r)
        assert "smaller transfers" in r.stdout + r.stderr, str(r)
        assert not (data / "out").exists()
        assert oversize_kicks(limited, "fte-agent-") == kicks, limited.log_tail()
        log = env.agents["A1"].log.read_text(errors="replace")
        assert "published without its file list" in log, log
        # asked for the transfer with its 1,000 files, the agent says its answer is too big (it sent nothing,
        # and the command waited for its timeout)
        tid = re.search(r"Transfer ([0-9a-f]{48}) started", r.stdout).group(1)  # type: ignore[union-attr]
        shown = env.run("show-transfer", tid, "-a", "A1", timeout=60)
        assert shown.returncode != 0 and "does not fit through the broker" in shown.stdout + shown.stderr, str(shown)
        # the agent goes on working: a transfer that fits
        src, dst = data / "small.bin", data / "out2" / "small.bin"
        dst.parent.mkdir()
        want = make_file(src, 5000)
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "60", str(src), timeout=90)
        assert r.returncode == 0, str(r)
        assert digest(dst) == want
    finally:
        next(env_iter, None)


def test_a_healthy_broker_is_ok(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    env_iter = _env(tmp_path, mosquitto.ensure_running().url, names=("A1",))
    env = next(env_iter)
    try:
        env.start_agent("A1")
        st = env.status("A1")
        assert st is not None
        assert st["chunk_size"] == CHUNK, st
        assert re.fullmatch(r"ok: topics come back as published; a \d+-byte message \(chunk size 262144\) passes",
                            st["broker_check"]), st
        r = env.run("show-agent-details", "A1", timeout=30)
        assert r.returncode == 0, str(r)
        assert re.search(r"^broker_check +ok: topics come back as published", r.stdout, re.M), r.stdout
        assert re.search(r"^chunk_size +262144$", r.stdout, re.M), r.stdout
    finally:
        next(env_iter, None)


def test_nats_2_9_refusing_a_dot_is_one_clear_error(tmp_path: Path) -> None:
    if not find_nats_server():
        pytest.skip("nats-server not installed (apt install nats-server)")
    v = nats_version() or "0"
    if tuple(int(x) for x in v.split(".")[:2]) >= (2, 10):
        pytest.skip(f"NATS {v} accepts '.' in MQTT topics")
    with NatsMqttProcess(workdir=tmp_path / "nats") as broker:
        env_iter = _env(tmp_path, broker.url, names=("A1",))  # the default topicPrefix, SYSTEM.FTE
        env = next(env_iter)
        try:
            a1 = env.start_agent("A1", wait_ready=False)  # its status topic has a '.': it can never be read
            try:
                wait_until(lambda: " ERROR fte.agent: broker check: " in a1.log.read_text(errors="replace"), 20,
                           "no broker check error in the agent's log")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{a1.log_tail()}\n{broker.log_tail()}") from None
            log = a1.log.read_text(errors="replace")
            line = next(x for x in log.splitlines() if " ERROR fte.agent: broker check: " in x)
            for words in ("closed the connection on the topic SYSTEM.FTE/Agents/A1/probe/", "NATS before 2.10",
                          "use topicPrefix=SYSTEM_FTE", "agent names without '.'"):
                assert words in line, line
            assert a1.alive(), a1.log_tail()
        finally:
            next(env_iter, None)
