"""The floor: two plain Python processes doing only what a transfer needs, through the same broker.

    python bench/floor.py receive --url URL --topic T --bytes N --out PATH    # prints "ready", then a JSON line
    python bench/floor.py send --url URL --topic T --file PATH --chunk N --window N

The sender reads the file chunk by chunk, hashes it (sha256) and publishes each chunk at QoS 1 with at most
`window` publishes not yet acknowledged (PUBACK). The receiver writes each chunk at its offset, hashes it,
fsyncs the file at the end and prints {"end": wall time, "sha256": ...}; the sender prints {"start": wall
time, "sha256": ...} with the time taken just before it opens the file. No negotiation, no acks of its own,
no recovery, no MAC: what the agents do beyond this is what they cost. bench/run.py times end − start.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import struct
import sys
import time
from urllib.parse import urlparse

import aiomqtt

OFFSET = struct.Struct(">Q")  # each message: the chunk's offset, then its bytes
WAIT = 120.0


def _client(url: str, name: str) -> aiomqtt.Client:
    u = urlparse(url)
    return aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883, identifier=name, max_inflight_messages=64,
                          socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


async def receive(url: str, topic: str, total: int, out: str) -> dict[str, object]:
    h = hashlib.sha256()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    got = 0
    async with _client(url, f"floor-rx-{os.getpid()}") as c:
        await c.subscribe(topic, qos=1)
        print("ready", flush=True)
        async with asyncio.timeout(WAIT):
            async for m in c.messages:
                body = memoryview(m.payload)  # type: ignore[arg-type]
                (offset,) = OFFSET.unpack_from(body)
                data = body[OFFSET.size:]
                os.pwrite(fd, data, offset)
                h.update(data)  # in order: the broker keeps a publisher's order on one topic
                got += len(data)
                if got >= total:
                    break
    os.fsync(fd)
    os.close(fd)
    return {"end": time.time(), "sha256": h.hexdigest(), "bytes": got}


async def send(url: str, topic: str, path: str, chunk: int, window: int) -> dict[str, object]:
    async with _client(url, f"floor-tx-{os.getpid()}") as c:
        c.pending_calls_threshold = 1 << 16
        credit = asyncio.Semaphore(window)
        pending: set[asyncio.Task[None]] = set()
        start = time.time()
        h = hashlib.sha256()
        fd = os.open(path, os.O_RDONLY)
        offset = 0
        while True:
            buf = bytearray(OFFSET.size + chunk)
            n = os.preadv(fd, [memoryview(buf)[OFFSET.size:]], offset)
            if n <= 0:
                break
            del buf[OFFSET.size + n:]
            OFFSET.pack_into(buf, 0, offset)
            h.update(memoryview(buf)[OFFSET.size:])
            await credit.acquire()
            task = asyncio.create_task(c.publish(topic, bytes(buf), qos=1, timeout=WAIT))
            task.add_done_callback(lambda t: (credit.release(), pending.discard(t)))
            pending.add(task)
            offset += n
        os.close(fd)
        if pending:
            await asyncio.gather(*pending)
    return {"start": start, "sha256": h.hexdigest(), "bytes": offset}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("send", "receive"))
    ap.add_argument("--url", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--bytes", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--file")
    ap.add_argument("--chunk", type=int, default=256 * 1024)
    ap.add_argument("--window", type=int, default=32)
    a = ap.parse_args()
    if a.mode == "receive":
        result = asyncio.run(receive(a.url, a.topic, a.bytes, a.out))
    else:
        result = asyncio.run(send(a.url, a.topic, a.file, a.chunk, a.window))
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
