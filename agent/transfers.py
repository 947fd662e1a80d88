"""The agent's transfers: the live sessions of both roles, and what this agent knows of past ones.

Sources run each in a task of its own, at most maxSourceTransfers at once (the others wait for a slot,
queued); destinations are driven by the messages the router hands them. Everything is rebuilt from the state
store after a restart (`load`). The sessions themselves are agent.source and agent.destination; this module
only holds them, starts them, hands them messages and answers for them (cancel, query, list).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .commands import CommandRefused
from .context import AgentContext
from .core import results
from .core.lifecycle import TERMINAL_STATE_VALUES as TERMINAL
from .core.statuses import FileStatus
from .admission import Admission
from .wire.binding import transfer_key
from .wire.encryption import encrypted
from .destination import DestinationTransfer
from .wire.protocol import Complete, CompleteAck, FileEnd, ProtocolError, Resync, TransferSpec, dump
from .source import SourceTransfer, _iso, encryption_of, priority_view
from .fanout import (FanoutTransfer, fail_unresumable, is_fanout, is_leg_row, leg_id, live_files, make_legs, running_leg,
                     stored_view)
from .start_gate import StartGate
from .store import FileRecord, TransferRecord

log = logging.getLogger("fte.agent")

LIST_LIMIT = 500  # transfers in a list_transfers reply (the most recent)
HISTORY_DAYS = 7  # finished transfers are kept this long in the state store, then forgotten


class Transfers:
    """The transfer table. `start` a new source transfer; the `on_*` methods take the control messages the
    router authenticated; `cancel`, `query` and `listing` answer the commands of those names."""

    def __init__(self, ctx: AgentContext, admission: Admission, max_sources: int) -> None:
        self._ctx = ctx
        self._admission = admission
        self.sources: dict[str, SourceTransfer | FanoutTransfer] = {}
        # the leg (destination agent) of a fan-out transfer the control message being handled came from: set by
        # the router when it authenticated the message with that leg's key (agent.router), read by the handlers
        self.via: str | None = None
        self.dests: dict[str, DestinationTransfer] = {}
        self._peer: dict[str, str] = {}  # source transfer id -> its destination agent
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = StartGate(max_sources)  # by priority (-pr), then first come first served

    # ------------------------------------------------------------------ the table

    def load(self) -> None:
        """Rebuild every unfinished transfer from the state store after a (possibly violent) restart."""
        store = self._ctx.store
        pruned = store.prune(time.time() - HISTORY_DAYS * 86400, TERMINAL)
        if pruned:
            log.info("forgot %d transfer(s) that finished more than %d days ago", pruned, HISTORY_DAYS)
        for row in store.transfers("source", files=False):
            if is_leg_row(row.transfer_id):
                continue  # restored with its fan-out transfer (agent/fanout.py)
            rec = None if row.state in TERMINAL else store.load_transfer(row.transfer_id, "source")
            if rec is not None and is_fanout(rec):
                dests = rec.header["destination_agents"]
                legs = [store.load_transfer(leg_id(rec.transfer_id, d), "source") for d in dests]
                missing = [d for d, leg in zip(dests, legs) if leg is None]
                found = [leg for leg in legs if leg is not None]
                if missing:
                    fail_unresumable(store, rec, found, missing)
                else:
                    self._add_source(rec, restarted=True, legs=found)
            elif rec is not None:
                self._add_source(rec, restarted=True)
        for row in store.transfers("destination", files=False):
            rec = None if row.state in TERMINAL else store.load_transfer(row.transfer_id, "destination")
            if rec is not None:
                self.dests[rec.transfer_id] = DestinationTransfer(self._ctx, rec)
        if self.sources or self.dests:
            log.info("resuming %d source and %d destination transfer(s) from the state store",
                     len(self.sources), len(self.dests))

    def run_loaded(self) -> None:
        """Start the tasks of the source transfers `load` found."""
        for tid, session in self.sources.items():
            if tid not in self._tasks:
                self._tasks[tid] = asyncio.create_task(self._run(tid, session))

    def _add_source(self, rec: TransferRecord, restarted: bool = False,
                    legs: list[TransferRecord] | None = None) -> SourceTransfer | FanoutTransfer:
        session: SourceTransfer | FanoutTransfer
        if legs is not None:
            session = FanoutTransfer(self._ctx, rec, legs, restarted=restarted)
        else:
            session = SourceTransfer(self._ctx, rec, restarted=restarted)
        self.sources[rec.transfer_id] = session
        self._peer[rec.transfer_id] = rec.peer
        return session

    async def _run(self, tid: str, session: SourceTransfer | FanoutTransfer) -> None:
        async with self._slots.slot(tid, int(session.rec.header.get("priority") or 0)):
            await session.run()
        self.sources.pop(tid, None)
        self._peer.pop(tid, None)
        self._ctx.on_state_change()

    async def start(self, spec: TransferSpec, tid: str | None = None, sent_at: str | None = None,
                    originator: str | None = None) -> dict[str, Any]:
        """Admit and start a transfer this agent is the source of (from a command, a monitor, a schedule)."""
        rec = await self._admission.admit(spec, tid, sent_at, originator)
        if isinstance(rec, str):
            return {"transfer_id": rec, "duplicate": True}  # a resubmission after a lost reply
        if rec.header.get("trigger_reason") is not None:
            return self._trigger_not_met(rec)
        files = rec.files
        if is_fanout(rec) and not rec.header.get("encryption") and not self._ctx.verify_peers:
            # in the clear and unsigned, the legs' answers on the one control topic cannot be told apart
            raise CommandRefused(f"agent {self._ctx.name} cannot run a fan-out transfer with neither agentEncryption "
                                 f"nor authority on: set agentEncryption=true (or turn authority on)", results.FAILED)
        legs = make_legs(rec, self._admission._offer_key) if is_fanout(rec) else None
        self._ctx.store.save_transfer(rec, *(legs or []))  # one transaction: never a parent without its legs
        to = ", ".join(rec.header["destination_agents"]) if legs else rec.peer
        self._ctx.log.emit(rec, "started", recovery_timeout=rec.recovery_timeout, originator=originator,
                           files=[{"index": f.index, "source": f.source, "destination": f.destination,
                                   "size": f.size} for f in files],
                           message=f"transfer of {len(files)} file(s), {sum(f.size for f in files)} bytes, "
                                   f"from {self._ctx.name} to {to}" + _left_out(rec.header),
                           skipped=rec.header.get("skipped"), skipped_count=rec.header.get("skipped_count"),
                           directories=rec.header.get("directories"), encryption=encryption_of(rec.header),
                           destination_agents=rec.header["destination_agents"] if legs else None)
        session = self._add_source(rec, legs=legs)
        self._tasks[rec.transfer_id] = asyncio.create_task(self._run(rec.transfer_id, session))
        self._ctx.on_state_change()
        left_out = _left_out(rec.header).lstrip(",; ")
        return {"transfer_id": rec.transfer_id, "files": len(files), "bytes": sum(f.size for f in files),
                "recovery_timeout": rec.recovery_timeout, **({"left_out": left_out} if left_out else {})}

    def _trigger_not_met(self, rec: TransferRecord) -> dict[str, Any]:
        """-tr did not hold: the transfer ends as it is made (result 42), kept and logged, nothing is read."""
        self._ctx.store.save_transfer(rec)
        reason = rec.header["trigger_reason"]
        self._ctx.log.emit(rec, "trigger_not_met", result_code=rec.result_code, trigger=rec.header["trigger"],
                           message=f"transfer not started: {reason}")
        self._ctx.on_state_change()
        return {"transfer_id": rec.transfer_id, "files": 0, "bytes": 0, "result_code": rec.result_code,
                "trigger_not_met": reason}

    def source(self, tid: str) -> SourceTransfer | FanoutTransfer | None:
        return self.sources.get(tid)

    def peer_of(self, tid: str) -> str | None:
        """The destination agent of a running source transfer."""
        return self._peer.get(tid)

    def destinations_busy(self) -> set[str]:
        """The destination agents of the running source transfers."""
        busy = set(self._peer.values())
        for s in self.sources.values():
            if isinstance(s, FanoutTransfer):
                busy.update(s.dests)
        return busy

    def destination(self, tid: str) -> DestinationTransfer | None:
        return self.dests.get(tid)

    def active_destinations(self) -> list[DestinationTransfer]:
        return [d for d in self.dests.values() if d.active]

    @property
    def busy(self) -> bool:
        """A source transfer held, or a destination one still receiving (the agent is ACTIVE)."""
        return bool(self.sources) or any(d.active for d in self.dests.values())

    def states(self) -> tuple[dict[str, str], dict[str, str]]:
        """(source, destination) transfer id -> state, for the agent's status."""
        return ({t: s.state.value for t, s in self.sources.items()},
                {t: d.rec.state for t, d in self.dests.items()})

    def state_counts(self) -> dict[str, float]:
        """Source transfers by state, for the metric fte_transfers_in_state."""
        counts: dict[str, float] = {}
        for s in self.sources.values():
            key = f'state="{s.state.value}"'
            counts[key] = counts.get(key, 0) + 1
        return counts

    def forget_finished(self) -> None:
        for tid in [t for t, d in self.dests.items() if not d.active]:
            self.dests.pop(tid, None)

    def live(self) -> int:
        """Source transfers neither finished nor in recovery (what a controlled stop waits for)."""
        return sum(1 for s in self.sources.values() if not s.state.is_terminal and not s.state.is_recovery)

    def post_sources(self, *item: Any, to: str | None = None) -> None:
        """Post `item` to every source session (with `to`: those sending to that agent)."""
        for tid, s in self.sources.items():
            if isinstance(s, FanoutTransfer) and to is not None:
                s.post_leg(to, *item)
            elif to is None or self._peer.get(tid) == to:
                s.post(*item)

    def wake(self, tid: str) -> None:
        """A session held back by the data-in-flight budget may send again (the sessions' ctx.wake)."""
        tid, _, dest = tid.partition("/")  # a fan-out leg's budget is its row's (agent/fanout.py)
        session = self.sources.get(tid)
        if isinstance(session, FanoutTransfer) and dest:
            session.post_leg(dest, "wake")
        elif session is not None:
            session.post("wake")

    def key_of(self, tid: str, role: str) -> bytes | None:
        """The transfer key of a transfer (None: not bound, or not known)."""
        live = (self.sources if role == "source" else self.dests).get(tid)
        if live is not None:
            return live.key
        rec = self._ctx.store.load_transfer(tid, role, files=False)
        return transfer_key(rec.header) if rec else None

    def encrypted_of(self, tid: str, role: str) -> bool:
        """Is the transfer encrypted end to end (agent.wire.encryption)? False when not known."""
        live = (self.sources if role == "source" else self.dests).get(tid)
        rec = live.rec if live is not None else self._ctx.store.load_transfer(tid, role, files=False)
        return rec is not None and encrypted(rec.header)

    def cancel_tasks(self) -> list[asyncio.Task[None]]:
        """Cancel the source sessions' tasks (the agent is going); the tasks, to be awaited."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        return tasks

    def close_files(self) -> None:
        """Close every file the destination sessions hold open (once their tasks are gone)."""
        for d in self.dests.values():
            for idx in list(d.fds):
                d._close(idx)

    # ------------------------------------------------------------------ control messages (authenticated)

    async def on_resync(self, msg: Resync) -> None:
        if msg.destination_agent != self._ctx.name:
            raise ProtocolError(f"resync for agent {msg.destination_agent!r} received by {self._ctx.name!r}")
        dest = self.dests.get(msg.transfer_id)
        if dest is None:
            rec = self._ctx.store.load_transfer(msg.transfer_id, "destination")
            if rec is not None:
                dest = DestinationTransfer(self._ctx, rec)
                if rec.state not in TERMINAL:
                    self.dests[msg.transfer_id] = dest
            else:
                active = self.active_destinations()
                if not self._admission.destination_room(msg, len(active)):
                    return
                busy = {f.destination: d.tid for d in active for f in d.files.values()
                        if f.status == FileStatus.READY}
                dest = DestinationTransfer.accept(self._ctx, msg, busy)
                self.dests[msg.transfer_id] = dest
                self._ctx.on_state_change()
        await dest.on_resync(msg)

    def to_source(self, msg: Any) -> None:
        """A message for a running source session (a resync reply, an acknowledgement, a file's result)."""
        session = running_leg(self.sources.get(msg.transfer_id), self.via)
        if session is not None:
            session.post("control", msg)

    def program_done(self, msg: Any) -> None:
        """A destination's answer to a program call (agent.programs) of a running source transfer."""
        session = running_leg(self.sources.get(msg.transfer_id), self.via)
        if session is not None:
            session.programs.answered(msg)

    async def on_file_end(self, msg: FileEnd) -> None:
        dest = self.dests.get(msg.transfer_id)
        if dest is not None:
            await dest.on_file_end(msg)

    async def on_complete(self, msg: Complete) -> None:
        tid = msg.transfer_id
        dest = self.dests.pop(tid, None)
        if dest is None:
            rec = self._ctx.store.load_transfer(tid, "destination")
            dest = DestinationTransfer(self._ctx, rec) if rec else None
        if dest is not None:
            await dest.on_complete(msg)
        else:
            # nothing of it here (it failed before reaching us): confirm so the source stops asking
            await self._ctx.publish(self._ctx.topics.control(msg.source_agent, tid),
                                    dump(CompleteAck(kind="complete_ack", transfer_id=tid)), 1, False)
        self._ctx.on_state_change()

    def on_complete_ack(self, msg: CompleteAck) -> None:
        tid = msg.transfer_id
        if self.via is not None:  # of a fan-out's leg
            tid = leg_id(tid, self.via)
        rec = self._ctx.store.load_transfer(tid, "source", files=False)
        if rec and not rec.peer_confirmed:
            rec.peer_confirmed = True
            self._ctx.store.update_transfer(rec)  # the row only: the files are left as they are

    # ------------------------------------------------------------------ commands

    async def cancel(self, tid: str) -> dict[str, Any]:
        session = self.sources.get(tid)
        if session is not None:
            session.post("cancel", "cancelled by request (fte-cancel-transfer)")
            return {"transfer_id": tid, "role": "source", "state": "cancelling"}
        dest = self.dests.get(tid)
        if dest is not None:
            # the source owns the outcome: ask it to cancel (it then tells us to clean up), over the transfer's
            # own (authenticated) control topic: this agent checked the requester
            await dest.request_recovery("cancelled by request (fte-cancel-transfer)", cancel=True)
            return {"transfer_id": tid, "role": "destination", "state": "cancel forwarded to " + dest.source_agent}
        store = self._ctx.store
        rec = store.load_transfer(tid, "source") or store.load_transfer(tid, "destination")
        if rec is not None:
            raise CommandRefused(f"transfer {tid} already ended ({rec.state})", results.COMMAND_FAILED)
        raise CommandRefused(f"transfer {tid} is not known to agent {self._ctx.name}")

    def query(self, tid: str, role: str | None = None, files: bool = False) -> dict[str, Any]:
        """What this agent knows of a transfer, from the live session or the state store."""
        store = self._ctx.store
        live = None
        if role in (None, "source") and tid in self.sources:  # (a fan-out's: its summary sums its legs)
            live = dict(self.sources[tid].summary(), **priority_view(self.sources[tid].rec.header))
        elif role in (None, "destination") and tid in self.dests:
            live = self.dests[tid].summary()
        if live is not None:
            if files:
                rec = store.load_transfer(tid, live["role"])
                if rec is not None and live["role"] == "source" and is_fanout(rec):
                    live["files"] = live_files(store, rec, _file_view)  # as its destinations have them
                else:
                    live["files"] = [_file_view(f) for f in rec.files] if rec else []
            return live
        for r in ([role] if role else ["source", "destination"]):
            rec = store.load_transfer(tid, r, files=files)
            if rec is not None and r == "source" and is_fanout(rec):
                return stored_view(self._ctx.store, rec, files, _file_view)
            if rec is not None:
                files_total, files_done, bytes_total, bytes_done = store.file_totals(tid, r)
                return {"transfer_id": tid, "role": r, "state": rec.state, "result_code": rec.result_code,
                        "source_agent": rec.header.get("source_agent"),
                        "destination_agent": rec.header.get("destination_agent"),
                        "bytes_total": bytes_total, "bytes_done": bytes_done,
                        "files_total": files_total, "files_done": files_done,
                        "recoveries": rec.recoveries, "last_stall": rec.last_stall,
                        "created": _iso(rec.created), "updated": _iso(rec.updated),
                        "job_name": rec.header.get("job_name"),
                        **(priority_view(rec.header) if r == "source" else {}),
                        **({"files": [_file_view(f) for f in rec.files]} if files else {})}
        raise CommandRefused(f"transfer {tid} is not known to agent {self._ctx.name}")

    def listing(self) -> dict[str, Any]:
        # the most recent ones: a reply stays far below the clients' size limit, however long the history
        recs = [r for r in self._ctx.store.transfers(files=False) if not is_leg_row(r.transfer_id)][-LIST_LIMIT:]
        return {"transfers": [self.query(r.transfer_id, r.role) for r in recs]}


def _left_out(header: dict[str, Any]) -> str:
    """The started message's words for what the walk left out and the empty directories it found."""
    text = ""
    if header.get("directories"):
        text += f", {len(header['directories'])} empty director(ies)"
    skipped = header.get("skipped") or []
    if skipped:
        shown = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:3])
        more = header.get("skipped_count", len(skipped)) - min(3, len(skipped))
        text += f"; left out {header.get('skipped_count', len(skipped))}: {shown}" + (f" (and {more} more)" if more else "")
    return text


def _file_view(f: FileRecord) -> dict[str, Any]:
    return {"index": f.index, "source": f.source, "destination": f.destination, "size": f.size,
            "bytes_done": f.size if f.status == FileStatus.DONE else f.offset, "status": f.status,
            "result_code": f.result_code, "supplement": f.supplement}
