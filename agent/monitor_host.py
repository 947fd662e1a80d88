"""The agent's resource monitors: each a MonitorRunner (agent.monitor) in a task, kept in the state store,
listed retained on <prefix>/Monitors/<agent>/<name> and logging on the agent's log topic; and the monitor
commands (create, start, stop, delete, list). A monitor's trigger starts a transfer like a command would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

from .commands import CommandRefused
from .core.policy import MONITOR_VIEW_INTERVAL
from .core import triggers as T
from .monitor import CreateMonitor, ListMonitors, MonitorCommand, MonitorError, MonitorRunner, MonitorSpec, check_task
from .monitor import event as monitor_event
from .wire.protocol import Topics, TransferSpec
from .sandbox import Sandbox, SandboxError
from .store import StateStore

log = logging.getLogger("fte.agent")

StartTransfer = Callable[..., Awaitable[dict[str, Any]]]


class MonitorHost:
    """`resume()` at start; `create`, `command` and `listing` are the monitor commands' handlers."""

    def __init__(self, name: str, topics: Topics, store: StateStore, sandbox: Sandbox, *,
                 start_transfer: StartTransfer, retain: Callable[[str, bytes], None],
                 event: Callable[[str, dict[str, Any]], None],
                 run_command: Callable[[dict[str, Any], str], Awaitable[str]] | None = None) -> None:
        self._name = name
        self._run_command = run_command  # a command task's program call (agent.programs.monitor_command)
        self._topics = topics
        self._store = store
        self._sandbox = sandbox
        self._start_transfer = start_transfer  # agent.transfers.Transfers.start
        self._retain = retain  # a retained message through the outbox (topic, payload; b"" clears it)
        self._event = event  # a log event through the outbox
        self.running: dict[str, tuple[MonitorRunner, asyncio.Task[None]]] = {}
        self._viewed: dict[str, float] = {}  # monitor -> when its retained view was last published after a poll

    def __len__(self) -> int:
        return len(self.running)

    def resume(self) -> None:
        """Start the monitors that were started; list again the others."""
        for name, spec, state, memory in self._store.monitors():
            if state == "started":
                self._start(MonitorSpec.model_validate(spec), memory)
            else:  # its retained listing again, signed as this version signs (clients believe no other)
                self._publish(MonitorSpec.model_validate(spec), state)

    def republish(self) -> None:
        """Every monitor's retained view again (at each connection: a restarted broker may have lost them)."""
        for _, spec, state, _ in self._store.monitors():
            self._publish(MonitorSpec.model_validate(spec), state)

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel every monitor's task; the tasks, to be awaited."""
        tasks = [t for _, t in self.running.values()]
        for t in tasks:
            t.cancel()
        return tasks

    # ------------------------------------------------------------------ commands

    async def listing(self, cmd: ListMonitors) -> dict[str, Any]:
        return {"monitors": [self._view(n, sp, st) for n, sp, st, _ in self._store.monitors()]}

    async def create(self, cmd: CreateMonitor) -> dict[str, Any]:
        spec, name = cmd.monitor, self._name
        if spec.agent != name:
            raise CommandRefused(f"monitor for agent {spec.agent} sent to agent {name}",
                                 T.MONITOR_TASK_SOURCE_AGENT_INVALID)
        existing = {n for n, *_ in self._store.monitors()}
        if spec.name in existing and not cmd.replace:
            raise CommandRefused(f"agent {name} already has a monitor {spec.name} (use -f to replace it)",
                                 T.MONITOR_ALREADY_PRESENT)
        try:
            root = self._sandbox.resolve(spec.directory, write=False)
        except SandboxError as exc:
            raise CommandRefused(f"monitored directory refused: {exc}", T.MONITOR_RESOURCE_DENIED) from None
        if not root.is_dir():
            raise CommandRefused(f"{spec.directory} is not a directory on agent {name}", T.MONITOR_RESOURCE_INCORRECT)
        try:
            check_task(spec)
        except MonitorError as exc:
            raise CommandRefused(str(exc), exc.code) from None
        self._cancel(spec.name)
        self._store.save_monitor(spec.name, json.loads(spec.model_dump_json()), "started", cmd.requester)
        self._start(spec, {})
        self._log(spec.name, "created", {"message": f"monitor {spec.name} created on {root}"})
        return {"monitor": spec.name, "state": "started"}

    async def command(self, cmd: MonitorCommand) -> dict[str, Any]:
        """delete_monitor, stop_monitor, start_monitor."""
        rows = {n: (sp, st) for n, sp, st, _ in self._store.monitors()}
        if cmd.name not in rows:
            raise CommandRefused(f"agent {self._name} has no monitor {cmd.name}", T.MONITOR_MISSING)
        spec = MonitorSpec.model_validate(rows[cmd.name][0])
        if cmd.kind == "delete_monitor":
            self._cancel(cmd.name)
            self._store.delete_monitor(cmd.name)
            self._retain(self._topics.monitors(self._name, cmd.name), b"")
            self._log(cmd.name, "deleted", {"message": f"monitor {cmd.name} deleted"})
            return {"monitor": cmd.name, "state": "deleted"}
        if cmd.kind == "stop_monitor":
            self._cancel(cmd.name)
            self._store.set_monitor_state(cmd.name, "stopped")
            self._publish(spec, "stopped")
            return {"monitor": cmd.name, "state": "stopped"}
        self._store.set_monitor_state(cmd.name, "started")
        memory = next(m for n, _, _, m in self._store.monitors() if n == cmd.name)
        if cmd.name not in self.running:
            self._start(spec, memory)
        return {"monitor": cmd.name, "state": "started"}

    # ------------------------------------------------------------------ runners

    def _start(self, spec: MonitorSpec, memory: dict[str, Any]) -> None:
        root = str(self._sandbox.resolve(spec.directory, write=False))

        async def submit(task: dict[str, Any], origin: str) -> str:
            if "command" in task:  # a command task: the outcome of its program call, as JSON
                assert self._run_command is not None, "no program runner"
                return await self._run_command(task, origin)
            out = await self._start_transfer(TransferSpec.model_validate(task), originator=origin)
            return str(out["transfer_id"])

        runner = MonitorRunner(spec, root, T.MonitorMemory.from_json(memory), submit,
                               lambda action, fields: self._log(spec.name, action, fields),
                               lambda mem: self._polled(spec, mem))
        self.running[spec.name] = (runner, asyncio.create_task(runner.run(), name=f"monitor-{spec.name}"))
        self._publish(spec, "started")

    def _polled(self, spec: MonitorSpec, memory: T.MonitorMemory) -> None:
        """After each poll: the memory saved; the retained view (polls, last_poll) published again, the first
        poll at once and then at most every MONITOR_VIEW_INTERVAL (a 1 s poll is not a message a second)."""
        self._store.save_monitor_memory(spec.name, memory.to_json())
        now = time.monotonic()
        last = self._viewed.get(spec.name)
        if last is None or now - last >= MONITOR_VIEW_INTERVAL:
            self._viewed[spec.name] = now
            if spec.name in self.running:
                self._publish(spec, "started")

    def _cancel(self, name: str) -> None:
        self._viewed.pop(name, None)
        entry = self.running.pop(name, None)
        if entry is not None:
            entry[1].cancel()

    def _view(self, name: str, spec: dict[str, Any], state: str) -> dict[str, Any]:
        runner = self.running.get(name, (None,))[0]
        return {"name": name, "agent": self._name, "state": state, "spec": spec,
                "requester": self._store.monitor_requester(name),
                "polls": runner.polls if runner else 0, "last_poll": runner.last_poll if runner else None}

    def _publish(self, spec: MonitorSpec, state: str) -> None:
        view = self._view(spec.name, json.loads(spec.model_dump_json()), state)
        self._retain(self._topics.monitors(self._name, spec.name), json.dumps(view).encode())

    def _log(self, name: str, action: str, fields: dict[str, Any]) -> None:
        event = monitor_event(self._name, name, action, fields)
        if action == "failed":
            log.warning("monitor %s: %s", name, fields.get("message"))
        self._event(self._topics.monitor_log(self._name, name), event)
