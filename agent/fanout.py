"""A fan-out transfer at its source (`-da A2,A3,...`, docs/protocol.md#fan-out): one transfer id, one LEG per
destination, and the shared stream the legs publish on once for all.

Each leg is a whole source session (agent/source.py) with its own store row (f"{tid}/{dest}"), epoch, window,
acks, resyncs, recovery and recovery timer, and its own transfer key with its destination. This holds the legs,
answers for the transfer as one (state, summary, progress summed over the legs, one `completed` event whose
`destinations` lists each leg's outcome: agent.core.fanout_outcome) and owns the parent row (transfer_id = tid,
header with `destination_agents` and the group key G). The shared publisher (agent/fanout_stream.py) decides,
chunk by chunk, whether a leg publishes on `<p>/Fanout/<source>/<tid>`, takes a credit, or sends unicast.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import time
from typing import Any, Callable

from .context import AgentContext
from .core import program_call as pc
from .core import results
from .core.fanout_outcome import LegOutcome, arrived, fanout_files, fanout_outcome, recovery_fields
from .core.lifecycle import TransferState as S
from .core.policy import PROGRESS_INTERVAL
from .core.statuses import FileStatus
from .fsops import ConfinedDirs
from .fileio import os_error_at
from .programs import ProgramCaller
from .source import SourceTransfer, _iso, encryption_of, priority_view
from .store import TransferRecord
from .wire import provenance
from .wire.binding import new_ephemeral
from .wire.events import build_progress

log = logging.getLogger("fte.source")

GROUP_KEY_BYTES = 32
SOURCE_CALLS = ("pre_source", "post_source")  # run once for a fan-out transfer, by its source agent
DESTINATION_CALLS = ("pre_destination", "post_destination")  # run once by each destination agent (its leg)
# a leg's own figures in an item of the live progress's `destinations` (with its `agent`: DestinationProgress)
PROGRESS_FIELDS = ("state", "bytes_done", "files_done", "recoveries", "bytes_resent")


def leg_id(tid: str, dest: str) -> str:
    """The store row of the leg of fan-out transfer `tid` to `dest`."""
    return f"{tid}/{dest}"


def is_leg_row(transfer_id: str) -> bool:
    return "/" in transfer_id


def is_fanout(rec: TransferRecord) -> bool:
    return bool(rec.header.get("destination_agents")) and not is_leg_row(rec.transfer_id)


def make_legs(rec: TransferRecord, offer_key: Callable[[str], str]) -> list[TransferRecord]:
    """The legs of the admitted fan-out transfer `rec` (its parent row), one per destination, and G in the
    parent's header. Each leg has its own key exchange (so its own transfer key) and, encrypted, its
    destination's offer key; its offer carries `fanout` only when it is encrypted (docs/protocol.md#fan-out)."""
    h = rec.header
    dests = list(h["destination_agents"])
    group_key = base64.b64encode(os.urandom(GROUP_KEY_BYTES)).decode()
    h["fanout_key"] = group_key
    rec.peer_confirmed = True  # the parent row runs no session: nothing to confirm (the legs' rows are)
    legs = []
    for dest in dests:
        header = {k: v for k, v in h.items() if k not in ("destination_agents", "fanout_key", "kx_private",
                                                           "kx_public", "peer_offer_key")}
        kx_private, kx_public = new_ephemeral()
        header.update(destination_agent=dest, leg_of=rec.transfer_id, disposition="leave",
                      kx_private=base64.b64encode(kx_private).decode(), kx_public=kx_public)
        if h.get("encryption"):
            header.update(peer_offer_key=offer_key(dest), fanout={"key": group_key, "destinations": dests})
        legs.append(TransferRecord(leg_id(rec.transfer_id, dest), "source", rec.state, dest, header,
                                   recovery_timeout=rec.recovery_timeout, files=copy.deepcopy(rec.files)))
    return legs


def running_leg(session: Any, via: str | None) -> SourceTransfer | None:
    """The running source session a control message is for: `session` itself, or of a fan-out the leg of the
    agent that sent it (`via`, found by the router from the leg key that authenticated it)."""
    if isinstance(session, FanoutTransfer):
        return session.legs.get(via) if via is not None else None
    return session


def stored_legs(store: Any, tid: str) -> list[TransferRecord]:
    """The stored leg rows of fan-out transfer `tid` this agent was the source of (empty: not one)."""
    rec = store.load_transfer(tid, "source", files=False)
    if rec is None or not is_fanout(rec):
        return []
    legs = (store.load_transfer(leg_id(tid, d), "source", files=False) for d in rec.header["destination_agents"])
    return [leg for leg in legs if leg is not None]


def fail_unresumable(store: Any, rec: TransferRecord, legs: list[TransferRecord], missing: list[str]) -> None:
    """A running fan-out `rec` whose leg rows are not all in the store (`missing`: those destinations; written
    by an earlier version that saved the parent's row and its legs' in separate transactions, cut by a crash:
    they are saved together now, agent.store.save_transfer): it cannot be rebuilt, so it ends failed, saying
    why, rather than stopping the agent at every start (agent.transfers.load)."""
    reason = (f"fan-out transfer could not be resumed: the state store has no row of its destination(s) "
              f"{', '.join(missing)}")
    log.error("transfer %s: %s", rec.transfer_id, reason)
    for r in (*legs, rec):
        if not S(r.state).is_terminal:
            r.state, r.result_code, r.last_stall = S.FAILED.value, results.FAILED, reason
            store.update_transfer(r)


class FanoutTransfer:
    """One fan-out transfer's source: its legs by destination agent, and the transfer as one."""

    def __init__(self, ctx: AgentContext, rec: TransferRecord, legs: list[TransferRecord],
                 restarted: bool = False) -> None:
        from .fanout_stream import SharedStream  # the shared publisher (credits): its own concept

        self.ctx = ctx
        self.rec = rec
        self.tid = rec.transfer_id
        self.dests: list[str] = list(rec.header["destination_agents"])
        by_dest = {leg.peer: leg for leg in legs}
        self.legs: dict[str, SourceTransfer] = {}
        for dest in self.dests:
            leg = SourceTransfer(ctx, by_dest[dest], restarted=restarted)
            leg.fanout = self
            leg.programs = ProgramCaller(ctx, leg.rec, only=DESTINATION_CALLS)  # each destination runs its own
            leg.session.sending.take_early_acks()
            if self.legs:  # --bandwidth is the transfer's: one bucket for every leg, shared publishes and unicast
                leg.pace.share(next(iter(self.legs.values())).pace)
            self.legs[dest] = leg
        hashers: dict[int, tuple[Any, int]] = {}
        for leg in self.legs.values():
            leg.reads.share_hashers(hashers)
        self.stream = SharedStream(ctx, self)
        self.programs = ProgramCaller(ctx, rec, only=SOURCE_CALLS)  # -presrc, -postsrc: once for the transfer
        self.started = time.monotonic()
        self._last_progress = 0.0
        self._last_states: tuple[S, ...] = ()  # the legs' states in the last progress published

    # ------------------------------------------------------------------ as one transfer

    @property
    def key(self) -> bytes | None:
        return None  # each leg has its own (agent.router tries the legs': leg_for_key)

    @property
    def state(self) -> S:
        return S(self.outcome().state)

    def outcome(self) -> Any:
        return fanout_outcome([leg_outcome(self.legs[d]) for d in self.dests])

    def post(self, *item: Any) -> None:
        """An input for every leg (link up/down, cancel, wake); a control message goes to one leg (post_leg)."""
        for leg in self.legs.values():
            leg.post(*item)

    def post_leg(self, dest: str, *item: Any) -> None:
        leg = self.legs.get(dest)
        if leg is not None:
            leg.post(*item)

    def summary(self, legs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The transfer as one (query_transfer), from its legs' summaries (`legs`, in -da order: made here
        when not given)."""
        legs = legs if legs is not None else [self.legs[d].summary() for d in self.dests]
        out = self.outcome()
        first = legs[0]
        return dict(first, state=out.state, result_code=out.result_code, destination_agents=self.dests,
                    **recovery_fields(list(zip(self.dests, legs))),  # of the transfer as a whole, not the first's
                    destinations=out.destinations, **{k: sum(leg[k] for leg in legs) for k in
                                                      ("bytes_total", "bytes_done", "files_total", "files_done",
                                                       "recoveries", "bytes_resent")},
                    seconds=round(time.monotonic() - self.started, 3))

    def publish_progress(self) -> None:
        """Live progress of the transfer (summed over its legs, and each leg's own figures in `destinations`),
        every PROGRESS_INTERVAL at most (as a transfer's), unless it has ended or a leg's state changed (a
        destination recovering, done: published at once)."""
        now = time.monotonic()
        ended = self.state.is_terminal
        states = tuple(self.legs[d].state for d in self.dests)
        if not self.ctx.link_up() or (not ended and states == self._last_states and now - self._last_progress < PROGRESS_INTERVAL):
            return
        self._last_progress, self._last_states = now, states
        legs = [self.legs[d].summary() for d in self.dests]
        s = self.summary(legs)
        s.pop("destination_agents")  # (in query_transfer; live progress names them in its destinations)
        s["destinations"] = [{"agent": d, **{k: leg[k] for k in PROGRESS_FIELDS}} for d, leg in zip(self.dests, legs)]
        elapsed = max(1e-6, now - self.started)
        s.update(time=_iso(time.time()), rate_bytes_per_second=int(s["bytes_done"] / elapsed), current_file=None)
        build_progress(s)  # strictly its model (docs/log-events.md#live-progress), as the log's events are
        topic = self.ctx.topics.progress(self.ctx.name, self.tid)
        payload = provenance.sign_payload(json.dumps(s).encode(), provenance.EVENT, topic, self.ctx.identity)
        task = asyncio.ensure_future(self.ctx.publish(topic, payload, 0, False))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        # a leg that ended before a restart is not run again (its programs, its complete: done); its outcome is
        # its row's, and its files' for the completed event
        ended = [leg for leg in self.legs.values() if leg.state.is_terminal]
        for leg in ended:
            leg.completed = leg.session.completed_fields(leg.rec.last_stall, time.monotonic())
        if self.programs and all(leg.session.state == S.QUEUED for leg in self.legs.values()):
            # -presrc once, before any leg offers the transfer: a failure fails every leg, nothing has moved
            outcome = await self.programs.run("pre_source")
            if outcome is not None and not outcome.ok:
                for leg in self.legs.values():
                    leg.programs.failed_before = pc.describe_failure(outcome)
        try:
            await asyncio.gather(*(leg.run() for leg in self.legs.values() if leg not in ended))
        finally:
            self.stream.close()
        await self._finish()

    async def _finish(self) -> None:
        out = self.outcome()
        rec = self.rec
        rec.state, rec.result_code = out.state, out.result_code
        first = self.legs[self.dests[0]]
        fields = dict(first.completed or {})
        # each file as every destination ended it (agent.core.fanout_outcome), not as the first destination did
        fields["files"] = fanout_files([(d, self._leg_files(self.legs[d])) for d in self.dests])
        if out.state == S.COMPLETE.value and rec.header.get("disposition") == "delete":
            self._delete_sources(first, fields["files"])
        fields.update(result_code=out.result_code, result=results.describe(out.result_code),
                      message_id=results.BFGSS0081E if any(d["state"] == S.RECOVERY_TIMED_OUT.value
                                                            for d in out.destinations) else None,
                      destinations=out.destinations, message=_message(out))
        fields.pop("programs", None)
        fields = await self._programs_after(fields)
        if "statistics" in fields:
            fields["statistics"] = self._statistics(fields["files"], out)
        for f, view in zip(rec.files, fields["files"]):  # the parent's file rows: fte-show-transfer's files
            f.status = FileStatus.DONE if view["result_code"] != results.FILE_FAILED else FileStatus.FAILED
            f.result_code, f.supplement, f.digest = view["result_code"], view["supplement"], view["digest"]
            f.offset = f.size if f.status == FileStatus.DONE else 0
        self.ctx.store.update_transfer(rec, files=rec.files)
        if self.ctx.metrics is not None and "statistics" in fields:
            self.ctx.metrics.transfer_finished(out.state, out.result_code, fields["statistics"])
        self.ctx.log.emit(rec, "completed", **fields, encryption=encryption_of(rec.header))
        self.publish_progress()
        self.ctx.on_state_change()

    async def _programs_after(self, fields: dict[str, Any]) -> dict[str, Any]:
        """-postsrc once, after every leg ended, when some destination got the files (a failure makes a
        success 40); `programs`: every call that ran, each with the `agent` that ran it (source's pre, the
        destinations' own, source's post)."""
        before = [dict(o.to_json(), agent=self.ctx.name) for o in self.programs.outcomes]
        legs = [dict(p, agent=d) for d in self.dests for p in (self.legs[d].completed or {}).get("programs") or []]
        fields = await self.programs.after(S(self.rec.state), fields)  # (post- calls: when state is complete)
        fields.pop("programs", None)
        after = [dict(o.to_json(), agent=self.ctx.name) for o in self.programs.outcomes[len(before):]]
        if before or legs or after:
            fields["programs"] = before + legs + after
        failed = [pc.describe_failure(o) for o in self.programs.outcomes if not o.ok]
        if failed:
            fields["message"] = "; ".join([_message(self.outcome()), *failed])
        self.rec.result_code = fields["result_code"]
        return fields

    def _leg_files(self, leg: SourceTransfer) -> list[dict[str, Any]]:
        """The leg's files as its completed event lists them (as they stand, if it made none)."""
        if leg.completed is not None and "files" in leg.completed:
            return list(leg.completed["files"])
        return leg.session.completed_fields(leg.session.stall_reason, time.monotonic())["files"]

    def _statistics(self, files: list[dict[str, Any]], out: Any) -> dict[str, Any]:
        """The completed event's `statistics` of the transfer as a whole: its files' results as every
        destination ended them, the bytes delivered to every destination, resends and recoveries summed over
        its legs, its own time (docs/log-events.md, `completed`)."""
        legs = [self.legs[d].session for d in self.dests]
        return {"files": len(files),
                "files_succeeded": sum(1 for f in files if arrived(f["result_code"])),
                "files_failed": sum(1 for f in files if f["result_code"] == results.FILE_FAILED),
                "bytes": sum(f.size for s in legs for f in s.files.values() if f.status == FileStatus.DONE),
                "seconds": round(time.monotonic() - self.started, 3),
                "recoveries": sum(d["recoveries"] for d in out.destinations),
                "bytes_resent": sum(s.bytes_resent for s in legs)}

    def _delete_sources(self, first: SourceTransfer, files: list[dict[str, Any]]) -> None:
        """-sd delete: once every destination has every file, not before (a leg leaves its sources); a source
        not deleted is a warning on that file (result 2) in `files`, the completed event's."""
        dirs = ConfinedDirs(self.ctx.sandbox)
        try:
            for f, view in zip(first.session.files.values(), files):
                try:
                    dirs.unlink(f.source)
                except OSError as exc:
                    view["result_code"] = f.result_code = results.FILE_WARNING
                    view["supplement"] = f.supplement = \
                        f"transferred, but the source was not deleted: {os_error_at(exc)}"
        finally:
            dirs.close()


def leg_outcome(leg: SourceTransfer) -> LegOutcome:
    s = leg.session
    files = list(s.files.values())
    rc = s.lifecycle.result_code if leg.state.is_terminal else None
    if leg.state.is_terminal and leg.completed is not None:
        rc = leg.completed.get("result_code", rc)  # its -postdst failed: 40 (agent.programs.ProgramCaller.after)
    if leg.state.is_terminal and rc is None:
        rc = results.FAILED
    supplement = None
    if rc not in (None, results.SUCCESS):
        supplement = (leg.completed or {}).get("message") or s.stall_reason or next(
            (f.supplement for f in files if f.supplement), None)
    return LegOutcome(leg.dest, leg.state.value, rc, sum(1 for f in files if f.status == FileStatus.DONE),
                      sum(1 for f in files if f.status == FileStatus.FAILED), sum(map(s.sending.acked, files)),
                      s.lifecycle.recoveries, supplement)


def _message(out: Any) -> str:
    ok = [d["agent"] for d in out.destinations if d["result_code"] == results.SUCCESS]
    return (f"fan-out to {len(out.destinations)} destination agents: {len(ok)} succeeded"
            + (f" ({', '.join(ok)})" if ok and len(ok) < len(out.destinations) else ""))


def live_files(store: Any, rec: TransferRecord, file_view: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """The files of running fan-out `rec` as its destinations have them, from its legs' rows (the parent's rows
    change only at its end): `ready` while some destination has not got it (`bytes_done`: what every destination
    acknowledged), else `done` if some destination got it, else `failed`; `supplement`: each destination's
    ("A3: ...")."""
    legs = [(d, {g.index: g for g in leg.files}) for d in rec.header["destination_agents"]
            if (leg := store.load_transfer(leg_id(rec.transfer_id, d), "source")) is not None]
    out = []
    for f in rec.files:  # each leg's file by its index: a fan-out of 10,000 files is not 10,000 scans of each leg
        each = [(d, file_view(files[f.index])) for d, files in legs if f.index in files]
        view = file_view(f)
        if each:
            statuses = {v["status"] for _, v in each}
            status = next(s for s in (FileStatus.READY, FileStatus.DONE, FileStatus.FAILED, *statuses) if s in statuses)
            notes = [f"{d}: {v['supplement']}" for d, v in each if v.get("supplement")]
            view.update(status=status, bytes_done=min(v["bytes_done"] for _, v in each),
                        supplement="; ".join(notes) or None)
        out.append(view)
    return out


def stored_view(store: Any, rec: TransferRecord, files: bool, file_view: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """A finished (or not running) fan-out transfer as one, from its parent and leg rows (agent/fanout.py)."""
    tid = rec.transfer_id
    legs, totals, rows = [], [0, 0, 0, 0], []
    for dest in rec.header["destination_agents"]:
        leg = store.load_transfer(leg_id(tid, dest), "source", files=True)
        if leg is None:
            continue
        rows.append((dest, {"state": leg.state, "recovering_since": _iso(leg.recovering_since),
                            "last_stall": leg.last_stall}))
        t = store.file_totals(leg.transfer_id, "source")
        totals = [a + b for a, b in zip(totals, t)]
        failed = [f for f in leg.files if f.status == FileStatus.FAILED]
        rc = leg.result_code if S(leg.state).is_terminal else None
        legs.append(LegOutcome(dest, leg.state, results.FAILED if S(leg.state).is_terminal and rc is None else rc,
                               sum(1 for f in leg.files if f.status == FileStatus.DONE), len(failed), t[3],
                               leg.recoveries, (failed[0].supplement if failed else leg.last_stall)
                               if rc not in (None, results.SUCCESS) else None))
    out = fanout_outcome(legs) if legs else None
    stalls = recovery_fields(rows)  # of the transfer as a whole (agent.core.fanout_outcome)
    view = {"transfer_id": tid, "role": "source", "state": out.state if out else rec.state,
            "result_code": out.result_code if out else rec.result_code,
            "source_agent": rec.header.get("source_agent"), "destination_agent": rec.header.get("destination_agent"),
            "destination_agents": rec.header["destination_agents"], "destinations": out.destinations if out else [],
            "bytes_total": totals[2], "bytes_done": totals[3], "files_total": totals[0], "files_done": totals[1],
            "recoveries": sum(leg.recoveries for leg in legs),
            **stalls, "last_stall": rec.last_stall or stalls["last_stall"],  # (the parent's: fail_unresumable's)
            "created": _iso(rec.created), "updated": _iso(rec.updated), "job_name": rec.header.get("job_name"),
            **priority_view(rec.header)}
    if files:
        view["files"] = [file_view(f) for f in rec.files]
    return view
