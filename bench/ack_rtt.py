"""Round trip of a small QoS 1 message through a broker, idle and while 256 KiB messages flow: shows whether
the broker holds small messages for the client's delayed ACK (Nagle's algorithm on its side).

    python bench/ack_rtt.py --url mqtt://127.0.0.1:PORT [--quick-acks none|once|per-read] [--samples 30]

Client `a` publishes a ping (QoS 1), client `b` echoes it (QoS 1), `a` times it: the broker's PUBACK to `a`
and then the echo are two small writes to `a`'s connection, the pattern of a source's PUBACK and the
destination's ack behind it. Quick ACKs (TCP_QUICKACK) on both clients: none, once after connecting, or after
every read of a packet's body as agent.quickack does. Prints one line per phase: median, p90, max (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent.quickack import ack_reads_at_once  # noqa: E402


async def main(url: str, mode: str, samples: int) -> None:
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 1883
    opts = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(host, port, identifier=f"rtt-a-{os.getpid()}", socket_options=opts,
                              max_inflight_messages=64) as a, \
            aiomqtt.Client(host, port, identifier=f"rtt-b-{os.getpid()}", socket_options=opts,
                           max_inflight_messages=64) as b:
        a.pending_calls_threshold = 1 << 16
        for c in (a, b):
            if mode == "once":
                c._client._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            elif mode == "per-read":
                ack_reads_at_once(c._client)
        await a.subscribe("rtt/back", qos=1)
        await b.subscribe("rtt/ping", qos=1)
        await b.subscribe("rtt/bulk", qos=1)

        async def echo() -> None:
            async for m in b.messages:
                if str(m.topic) == "rtt/ping":
                    await b.publish("rtt/back", m.payload, qos=1)

        waiters: dict[bytes, asyncio.Future[float]] = {}

        async def receive() -> None:
            async for m in a.messages:
                f = waiters.pop(bytes(m.payload), None)  # type: ignore[arg-type]
                if f is not None:
                    f.set_result(time.perf_counter())

        tasks = [asyncio.create_task(echo()), asyncio.create_task(receive())]

        async def round_trips() -> list[float]:
            out = []
            for _ in range(samples):
                key = os.urandom(8)
                f = asyncio.get_running_loop().create_future()
                waiters[key] = f
                t0 = time.perf_counter()
                await a.publish("rtt/ping", key, qos=1)
                out.append((await asyncio.wait_for(f, 10)) - t0)
                await asyncio.sleep(0.005)
            return out

        idle = await round_trips()
        stop = False
        payload = os.urandom(256 * 1024)

        async def bulk() -> None:
            while not stop:
                await a.publish("rtt/bulk", payload, qos=1)

        flowing = asyncio.create_task(bulk())
        busy = await round_trips()
        stop = True
        await flowing
        for t in tasks:
            t.cancel()
    for name, xs in (("idle", idle), ("while 256 KiB messages flow", busy)):
        ms = sorted(x * 1000 for x in xs)
        print(f"{name}: median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * len(ms))]:.1f}, max {ms[-1]:.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--quick-acks", choices=("none", "once", "per-read"), default="none")
    ap.add_argument("--samples", type=int, default=30)
    a = ap.parse_args()
    asyncio.run(main(a.url, a.quick_acks, a.samples))
