"""Directory resource monitors: poll a directory inside the sandbox, start transfers when a trigger fires.

The rules (triggers, memory, substitution) are in `agent.core.triggers`; this is the IO around them.
A monitor's definition and memory live in the agent's state store, so a file never fires twice for
the same version, also across restarts. Monitors run only while their agent runs. A monitor never
runs a program: its task is a transfer, whatever a file's arrival contains.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Annotated, Any, Awaitable, Callable, Literal

from pydantic import Field, field_validator

from .core.errors import FteError
from .core import triggers as T
from .wire.events import MonitorName, new_event
from .wire.protocol import AgentName, CommandBase, Path_, Strict, TransferSpec, utc_now

log = logging.getLogger("fte.monitor")


class MonitorSpec(Strict):
    name: MonitorName
    agent: AgentName
    directory: Path_
    trigger: Annotated[str, Field(max_length=512)]
    poll_seconds: Annotated[int, Field(ge=1, le=366 * 86400)] = 60
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 1
    recursion: Annotated[int, Field(ge=0, le=64)] = 0
    include: Annotated[str, Field(max_length=512)] | None = None
    exclude: Annotated[str, Field(max_length=512)] | None = None
    task: TransferSpec

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: str) -> str:
        T.Trigger.parse(v)
        return v


class CreateMonitor(CommandBase):
    kind: Literal["create_monitor"]
    monitor: MonitorSpec
    replace: bool = False


class MonitorCommand(CommandBase):
    kind: Literal["delete_monitor", "stop_monitor", "start_monitor"]
    name: MonitorName


class ListMonitors(CommandBase):
    kind: Literal["list_monitors"]


class MonitorError(FteError):
    """A monitor command that cannot be carried out; raised with the result code its reply carries."""


def check_task(spec: MonitorSpec) -> None:
    """Refuse at creation what could never run (the reference's codes)."""
    trig = T.Trigger.parse(spec.trigger)
    if spec.task.source_agent != spec.agent:
        raise MonitorError(f"the task's source agent {spec.task.source_agent} must be the monitoring agent "
                           f"{spec.agent}", T.MONITOR_TASK_SOURCE_AGENT_INVALID)
    text = spec.task.model_dump_json()
    if trig.kind == "noMatch" and T.uses_file_variables(text):
        raise MonitorError("a noMatch monitor has no file to describe: its task cannot use file variables "
                           "such as ${FileName} (BFGDM0060E)", T.MONITOR_VARIABLE_IN_NOMATCH)
    try:  # every variable must be known
        T.substitute_all(json.loads(text), T.variables("/x/y.z", 0, 0.0, spec.agent))
    except T.TriggerError as exc:
        raise MonitorError(str(exc), exc.code) from None


def snapshot(root: str, recursion: int) -> T.Snapshot:
    """{path: (size, mtime)} of the regular files under root, down to `recursion` levels."""
    found: T.Snapshot = {}
    base_depth = root.rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.count(os.sep) - base_depth >= recursion:
            dirnames[:] = []
        for name in filenames:
            if name.endswith(".part"):
                continue  # our own part files are never ready
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if os.path.isfile(p) and not os.path.islink(p):
                found[p] = (st.st_size, st.st_mtime)
    return found


Submit = Callable[[dict[str, Any], str], Awaitable[str]]
Emit = Callable[[str, dict[str, Any]], None]  # (action, fields): the agent makes the event with `event` below


def event(agent: str, monitor: str, action: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of the monitor's event on Log/<agent>/Monitors/<monitor>, checked (agent.wire.events)."""
    return new_event({"monitor": monitor, "agent": agent, "action": action}, fields)


class MonitorRunner:
    """One monitor's poll loop."""

    def __init__(self, spec: MonitorSpec, root: str, memory: T.MonitorMemory, submit: Submit, emit: Emit,
                 save: Callable[[T.MonitorMemory], None]) -> None:
        self.spec = spec
        self.root = root
        self.trigger = T.Trigger.parse(spec.trigger)
        self.memory = memory
        self._submit = submit
        self._emit = emit
        self._save = save
        self.polls = 0
        self.last_poll: str | None = None
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception as exc:  # a broken poll is reported, the monitor keeps polling
                log.exception("monitor %s: poll failed", self.spec.name)
                self._emit("failed", {"result_code": T.MONITOR_RESOURCE_FAILED, "message": f"poll failed: {exc}"})
            try:
                await asyncio.wait_for(self.wake.wait(), self.spec.poll_seconds)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def poll(self) -> list[str]:
        if not os.path.isdir(self.root):
            self._emit("failed", {"result_code": T.MONITOR_RESOURCE_FAILED,
                                  "message": f"monitored directory {self.root} does not exist"})
            return []
        snap = await asyncio.to_thread(snapshot, self.root, self.spec.recursion)
        fired, absent, memory = T.evaluate(self.trigger, self.root, snap, self.memory, self.spec.include,
                                           self.spec.exclude)
        self.polls += 1
        self.last_poll = utc_now()
        started: list[str] = []
        task = json.loads(self.spec.task.model_dump_json())
        if absent:
            tids = await self._start(task, [], T.variables("", 0, time.time(), self.spec.agent))
            if not tids:
                memory.absent_fired = False  # not started (see below): fire again at the next poll
            started += tids
        for i in range(0, len(fired), self.spec.batch_size):
            batch = fired[i:i + self.spec.batch_size]
            tids = await self._start(task, batch, None)
            if not tids:
                # The agent refused the transfer (stopping, destination not yet known after a restart,
                # too many transfers ...): do not remember these files as fired, or they would never be
                # sent (evaluate() marked them fired already). They fire again at the next poll, each
                # attempt reported by a "failed" event.
                for path in batch:
                    memory.fired.pop(path, None)
            started += tids
        # remember only after the transfers were accepted: a crash in between fires again, never never
        self.memory = memory
        self._save(memory)
        return started

    async def _start(self, task: dict[str, Any], files: list[str], fixed: dict[str, str] | None) -> list[str]:
        try:
            if fixed is not None:
                spec = T.substitute_all(task, fixed)
            else:
                items = []
                spec = dict(task)
                for path in files:
                    st = os.stat(path)
                    values = T.variables(path, st.st_size, st.st_mtime, self.spec.agent)
                    items += T.substitute_all(task["items"], values)
                    spec = T.substitute_all({k: v for k, v in task.items() if k != "items"}, values)
                spec["items"] = items
            tid = await self._submit(spec, f"monitor {self.spec.name}")
        except Exception as exc:
            code = exc.code if isinstance(exc, (T.TriggerError, MonitorError)) else T.MONITOR_TASK_FAILED
            self._emit("failed", {"result_code": code, "files": files, "message": f"task not started: {exc}"})
            return []
        self._emit("fired", {"result_code": 0, "files": files, "transfer_id": tid,
                             "message": f"{len(files) or 'no'} file(s) triggered {self.trigger.text()}: "
                                        f"transfer {tid} started"})
        return [tid]


MONITOR_KINDS = {"create_monitor", "delete_monitor", "stop_monitor", "start_monitor", "list_monitors"}


def parse_any_command(payload: bytes) -> Any:
    """Transfer commands (agent.wire.protocol), monitor and schedule commands, with the same limits and errors."""
    from pydantic import TypeAdapter

    from .wire.protocol import MAX_COMMAND_BYTES, ProtocolError, _load, _validate, parse_command
    from .scheduler import SCHEDULE_KINDS, CreateSchedule, DeleteSchedule, ListSchedules

    try:
        return parse_command(payload)
    except ProtocolError:
        if not any(f'"{k}"'.encode() in payload for k in MONITOR_KINDS | SCHEDULE_KINDS):
            raise
        adapter = TypeAdapter(Annotated[CreateMonitor | MonitorCommand | ListMonitors | CreateSchedule | DeleteSchedule
                                        | ListSchedules, Field(discriminator="kind")])
        return _validate(adapter, _load(payload, MAX_COMMAND_BYTES), "command")
