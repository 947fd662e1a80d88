"""Submit transfers to a source agent and wait for their outcomes; print one JSON object.

Used by bench/run.py (one helper process per batch of transfers, so the timing never includes a Python
start-up). It sends exactly the request `fte-create-transfer` sends (a signed `create_transfer` command
built from a `TransferSpec`, through `cli.client.FteClient`), so

    {"items": [{"source": S, "destination": D, "destination_type": "file"}], "exist": "overwrite"}

is `fte-create-transfer -sa A1 -da A2 -df D -de overwrite S`, and a "directory" item with "recursive": true
is `-dd D -r S`. Each transfer's time runs from just before its request is sent to the moment its
`completed` log event (on <prefix>/Log/<source agent>/<id>, the events `fte-logs --follow --json` prints)
reaches this process; the event's `statistics` (bytes_resent, recoveries, ...) are passed through.

The log subscription reconnects within 50 ms when the broker goes away (the recovery measurement kills it).

stdin: {"broker": URL, "source_agent": A, "destination_agent": B, "transfers": [...], "timeout": SECONDS,
        (a transfer may carry its own "source_agent" and "destination_agent"; the log subscription is then
        every agent's),
        "refusals_ok": false (true: a refused request is reported as {"refused": reason}, not an exit),
        "files": false (true: each transfer's per-file results from its `completed` event, as "files")}
stdout: {"submitted_at": wall, "transfers": [{"transfer_id", "submitted_at", "accepted_at", "completed_at",
         "seconds", "result_code", "state", "statistics", "message"}, ...]}   (times: time.time())
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from agent.wire.protocol import CreateTransfer, Topics, TransferItem, TransferSpec, new_transfer_id, utc_now  # noqa: E402
from cli.client import FteClient, new_request_id, topic_prefix  # noqa: E402


class Watcher:
    """`completed` events of the wanted transfers, received on a subscription that survives broker restarts."""

    def __init__(self, url: str, topic: str) -> None:
        u = urlparse(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 1883
        self.topic = topic
        self.subscribed = asyncio.Event()
        self.done: dict[str, tuple[float, dict[str, Any]]] = {}
        self.completed: dict[str, int] = {}  # transfer id -> `completed` events received (bench/soak.py: exactly 1)
        self.changed = asyncio.Event()
        self.reconnects = 0
        self.probes: set[str] = set()

    async def prove(self, timeout: float = 30) -> None:
        """Publish probes on a topic under the subscription until one comes back: a SUBACK alone
        does not prove that delivery has begun (on a NATS cluster a QoS 1 subscription is a replicated
        JetStream consumer; one bench/soak.py wave there waited for events it never received)."""
        tid = secrets.token_hex(8)
        probe_topic = self.topic.replace("+", "fte_bench_probe").replace("#", "fte_bench_probe")
        payload = json.dumps({"action": "probe", "transfer_id": tid}).encode()
        deadline = time.monotonic() + timeout
        async with aiomqtt.Client(self.host, self.port, identifier="fte-bench-probe-" + tid, timeout=5) as c:
            while tid not in self.probes:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the log subscription {self.topic} received no probe within {timeout:g} s")
                await c.publish(probe_topic, payload, qos=1)
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

    async def run(self) -> None:
        ident = "fte-bench-" + secrets.token_hex(5)
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=ident, timeout=5) as c:
                    await c.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for m in c.messages:
                        try:
                            ev = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                        except ValueError:
                            continue
                        if isinstance(ev, dict) and ev.get("action") == "probe":
                            self.probes.add(str(ev.get("transfer_id")))
                            self.changed.set()
                        if isinstance(ev, dict) and ev.get("action") == "completed":
                            tid = str(ev.get("transfer_id"))
                            self.completed[tid] = self.completed.get(tid, 0) + 1
                            self.done.setdefault(tid, (time.time(), ev))
                            self.changed.set()
            except aiomqtt.MqttError:
                self.reconnects += 1
                await asyncio.sleep(0.05)


async def main() -> int:
    req = json.loads(sys.stdin.read())
    url, src, dst = req["broker"], req["source_agent"], req["destination_agent"]
    timeout = float(req.get("timeout", 600))
    topics = Topics(topic_prefix())
    # a transfer may name its own agents ("source_agent", "destination_agent": bench/soak.py's random pairs)
    sources = {t.get("source_agent", src) for t in req["transfers"]}
    watcher = Watcher(url, topics.log_filter(src if sources == {src} else None, None))
    watch_task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.subscribed.wait(), 30)
    await watcher.prove()

    specs = []
    for t in req["transfers"]:
        items = [TransferItem(**item) for item in t["items"]]
        specs.append(TransferSpec(source_agent=t.get("source_agent", src),
                                  destination_agent=t.get("destination_agent", dst), items=items,
                                  exist=t.get("exist", "error"), checksum=t.get("checksum", "sha256"),
                                  priority=t.get("priority"), bandwidth=t.get("bandwidth")))
    out: list[dict[str, Any]] = []
    submitted_at = time.time()
    async with FteClient(url) as c:
        async def one(spec: TransferSpec) -> dict[str, Any]:
            tid = new_transfer_id()
            cmd = CreateTransfer(kind="create_transfer", request_id=new_request_id(), reply_to=c.client_id,
                                 sent_at=utc_now(), transfer_id=tid, spec=spec)
            t0 = time.time()
            reply = await c.request(spec.source_agent, cmd, timeout=60)
            if not reply.ok:
                if req.get("refusals_ok"):  # a refusal is an outcome (tests/integration/test_sandbox_race.py)
                    return {"transfer_id": tid, "submitted_at": t0, "refused": reply.message}
                raise SystemExit(f"agent {spec.source_agent} refused the transfer: {reply.message}")
            return {"transfer_id": tid, "submitted_at": t0, "accepted_at": time.time()}

        out = list(await asyncio.gather(*(one(s) for s in specs)))
    wanted = {t["transfer_id"] for t in out if "refused" not in t}
    deadline = time.monotonic() + timeout
    while not wanted <= set(watcher.done):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        watcher.changed.clear()
        try:
            await asyncio.wait_for(watcher.changed.wait(), left)
        except asyncio.TimeoutError:
            break
    watch_task.cancel()
    for t in out:
        if "refused" in t:
            continue
        got = watcher.done.get(t["transfer_id"])
        if got is None:
            t.update(state="waiting", result_code=None, message=f"no completed event within {timeout:g} s")
            continue
        at, ev = got
        t.update(completed_at=at, seconds=at - t["submitted_at"], completed_events=watcher.completed[t["transfer_id"]],
                 result_code=ev.get("result_code"),
                 state=ev.get("state"), statistics=ev.get("statistics") or {}, message=ev.get("message"))
        if req.get("files"):
            t["files"] = ev.get("files") or []
    print(json.dumps({"submitted_at": submitted_at, "transfers": out, "watch_reconnects": watcher.reconnects}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
