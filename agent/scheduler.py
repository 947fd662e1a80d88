"""Scheduled transfers: the source agent runs a transfer at a time and repeats it.

Rules (occurrences, missed runs) are in `agent.core.schedule`. Schedules live in the agent's state store,
so they survive restarts; an occurrence missed while the agent was down runs once at start, and the
schedule log (Log/<agent>/<schedule id>) says how many were missed. The list of schedules is retained on
Scheduler/<agent>.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from datetime import datetime, timezone
from typing import Annotated, Any, Awaitable, Callable, Literal

from pydantic import Field

from .core.schedule import Recurrence, ScheduleError, due
from .wire.events import ScheduleId, new_event
from .wire.protocol import CommandBase, Strict, TransferSpec

log = logging.getLogger("fte.scheduler")


class ScheduleSpec(Strict):
    start: Annotated[str, Field(max_length=64)]  # ISO 8601; without an offset: the agent's local time (-tb source)
    time_base: Literal["admin", "source"] = "admin"
    interval: Literal["minutes", "hours", "days", "weeks", "months", "years"] | None = None
    frequency: Annotated[int, Field(ge=1, le=100_000)] = 1
    count: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    end: Annotated[str, Field(max_length=64)] | None = None


class CreateSchedule(CommandBase):
    kind: Literal["create_schedule"]
    schedule: ScheduleSpec
    spec: TransferSpec


class DeleteSchedule(CommandBase):
    kind: Literal["delete_schedule"]
    schedule_id: ScheduleId


class ListSchedules(CommandBase):
    kind: Literal["list_schedules"]


SCHEDULE_KINDS = {"create_schedule", "delete_schedule", "list_schedules"}


def parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ScheduleError(f"{text!r} is not a time of the form YYYY-MM-DDThh:mm") from None
    return t if t.tzinfo is not None else t.astimezone()  # naive: this agent's local time


def recurrence(s: ScheduleSpec) -> Recurrence:
    return Recurrence(parse_time(s.start), s.interval, s.frequency, s.count, parse_time(s.end) if s.end else None)


Start = Callable[[TransferSpec, str], Awaitable[str]]
Emit = Callable[[str, str, dict[str, Any]], None]


class Scheduler:
    """Runs due occurrences of the agent's schedules (one loop, woken when schedules change)."""

    def __init__(self, store: Any, start: Start, emit: Emit, publish_list: Callable[[list[dict[str, Any]]], None],
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.store = store
        self._start = start
        self._emit = emit
        self._publish_list = publish_list
        self._clock = clock
        self.wake = asyncio.Event()

    def create(self, cmd: CreateSchedule) -> dict[str, Any]:
        rec = recurrence(cmd.schedule)  # raises ScheduleError on nonsense
        sid = secrets.token_hex(8)
        self.store.save_schedule(sid, json.loads(cmd.schedule.model_dump_json()), json.loads(cmd.spec.model_dump_json()),
                                 0, cmd.requester)
        self._emit(sid, "created", {"message": f"schedule {sid}: first run at {rec.start.isoformat()}",
                                    "next_run": rec.start.isoformat()})
        self.changed()
        return {"schedule_id": sid, "next_run": rec.start.isoformat()}

    def delete(self, sid: str) -> bool:
        ok = bool(self.store.delete_schedule(sid))
        if ok:
            self._emit(sid, "deleted", {"message": f"schedule {sid} deleted"})
            self.changed()
        return ok

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for sid, sched, spec, next_index, requester in self.store.schedules():
            rec = recurrence(ScheduleSpec.model_validate(sched))
            nxt = rec.occurrence(next_index).isoformat() if rec.exists(next_index) else None
            out.append({"schedule_id": sid, "schedule": sched, "spec": spec, "next_run": nxt,
                        "runs": next_index, "requester": requester})
        return out

    def publish(self) -> None:
        """The retained listing again (at each connection: a restarted broker may have lost it)."""
        self._publish_list(self.listing())

    def changed(self) -> None:
        self._publish_list(self.listing())
        self.wake.set()

    async def run(self) -> None:
        self._publish_list(self.listing())
        while True:
            wait = await self.tick()
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), max(0.05, min(wait, 30.0)))
            except asyncio.TimeoutError:
                pass

    async def tick(self) -> float:
        """Run what is due; return the seconds until the next occurrence."""
        now = self._clock()
        soonest = 30.0
        for sid, sched, spec, next_index, _ in self.store.schedules():
            rec = recurrence(ScheduleSpec.model_validate(sched))
            d = due(rec, next_index, now)
            if d.run is not None:
                note = (f"; {d.missed} occurrence(s) were missed while the agent was down and are not repeated"
                        if d.missed else "")
                try:
                    tid = await self._start(TransferSpec.model_validate(spec), f"schedule {sid}")
                    self._emit(sid, "run", {"transfer_id": tid, "occurrence": d.run, "missed": d.missed,
                                            "scheduled_for": rec.occurrence(d.run).isoformat(),
                                            "message": f"schedule {sid} started transfer {tid}{note}"})
                except Exception as exc:
                    self._emit(sid, "failed", {"occurrence": d.run, "missed": d.missed, "result_code": 1,
                                               "message": f"schedule {sid} could not start its transfer: {exc}"})
            if d.next_index is None:
                self.store.delete_schedule(sid)
                self._emit(sid, "expired", {"message": f"schedule {sid} has no more occurrences"})
                self._publish_list(self.listing())
                continue
            if d.next_index != next_index:
                self.store.set_schedule_next(sid, d.next_index)
                self._publish_list(self.listing())
            soonest = min(soonest, (rec.occurrence(d.next_index) - now).total_seconds())
        return soonest


def event(agent: str, sid: str, action: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of the schedule's event on Log/<agent>/<schedule id>, checked (agent.wire.events)."""
    return new_event({"schedule_id": sid, "agent": agent, "action": action}, fields)
