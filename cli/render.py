"""How transfers look to a person: one line per log event, a progress bar while waiting."""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from typing import Any

from rich.console import Console
from rich.markup import escape as escape_markup
from rich.text import Text
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from agent.core.lifecycle import TERMINAL_STATE_VALUES as TERMINAL
from agent.protocol import QueryTransfer

from .client import ClientError, FteClient, RecentEvents, new_request_id

# Characters a terminal acts on instead of showing, beyond the Unicode categories below: the bidi controls
# (U+061C, U+200E/F, U+202A-E, U+2066-9) are format characters (Cf) too, listed for the reader.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
_escapes: dict[str, str] = {}


def _escape_char(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def safe(value: Any) -> str:
    """`value` as text a terminal shows and never obeys: every control character (C0, DEL, C1), bidi
    override, invisible format character, line separator and lone surrogate becomes a visible escape
    (ESC -> \\x1b, U+202E -> \\u202e); the newline too, so that one field cannot forge a line.

    Everything that came from the broker (file names, job names, messages, status fields) goes through this
    before it is printed; it escapes no rich markup: print the result with markup=False, or use `safe_text`
    / `safe_markup` where markup is on."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to do (isprintable() is False for every unsafe class)
        return text
    out = []
    for ch in text:
        if ch == " ":
            out.append(ch)
            continue
        esc = _escapes.get(ch)
        if esc is None:
            unsafe = ch in _BIDI or unicodedata.category(ch) in _UNSAFE_CATEGORIES
            esc = _escape_char(ch) if unsafe else ch
            if len(_escapes) < 4096:
                _escapes[ch] = esc
        out.append(esc)
    return "".join(out)


class SafeLogFormatter(logging.Formatter):
    """The agent's log lines (its stderr, logs/output0.log, read with tail -f on a terminal) with every message
    escaped as `safe` does: a file name or a peer's text in a message can neither drive the terminal nor forge
    a line of the log. A traceback stays as it is (lines of the agent's own code)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe(record.message)
        return super().formatMessage(record)


def safe_text(value: Any) -> Text:
    """`safe(value)` as a rich Text: a table cell or a Live view that never reads it as markup."""
    return Text(safe(value))


def safe_markup(value: Any) -> str:
    """`safe(value)` with its rich markup escaped, to embed in a string printed with markup on."""
    return escape_markup(safe(value))


def status_text(st: Any) -> str:
    """An agent's status as shown: what it says, and whether it is believed (agent.provenance)."""
    return st.status if st.verified else f"{st.status} (unverified)"


def format_event(ev: dict[str, Any]) -> str:
    """One line for a log event, safe to print (every field came from the broker: see `safe`)."""
    return safe(_event_line(ev))


def _event_line(ev: dict[str, Any]) -> str:
    if "monitor" in ev and "transfer_id" not in ev or ev.get("monitor") and ev.get("action") in ("fired", "failed"):
        return (f"{ev.get('time', '')} {ev.get('agent', '')} monitor {ev.get('monitor')} {ev.get('action')}: "
                f"{ev.get('message', '')}")
    if "schedule_id" in ev:
        return (f"{ev.get('time', '')} {ev.get('agent', '')} schedule {ev.get('schedule_id')} {ev.get('action')}: "
                f"{ev.get('message', '')}")
    tid = str(ev.get("transfer_id", "?"))
    action = ev.get("action", "?")
    head = f"{ev.get('time', '')} {ev.get('agent', ev.get('source_agent', ''))} {tid[:12]} {action:10}"
    if action == "completed":
        rc = ev.get("result_code")
        stats = ev.get("statistics") or {}
        text = (f"{head} {ev.get('state')} (result {rc}): {stats.get('files_succeeded', '?')}/"
                f"{stats.get('files', '?')} file(s), {stats.get('bytes', '?')} bytes in {stats.get('seconds', '?')} s")
        message = ev.get("message")
        if not message and rc not in (0, None):
            failed = [f for f in ev.get("files") or [] if f.get("result_code") == 1 and f.get("supplement")]
            if failed:
                message = f"{failed[0].get('source')}: {failed[0]['supplement']}"
                if len(failed) > 1:
                    message += f" (and {len(failed) - 1} more)"
        if message:
            text += f" - {message}"
        return text
    if action == "progress":
        parts = []
        for f in ev.get("files") or []:
            ok = "ok" if f.get("result_code") == 0 else f"result {f.get('result_code')}"
            parts.append(f"{f.get('source')} -> {f.get('destination')} ({f.get('size')} bytes, {ok}"
                         + (f": {f['supplement']}" if f.get("supplement") else "") + ")")
        return f"{head} " + "; ".join(parts)
    return f"{head} {ev.get('state', '')}" + (f": {ev['message']}" if ev.get("message") else "")


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
            progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
            progress.start()
            task = progress.add_task(self.tid[:12], total=None)
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
                ev = self.c.event_of(m)  # None unless signed by the agent for this topic
                if ev is None:
                    continue
                if "/Transfers/" in str(m.topic):
                    if progress is not None and task is not None:
                        progress.update(task, total=ev.get("bytes_total"), completed=ev.get("bytes_done", 0),
                                        description=f"{self.tid[:12]} {safe_markup(ev.get('state', ''))}")
                    continue
                if ev.get("action") == "completed":
                    return ev
                if not self.recent.first_time(ev):
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
                ev = self.c.event_of(m)  # None unless signed by the agent for this topic
                if ev and ev.get("action") == "completed" and "/Transfers/" not in str(m.topic):
                    return ev
            d = r.data
            files = d.get("files") or []
            return {"transfer_id": self.tid, "action": "completed", "state": d["state"],
                    "result_code": d.get("result_code"), "source_agent": self.agent,
                    "destination_agent": d.get("destination_agent"), "files": files,
                    "statistics": {"files": d.get("files_total"), "bytes": d.get("bytes_done"),
                                   "files_succeeded": sum(1 for f in files if f.get("result_code") in (0, 2))},
                    "message": (f"{'BFGSS0081E: ' if d['state'] == 'recovery_timed_out' else ''}transfer ended "
                                f"{d['state']} while the broker was unreachable (outcome from agent {self.agent})")}

    def _queued_outcome(self) -> dict[str, Any] | None:
        while not self.q.empty():
            m = self.q.get_nowait()
            ev = self.c.event_of(m)  # None unless signed by the agent for this topic
            if ev and ev.get("action") == "completed" and "/Transfers/" not in str(m.topic):
                return ev
        return None
