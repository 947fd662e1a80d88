"""Broker lists and bounded connects (issue 16), with real agents, real Mosquittos and a TCP forwarder we
control (tests.support.brokers.ThreadedTcpProxy). Its modes: forward (default), refuse (``cut()``: the
listener is closed), accept-then-close (forwarding to a broker that is down: the forwarder accepts, cannot
reach the broker and closes, as HAProxy, a Kubernetes Service or stunnel do), accept-then-reset
(``cut(refuse_new=False)``) and accept-and-silent (``pause()``: accepted, nothing ever answers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agents import script
from tests.support.brokers import BrokerProcess, MosquittoProcess, ThreadedTcpProxy, free_port, split_url

from .conftest import Dirs
from .helpers import MiB, FaultEnv, finish, make_file, part_files, part_size, sha256, wait_part

pytestmark = pytest.mark.timeout(150)


def _outage(broker: BrokerProcess, down: float) -> None:
    broker.kill()
    time.sleep(down)  # the outage itself: the time the broker is down is what the test is about
    broker.restart()


def test_two_outages_behind_a_forwarder_that_accepts_and_closes_complete_within_rt_8(
        env: FaultEnv, fresh_mosquitto: BrokerProcess, dirs: Dirs) -> None:
    """The issue's scenario: the source reaches the broker through a forwarder that, while the broker is down,
    accepts each connection and closes it. Each attempt used to hang 4 s (aiomqtt's CONNACK wait), so two 5 s
    outages with -rt 8 ended in 69; now a closed attempt is one quick failure and the transfer completes."""
    env.add_agent("A1", dirs.src, proxy=True)  # the proxy forwards; with the broker down it accepts and closes
    env.add_agent("A2", dirs.dst)
    env.start_agent("A1")
    env.start_agent("A2")
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    digest = make_file(src, 256 * MiB)
    proxy = env.proxies["A1"]

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "8", "-w",
                       "--json", str(src))
    wait_part(dst, 8 * MiB, 30, env)
    accepted = proxy.connections_accepted
    _outage(fresh_mosquitto, 5.0)
    # the forwarder accepted the source's attempts during the outage (and closed them): the mode under test
    assert proxy.connections_accepted > accepted
    held = wait_part(dst, part_size(dst) + 8 * MiB, 30, env)  # resumed: data flows again
    assert held < 256 * MiB - 32 * MiB, "the file must still be in flight for the second outage"
    _outage(fresh_mosquitto, 5.0)

    r = finish(client, 90, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert sha256(dst) == digest
    assert part_files(dirs.dst) == []


@pytest.fixture
def bad_broker(request: pytest.FixtureRequest, fresh_mosquitto: BrokerProcess) -> Iterator[str]:
    """A URL where no broker answers, in each way one can fail to: refused, accepted then reset, accepted
    and silent (only brokerConnectTimeout ends that one)."""
    mode = request.param
    if mode == "refused":
        yield f"mqtt://127.0.0.1:{free_port()}"
        return
    proxy = ThreadedTcpProxy(*split_url(fresh_mosquitto.url)).start()
    try:
        if mode == "reset":
            proxy.cut(refuse_new=False)
        else:
            proxy.pause()
        yield proxy.url
    finally:
        proxy.stop()


@pytest.mark.parametrize("bad_broker", ["refused", "reset", "silent"], indirect=True)
def test_an_agent_with_a_bad_and_a_good_broker_connects_to_the_second(
        env: FaultEnv, fresh_mosquitto: BrokerProcess, dirs: Dirs, bad_broker: str) -> None:
    env.add_agent("A1", dirs.src, brokerConnectTimeout=1)
    env.agent_urls["A1"] = f"{bad_broker},{fresh_mosquitto.url}"
    env.start_agent("A1")
    st = env.wait_status("A1", {"READY"})
    assert st["broker"] == fresh_mosquitto.url
    # fte-show-agent-details shows the node, from a command that has the same list
    r = env.run("show-agent-details", "A1", "--broker", f"{bad_broker},{fresh_mosquitto.url}")
    assert r.returncode == 0, str(r)
    assert any(line.split() == ["broker", fresh_mosquitto.url] for line in r.stdout.splitlines()), r.stdout


@pytest.fixture
def second_mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(workdir=tmp_path / "mosquitto2") as broker:
        yield broker


def test_two_brokers_the_first_killed_agents_move_to_the_second_and_the_transfer_completes(
        fte_home: Path, fresh_mosquitto: BrokerProcess, second_mosquitto: BrokerProcess, dirs: Dirs) -> None:
    """Two independent Mosquittos (not bridged), every agent and command listing both: a fake cluster, but it
    exercises the list. Retained messages do not move: each agent publishes its status anew on the second."""
    first, second = fresh_mosquitto, second_mosquitto
    env = FaultEnv(fte_home, f"{first.url},{second.url}")
    try:
        env.add_agent("A1", dirs.src)
        env.add_agent("A2", dirs.dst)
        env.start_agent("A1")
        env.start_agent("A2")
        assert env.status("A1")["broker"] == env.status("A2")["broker"] == first.url  # type: ignore[index]
        src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
        digest = make_file(src, 128 * MiB)

        client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "60", "-w",
                           "--json", str(src))
        wait_part(dst, 8 * MiB, 30, env)
        first.kill()  # and not restarted: the agents must move to the second

        r = finish(client, 120, env)
        assert r.returncode == 0, f"{r}\n{env.logs()}"
        assert sha256(dst) == digest
        assert part_files(dirs.dst) == []
        for name in ("A1", "A2"):
            st = env.wait_status(name, {"READY"})
            assert st["broker"] == second.url, st
        r = env.run("show-agent-details", "A1")
        assert r.returncode == 0, str(r)
        assert second.url in r.stdout, r.stdout
    finally:
        env.close()


BAD_LIST = "mqtt://127.0.0.1:1883,mqtt//x:1"


def test_a_malformed_list_from_the_cli_is_one_error_naming_the_entry(env: FaultEnv) -> None:
    r = env.run("show-agent-details", "A1", "--broker", BAD_LIST)
    assert r.returncode != 0
    assert 'entry 2 "mqtt//x:1" is not a URL' in r.stderr, str(r)
    assert "Traceback" not in r.stderr


def test_a_malformed_list_stops_the_agent_at_start_naming_the_entry(env: FaultEnv, dirs: Dirs) -> None:
    env.add_agent("A1", dirs.src)
    environ = {**env.env, "FTE_BROKER_URL": BAD_LIST}
    import subprocess

    r = subprocess.run([script("start-agent"), "A1", "-F"], env=environ, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "brokerUrl" in text and 'entry 2 "mqtt//x:1" is not a URL' in text, text
    assert "Traceback" not in text
