"""The broker's ceiling: an aiomqtt publisher and subscriber in one process, no disk, no project code.

The same number of bytes as the transfer, published as messages of the same chunk size on one topic and
received by a second connection of the same process, with the same flow control as an agent: at most
`window` messages published and not yet received. QoS 1 publishes are not awaited one by one (their
PUBACKs are collected concurrently, like the agent does); QoS 0 publishes go straight to the socket.

    python bench/raw_ceiling.py --url mqtt://127.0.0.1:PORT --bytes N --chunk N --window N --qos 1
prints {"seconds": S, "bytes": N, "messages": M, "foreign_messages": F} (F: messages on other topics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from urllib.parse import urlparse

import aiomqtt

STALL_SECONDS = 60.0


async def measure(url: str, total: int, chunk: int, window: int, qos: int) -> dict[str, float]:
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 1883
    payload = os.urandom(chunk)
    n = max(1, -(-total // chunk))
    topic = f"fte-bench/raw/{secrets.token_hex(4)}"
    tag = secrets.token_hex(4)
    async with aiomqtt.Client(host, port, identifier=f"fte-bench-sub-{tag}", max_inflight_messages=64) as sub, \
            aiomqtt.Client(host, port, identifier=f"fte-bench-pub-{tag}", max_inflight_messages=64) as pub:
        pub.pending_calls_threshold = 1 << 16
        await sub.subscribe(topic, qos=qos)
        credit = asyncio.Semaphore(window)
        done = asyncio.Event()
        received = 0
        nbytes = 0
        foreign = 0

        async def consume() -> None:
            nonlocal received, nbytes, foreign
            async for m in sub.messages:
                if str(m.topic) != topic:
                    # amqtt 0.12 hands a new subscriber retained messages of *other* clients' subscriptions
                    foreign += 1
                    continue
                received += 1
                nbytes += len(m.payload)  # type: ignore[arg-type]
                credit.release()
                if received >= n:
                    done.set()
                    return

        consumer = asyncio.create_task(consume())
        pending: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        for i in range(n):
            try:
                # bounded: a message the broker dropped (QoS 0 under load) would otherwise hang the bench
                await asyncio.wait_for(credit.acquire(), STALL_SECONDS)
            except asyncio.TimeoutError:
                raise SystemExit(f"stalled: message {i + 1} of {n} not sent, {received} received, "
                                 f"nothing arrived for {STALL_SECONDS:.0f} s (QoS {qos})") from None
            if qos == 0:
                await pub.publish(topic, payload, qos=0)
            else:
                task = asyncio.create_task(pub.publish(topic, payload, qos=qos, timeout=60))
                pending.add(task)
                task.add_done_callback(pending.discard)
        try:
            await asyncio.wait_for(done.wait(), STALL_SECONDS)
        except asyncio.TimeoutError:
            raise SystemExit(f"stalled: {received} of {n} messages received (QoS {qos})") from None
        if pending:
            await asyncio.gather(*pending)
        seconds = time.perf_counter() - t0
        consumer.cancel()
    if nbytes != n * chunk:
        raise SystemExit(f"received {nbytes} bytes, expected {n * chunk}")
    return {"seconds": seconds, "bytes": n * chunk, "messages": n, "foreign_messages": foreign}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--chunk", type=int, required=True)
    ap.add_argument("--window", type=int, required=True)
    ap.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(measure(a.url, a.bytes, a.chunk, a.window, a.qos))))


if __name__ == "__main__":
    main()
