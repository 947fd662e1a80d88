"""Agents on different nodes of a real 3-node NATS cluster (tests/support/nats_cluster.py) work together.

A1 is on node 1, A2 on node 2, A3 on node 3 (each agent's brokerUrl is its node's MQTT listener). Each
sends to the next, the commands go through yet another node, and what one node took (retained statuses,
a template, a monitor) is read on the others. The failover (a node SIGKILLed mid-transfer) is
tests/fault/test_nats_cluster_failover.py.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.helpers import MiB, sha256
from tests.support.nats_cluster import CLUSTER_PREFIX, ClusterEnv, NatsCluster

pytestmark = pytest.mark.timeout(240)

AGENTS = ("A1", "A2", "A3")
# as the broker matrix's NATS profile: stalls noticed in seconds, a JetStream store not taken for a stall
PROPERTIES = {"transferAckTimeout": 2000, "transferAckTimeoutRetries": 2, "brokerKeepalive": 5}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "in").mkdir(parents=True)
    (d / "out").mkdir()
    return d


@pytest.fixture
def spread(nats_cluster: NatsCluster, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClusterEnv]:
    """A1, A2, A3 each on a node of its own; the commands through node 3."""
    monkeypatch.setenv("FTE_TOPIC_PREFIX", CLUSTER_PREFIX)  # FteEnv.status() reads statuses in this process
    env = ClusterEnv(tmp_path / "fte_home", nats_cluster.urls[2])
    try:
        for name, url in zip(AGENTS, nats_cluster.urls):
            env.create_agent_on(name, url, sandbox=data, **PROPERTIES)
        # side by side (each start is mostly waits on its node); a loaded machine: connecting to a node has taken
        # 7 s, its READY 40 s to reach node 3
        env.start_agents(list(AGENTS), timeout=90)
        yield env
    finally:
        env.stop_all()



def test_agents_on_different_nodes_transfer_to_each_other(spread: ClusterEnv, nats_cluster: NatsCluster,
                                                          data: Path) -> None:
    # each agent's status, published on its own node, is read through node 3 (retained, replicated)
    r = spread.run("list-agents", *AGENTS, "--json", timeout=30)
    assert r.returncode == 0, str(r)
    assert {n: s["status"] for n, s in json.loads(r.stdout).items()} == dict.fromkeys(AGENTS, "READY"), str(r)
    # a ring: node 1 -> node 2 -> node 3 -> node 1, the transfers at the same time
    procs = []
    for i, source in enumerate(AGENTS):
        target = AGENTS[(i + 1) % len(AGENTS)]
        src = data / "in" / f"{source}.bin"
        src.write_bytes(os.urandom(3 * MiB + 777 * i))
        dst = data / "out" / f"{source}-to-{target}.bin"
        procs.append((src, dst, spread.popen("create-transfer", "-sa", source, "-da", target, "-df", str(dst),
                                             "-w", "120", "--json", str(src))))
    for src, dst, p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0, f"{src.name}: exit {p.returncode}\n{out}\n{err}\n{spread.context(nats_cluster, 30, 15)}"
        assert json.loads(out.strip().splitlines()[-1])["result_code"] == 0, out
        assert sha256(dst) == sha256(src), dst
    assert list((data / "out").glob("*.part")) == []


def test_what_one_node_took_is_read_on_the_others(spread: ClusterEnv, nats_cluster: NatsCluster, data: Path) -> None:
    """A template stored through node 1 and a monitor created (through node 2) on A3 on node 3 are listed
    through every node: the retained messages are in a stream replicated to all three."""
    through = [ClusterEnv(spread.home, url) for url in nats_cluster.urls]
    template, monitor = f"tc{secrets.token_hex(4)}", f"mc{secrets.token_hex(4)}"
    r = through[0].run("create-template", "-tn", template, "-sa", "A1", "-da", "A2", "-dd", str(data / "out"),
                       str(data / "in" / "x.bin"))
    assert r.returncode == 0, str(r)
    watch = data / "in" / "watch"
    watch.mkdir()
    r = through[1].run("create-monitor", "-ma", "A3", "-mn", monitor, "-md", str(watch), "-tr", "match,*.csv",
                       "-pi", "5", "-pu", "seconds", "-da", "A1", "-dd", str(data / "out"))
    assert r.returncode == 0, f"{r}\n{spread.context(nats_cluster, 30, 15)}"
    try:
        for env in through:
            r = env.run("list-templates", "--json", template, timeout=30)
            assert r.returncode == 0 and json.loads(r.stdout)["name"] == template, f"{env.broker_url}: {r}"
            r = env.run("list-monitors", "-ma", "A3", "-mn", monitor, "--json", timeout=30)
            assert r.returncode == 0, f"{env.broker_url}: {r}"
            assert [m["name"] for m in json.loads(r.stdout)] == [monitor], f"{env.broker_url}: {r}"
    finally:
        through[0].run("delete-templates", template)
        through[1].run("delete-monitor", "-ma", "A3", "-mn", monitor)
