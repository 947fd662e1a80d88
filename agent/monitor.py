"""Directory resource monitors: poll a directory inside the sandbox, start transfers when a trigger fires.

The rules (triggers, memory, substitution) are in `agent.core.triggers`; this is the IO around them.
A monitor's definition and memory live in the agent's state store, so a file never fires twice for
the same version, also across restarts. Monitors run only while their agent runs. A monitor's task is a
transfer, or a command (a program call, agent.programs): a program from the agent's own commandPath, which
lies outside its sandbox, so a file's arrival never places the program that runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Annotated, Any, Awaitable, Callable, Literal

from pydantic import Field, field_validator, model_validator

from .core.errors import FteError
from .core import triggers as T
from .wire.events import MonitorName, new_event
from .wire.programs import ProgramCall
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
    task: TransferSpec | None = None
    # a command task (the reference's managedCall): a program from the agent's commandPath instead of a transfer
    command: ProgramCall | None = None

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: str) -> str:
        T.Trigger.parse(v)
        return v

    @model_validator(mode="after")
    def _one_task(self) -> "MonitorSpec":
        if (self.task is None) == (self.command is None):
            raise ValueError("a monitor has one task: a transfer or a command")
        return self


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
    if spec.task is not None and spec.task.source_agent != spec.agent:
        raise MonitorError(f"the task's source agent {spec.task.source_agent} must be the monitoring agent "
                           f"{spec.agent}", T.MONITOR_TASK_SOURCE_AGENT_INVALID)
    text = (spec.task or spec.command).model_dump_json()  # type: ignore[union-attr]
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
        task = json.loads((self.spec.task or self.spec.command).model_dump_json())  # type: ignore[union-attr]
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
        if self.spec.command is not None:
            return await self._run_command(task, files, fixed)
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


    async def _run_command(self, call: dict[str, Any], files: list[str], fixed: dict[str, str] | None) -> list[str]:
        """The command task, once per file that fired (once for noMatch), its arguments substituted with the
        file's variables; a `command_ran` event each (result 0, or 108 when it failed or was refused). A
        failed run is not retried at the next poll (the reference's command tasks neither)."""
        ran = []
        for path in files or [""]:
            try:
                if fixed is not None:
                    values = fixed
                else:
                    st = os.stat(path)
                    values = T.variables(path, st.st_size, st.st_mtime, self.spec.agent)
                outcome = await self._submit({"command": T.substitute_all(call, values), "files": files and [path]},
                                             f"monitor {self.spec.name}")
            except Exception as exc:
                code = exc.code if isinstance(exc, (T.TriggerError, MonitorError)) else T.MONITOR_TASK_FAILED
                self._emit("failed", {"result_code": code, "files": files and [path],
                                      "message": f"command not run: {exc}"})
                continue
            program = json.loads(outcome)
            ok = program["outcome"] == "success"
            self._emit("command_ran", {"result_code": 0 if ok else T.MONITOR_TASK_FAILED, "files": files and [path],
                                       "program": program,
                                       "message": f"{len(files) or 'no'} file(s) triggered {self.trigger.text()}: "
                                                  f"command {program['name']} {program['outcome']} (return code "
                                                  f"{program['return_code']})"})
            ran.append(path)
        return ran


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
