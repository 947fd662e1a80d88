"""How transfers look to a person: one line per log event, a progress bar while waiting. (Making a broker's text
safe to print, and an agent's status line, are cli/safe_text.py: commands that show no event need only that.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console

from agent.core.fanout_outcome import route
from agent.core.lifecycle import TERMINAL_STATE_VALUES as TERMINAL
from agent.core.results import FILE_FAILED, FILE_SUCCESS
from agent.wire.events import Progress as ProgressEvent
from agent.core.program_call import FLAG_OF as CALL_FLAG
from agent.wire.events import (CleanedUp, Completed, Event, EventError, EventModel, MonitorEventBase, NotAuthorized,
                          Recovering, Resumed, ScheduleEventBase, Started, TransferEventBase, TransferProgress,
                          TriggerNotMet, UnknownEvent, parse_event, parse_progress, read_event)
from agent.wire.protocol import QueryTransfer, Topics

from .client import ClientError, FteClient, RecentEvents, new_request_id
from .safe_text import safe, safe_markup

if TYPE_CHECKING:
    from rich.progress import Progress  # imported when a bar is drawn (docs/development.md, start-up cost)


def format_event(ev: Event | Mapping[str, Any]) -> str:
    """One line for a log event, safe to print (every field came from the broker: see `safe`). `ev` is an
    event's model, or its JSON object (read with agent.wire.events.read_event; one that is no valid event, such as
    the outcome TransferWatcher asks an agent for after an outage, is shown with what it has)."""
    if isinstance(ev, EventModel):
        return safe(_event_line(ev))
    try:
        return safe(_event_line(read_event(dict(ev))))
    except EventError:
        return safe(_summary_line(ev))


def _head(time: Any, agent: Any, transfer_id: Any, action: Any) -> str:
    return f"{time} {agent} {str(transfer_id)[:12]} {action:10}"


def _job(name: Any) -> str:
    """The job name (-jn) of a transfer's line, after its action; nothing without one."""
    return f" [job {name}]" if name else ""


def result_and_job(t: Mapping[str, Any]) -> str:
    """The " result N job NAME" part of a transfer's listing line (fte-list-transfers, live and --history);
    each part only when the row has it."""
    text = f" result {t['result_code']}" if t.get("result_code") is not None else ""
    return text + (f" job {t['job_name']}" if t.get("job_name") else "")


def _completed_text(head: str, state: Any, rc: Any, counts: tuple[Any, Any, Any, Any], message: Any,
                    failed: list[tuple[Any, Any]]) -> str:
    """(files_succeeded, files, bytes, seconds) in `counts`; `failed`: (source, supplement) of failed files."""
    text = f"{head} {state} (result {rc}): {counts[0]}/{counts[1]} file(s), {counts[2]} bytes in {counts[3]} s"
    if not message and rc not in (0, None) and failed:
        message = f"{failed[0][0]}: {failed[0][1]}"
        if len(failed) > 1:
            message += f" (and {len(failed) - 1} more)"
    return f"{text} - {message}" if message else text


def _event_line(ev: EventModel) -> str:
    if isinstance(ev, UnknownEvent):  # a newer agent's action: what it has, as for any event
        return _summary_line(ev.wire())
    if isinstance(ev, MonitorEventBase):
        return f"{ev.time} {ev.agent} monitor {ev.monitor} {ev.action}: {ev.message}"
    if isinstance(ev, ScheduleEventBase):
        return f"{ev.time} {ev.agent} schedule {ev.schedule_id} {ev.action}: {ev.message}"
    if isinstance(ev, NotAuthorized):
        return f"{_head(ev.time, ev.agent, ev.transfer_id, ev.action)} : {ev.message}"
    if not isinstance(ev, TransferEventBase):  # a model added to agent.wire.events and not yet here: what it has
        return _summary_line(ev.wire())
    head = _head(ev.time, ev.agent, ev.transfer_id, ev.action) + _job(ev.job_name)
    if isinstance(ev, Completed):
        s = ev.statistics
        failed = [(f.source, f.supplement) for f in ev.files if f.result_code == FILE_FAILED and f.supplement]
        text = _completed_text(head, ev.state, ev.result_code, (s.files_succeeded, s.files, s.bytes, s.seconds),
                               ev.message, failed)
        calls = [f"{CALL_FLAG.get(p.when, p.when)} {p.name} {p.outcome}"
                 + (f" (return code {p.return_code})" if p.return_code is not None else " (not run)")
                 for p in ev.programs or ()]
        text += ("; programs: " + ", ".join(calls)) if calls else ""
        return text + _destinations_text(ev.wire())
    if isinstance(ev, ProgressEvent):
        parts = [f"{f.source} -> {f.destination} ({f.size} bytes, "
                 f"{'ok' if f.result_code == FILE_SUCCESS else f'result {f.result_code}'}"
                 + (f": {f.supplement}" if f.supplement else "") + ")" for f in ev.files]
        return f"{head} " + "; ".join(parts)
    if isinstance(ev, TriggerNotMet):
        return f"{head} {ev.state} (result {ev.result_code}): {ev.message}"
    if isinstance(ev, (Started, Recovering, Resumed, CleanedUp)):
        return f"{head} {ev.state}" + (f": {ev.message}" if ev.message else "")
    return _summary_line(ev.wire())


def _summary_line(ev: Mapping[str, Any]) -> str:
    """A line for a JSON object that is no event of this version: an unknown action, or the outcome an agent
    reported to a query (TransferWatcher._recover). Whatever it lacks is shown as '?' or left out."""
    for owner, what in (("monitor", "monitor"), ("schedule_id", "schedule")):
        if owner in ev:
            return f"{ev.get('time', '')} {ev.get('agent', '')} {what} {ev.get(owner)} {ev.get('action')}: " \
                   f"{ev.get('message', '')}"
    head = _head(ev.get("time", ""), ev.get("agent", ev.get("source_agent", "")), ev.get("transfer_id", "?"),
                 ev.get("action", "?")) + _job(ev.get("job_name"))
    if ev.get("action") == "completed":
        stats = ev.get("statistics") if isinstance(ev.get("statistics"), dict) else {}
        files = [f for f in ev.get("files") or [] if isinstance(f, dict)]
        failed = [(f.get("source"), f["supplement"]) for f in files if f.get("result_code") == FILE_FAILED
                  and f.get("supplement")]
        counts = tuple(stats.get(k, "?") for k in ("files_succeeded", "files", "bytes", "seconds"))
        return _completed_text(head, ev.get("state"), ev.get("result_code"), counts,  # type: ignore[arg-type]
                               ev.get("message"), failed) + _destinations_text(ev)
    return f"{head} {ev.get('state', '')}" + (f": {ev['message']}" if ev.get("message") else "")


def destination_entries(t: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A fan-out transfer's `destinations` (of a completed event or a summary), [] for an ordinary one."""
    found = t.get("destinations")
    return [d for d in found if isinstance(d, Mapping)] if isinstance(found, list) else []


def route_of(t: Mapping[str, Any], arrow: str = "->") -> str:
    """Where a transfer (an event, a summary, a history row) goes: A1->A2, or A1->A2,A3,A4 for a fan-out."""
    listed = t.get("destination_agents")  # a fan-out's started event, a summary: before any outcome is known
    names = [str(d.get("agent")) for d in destination_entries(t)] or (
        [str(a) for a in listed] if isinstance(listed, list) and listed else [str(t.get("destination_agent"))])
    return route(str(t.get("source_agent")), names).replace("->", arrow, 1)


def destination_lines(t: Mapping[str, Any], indent: str = "  ") -> list[str]:
    """One line per destination of a fan-out transfer (safe to print): its outcome, counts and reason."""
    lines = []
    for d in destination_entries(t):
        text = (f"{indent}{d.get('agent')}: {d.get('state')} (result {d.get('result_code')}): "
                f"{d.get('files_done')} file(s) done, {d.get('files_failed')} failed, {d.get('bytes_done')} bytes, "
                f"{d.get('recoveries')} recoveries")
        lines.append(safe(text + (f" - {d['supplement']}" if d.get("supplement") else "")))
    return lines


def _destinations_text(t: Mapping[str, Any]) -> str:
    """The destinations of a fan-out in an event's one line: '; destinations: A2 complete, A3 failed (40)'."""
    parts = [f"{d.get('agent')} {d.get('state')}" + (f" ({d.get('result_code')})" if d.get("result_code") else "")
             for d in destination_entries(t)]
    return "; destinations: " + ", ".join(parts) if parts else ""


def is_progress_topic(topics: Topics, topic: Any) -> bool:
    """Whether `topic` is a live progress snapshot's (<prefix>/Transfers/<agent>/<id>), not a log event's."""
    return topics.split(str(topic))[:1] == [topics.TRANSFERS]


def read_message(c: FteClient, message: Any) -> Event | None:
    """The log event in `message`, as its model, when the agent its topic names signed it for that topic
    (FteClient.event_of); None for anything else, with a note (shown with -v) for a signed one that is not an
    event (agent.wire.events.parse_event says why)."""
    return _read_signed(c, message, parse_event)  # type: ignore[no-any-return]


def read_progress(c: FteClient, message: Any) -> TransferProgress | None:
    """The live progress snapshot in `message`, as `read_message` reads an event."""
    return _read_signed(c, message, parse_progress)  # type: ignore[no-any-return]


def _read_signed(c: FteClient, message: Any, parse: Callable[[bytes], Any]) -> Any:
    if c.event_of(message) is None:
        return None
    try:
        return parse(bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b"")
    except EventError as exc:
        c.ignored(f"ignored a message on {message.topic}: {exc}")
        return None


def _destination_bars(progress: Progress, legs: dict[str, Any], snapshot: TransferProgress) -> None:
    """A fan-out's live progress: a bar per destination under the transfer's (its state, its bytes out of
    the file bytes every destination gets), so that one behind or recovering shows."""
    dests = snapshot.destinations or []
    for d in dests:
        if d.agent not in legs:
            legs[d.agent] = progress.add_task(d.agent, total=None)
        progress.update(legs[d.agent], total=snapshot.bytes_total // len(dests), completed=d.bytes_done,
                        description=f"  {safe_markup(d.agent)} {safe_markup(d.state)}")


class TransferWatcher:
    """Follows one transfer until its outcome, riding out broker outages (it asks the agent on reconnect)."""

    def __init__(self, client: FteClient, agent: str, transfer_id: str, show_progress: bool,
                 console: Console, print_events: bool = True) -> None:
        self.c = client
        self.agent = agent
        self.tid = transfer_id
        self.show_progress = show_progress
        self.console = console
        self.print_events = print_events and show_progress
        self.q: asyncio.Queue[Any] = asyncio.Queue()
        self.recent = RecentEvents()

    async def subscribe(self) -> None:
        await self.c.subscribe(self.c.topics.log(self.agent, self.tid), self.q)
        await self.c.subscribe(self.c.topics.progress(self.agent, self.tid), self.q)

    async def wait(self, timeout: float | None) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self._wait(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _wait(self) -> dict[str, Any]:
        progress = None
        task = None
        if self.show_progress:
            # (here, not at the top: only a -w on a terminal draws a bar, and every command imports this module)
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

            progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
            progress.start()
            task = progress.add_task(self.tid[:12], total=None)
        legs: dict[str, Any] = {}  # a fan-out: each destination's bar, by agent
        try:
            while True:
                get = asyncio.ensure_future(self.q.get())
                gone = asyncio.ensure_future(self.c.disconnected.wait())
                done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    final = await self._recover()
                    if final is not None:
                        return final
                    continue
                gone.cancel()
                m = get.result()
                if is_progress_topic(self.c.topics, m.topic):
                    snapshot = read_progress(self.c, m)  # None unless signed by the agent for this topic
                    if snapshot is not None and progress is not None and task is not None:
                        progress.update(task, total=snapshot.bytes_total, completed=snapshot.bytes_done,
                                        description=f"{self.tid[:12]} {safe_markup(snapshot.state)}")
                        _destination_bars(progress, legs, snapshot)
                    continue
                ev = read_message(self.c, m)  # None unless signed by the agent for this topic
                if ev is None:
                    continue
                if isinstance(ev, (Completed, TriggerNotMet)):
                    return ev.wire()
                wire = ev.wire()
                if not self.recent.first_time(wire):
                    continue
                if self.print_events:
                    self.console.print(format_event(ev), soft_wrap=True, markup=False, emoji=False)
        finally:
            if progress is not None:
                progress.stop()

    async def _recover(self) -> dict[str, Any] | None:
        """The broker went away: reconnect, then ask the agent rather than trusting no event was missed."""
        if self.show_progress:
            self.console.print("[yellow]lost the broker; reconnecting ...[/]")
        await self.c.reconnect()
        while True:
            final = self._queued_outcome()
            if final is not None:
                return final
            try:
                r = await self.c.request(self.agent, QueryTransfer(kind="query_transfer", request_id=new_request_id(),
                                                                   reply_to=self.c.client_id, transfer_id=self.tid),
                                         timeout=5)
            except ClientError:
                if self.c.disconnected.is_set():
                    await self.c.reconnect()
                continue  # the agent may still be reconnecting itself
            if not (r.ok and r.data.get("state") in TERMINAL):
                return None  # still running: keep following its events
            # it ended while we were away: its completed event is normally on its way (the agent keeps
            # events on disk while the broker is away); wait a moment for it, the real record
            deadline = asyncio.get_running_loop().time() + 3.0
            while asyncio.get_running_loop().time() < deadline:
                final = self._queued_outcome()
                if final is not None:
                    return final
                try:
                    m = await asyncio.wait_for(self.q.get(), deadline - asyncio.get_running_loop().time())
                except asyncio.TimeoutError:
                    break
                final = self._outcome_in(m)
                if final is not None:
                    return final
            d = r.data
            files = d.get("files") or []
            return {"transfer_id": self.tid, "action": "completed", "state": d["state"],
                    "result_code": d.get("result_code"), "source_agent": self.agent,
                    "destination_agent": d.get("destination_agent"), "files": files,
                    "statistics": {"files": d.get("files_total"), "bytes": d.get("bytes_done"),
                                   "files_succeeded": sum(1 for f in files if f.get("result_code") in (0, 2))},
                    "message": (f"{'BFGSS0081E: ' if d['state'] == 'recovery_timed_out' else ''}transfer ended "
                                f"{d['state']} while the broker was unreachable (outcome from agent {self.agent})"),
                    **({"destinations": d["destinations"]} if d.get("destinations") else {})}

    def _queued_outcome(self) -> dict[str, Any] | None:
        while not self.q.empty():
            final = self._outcome_in(self.q.get_nowait())
            if final is not None:
                return final
        return None

    def _outcome_in(self, m: Any) -> dict[str, Any] | None:
        """The `completed` event in `m`, as its JSON object, if it is one its agent signed."""
        if is_progress_topic(self.c.topics, m.topic):
            return None
        ev = read_message(self.c, m)  # None unless signed by the agent for this topic
        return ev.wire() if isinstance(ev, Completed) else None
