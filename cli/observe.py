"""Watching transfers: fte-list-transfers, fte-show-transfer, and the live view `fte top`.

Everything shown comes from the agents (their replies, retained statuses, progress and log topics),
not guessed by the client.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent.core.lifecycle import RECOVERY_STATE_VALUES as RECOVERY
from agent.core.lifecycle import TERMINAL_STATE_VALUES as TERMINAL
from agent.core.statuses import AGENT_RUNNING, AgentState
from agent.wire.events import Completed, Recovering, Started, TransferEventBase
from agent.core.units import duration_text, rate_text, size_text
from agent.wire.protocol import QueryTransfer, utc_now

from .app import BROKER_HELP, VERBOSE_HELP, command, err, fail, note_ignored, out, run
from .client import ClientError, FteClient, broker_url, new_request_id
from .render import (destination_entries, destination_lines, is_progress_topic, read_message, read_progress,
                     result_and_job, route_of)
from .safe_text import safe, safe_markup, safe_text, status_text, status_when
from .transfer_ids import check_transfer_id, find_transfer, transfers_of


def _size(n: Any) -> str:
    return size_text(n)


def transfer_line(t: dict[str, Any]) -> str:
    pct = f"{100 * t['bytes_done'] / t['bytes_total']:.0f}%" if t.get("bytes_total") else "-"
    priority = t.get("priority")  # -pr, known to the source (a destination row shows "pr -")
    text = (f"{t['transfer_id']} {t['role']:11} {t['state']:18} pr {priority if priority is not None else '-'} "
            f"{route_of(t)}"
            f" {_size(t.get('bytes_done'))}/{_size(t.get('bytes_total'))} ({pct})") + result_and_job(t)
    recovering = t.get("state") in RECOVERY or any(d.get("state") in RECOVERY for d in t.get("destinations") or [])
    if recovering and t.get("last_stall"):  # (of a fan-out: any destination's, "A3: ...")
        text += f" - {t['last_stall']}"
    return text


@command("list-transfers")
def list_transfers(
    agent: Optional[str] = typer.Option(None, "-a", "--agent", help="Only this agent's transfers."),
    state: Optional[str] = typer.Option(None, "--state", help="Only transfers in this state (e.g. recovering, "
                                                              "which includes resynchronising)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (with --history: one JSON "
                                                       "array)."),
    history: bool = typer.Option(False, "--history", help="Read the logger's history database instead of "
                                                          "asking the agents (fte logger)."),
    db: Optional[str] = typer.Option(None, "--db", help="With --history: the database URL (as fte logger's "
                                                        "--db)."),
    since: Optional[str] = typer.Option(None, "--since", help="With --history: transfers started since this "
                                                              "time (ISO 8601, e.g. 2025-03-14 or "
                                                              "2025-03-14T09:00:00Z; UTC when no zone)."),
    job_name: Optional[str] = typer.Option(None, "-jn", "--job-name", help="Only transfers of this job name."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    verbose: bool = typer.Option(False, "-v", "--verbose", help=VERBOSE_HELP),
) -> None:
    """List the transfers the agents know (or, with --history, the logger recorded): state, progress, result,
    job name, why a stalled one is stalled."""
    from agent.core.lifecycle import TransferState

    states = [s.value for s in TransferState]
    if state is not None and state not in states:
        fail(f"--state {state!r} is not a transfer state; use one of: {', '.join(states)}")
    if history:
        from .logger import list_history

        list_history(db, agent, since, state, job_name, as_json)
        return
    if db is not None or since is not None:
        fail("--db and --since read the history: add --history")
    async def go() -> tuple[list[dict[str, Any]], list[str]]:
        async with FteClient(broker_url(broker, agent), on_ignored=note_ignored(verbose)) as c:
            if agent:
                await c.require_agent(agent)
            return await transfers_of(c, agent)

    rows, warnings = run(go())
    for w in warnings:
        err.print(f"warning: {safe(w)}", markup=False)
    # "recovering" includes its resynchronising step: the transfer is in recovery either way
    wanted = {state, "resynchronising"} if state == "recovering" else {state}
    rows = [t for t in rows if (state is None or t.get("state") in wanted)
            and (job_name is None or t.get("job_name") == job_name)]
    for t in rows:
        out.print(json.dumps(t) if as_json else safe(transfer_line(t)), markup=False)
    if not rows and not as_json:
        out.print("No transfers" + (f" in state {state}." if state else "."))

@command("show-transfer")
def show_transfer(
    transfer_id: str = typer.Argument(..., help="The transfer id, or its first 8 or more characters."),
    agent: Optional[str] = typer.Option(None, "-a", "--agent", help="Ask this agent (default: every agent)."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    verbose: bool = typer.Option(False, "-v", "--verbose", help=VERBOSE_HELP),
) -> None:
    """Show one transfer as its agents see it: state, progress, recoveries, last stall, timings, files."""
    check_transfer_id(transfer_id)
    problems: list[str] = []  # answers other than "not known here" (e.g. an answer too big for the broker)

    async def go() -> list[dict[str, Any]]:
        nonlocal transfer_id
        async with FteClient(broker_url(broker, agent), on_ignored=note_ignored(verbose)) as c:
            transfer_id, names = await find_transfer(c, transfer_id, agent)  # names: who listed a prefix's id
            if names is None:
                statuses = await c.agent_statuses(settle=0.5)
                names = [agent] if agent else sorted(n for n, s in statuses.items()
                                                     if s.status in AGENT_RUNNING)
            found = []
            for n in names:
                try:
                    r = await c.request(n, QueryTransfer(kind="query_transfer", request_id=new_request_id(),
                                                         reply_to=c.client_id, transfer_id=transfer_id),
                                        timeout=5)
                except ClientError:
                    continue
                if r.ok:
                    found.append(dict(r.data, agent=n))
                elif r.message and "is not known to agent" not in r.message:
                    problems.append(r.message)
            return found

    views = run(go())
    if not views:
        from .logger import show_from_history

        if show_from_history(transfer_id, as_json):
            return
        fail("; ".join(problems) if problems else
             f"no running agent knows transfer {transfer_id}" + (f" (asked {agent})" if agent else ""))
    if as_json:
        out.print(json.dumps(views), markup=False)
        return
    for v in views:
        out.print(f"[bold]{safe_markup(v['agent'])}[/] ({safe_markup(v.get('role'))})")
        for key in ("state", "result_code", "source_agent", "destination_agent", "job_name", "bytes_done",
                    "bytes_total", "files_done", "files_total", "recoveries", "last_stall", "recovering_since",
                    "recovery_timeout", "recovery_deadline", "bytes_resent", "created", "updated", "seconds"):
            if v.get(key) is not None:
                out.print(safe(f"  {key:20} {v[key]}"), markup=False)
        if v.get("destinations"):  # a fan-out: each destination's leg
            out.print(safe(f"  {'destinations':20} {route_of(v)}"), markup=False)
            for line in destination_lines(v, indent="    "):
                out.print(line, markup=False)
        for f in v.get("files", []):
            extra = f" - {f['supplement']}" if f.get("supplement") else ""
            out.print(safe(f"  file {f['index']}: {f['source']} -> {f['destination']} {f['status']} "
                           f"{_size(f.get('bytes_done'))}/{_size(f['size'])}{extra}"), markup=False)

TOP_ROWS = 40  # transfers shown by fte top: the live ones first, then the most recently finished


def top_order(transfers: list[dict[str, Any]], limit: int = TOP_ROWS) -> list[dict[str, Any]]:
    """The transfers fte top shows: unfinished first, then finished; each group newest first (by the time of
    its latest news: `at`, else `updated`, else `created`; ISO UTC times sort as text); at most `limit`."""
    def when(t: dict[str, Any]) -> str:
        return str(t.get("at") or t.get("updated") or t.get("created") or "")

    unfinished = sorted((t for t in transfers if t.get("state") not in TERMINAL), key=when, reverse=True)
    finished = sorted((t for t in transfers if t.get("state") in TERMINAL), key=when, reverse=True)
    return (unfinished + finished)[:limit]


def eta_text(t: dict[str, Any]) -> str:
    """The time left at the current rate for an unfinished transfer with a rate; '' otherwise."""
    if t.get("state") in TERMINAL:
        return ""
    rate, total, done = t.get("rate_bytes_per_second") or 0, t.get("bytes_total") or 0, t.get("bytes_done") or 0
    if not isinstance(rate, (int, float)) or rate <= 0 or not total or done >= total:
        return ""
    return duration_text((total - done) / rate)


def file_text(t: dict[str, Any], width: int = 32) -> str:
    """The file a transfer is on (its current file, else its first), its base name, with '+N' for the others."""
    name = t.get("current_file") or t.get("first_file") or ""
    if not name:
        return ""
    base = str(name).rstrip("/").rsplit("/", 1)[-1] or str(name)
    more = (t.get("files_total") or 0) - 1
    text = base if len(base) <= width else base[:width - 1] + "…"
    return f"{text} +{more}" if isinstance(more, int) and more > 0 else text


def bar_text(done: Any, total: Any, width: int = 20) -> str:
    """A progress bar of `done` out of `total` bytes, with its percentage (no percentage without a total)."""
    done = done if isinstance(done, int) else 0
    total = total if isinstance(total, int) else 0
    filled = min(width, int(width * done / total)) if total > 0 else 0
    return "█" * filled + "░" * (width - filled) + (f" {100 * done / total:3.0f}%" if total > 0 else "")


def _state_text(state: Any) -> Text:
    style = "yellow" if state in RECOVERY else "green" if state == "complete" else "red" if state in TERMINAL else ""
    return Text(safe(state), style=style)


def top_row(t: dict[str, Any]) -> list[Any]:
    """One row of fte top's transfer table: Transfer, Job, From -> To, File, State, Progress, Rate, ETA,
    Recoveries, Note."""
    state = t.get("state", "?")
    note = t.get("last_stall") if state in RECOVERY else \
        (f"result {t['result_code']}" if t.get("result_code") is not None else "")
    return [safe_text(str(t["transfer_id"])[:12]), safe_text(t.get("job_name") or ""),
            safe_text(route_of(t, " -> ")), safe_text(file_text(t)),
            _state_text(state), bar_text(t.get("bytes_done"), t.get("bytes_total")),
            rate_text(t["rate_bytes_per_second"]) if t.get("rate_bytes_per_second") and state not in TERMINAL else "",
            eta_text(t), safe_text(t.get("recoveries", 0)), safe_text(note or "")]


def destination_rows(t: dict[str, Any]) -> list[list[Any]]:
    """The rows under a fan-out transfer's row in fte top, one per destination with a state (from its live
    progress's or its summary's `destinations`): which one is behind or recovering. [] for an ordinary one."""
    entries = [d for d in destination_entries(t) if d.get("state")]
    total = t.get("bytes_total")
    each = total // len(entries) if isinstance(total, int) and entries else 0  # every destination gets every byte
    rows = []
    for d in entries:
        resent = d.get("bytes_resent")
        note = (f"result {d['result_code']}" if d.get("result_code") is not None else
                f"{resent} bytes resent" if isinstance(resent, int) and resent > 0 else "")
        rows.append(["", "", safe_text(f"  └ {d.get('agent')}"), "", _state_text(d.get("state", "?")),
                     bar_text(d.get("bytes_done"), each), "", "", safe_text(d.get("recoveries", "")),
                     safe_text(d.get("supplement") or note)])
    return rows


def merge_destinations(t: dict[str, Any], fresh: list[dict[str, Any]]) -> None:
    """A fan-out's live progress figures (`fresh`, each destination's) into `t`'s `destinations`, by agent:
    what only an outcome has (result_code, supplement) is kept."""
    known = {d.get("agent"): d for d in destination_entries(t)}
    t["destinations"] = [{**known.get(d.get("agent"), {}), **d} for d in fresh]


@command("top")
def top(
    once: bool = typer.Option(False, "--once", help="Print one view after collecting for 2 s, then exit."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    verbose: bool = typer.Option(False, "-v", "--verbose", help=VERBOSE_HELP),
) -> None:
    """A live view of agents and transfers (progress, rates, recovering states), until Ctrl-C.

    Only what the agents signed is shown; a status no trusted key signed is marked unverified."""
    run(_top(broker_url(broker), once, out, note_ignored(verbose)))


async def _top(url: str, once: bool, console: Any, on_ignored: Any = None) -> None:
    async with FteClient(url, on_ignored=on_ignored) as c:
        agents: dict[str, Any] = {}
        transfers: dict[str, dict[str, Any]] = {}
        q: asyncio.Queue[Any] = asyncio.Queue()
        heard: dict[str, dict[str, Any]] = {}  # agent -> its heartbeat (when it was last heard from)
        lost_at: dict[str, str] = {}  # agent -> when this view saw its last will arrive (not a retained one)
        for topic in (c.topics.all_agent_status(), c.topics.heard(), c.topics.progress_filter(),
                      c.topics.log_filter()):
            await c.subscribe(topic, q)
        rows, _ = await transfers_of(c, None)
        for t in rows:
            if t["role"] == "source":
                transfers[t["transfer_id"]] = t

        def view() -> Group:
            at = Table("Agent", "Status", "Host", "Source", "Destination", "When", title="Agents",
                       title_justify="left")
            for name, st in sorted(agents.items()):
                style = {AgentState.UNREACHABLE: "red", AgentState.STOPPED: "dim", AgentState.ACTIVE: "green"}.get(st.status, "")
                style = style if st.verified else "yellow"
                at.add_row(safe_text(name), Text(safe(status_text(st)), style=style), safe_text(st.host or ""),
                           str(len(st.source_transfers)), str(len(st.destination_transfers)),
                           safe_text(status_when(st, heard.get(name), lost_at.get(name))))
            tt = Table("Transfer", "Job", "From -> To", "File", "State", "Progress", "Rate", "ETA", "Recoveries",
                       "Note", title="Transfers", title_justify="left")
            for t in top_order(list(transfers.values())):
                tt.add_row(*top_row(t))
                for sub in destination_rows(t):  # a fan-out: a line per destination
                    tt.add_row(*sub)
            return Group(at, tt)

        def row(tid: str) -> dict[str, Any]:
            return transfers.setdefault(tid, {"transfer_id": tid})

        def absorb(m: Any) -> None:
            topic = str(m.topic)
            levels = c.topics.split(topic)
            if levels[:1] == [c.topics.AGENTS]:
                if len(levels) == 3:
                    beat = c.heard_of(m)
                    if beat is not None:
                        heard[beat["agent"]] = beat
                    return
                st = c.status_of(m)
                if st is not None:
                    agents[st.agent] = st
                    if st.status == AgentState.UNREACHABLE and not m.retain:
                        lost_at[st.agent] = utc_now()
                    elif st.status != AgentState.UNREACHABLE:
                        lost_at.pop(st.agent, None)
                return
            if is_progress_topic(c.topics, topic):
                snapshot = read_progress(c, m)  # None unless signed by the agent its topic names
                if snapshot is not None:
                    t = row(snapshot.transfer_id)
                    t.update(snapshot.model_dump(include={
                        "state", "bytes_total", "bytes_done", "rate_bytes_per_second", "recoveries", "last_stall",
                        "source_agent", "destination_agent", "result_code", "current_file", "files_total",
                        "job_name"}, exclude_none=True))
                    if snapshot.destinations:  # a fan-out: each destination's own figures
                        merge_destinations(t, [d.wire() for d in snapshot.destinations])
                    t["at"] = snapshot.time
                return
            ev = read_message(c, m)  # None unless signed by the agent its topic names
            # a source's transfer events: not a destination's cleaned_up, a refusal, a monitor's or a schedule's
            if not isinstance(ev, TransferEventBase) or ev.agent_role != "source":
                return
            t = row(ev.transfer_id)
            t.update(state=ev.state, source_agent=ev.source_agent, destination_agent=ev.destination_agent, at=ev.time)
            if ev.job_name:
                t["job_name"] = ev.job_name
            if isinstance(ev, Started) and ev.files:
                t["first_file"] = ev.files[0].source
                t.setdefault("files_total", len(ev.files) + (ev.files_omitted or 0))
            if isinstance(ev, Started) and ev.destination_agents:  # a fan-out: the route names every destination
                t["destination_agents"] = list(ev.destination_agents)
            if isinstance(ev, Recovering):
                t["last_stall"] = ev.reason
                t["recoveries"] = ev.recoveries
            if isinstance(ev, Completed):
                t["result_code"] = ev.result_code
                if ev.destinations:  # a fan-out: the route shows every destination
                    merge_destinations(t, [d.wire() for d in ev.destinations])

        deadline = time.monotonic() + 2.0
        if once:
            while time.monotonic() < deadline:
                try:
                    absorb(await asyncio.wait_for(q.get(), deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
            if not console.is_terminal:  # a pipe or a file: do not squeeze the tables into 80 columns
                from rich.console import Console

                console = Console(width=160, highlight=False)
            console.print(view())
            return
        with Live(view(), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                try:
                    absorb(await asyncio.wait_for(q.get(), 0.25))
                    while not q.empty():
                        absorb(q.get_nowait())
                except asyncio.TimeoutError:
                    pass
                if c.disconnected.is_set():
                    await c.reconnect()
                live.update(view())
