"""After a SIGKILL of one node of a 3-node NATS cluster: how long new MQTT subscriptions are affected.

A measurement, not a test (docs/brokers.md, "A NATS cluster", records its output). It starts a cluster
(tests/support/nats_cluster.py: JetStream clustered, stream_replicas and consumer_replicas 3), checks that a
fresh MQTT client can subscribe at QoS 1 and receive its own QoS 1 message on every node, SIGKILLs node 1,
and then, once a second for ``--seconds``, on each surviving node: a new client (new client id, clean
session, as the agents connect) subscribes QoS 1 to a topic of its own, publishes one QoS 1 message to it
and waits up to ``--probe-timeout`` seconds for it. Beside it, what the survivors' ``/jsz`` says of the
dead node: when the JetStream meta group first reports it ``offline`` (only then does NATS stop placing new
assets, such as the consumer behind a new QoS 1 subscription, on it).

    python bench/nats_cluster_kill.py [--seconds 300] [--probe-timeout 5] [--consumer-replicas 1]
                                      [--restart-at SECONDS] [--mqtt-config LINE]

With ``--restart-at`` the node is started again (same ports, its store) and the probes go on, on every node.
Prints one line per second and a summary (JSON on the last line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.brokers import split_url  # noqa: E402
from tests.support.nats_cluster import NatsCluster  # noqa: E402


async def probe(url: str, timeout: float) -> tuple[bool, float, str]:
    """(ok, seconds, error): a new clean-session client subscribes QoS 1 and gets its own QoS 1 message."""
    host, port = split_url(url)
    topic = f"bench/kill/{secrets.token_hex(4)}"
    t0 = time.monotonic()

    async def run() -> None:
        async with aiomqtt.Client(host, port, identifier=f"k{secrets.token_hex(6)}", clean_session=True,
                                  timeout=timeout) as c:
            await c.subscribe(topic, qos=1)
            await c.publish(topic, b"x", qos=1)
            async for _ in c.messages:
                return

    try:
        await asyncio.wait_for(run(), timeout)
        return True, time.monotonic() - t0, ""
    except (asyncio.TimeoutError, aiomqtt.MqttError, OSError) as exc:
        return False, time.monotonic() - t0, type(exc).__name__ + (f": {exc}" if str(exc) else "")


def offline_in_meta(cluster: NatsCluster, dead: str) -> bool:
    for node in cluster.alive():
        report = node.jsz() or {}
        for peer in (report.get("meta_cluster") or {}).get("replicas") or []:
            if peer.get("name") == dead and peer.get("offline"):
                return True
    return False


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--probe-timeout", type=float, default=5)
    ap.add_argument("--mqtt-config", action="append", default=[], help="a line for every node's mqtt block")
    ap.add_argument("--consumer-replicas", type=int, default=None, help="consumer_replicas (default 3, as streams)")
    ap.add_argument("--restart-at", type=float, default=None, help="restart the killed node this many seconds after")
    ap.add_argument("--kill", type=int, default=0, help="index of the node to kill (0: node 1; -1: kill none, the baseline)")
    args = ap.parse_args()
    with NatsCluster(mqtt_config=args.mqtt_config, consumer_replicas=args.consumer_replicas) as cluster:
        for url in cluster.urls:
            ok, took, err = await probe(url, args.probe_timeout)
            print(f"before the kill: {url} ok={ok} {took:.2f}s {err}", flush=True)
        dead = cluster.nodes[args.kill].server_name if args.kill >= 0 else "(none)"
        print(f"meta leader {cluster.meta_leader()}; killing {dead}", flush=True)
        t_kill = time.monotonic()
        if args.kill >= 0:
            cluster.kill(args.kill)
        survivors = [n.url for i, n in enumerate(cluster.nodes) if i != args.kill]
        rows, marked_offline, restarted = [], None, None
        while (now := time.monotonic() - t_kill) < args.seconds:
            if args.restart_at is not None and args.kill >= 0 and restarted is None and now >= args.restart_at:
                cluster.restart(args.kill)
                restarted = time.monotonic() - t_kill
                print(f"t={restarted:6.1f}s {dead} restarted and ready", flush=True)
                survivors = cluster.urls
            results = await asyncio.gather(*(probe(u, args.probe_timeout) for u in survivors))
            if marked_offline is None and offline_in_meta(cluster, dead):
                marked_offline = time.monotonic() - t_kill
            rows.append({"t": round(now, 1), "ok": [r[0] for r in results], "took": [round(r[1], 2) for r in results],
                         "err": [r[2] for r in results], "offline": marked_offline is not None,
                         "restarted": restarted is not None})
            print(f"t={now:6.1f}s " + " ".join(f"{'ok' if r[0] else 'FAIL'}({r[1]:.2f}s{' ' + r[2] if r[2] else ''})"
                                                 for r in results)
                  + (f"  [meta: {dead} offline since {marked_offline:.0f}s]" if marked_offline else ""), flush=True)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t_kill - now)))
        failed = [r["t"] for r in rows if not all(r["ok"])]
        summary = {
            "nats": "2.9", "mqtt_config": args.mqtt_config, "consumer_replicas": args.consumer_replicas or 3, "probes": len(rows),
            "failed_probes": len(failed), "first_failure_s": failed[0] if failed else None,
            "last_failure_s": failed[-1] if failed else None, "dead_marked_offline_s": marked_offline,
            "restarted_s": restarted,
            "failed_after_restart": sum(1 for r in rows if r["restarted"] and not all(r["ok"])),
            "slowest_ok_s": max((t for r in rows for t, ok in zip(r["took"], r["ok"]) if ok), default=None),
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
