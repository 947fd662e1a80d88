"""`fte logger`: the audit logger in the foreground (ops.logger), and its `--verify` of the history's chain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Optional

import typer

from .app import BROKER_HELP, command, fail, out

DB_HELP = ("The history database: sqlite:///ABSOLUTE/PATH.db or postgresql://USER@HOST:PORT/DBNAME; default "
           "$FTE_LOGGER_DB, else sqlite:///$FTE_CONFIG_HOME/logger/history.db")


def history_url(explicit: Optional[str]) -> str:
    """--db, else FTE_LOGGER_DB, else the default SQLite file."""
    from ops.history import default_history_url

    return explicit or os.environ.get("FTE_LOGGER_DB") or default_history_url()


def open_history(url: str):  # type: ignore[no-untyped-def]
    from ops.history import History, HistoryError

    try:
        return History.open(url)
    except HistoryError as exc:
        fail(str(exc))


@command("logger")
def logger(
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    verify: bool = typer.Option(False, "--verify", help="Check the history's hash chain, name the first broken "
                                                         "row, and exit (1 if it is broken)."),
    keep_days: Optional[int] = typer.Option(None, "--keep-days", min=0,
                                            help="Remove events older than N days, at start and daily "
                                                 "(default: keep everything)."),
    client_id: Optional[str] = typer.Option(None, "--client-id",
                                            help="The MQTT client id of the durable session; default "
                                                 "$FTE_LOGGER_CLIENT_ID, else fte-logger-<host>."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
) -> None:
    """Record every log event (transfers, monitors, schedules, refusals) into the history database, signatures
    verified, with a durable MQTT session; runs until SIGTERM or Ctrl-C."""
    url = history_url(db)
    history = open_history(url)
    try:
        if verify:
            report = history.verify_chain()
            if report.ok:
                out.print(f"ok: {report.message} ({history.url})", markup=False)
                return
            out.print(f"BROKEN: {report.message}; {report.rows_checked} row(s) checked ({history.url})",
                      markup=False)
            raise typer.Exit(1)
        _run_logger(history, broker, client_id, keep_days)
    finally:
        history.close()


def _run_logger(history, broker: Optional[str], client_id: Optional[str],  # type: ignore[no-untyped-def]
                keep_days: Optional[int]) -> None:
    from agent.settings import config_home
    from ops.logger import EventLogger

    from .client import broker_address, broker_url, topic_prefix
    from agent.wire.protocol import Topics

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    addr = broker_address(broker_url(broker))
    el = EventLogger(history, addr, topics=Topics(topic_prefix()), home=config_home(),
                     client_id=client_id or os.environ.get("FTE_LOGGER_CLIENT_ID") or None, keep_days=keep_days)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await el.run(stop)

    try:
        asyncio.run(main())
    except Exception as exc:  # the database went away while running
        fail(f"the logger stopped: {exc}")
    logging.getLogger("fte.logger").info("stopped: %d event(s) recorded, %d redelivered, %d dropped",
                                         el.recorded, el.duplicates, el.dropped)


# --------------------------------------------------------------------------- reading the history (fte-list-transfers
# --history, fte-show-transfer's fallback)


def _since(text: Optional[str]):  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since {text!r} is not a time; give ISO 8601, e.g. 2025-03-14 or 2025-03-14T09:00:00Z")
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def history_line(t: dict) -> str:  # type: ignore[type-arg]
    from .render import result_and_job, route_of

    text = (f"{t['transfer_id']} {t.get('state') or '?':18} {route_of(t)}"
            f" started {t.get('started_at') or '?'} ended {t.get('ended_at') or '-'}") + result_and_job(t)
    if t.get("recoveries"):
        text += f" recoveries {t['recoveries']}"
    if not t.get("verified"):
        text += " (UNVERIFIED events)"
    return text


def list_history(db: Optional[str], agent: Optional[str], since: Optional[str], state: Optional[str],
                 job_name: Optional[str], as_json: bool) -> None:
    from .app import print_listing

    when = _since(since)
    with open_history(history_url(db)) as h:
        rows = h.transfers(agent=agent, since=when, state=state, job_name=job_name)
        where = h.url
    print_listing(rows, as_json, f"No transfers in the history at {where}.", history_line)


def _history_exists(url: str) -> bool:
    if url.startswith("sqlite://"):
        return os.path.isfile(url.split("://", 1)[1].split("?", 1)[0])
    return True


def show_from_history(transfer_id: str, as_json: bool) -> bool:
    """fte-show-transfer's fallback when no running agent knows the id: the logger's history (FTE_LOGGER_DB or
    the default file), when there is one and it knows the id. False otherwise."""
    import json

    from ops.history import History, HistoryError

    from .app import err
    from .render import destination_lines, route_of
    from .safe_text import safe

    url = history_url(None)
    if not _history_exists(url):
        return False
    try:
        with History.open(url) as h:
            t = h.transfer(transfer_id)
            events = h.events(transfer_id) if t is not None else []
            where = h.url
    except HistoryError as exc:
        err.print(f"note: the history could not be read: {safe(str(exc))}", markup=False)
        return False
    if t is None:
        return False
    if as_json:
        out.print(json.dumps([dict(t, source="history", history=where, events=[e["event"] for e in events])]),
                  markup=False)
        return True
    out.print(safe(f"{transfer_id}: no running agent knows it; from the history at {where}"), markup=False)
    for key in ("state", "result_code", "source_agent", "destination_agent", "job_name", "started_at", "ended_at",
                "updated_at", "recoveries", "originator", "message", "last_event"):
        if t.get(key) is not None:
            out.print(safe(f"  {key:20} {t[key]}"), markup=False)
    if t.get("metadata"):
        out.print(safe(f"  {'metadata':20} {json.dumps(t['metadata'])}"), markup=False)
    if t.get("destinations"):  # a fan-out: every destination, with its outcome once it ended
        out.print(safe(f"  {'destinations':20} {route_of(t)}"), markup=False)
        for line in destination_lines({"destinations": [d for d in t["destinations"] if "state" in d]}, "    "):
            out.print(line, markup=False)
    out.print(f"  {'verified':20} {'yes' if t.get('verified') else 'NO: some events are not signed by a trusted key'}",
              markup=False)
    for f in t.get("files", []):
        extra = f" written {f['written_digest']}" if f.get("written_digest") else ""  # -t text: as converted
        extra += f" - {f['supplement']}" if f.get("supplement") else ""
        out.print(safe(f"  file {f.get('index')}: {f.get('source')} -> {f.get('destination')} result "
                       f"{f.get('result')} {f.get('size')} B digest {f.get('digest') or '-'}{extra}"), markup=False)
    from .render import destination_lines

    for e in events:  # a fan-out: each destination's outcome, from its completed event
        if e.get("verified") and isinstance(e.get("event"), dict) and e["event"].get("action") == "completed":
            for line in destination_lines(e["event"]):
                out.print(line, markup=False)
    for e in events:
        flag = "" if e["verified"] else f" (UNVERIFIED: {e.get('problem')})"
        out.print(safe(f"  event {e.get('time')} {e.get('agent')} {e.get('action')} {e.get('state') or ''}{flag}"),
                  markup=False)
    return True
