"""The web server's one broker connection (cli.client.FteClient): agent statuses, transfer progress, log
events, monitors and templates, each verified as the CLI verifies them; what is not verified is kept and
shown flagged (`verified: false`, `problem`), never as truth. Subscribers (the SSE streams) get each change."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from typing import Any

import aiomqtt

from agent.wire import provenance
from agent.wire.protocol import Topics
from cli.client import FteClient, RecentEvents

log = logging.getLogger("fte.web")

MAX_PAYLOAD = 1024 * 1024
MAX_TRANSFERS = 2000  # live transfers remembered (the history database keeps the rest)
MAX_EVENTS_PER_TRANSFER = 500


def _json(payload: bytes) -> dict[str, Any] | None:
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


class Live:
    def __init__(self, client: FteClient) -> None:
        self.c = client
        self.topics: Topics = client.topics
        self.agents: dict[str, dict[str, Any]] = {}
        self.transfers: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.events: dict[str, deque[dict[str, Any]]] = {}
        self.monitors: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.recent = RecentEvents()
        self.q: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        await self.subscribe_all()
        self.task = asyncio.create_task(self._pump())

    async def subscribe_all(self) -> None:
        t = self.topics
        for topic in (t.all_agent_status(), t.progress_filter(), t.every_event(), t.monitors(), t.templates()):
            await self.c.subscribe(topic, self.q)
        self.connected.set()

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except BaseException:
                pass

    # -- subscribers (SSE)
    def listen(self) -> "asyncio.Queue[dict[str, Any]]":
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self.subscribers.add(q)
        return q

    def unlisten(self, q: "asyncio.Queue[dict[str, Any]]") -> None:
        self.subscribers.discard(q)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        item = {"type": kind, "data": data}
        for q in list(self.subscribers):
            try:
                q.put_nowait(item)
            except asyncio.QueueFull:  # a reader that does not read: dropped, it reconnects
                self.subscribers.discard(q)

    # -- the pump
    async def _pump(self) -> None:
        while True:
            get = asyncio.ensure_future(self.q.get())
            gone = asyncio.ensure_future(self.c.disconnected.wait())
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                gone.cancel()
                try:
                    self.handle(get.result())
                except Exception:  # an untrusted message never stops the server
                    log.exception("dropped a message")
            else:
                get.cancel()
                self.connected.clear()
                self.publish("broker", {"connected": False})
                log.warning("lost the broker; reconnecting")
                self.c._queues.clear()
                await self.c.reconnect()
                await self.subscribe_all()
                self.publish("broker", {"connected": True})

    def _verify(self, payload: bytes, topic: str, agent: str) -> tuple[bool, str | None]:
        keys = self.c.keys.keys(agent)
        if provenance.verify_payload(payload, provenance.EVENT, topic, keys):
            return True, None
        return False, provenance.why_unverified(payload, keys, agent or "?")

    def handle(self, m: aiomqtt.Message) -> None:
        topic = str(m.topic)
        payload = bytes(m.payload) if isinstance(m.payload, (bytes, bytearray)) else b""
        levels = self.topics.split(topic)
        if not levels:
            return
        head = levels[0]
        if head == self.topics.AGENTS and len(levels) == 2:
            st = self.c.status_of(m)
            if st is None:
                return
            row = {**st.model_dump(), "name": st.agent, "verified": st.verified}
            if not st.verified:
                keys = self.c.keys.keys(st.agent)
                row["problem"] = provenance.why_unverified(payload, keys, st.agent)
            self.agents[st.agent] = row
            self.publish("agent", row)
        elif head == self.topics.TRANSFERS and len(levels) == 3:
            data = _json(payload)
            if data is None or data.get("transfer_id") != levels[2]:
                return
            ok, why = self._verify(payload, topic, levels[1])
            row = self._transfer(levels[2])
            row.update({k: v for k, v in data.items() if k not in ("signature", "destinations")})
            _merge_destinations(row, data.get("destinations"))  # a fan-out's each destination: its figures
            row["verified"] = ok
            if why:
                row["problem"] = why
            self.publish("transfer", row)
        elif head == "Log" and len(levels) >= 3:
            data = _json(payload)
            if data is None:
                return
            ok, why = self._verify(payload, topic, levels[1])
            if not self.recent.first_time(data):
                return
            ev = {**{k: v for k, v in data.items() if k != "signature"}, "verified": ok}
            if why:
                ev["problem"] = why
            tid = data.get("transfer_id")
            if isinstance(tid, str) and levels[2] != "Monitors" and tid == levels[2]:
                self.events.setdefault(tid, deque(maxlen=MAX_EVENTS_PER_TRANSFER)).append(ev)
                row = self._transfer(tid)
                for k in ("state", "source_agent", "destination_agent", "job_name", "metadata", "result_code",
                          "result", "message", "files"):
                    if k in data and (data.get("agent_role") == "source" or k not in row):
                        row[k] = data[k]
                if data.get("agent_role") == "source" or "destinations" not in row:
                    _merge_destinations(row, data.get("destinations"))  # completed: each destination's outcome
                if data.get("destination_agents") and not row.get("destinations"):  # a fan-out's started
                    row["destinations"] = [{"agent": a} for a in data["destination_agents"]]
                row["last_event"] = data.get("action")
                row["updated"] = data.get("time")
                if not ok:
                    row["verified"] = False
                    row["problem"] = why
                self.publish("transfer", row)
            self.publish("event", ev)
        elif head == "Monitors" and len(levels) == 3:
            key = f"{levels[1]}/{levels[2]}"
            if not payload:
                self.monitors.pop(key, None)
                return
            data = _json(payload)
            if data is None:
                return
            ok, why = self._verify(payload, topic, levels[1])
            self.monitors[key] = {**data, "verified": ok, **({"problem": why} if why else {})}
        elif head == self.topics.TEMPLATES and len(levels) == 2:
            name = levels[1]
            if not payload:
                self.templates.pop(name, None)
                return
            from cli import templates

            try:
                t, creator = templates.check_template(name, payload, self._trust())
                self.templates[name] = {**templates._document(payload), "verified": True, "creator": creator}
                self.templates[name].pop("signature", None)
                del t
            except templates.TemplateError as exc:
                data = _json(payload) or {}
                self.templates[name] = {"name": name, "spec": data.get("spec"), "verified": False,
                                        "problem": str(exc)}

    def _trust(self) -> Any:
        from cli.templates import trust_here

        return trust_here()

    def _transfer(self, tid: str) -> dict[str, Any]:
        row = self.transfers.get(tid)
        if row is None:
            row = {"transfer_id": tid, "state": None, "result_code": None, "verified": True, "live": True}
            self.transfers[tid] = row
            while len(self.transfers) > MAX_TRANSFERS:
                old, _ = self.transfers.popitem(last=False)
                self.events.pop(old, None)
        return row


def _merge_destinations(row: dict[str, Any], fresh: Any) -> None:
    """A fan-out's `destinations` from a message (the live progress's figures, the completed event's outcome)
    into the row's, by agent: what one of them has and the other has not is kept, whichever comes first."""
    if not isinstance(fresh, list):
        return
    known = {d.get("agent"): d for d in row.get("destinations") or [] if isinstance(d, dict)}
    row["destinations"] = [{**known.get(d.get("agent"), {}), **d} for d in fresh if isinstance(d, dict)]
