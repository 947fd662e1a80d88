"""Issue 18's three ideas for the data path, measured before anything is built (docs/performance.md,
"The three ideas, measured").

    python bench/ideas.py paho [--mib 512] [--runs 5]      # the copies of a chunk in paho's receive path
    python bench/ideas.py malloc [--mib 1024] [--runs 4]   # the same, end to end: glibc's malloc thresholds
    python bench/ideas.py worker [--mib 1024] [--runs 3]   # pwrite + sha256 on the event loop or in a thread
    python bench/ideas.py negotiation [--files 10000] [--runs 2] [-p agentFsync=false]
                                                           # how long a big set's offer/accept holds the data

paho: a writer thread stands for the broker and sends real MQTT 3.1.1 QoS 1 PUBLISH packets of 256 KiB
chunks over a socketpair; the reader is paho's own `Client._packet_read` (its `_packet_handle` replaced by
one that keeps the packet), then `_packet.decode_publish`, each timed apart (CPU of the reading thread), with
the recv sizes counted; then each copy alone (`bytes(view)` of a chunk: one copy and its allocation), a
decode that copies once, and a read through `recv_into` a reused buffer instead of `recv`. The minor page
faults of the reading thread are counted: a 256 KiB bytes object is above glibc's first mmap threshold, and
memory that glibc gives back to the kernel (a trimmed heap top, an munmap) is faulted in again, zeroed.

malloc: two agent pairs on one Mosquitto, alternating 1 GiB transfers; B1→B2 run with glibc's malloc
thresholds fixed (GLIBC_TUNABLES mmap_threshold 32 MiB, trim_threshold 64 MiB: no chunk-sized block is ever
given back), A1→A2 with glibc's defaults; the destination's CPU, minor page faults per chunk and peak RSS.

worker: the destination's data path without the network: per chunk the event loop reads the packet through
paho as above and decodes it, then writes and hashes the chunk (agent.part_files._pwrite_and_hash, what
the destination runs) either in the loop or in one worker thread (a single-thread executor, so the hash
stays in order; at most `--window` chunks handed over and not done), alternating, on every CPU of the
affinity mask and on the first one alone (os.sched_setaffinity, like `taskset -c 0`).

negotiation: a private Mosquitto, two agents, one transfer of N × 4 KiB files; a subscriber on the control
and data topics notes when the offer (`resync`, source → destination), the answer (`resync_reply`) and the
first data frame pass through the broker, against the submission and the `completed` event.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (MB, MiB, KiB, CpuMeter, Pair, check_results, file_transfer, machine_info,  # noqa: E402
                     make_random_file, make_tree, median, remove, sha256_file, table, tree_matches, tree_transfer)

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt import __version__ as PAHO_VERSION, _packet  # noqa: E402

from agent.part_files import _pwrite_and_hash  # noqa: E402
from tests.support.brokers import MosquittoProcess  # noqa: E402

CHUNK = 256 * KiB
TOPIC = b"SYSTEM.FTE/Data/A2/" + b"0" * 48  # as long as a data topic of a transfer
DISTINCT = 64  # different buffers cycled, so that no copy is timed out of a warm cache only


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(payload: bytes, mid: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH at QoS 1, as the broker sends it to the destination."""
    body = struct.pack("!H", len(TOPIC)) + TOPIC + struct.pack("!H", mid) + payload
    return bytes([0x32]) + _remaining_length(len(body)) + body


def payloads() -> list[bytes]:
    return [os.urandom(CHUNK) for _ in range(DISTINCT)]


class Feed:
    """A socketpair with a writer thread (the broker) sending `count` packets; the read end for paho."""

    def __init__(self, packets: list[bytes], count: int) -> None:
        self.rx, self.tx = socket.socketpair()
        self.thread = threading.Thread(target=self._write, args=(packets, count), daemon=True)
        self.thread.start()

    def _write(self, packets: list[bytes], count: int) -> None:
        try:
            for i in range(count):
                self.tx.sendall(packets[i % len(packets)])
        except OSError:
            pass

    def close(self) -> None:
        self.tx.close()
        self.thread.join(10)
        self.rx.close()


class PahoReader:
    """paho's own receive loop on a socket: `read()` returns the next packet body as paho holds it."""

    def __init__(self, sock: socket.socket, recv: Callable[[int], Any] | None = None) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client._sock = sock
        self.got: list[tuple[int, bytearray]] = []
        self.sizes: list[int] = []
        inner = recv or sock.recv

        def counted(n: int) -> Any:
            data = inner(n)
            if n > 1:
                self.sizes.append(len(data))
            return data

        def keep() -> paho.MQTTErrorCode:
            self.got.append((self.client._in_packet["command"], self.client._in_packet["packet"]))
            return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

        self.client._sock_recv = counted
        self.client._packet_handle = keep

    def read(self) -> tuple[int, bytearray]:
        while not self.got:
            rc = self.client._packet_read()
            if rc not in (paho.MQTTErrorCode.MQTT_ERR_SUCCESS, paho.MQTTErrorCode.MQTT_ERR_AGAIN):
                raise RuntimeError(f"paho _packet_read: {rc}")
        return self.got.pop()


def into_reused_buffer(sock: socket.socket) -> Callable[[int], memoryview]:
    """A `_sock_recv` that reads into one buffer and returns a view of it: paho appends what it gets to its
    packet at once (`packet += data`), so no view outlives the next read."""
    buf = bytearray(CHUNK + 1024)
    view = memoryview(buf)

    def recv(n: int) -> memoryview:
        k = sock.recv_into(view, min(n, len(buf)))
        return view[:k]

    return recv


def decode_once(command: int, packet: bytearray) -> bytes:
    """The payload of a QoS 1 PUBLISH with one copy (what paho's decode_publish returns, for comparison)."""
    view = memoryview(packet)
    (slen,) = struct.unpack_from("!H", view)
    return bytes(view[2 + slen + 2:])


def per_gib(seconds: float, nbytes: int) -> float:
    return seconds * (1 << 30) / nbytes


def bench_paho(mib: int, runs: int) -> None:
    count = mib * MiB // CHUNK
    nbytes = count * CHUNK
    datas = payloads()
    packets = [publish_packet(p, i + 1) for i, p in enumerate(datas)]
    kept: list[tuple[int, bytearray]] = []  # packets as paho's read left them, for the decodes

    def read_all(recv_of: Callable[[socket.socket], Callable[[int], Any]] | None) -> tuple[float, str]:
        feed = Feed(packets, count)
        try:
            reader = PahoReader(feed.rx, recv_of(feed.rx) if recv_of else None)
            f0, t0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt, time.thread_time()
            for i in range(count):
                got = reader.read()
                if len(kept) < DISTINCT:
                    kept.append(got)
            seconds = time.thread_time() - t0
            faults = (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0) / count
            assert bytes(kept[0][1][-CHUNK:]) == datas[0]
            return seconds, (f"{len(reader.sizes) / count:.1f} recv per packet, median "
                             f"{int(median(reader.sizes) or 0) // KiB} KiB; {faults:.1f} page faults per packet")
        finally:
            feed.close()

    def decoding(fn: Callable[[int, bytearray], Any]) -> Callable[[], tuple[float, str]]:
        def run() -> tuple[float, str]:
            t0 = time.thread_time()
            for i in range(count):
                fn(*kept[i % DISTINCT])
            seconds = time.thread_time() - t0
            return seconds, f"{1e6 * seconds / count:.1f} µs per packet"
        return run

    steps: list[tuple[str, str, Callable[[], tuple[float, str]]]] = [
        ("paho `_packet_read` (`recv` into a new bytes, `packet += data` into a bytearray)",
         "2 (kernel → bytes → bytearray)", lambda: read_all(None)),
        ("the same through `recv_into` one reused buffer (a `_sock_recv` wrapper)",
         "2 (kernel → buffer → bytearray)", lambda: read_all(into_reused_buffer)),
        ("paho `_packet.decode_publish` (three `struct.unpack(\"!H{n}s\")`, each copies the rest)", "3",
         decoding(lambda c, p: _packet.decode_publish(c, p, paho.MQTTv311))),
        ("a decode that copies the payload once (memoryview slice, `bytes()`)", "1", decoding(decode_once)),
        ("one copy alone: `bytes(view)` of a packet body (allocation included)", "1",
         decoding(lambda c, p: bytes(memoryview(p)))),
    ]
    got: dict[int, list[tuple[float, str]]] = {}
    for run in range(runs):
        order = list(range(len(steps)))
        if run % 2:  # the two reads in the other order (the decodes need a read first)
            order[0], order[1] = 1, 0
        for k in order:
            got.setdefault(k, []).append(steps[k][2]())
    for cmd, pkt in kept[:4]:
        assert _packet.decode_publish(cmd, pkt, paho.MQTTv311).payload == decode_once(cmd, pkt)
    rows = []
    med: dict[int, float] = {}
    for k, (what, copies, _) in enumerate(steps):
        secs = [per_gib(s, nbytes) for s, _ in got[k]]
        med[k] = median(secs) or 0.0
        rows.append([what, copies, f"{med[k]:.3f}", f"{min(secs):.3f}–{max(secs):.3f}", got[k][-1][1]])
    print(f"\n# paho {PAHO_VERSION} receive path, {count} packets of {CHUNK // KiB} KiB chunks ({human(nbytes)}) "
          f"per run, {runs} runs: CPU seconds of the reading thread per GiB; load {machine_info()['load']}\n")
    print(table(["step", "copies of the chunk", "s per GiB (median)", "range", "last run"], rows))
    print(f"\nsocket to handler in paho (read + decode): {med[0] + med[2]:.3f} s per GiB, the chunk copied 5 times "
          f"(1 by the kernel, 4 in Python); a one-copy decode would save {med[2] - med[3]:.3f} s per GiB, "
          f"`recv_into` a reused buffer {med[0] - med[1]:.3f} s per GiB")


def human(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n // MiB} MiB"


async def destination_loop(mib: int, path: Path, worker: bool, window: int, receive: bool = True
                           ) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) for `mib` MiB received through paho, written and hashed
    (`receive` False: the chunks only written and hashed, in the loop: the part a worker could take)."""
    count = mib * MiB // CHUNK
    datas = payloads()
    packets = [publish_packet(p, i + 1) for i, p in enumerate(datas)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    feed = Feed(packets, count if receive else 0)
    pool = ThreadPoolExecutor(1, thread_name_prefix="write") if worker else None
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[None]] = []
    hasher = hashlib.sha256()
    try:
        reader = PahoReader(feed.rx)
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(count):
            if receive:
                cmd, pkt = reader.read()
                data = _packet.decode_publish(cmd, pkt, paho.MQTTv311).payload
            else:
                data = datas[i % DISTINCT]
            if pool is None:
                _pwrite_and_hash(fd, data, i * CHUNK, hasher)
            else:
                pending.append(loop.run_in_executor(pool, _pwrite_and_hash, fd, data, i * CHUNK, hasher))
                if len(pending) >= window:
                    await pending.pop(0)
        for f in pending:
            await f
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        feed.close()
        if pool is not None:
            pool.shutdown()
        os.close(fd)
    expect = hashlib.sha256()
    for i in range(count):
        expect.update(datas[i % DISTINCT])
    if hasher.digest() != expect.digest():
        raise RuntimeError("the digest of the written chunks is wrong")
    return wall, cpu


def bench_worker(mib: int, runs: int, window: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="fte-ideas-"))
    results: dict[tuple[int, bool | None], list[tuple[float, float]]] = {}  # None: write and hash alone
    try:
        for run in range(runs):
            for ncpu in (len(cpus), 1) if len(cpus) > 1 else (1,):
                os.sched_setaffinity(0, set(cpus[:ncpu]))  # this thread; the feed and the pool inherit it
                for worker in (False, True) if run % 2 == 0 else (True, False):
                    wall, cpu = asyncio.run(destination_loop(mib, work / "dst.bin", worker, window))
                    results.setdefault((ncpu, worker), []).append((wall, cpu))
                    print(f"  run {run + 1}: {ncpu} CPU(s), {'worker thread' if worker else 'event loop   '}: "
                          f"{wall:.2f} s, CPU {cpu:.2f} s", flush=True)
                wall, cpu = asyncio.run(destination_loop(mib, work / "dst.bin", False, window, receive=False))
                results.setdefault((ncpu, None), []).append((wall, cpu))
    finally:
        os.sched_setaffinity(0, set(cpus))
        shutil.rmtree(work, ignore_errors=True)
    nbytes = mib * MiB
    rows = []
    for (ncpu, worker), got in sorted(results.items(), key=lambda kv: (-kv[0][0], {None: 2}.get(kv[0][1], kv[0][1]))):
        wall = median(w for w, _ in got)
        cpu = median(c for _, c in got)
        assert wall is not None and cpu is not None
        loop_wall = median(w for w, _ in results[(ncpu, False)])
        what = {None: "(pwrite + sha256 alone, no receiving)", False: "event loop", True: "one worker thread"}[worker]
        rows.append([f"{ncpu}", what, f"{wall:.2f}",
                     f"{nbytes / wall / MB:.0f}", f"{cpu:.2f}",
                     f"{(loop_wall or 0) / wall:.2f}×" if worker else ""])
    print(f"\n# pwrite + sha256 of {human(nbytes)} of {CHUNK // KiB} KiB chunks, read through paho from a "
          f"socketpair; CPUs allowed: {cpus}; medians of {runs}; load {machine_info()['load']}\n")
    print(table(["CPUs", "pwrite + sha256 in", "wall s", "MB/s", "CPU s (process)", "speed-up"], rows))


async def sniff(url: str, prefix: str, done: asyncio.Event, seen: dict[str, Any], ready: asyncio.Event) -> None:
    import aiomqtt
    from urllib.parse import urlparse

    u = urlparse(url)
    async with aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883, identifier=f"ideas-{os.getpid()}") as c:
        await c.subscribe(f"{prefix}/Control/#", qos=0)
        await c.subscribe(f"{prefix}/Data/#", qos=0)
        ready.set()
        async for m in c.messages:
            now = time.time()
            kind = str(m.topic).split("/")[-3]
            agent = str(m.topic).split("/")[-2]
            key = f"{kind}/{agent}"
            n = len(m.payload) if isinstance(m.payload, (bytes, bytearray)) else 0
            first = seen.setdefault(key, {"first": now, "first_bytes": n, "messages": 0, "bytes": 0})
            first["messages"] += 1
            first["bytes"] += n
            first["last"] = now
            if done.is_set():
                return


async def negotiation_run(pair: Pair, src: Path, dst: Path, url: str, prefix: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    done, ready = asyncio.Event(), asyncio.Event()
    sniffer = asyncio.create_task(sniff(url, prefix, done, seen, ready))
    async with asyncio.timeout(30):
        await ready.wait()
    proc = pair.submit_async([tree_transfer(src, dst)], timeout=600)
    out, err = await asyncio.to_thread(proc.communicate, timeout=720)
    done.set()
    sniffer.cancel()
    try:
        await sniffer
    except asyncio.CancelledError:
        pass
    import json

    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench/submit.py -> {proc.returncode}: {err[-500:]}")
    res = json.loads(lines[-1])
    check_results(res)
    return {"result": res, "seen": seen}


def bench_negotiation(files: int, runs: int, properties: dict[str, str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="fte-ideas-neg-"))
    prefix = os.environ.get("FTE_TOPIC_PREFIX", "SYSTEM.FTE")
    rows = []
    try:
        src = work / "data" / "tree"
        digests = make_tree(src, files, 4096)
        with MosquittoProcess(workdir=work / "mosquitto") as broker, \
                Pair(work / "home", broker.url, work / "data", properties) as pair:
            for run in range(runs):
                dst = work / "data" / f"copy{run}"
                got = asyncio.run(negotiation_run(pair, src, dst, broker.url, prefix))
                ok, why = tree_matches(dst / "tree", digests)
                if not ok:
                    raise RuntimeError(f"copy {run}: {why}")
                t = got["result"]["transfers"][0]
                seen = got["seen"]
                t0, end = t["submitted_at"], t["completed_at"]
                offer, reply = seen[f"Control/{pair.names[1]}"], seen[f"Control/{pair.names[0]}"]
                data = seen[f"Data/{pair.names[1]}"]
                whole = end - t0
                phases = [("request → offer published (source: walk, record, build the offer)", offer["first"] - t0),
                          ("offer → answer (destination: check every file, record, answer)",
                           reply["first"] - offer["first"]),
                          ("answer → first data frame (source)", data["first"] - reply["first"]),
                          ("first data frame → `completed` event (the data)", end - data["first"])]
                for what, s in phases:
                    rows.append([str(run + 1), what, f"{s:.3f}", f"{100 * s / whole:.0f} %"])
                rows.append([str(run + 1), f"**whole transfer** (offer {offer['first_bytes'] / MB:.2f} MB, answer "
                             f"{reply['first_bytes'] / MB:.2f} MB; {data['messages']} data frames)", f"{whole:.3f}",
                             "100 %"])
                # kept until the end: ext4 skips recently freed inodes, so a tree deleted here would slow the
                # next run's file creations (docs/performance.md, "The small-files benchmark measured ...")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n# negotiation of {files:,} × 4 KiB files (times as the broker's subscriber saw them), properties "
          f"{properties or 'defaults'}; load {machine_info()['load']}\n")
    print(table(["run", "phase", "s", "of the whole"], rows))


FIXED_MALLOC = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"}


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def bench_malloc(mib: int, runs: int) -> None:
    """1 GiB A1→A2 with glibc's own malloc thresholds, B1→B2 with fixed ones (FIXED_MALLOC), alternating."""
    from ab_small import EnvPair

    work = Path(tempfile.mkdtemp(prefix="fte-ideas-malloc-"))
    got: dict[str, list[tuple[float, float, float]]] = {"glibc's dynamic thresholds": [], "fixed thresholds": []}
    try:
        data = work / "data"
        src = data / "src.bin"
        digest = make_random_file(src, mib * MiB)
        with MosquittoProcess(workdir=work / "mq") as broker:
            plain = EnvPair(work / "home-a", broker.url, data)
            fixed = EnvPair(work / "home-b", broker.url, data, names=("B1", "B2"))
            fixed.extra = dict(FIXED_MALLOC)
            with plain, fixed:
                pairs = (("glibc's dynamic thresholds", plain), ("fixed thresholds", fixed))
                for r in range(runs):
                    for name, pair in pairs if r % 2 == 0 else pairs[::-1]:
                        dst = data / "dst.bin"
                        pid = pair.destination.pid
                        f0 = minor_faults(pid)
                        meter = CpuMeter({"dst": pid}).start()
                        res = pair.submit([file_transfer(src, dst)], timeout=600)
                        used = meter.stop()["dst"] or 0.0
                        faults = (minor_faults(pid) - f0) / (mib * MiB // CHUNK)
                        check_results(res)
                        if sha256_file(dst) != digest:
                            raise RuntimeError(f"{name}: the copy differs")
                        remove(dst)
                        secs = res["transfers"][0]["seconds"]
                        got[name].append((secs, used, faults))
                        print(f"  run {r + 1}, {name}: {secs:.2f} s, destination CPU {used:.2f} s, "
                              f"{faults:.0f} page faults per chunk", flush=True)
                peak = {name: pair.peak_rss()[pair.names[1]] for name, pair in pairs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [[name, f"{median(s for s, _, _ in v):.2f}", f"{mib * MiB / (median(s for s, _, _ in v) or 1) / MB:.0f}",
             f"{median(c for _, c, _ in v):.2f}", f"{median(f for _, _, f in v):.0f}", f"{peak[name] / MiB:.0f}"]
            for name, v in got.items()]
    print(f"\n# {mib} MiB A1→A2, two pairs on one Mosquitto, alternating, medians of {runs}; load "
          f"{machine_info()['load']}\n")
    print(table(["agents' malloc", "s", "MB/s", "destination CPU s", "destination page faults per chunk",
                 "destination peak RSS MiB"], rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("paho", "worker", "negotiation", "malloc"))
    ap.add_argument("--mib", type=int, default=1024, help="paho, worker: MiB of 256 KiB chunks")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=int, default=32, help="worker: chunks handed to the thread and not done")
    ap.add_argument("--files", type=int, default=10_000, help="negotiation: 4 KiB files in the transfer")
    ap.add_argument("-p", "--property", action="append", default=[], help="negotiation: agent.properties KEY=VALUE")
    a = ap.parse_args()
    info = machine_info()
    print(f"{info['cpu']}, {info['nproc']} CPUs (affinity {len(os.sched_getaffinity(0))}), Python "
          f"{info['python']}, commit {info['commit']}, load {info['load']}")
    if a.what == "paho":
        bench_paho(a.mib, a.runs)
    elif a.what == "worker":
        bench_worker(a.mib, a.runs, a.window)
    elif a.what == "malloc":
        bench_malloc(a.mib, a.runs)
    else:
        bench_negotiation(a.files, a.runs, dict(kv.split("=", 1) for kv in a.property))
    return 0


if __name__ == "__main__":
    sys.exit(main())
