"""A node of a real 3-node NATS cluster is SIGKILLed mid-transfer; the source agent on it fails over.

A1 (the source) is on node 1 with the broker list ``node1,node2,node3``; A2 (the destination) on node 2
with ``node2,node3,node1``. Before the kill: a template and a monitor are stored. The node A1 is on (its
status's ``broker``: node 1, unless connecting to it failed) is SIGKILLed once part of a 32 MiB file has arrived: A1 loses its broker, takes the next
URL of its list and resumes from its checkpoint; ``fte-create-transfer -w`` (connected to a survivor)
sees the transfer complete and the file is intact. Through the survivors, ``fte-list-agents``,
``fte-list-templates`` and ``fte-list-monitors`` still show what was retained before the kill: the
retained messages live in a JetStream stream replicated to all three nodes.

Broker lists are issue 16's contract (``brokerUrl=URL1,URL2,...``: tried in order, after a loss starting
with the next). Where this checkout's agent does not accept a list yet, the test is skipped saying so.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.policy import HEARD_INTERVAL
from tests.fault.helpers import MiB, part_size, sha256
from tests.support.nats_cluster import CLUSTER_PREFIX, ClusterEnv, NatsCluster

PROPERTIES = {"transferAckTimeout": 2000, "transferAckTimeoutRetries": 2, "brokerKeepalive": 5}


pytestmark = pytest.mark.timeout(420)


def until(deadline: float, run: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """`run()` again (once a second) until it exits 0 with `done` true of its result, or `deadline` passes; the
    last result. With a node SIGKILLed, NATS 2.9 refuses some new subscriptions, and a command read through a
    survivor has been seen (in CI) to get no retained status where the next command got it: a user runs the
    command again, and so does the test, within a bound."""
    while True:
        r = run()
        if (r.returncode == 0 and done(r)) or time.monotonic() > deadline:
            return r
        time.sleep(1)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "in").mkdir(parents=True)
    (d / "out").mkdir()
    return d


@pytest.fixture
def agents(nats_cluster: NatsCluster, tmp_path: Path, data: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[ClusterEnv]:
    monkeypatch.setenv("FTE_TOPIC_PREFIX", CLUSTER_PREFIX)
    env = ClusterEnv(tmp_path / "fte_home", nats_cluster.urls[2])
    try:
        env.create_agent_on("A1", nats_cluster.broker_list(first=0), sandbox=data, **PROPERTIES)
        env.create_agent_on("A2", nats_cluster.broker_list(first=1), sandbox=data, **PROPERTIES)
        env.start_agent("A1", timeout=60)
        env.start_agent("A2", timeout=60)
        yield env
    finally:
        env.stop_all()



def test_source_fails_over_when_its_node_is_killed_mid_transfer(agents: ClusterEnv, nats_cluster: NatsCluster,
                                                                data: Path) -> None:
    env = agents
    # retained before the kill: statuses (the agents'), a template, a monitor on A1 (the agent that moves)
    template, monitor = f"tf{secrets.token_hex(4)}", f"mf{secrets.token_hex(4)}"
    r = env.run("create-template", "-tn", template, "-sa", "A1", "-da", "A2", "-dd", str(data / "out"),
                str(data / "in" / "later.bin"))
    assert r.returncode == 0, str(r)
    watch = data / "in" / "watch"
    watch.mkdir()
    r = env.run("create-monitor", "-ma", "A1", "-mn", monitor, "-md", str(watch), "-tr", "match,*.csv",
                "-pi", "5", "-pu", "seconds", "-da", "A2", "-dd", str(data / "out"))
    assert r.returncode == 0, f"{r}\n{env.context(nats_cluster)}"
    # the node A1 is on (the first of its list, unless connecting to it failed): the one to kill
    details = env.run("show-agent-details", "A1", "--json", timeout=30)
    assert details.returncode == 0, str(details)
    on = json.loads(details.stdout)["broker"]
    assert on in nats_cluster.urls, str(details)
    victim = nats_cluster.urls.index(on)
    survivors = [u for u in nats_cluster.urls if u != on]
    env = ClusterEnv(env.home, survivors[-1], agents=env.agents, agent_brokers=env.agent_brokers)  # the commands through a survivor

    src, dst = data / "in" / "big.bin", data / "out" / "big.bin"
    size = 32 * MiB
    with open(src, "wb") as fh:
        for _ in range(size // (4 * MiB)):
            fh.write(os.urandom(4 * MiB))
    digest = sha256(src)
    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "300", "--json", str(src))
    try:
        deadline = time.monotonic() + 90
        while part_size(dst) < 4 * MiB:
            assert client.poll() is None, f"the transfer ended before the kill: {client.communicate()}"
            assert time.monotonic() < deadline, f"no 4 MiB arrived in 90 s\n{env.context(nats_cluster)}"
            time.sleep(0.05)
        nats_cluster.kill(victim)  # SIGKILL of A1's node: no goodbye to A1, nor to the routes
        assert part_size(dst) < size, "the transfer must still be running when the node dies"
        out, err = client.communicate(timeout=330)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, f"exit {client.returncode}\n{out}\n{err}\n{env.context(nats_cluster)}"
    assert json.loads(out.strip().splitlines()[-1])["result_code"] == 0, out
    assert sha256(dst) == digest
    assert list((data / "out").glob("*.part")) == []

    # A1 really moved: its status names a surviving node, its log a connection there after the kill. A last
    # will of a connection A1 abandoned while failing over may be retained on a node after A1's READY: the
    # agent republishes its status with every heartbeat (HEARD_INTERVAL), so it is right within one interval
    details = until(time.monotonic() + 2 * HEARD_INTERVAL + 30,
                    lambda: env.run("show-agent-details", "A1", "--json", timeout=30),
                    lambda r: json.loads(r.stdout)["broker"] in survivors)
    assert details.returncode == 0, f"{details}\n{env.context(nats_cluster)}"
    assert json.loads(details.stdout)["broker"] in survivors, f"{details}\n{env.context(nats_cluster)}"
    log = env.agents["A1"].log.read_text(errors="replace")
    assert any(f"connected to {u}" in log for u in survivors), env.agents["A1"].log_tail(60)

    # through each survivor: what was retained before the kill is still there
    for url in survivors:
        through = ClusterEnv(env.home, url)
        # as above: a late last will is replaced within one HEARD_INTERVAL
        r = until(time.monotonic() + 2 * HEARD_INTERVAL + 30,
                  lambda: through.run("list-agents", "A1", "A2", "--json", timeout=60),
                  lambda r: {n: s["status"] for n, s in json.loads(r.stdout).items()} == {"A1": "READY", "A2": "READY"})
        assert r.returncode == 0, f"{url}: {r}\n{env.context(nats_cluster)}"
        statuses = {n: s["status"] for n, s in json.loads(r.stdout).items()}
        assert statuses == {"A1": "READY", "A2": "READY"}, f"{url}: {r}\n{env.context(nats_cluster)}"
        r = until(time.monotonic() + 60, lambda: through.run("list-templates", "--json", template, timeout=60),
                  lambda r: json.loads(r.stdout)["name"] == template)
        assert r.returncode == 0 and json.loads(r.stdout)["name"] == template, f"{url}: {r}"
        r = until(time.monotonic() + 60,
                  lambda: through.run("list-monitors", "-ma", "A1", "-mn", monitor, "--json", timeout=60),
                  lambda r: [m["name"] for m in json.loads(r.stdout)] == [monitor])
        assert r.returncode == 0 and [m["name"] for m in json.loads(r.stdout)] == [monitor], f"{url}: {r}"
    # the clean-up, side by side: through a cluster with a node down each command waits on refused
    # subscriptions (about 16 s each on a loaded machine), not on the CPU
    cleanup = [env.popen("delete-templates", template), env.popen("delete-monitor", "-ma", "A1", "-mn", monitor)]
    for p in cleanup:
        try:
            p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def test_agents_that_connect_after_a_node_died_subscribe_and_transfer(nats_cluster: NatsCluster, tmp_path: Path,
                                                                      data: Path, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    """With a node SIGKILLed, NATS 2.9 refuses about 4 in 10 new QoS 1 subscriptions on the survivors (SUBACK
    0x80 after 4 s) for as long as the node is away (bench/nats_cluster_kill.py). Agents that connect then ask
    again for a refused subscription (agent.link, SUBSCRIBE_ATTEMPTS): they become READY with every
    subscription, and transfer."""
    monkeypatch.setenv("FTE_TOPIC_PREFIX", CLUSTER_PREFIX)
    nats_cluster.kill(0)
    env = ClusterEnv(tmp_path / "fte_home", nats_cluster.urls[2])
    try:
        env.create_agent_on("B2", nats_cluster.urls[1], sandbox=data, **PROPERTIES)
        env.create_agent_on("B3", nats_cluster.urls[2], sandbox=data, **PROPERTIES)
        env.start_agent("B2", timeout=180)  # on 2 loaded CPUs a degraded node has taken 2 min to let one agent in
        env.start_agent("B3", timeout=180)
        for i, (source, target) in enumerate((("B2", "B3"), ("B3", "B2"))):
            src, dst = data / "in" / f"after{i}.bin", data / "out" / f"after{i}.bin"
            src.write_bytes(os.urandom(2 * MiB + i))
            r = env.run("create-transfer", "-sa", source, "-da", target, "-df", str(dst), "-w", "120", "--json",
                        str(src), timeout=180)
            assert r.returncode == 0, f"{r}\n{env.context(nats_cluster)}"
            assert sha256(dst) == sha256(src)
        for name in ("B2", "B3"):
            text = env.agents[name].log.read_text(errors="replace")
            assert "refused the subscription" not in text or " times: nothing sent there" not in text, \
                env.agents[name].log_tail(60)
    finally:
        env.stop_all()
