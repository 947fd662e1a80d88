"""The history database of the audit logger: one row per log event, one row per transfer (docs/operations.md).

Two backends behind one synchronous API (async callers use asyncio.to_thread): SQLite (the standard library's
sqlite3, `sqlite:///ABSOLUTE/PATH.db`, nothing to install) and PostgreSQL (psycopg 3,
`postgresql://user@host:port/dbname`). Both hold the same three tables:

    events      one row per log event, UNIQUE event_id (a redelivered event is one row): the event's canonical
                JSON, whether its signature was verified (and why not), and a hash chaining it to the row before:
                hash = sha256(prev_hash || canonical JSON || "1"/"0" verified), so a changed, removed or inserted
                row breaks the chain at the first row after it (`verify_chain` names it)
    transfers   one row per transfer, folded from its events by `fold_event` (a pure function: tables test it)
    meta        the schema version and the chain's anchor (the prev_hash of the oldest row kept by `prune`)

Events without an `event_id` (monitor, schedule and refusal events have none) get one: the first 32 hex
characters of the sha256 of their canonical JSON, so the same message delivered twice is still one row.

Only verified events change a verified transfer row: a forged `completed` is kept in `events`, flagged, and
does not overwrite what the agents signed. A transfer known only from unverified events has a row with
`verified` false.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from agent.core.lifecycle import TERMINAL_STATE_VALUES
from agent.wire.events import Completed, EventError, Recovering, Started, TransferEventBase, read_event

SCHEMA_VERSION = 1
GENESIS = "0" * 64  # the prev_hash of the first row ever recorded

__all__ = ["ChainReport", "History", "HistoryError", "canonical_json", "chain_hash", "default_history_url",
           "event_id_of", "fold_event", "iso_utc"]


class HistoryError(Exception):
    """The history database cannot be used: a bad URL, a server that cannot be reached, a broken schema. The
    message says what was wrong and what to do."""


def default_history_url(env: Any = os.environ) -> str:
    """sqlite:///$FTE_CONFIG_HOME/logger/history.db"""
    from agent.settings import config_home

    return "sqlite:///" + str((config_home(env) / "logger" / "history.db").resolve()).lstrip("/")


# --------------------------------------------------------------------------- pure helpers


def canonical_json(event: Any) -> str:
    """The one serialisation that is stored and hashed: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: str, verified: bool) -> str:
    return hashlib.sha256(prev_hash.encode() + body.encode() + (b"1" if verified else b"0")).hexdigest()


def event_id_of(event: dict[str, Any]) -> str:
    """The event's own `event_id` (32 hex), else one derived from its content."""
    eid = event.get("event_id")
    if isinstance(eid, str) and len(eid) == 32 and all(c in "0123456789abcdef" for c in eid):
        return eid
    return hashlib.sha256(canonical_json(event).encode()).hexdigest()[:32]


def iso_utc(when: datetime) -> str:
    """A datetime as the events write times: 2025-03-14T09:26:53.589Z (naive means UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time_of(value: Any) -> str | None:
    """An event's `time` in the one stored form, or None when it is not a time."""
    if not isinstance(value, str):
        return None
    try:
        return iso_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def _file_item(item: Any) -> dict[str, Any]:
    d = item.model_dump(mode="json") if hasattr(item, "model_dump") else dict(item)
    return {"index": d.get("index"), "source": d.get("source"), "destination": d.get("destination"),
            "size": d.get("size"), "checksum_method": d.get("checksum_method"), "digest": d.get("digest"),
            "result": d.get("result_code"), "supplement": d.get("supplement"),
            # -t text: the digest of the converted file the destination wrote (a binary file has none)
            **({"written_digest": d["written_digest"]} if d.get("written_digest") else {})}


def new_transfer(transfer_id: str) -> dict[str, Any]:
    return {"transfer_id": transfer_id, "state": None, "result_code": None, "source_agent": None,
            "destination_agent": None, "job_name": None, "metadata": {}, "files": [], "started_at": None,
            "ended_at": None, "updated_at": None, "recoveries": 0, "verified": True, "last_event": None,
            "originator": None, "message": None, "statistics": None, "events": 0, "unverified_events": 0,
            "destinations": None}


def fold_event(row: dict[str, Any] | None, event: dict[str, Any], verified: bool) -> dict[str, Any] | None:
    """The transfer row after `event` (a log event's JSON object), or None when the event is no transfer event
    (a monitor's, a schedule's, a refusal, a malformed one) or must not change the row (an unverified event on
    a row the agents signed: counted in `unverified_events` only). Pure: the row given is not modified.

    The state only moves forward to an end: once a row has a terminal state, a late live event (a redelivered
    `progress`, another agent's backlog) does not bring it back; `completed` sets the final state and result,
    a destination's `cleaned_up` the result only when no `completed` came yet."""
    try:
        ev = read_event(event)
    except EventError:
        return None
    if not isinstance(ev, TransferEventBase):
        return None
    t = dict(row) if row is not None else new_transfer(ev.transfer_id)
    t["metadata"] = dict(t.get("metadata") or {})
    t["files"] = [dict(f) for f in t.get("files") or []]
    t["events"] = int(t.get("events") or 0) + 1
    if not verified:
        t["unverified_events"] = int(t.get("unverified_events") or 0) + 1
        if row is not None and row.get("verified"):
            return t  # kept in events, flagged; the signed facts stay
        t["verified"] = False
    when = _time_of(ev.time)
    t["source_agent"] = ev.source_agent
    t["destination_agent"] = ev.destination_agent
    if ev.job_name is not None or t.get("job_name") is None:
        t["job_name"] = ev.job_name
    t["metadata"].update(ev.metadata or {})
    t["last_event"] = ev.action
    if when is not None and (t.get("updated_at") is None or when > t["updated_at"]):
        t["updated_at"] = when
    ended = t.get("state") in TERMINAL_STATE_VALUES
    if isinstance(ev, Completed):
        t["state"] = ev.state
        t["result_code"] = ev.result_code
        t["ended_at"] = when
        t["statistics"] = ev.statistics.model_dump(mode="json")
        t["recoveries"] = max(int(t.get("recoveries") or 0), ev.statistics.recoveries)
        if ev.message:
            t["message"] = ev.message
    elif ev.action == "cleaned_up":
        if t.get("result_code") is None:
            t["result_code"] = getattr(ev, "result_code", None)
        if not ended:
            t["state"] = ev.state
    elif not ended:
        t["state"] = ev.state
    if isinstance(ev, Started) and ev.destination_agents and not t.get("destinations"):
        t["destinations"] = [{"agent": a} for a in ev.destination_agents]  # a fan-out: its outcomes come later
    if isinstance(ev, Completed) and ev.destinations:
        t["destinations"] = [d.wire() for d in ev.destinations]  # each destination's outcome
    if isinstance(ev, Started):
        t["started_at"] = when
        t["originator"] = ev.originator
        if ev.message and not t.get("message"):
            t["message"] = ev.message
    elif t.get("started_at") is None and when is not None:
        t["started_at"] = when  # its started event missed (older than the logger): the first seen
    if isinstance(ev, Recovering):
        t["recoveries"] = max(int(t.get("recoveries") or 0), ev.recoveries)
        t["message"] = ev.message
    files = getattr(ev, "files", None)
    if files:
        by_index = {f.get("index"): f for f in t["files"]}
        for item in files:
            new = _file_item(item)
            old = by_index.get(new["index"], {})
            # a started item (no result yet) does not erase what a progress item said
            by_index[new["index"]] = {**old, **{k: v for k, v in new.items() if v is not None or k not in old}}
        t["files"] = [by_index[k] for k in sorted(by_index, key=lambda i: (i is None, i if i is not None else 0))]
    return t


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    rows_checked: int
    first_broken: int | None = None          # the row id (events.id) of the first broken row
    first_broken_event_id: str | None = None
    message: str = ""


# --------------------------------------------------------------------------- the backends

_TRANSFER_COLUMNS = ("transfer_id", "state", "result_code", "source_agent", "destination_agent", "job_name",
                     "metadata", "files", "started_at", "ended_at", "updated_at", "recoveries", "verified",
                     "last_event", "originator", "message", "statistics", "events", "unverified_events",
                     "destinations")
# destinations: a fan-out's (null otherwise): [{"agent"}] from its started event, each destination's outcome
# (the completed event's `destinations` items) once it ended; added to older databases when they are opened
_JSON_COLUMNS = ("metadata", "files", "statistics", "destinations")
_EVENT_COLUMNS = ("id", "event_id", "topic", "agent", "transfer_id", "action", "time", "received_at", "verified",
                  "problem", "body", "prev_hash", "hash")


def _schema(serial: str) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS events (
            id {serial} PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, topic TEXT, agent TEXT, transfer_id TEXT,
            action TEXT, time TEXT, received_at TEXT NOT NULL, verified INTEGER NOT NULL, problem TEXT,
            body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS events_transfer ON events (transfer_id, id)",
        "CREATE INDEX IF NOT EXISTS events_received ON events (received_at)",
        """CREATE TABLE IF NOT EXISTS transfers (
            transfer_id TEXT PRIMARY KEY, state TEXT, result_code INTEGER, source_agent TEXT,
            destination_agent TEXT, job_name TEXT, metadata TEXT NOT NULL, files TEXT NOT NULL, started_at TEXT,
            ended_at TEXT, updated_at TEXT, recoveries INTEGER NOT NULL, verified INTEGER NOT NULL,
            last_event TEXT, originator TEXT, message TEXT, statistics TEXT, events INTEGER NOT NULL,
            unverified_events INTEGER NOT NULL, destinations TEXT)""",
        "CREATE INDEX IF NOT EXISTS transfers_updated ON transfers (updated_at)",
    ]


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = (parts.username or "") + ":***@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


class History:
    """The history database. `History.open(url)`; every method is safe to call from any thread (one lock)."""

    def __init__(self, url: str, conn: Any, kind: str, clock: Callable[[], datetime]) -> None:
        self.url = _redact(url)
        self._conn = conn
        self.kind = kind  # "sqlite" | "postgresql"
        self._clock = clock
        self._lock = threading.RLock()

    # ---- opening

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> "History":
        """sqlite:///ABSOLUTE/PATH.db or postgresql://user@host:port/dbname; creates the schema."""
        clock = clock or (lambda: datetime.now(timezone.utc))
        if not isinstance(url, str) or "://" not in url:
            raise HistoryError(f"{url!r} is not a database URL; use sqlite:///ABSOLUTE/PATH.db or "
                               "postgresql://USER@HOST:PORT/DBNAME")
        scheme = url.split("://", 1)[0].lower()
        if scheme == "sqlite":
            h = cls(url, cls._open_sqlite(url), "sqlite", clock)
        elif scheme in ("postgresql", "postgres"):
            h = cls(url, cls._open_postgresql(url), "postgresql", clock)
        else:
            raise HistoryError(f"database URL {_redact(url)!r}: unknown scheme {scheme!r}; use "
                               "sqlite:///ABSOLUTE/PATH.db or postgresql://USER@HOST:PORT/DBNAME")
        try:
            h._create_schema()
        except HistoryError:
            h.close()
            raise
        except Exception as exc:
            h.close()
            raise HistoryError(f"cannot create the history tables in {h.url}: {exc}") from None
        return h

    @staticmethod
    def _open_sqlite(url: str) -> Any:
        import sqlite3

        rest = url.split("://", 1)[1]
        if not rest.startswith("/") or rest in ("/", ""):
            raise HistoryError(f"database URL {url!r}: give an absolute path, sqlite:///ABSOLUTE/PATH.db "
                               "(three slashes, then the path from /)")
        path = Path(rest.split("?", 1)[0])
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot open the SQLite database {path}: {exc}; check the path and its "
                               "permissions") from None
        return conn

    @staticmethod
    def _open_postgresql(url: str) -> Any:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - a dependency
            raise HistoryError("psycopg (3) is not installed; pip install 'psycopg[binary]'") from None
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HistoryError(f"cannot connect to PostgreSQL at {_redact(url)}: {reason}; is the server running "
                               "and the URL right (postgresql://USER@HOST:PORT/DBNAME)?") from None

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except Exception:
                pass

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- SQL plumbing: "?" placeholders in this module's SQL; psycopg takes %s

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgresql" else sql

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._conn.execute(self._sql(sql), params)

    def _transaction(self) -> Any:
        """A write transaction that serialises writers (the hash chain needs one order)."""
        return _Transaction(self)

    def _create_schema(self) -> None:
        serial = "BIGSERIAL" if self.kind == "postgresql" else "INTEGER"
        with self._lock:
            self._execute(_schema(serial)[0])  # meta first: the write transaction locks it
        with self._lock, self._transaction():
            for stmt in _schema(serial):
                self._execute(stmt)
            self._add_destinations_column()
            found = self._execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is None:
                self._execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self._execute("INSERT INTO meta (key, value) VALUES ('chain_anchor', ?)", (GENESIS,))
            elif found[0] != str(SCHEMA_VERSION):
                raise HistoryError(f"the history database {self.url} has schema version {found[0]}, this version "
                                   f"of mqtt-fte knows {SCHEMA_VERSION}; upgrade mqtt-fte or use another database")

    def _add_destinations_column(self) -> None:
        """A database made before fan-out has no `destinations` column: added (nullable, so its rows stay)."""
        if self.kind == "postgresql":
            self._execute("ALTER TABLE transfers ADD COLUMN IF NOT EXISTS destinations TEXT")
            return
        columns = [r[1] for r in self._execute("PRAGMA table_info(transfers)").fetchall()]
        if "destinations" not in columns:
            self._execute("ALTER TABLE transfers ADD COLUMN destinations TEXT")

    # ---- writing

    def record(self, event: dict[str, Any], *, verified: bool, problem: str | None = None,
               topic: str | None = None, received_at: datetime | None = None) -> bool:
        """Store one log event; True when it was new, False when its event_id is already stored (a redelivery)."""
        if not isinstance(event, dict):
            raise TypeError("an event is a dict (its JSON object)")
        body = canonical_json(event)
        eid = event_id_of(event)
        received = iso_utc(received_at or self._clock())
        agent = event.get("agent") if isinstance(event.get("agent"), str) else None
        tid = event.get("transfer_id") if isinstance(event.get("transfer_id"), str) else None
        action = event.get("action") if isinstance(event.get("action"), str) else None
        with self._lock, self._transaction():
            if self._execute("SELECT 1 FROM events WHERE event_id = ?", (eid,)).fetchone() is not None:
                return False
            last = self._execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
            prev = last[0] if last is not None else self._anchor()
            self._execute(
                "INSERT INTO events (event_id, topic, agent, transfer_id, action, time, received_at, verified, "
                "problem, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (eid, topic, agent, tid, action, _time_of(event.get("time")), received, int(bool(verified)),
                 problem, body, prev, chain_hash(prev, body, bool(verified))))
            if tid is not None:
                row = self._transfer_row(tid)
                folded = fold_event(row, event, bool(verified))
                if folded is not None:
                    self._write_transfer(folded)
        return True

    def _anchor(self) -> str:
        found = self._execute("SELECT value FROM meta WHERE key = 'chain_anchor'").fetchone()
        return found[0] if found is not None else GENESIS

    def _write_transfer(self, t: dict[str, Any]) -> None:
        values = tuple(json.dumps(t.get(c)) if c in _JSON_COLUMNS else
                       int(bool(t.get(c))) if c == "verified" else t.get(c) for c in _TRANSFER_COLUMNS)
        cols = ", ".join(_TRANSFER_COLUMNS)
        marks = ", ".join("?" for _ in _TRANSFER_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _TRANSFER_COLUMNS if c != "transfer_id")
        self._execute(f"INSERT INTO transfers ({cols}) VALUES ({marks}) "
                      f"ON CONFLICT (transfer_id) DO UPDATE SET {updates}", values)

    # ---- reading

    @staticmethod
    def _transfer_dict(values: Any) -> dict[str, Any]:
        t = dict(zip(_TRANSFER_COLUMNS, values))
        for c in _JSON_COLUMNS:
            t[c] = json.loads(t[c]) if t[c] is not None else None
        t["metadata"] = t["metadata"] or {}
        t["files"] = t["files"] or []
        t["verified"] = bool(t["verified"])
        return t

    def _transfer_row(self, transfer_id: str) -> dict[str, Any] | None:
        found = self._execute(f"SELECT {', '.join(_TRANSFER_COLUMNS)} FROM transfers WHERE transfer_id = ?",
                              (transfer_id,)).fetchone()
        return self._transfer_dict(found) if found is not None else None

    def transfer(self, transfer_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._transfer_row(transfer_id)

    def transfers(self, *, agent: str | None = None, since: datetime | None = None, state: str | None = None,
                  job_name: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Newest first (by start, else last change). `state` "recovering" includes "resynchronising", as
        fte-list-transfers counts it."""
        where, params = [], []  # type: ignore[var-annotated]
        if agent is not None:
            # (a fan-out's other destinations: in its destinations JSON, as json.dumps writes it; '_' is a
            # name character and LIKE's any-character, so it is escaped: -a A_2 must not find AX2)
            where.append("(source_agent = ? OR destination_agent = ? OR destinations LIKE ? ESCAPE '!')")
            quoted = json.dumps({"agent": agent})[:-1]
            params += [agent, agent, "%" + "".join("!" + c if c in "!%_" else c for c in quoted) + "%"]
        if since is not None:
            where.append("COALESCE(started_at, updated_at) >= ?")
            params.append(iso_utc(since))
        if state is not None:
            states = [state, "resynchronising"] if state == "recovering" else [state]
            where.append("state IN (" + ", ".join("?" for _ in states) + ")")
            params += states
        if job_name is not None:
            where.append("job_name = ?")
            params.append(job_name)
        sql = (f"SELECT {', '.join(_TRANSFER_COLUMNS)} FROM transfers"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY COALESCE(started_at, updated_at) DESC, transfer_id DESC LIMIT ?")
        params.append(max(0, int(limit)))
        with self._lock:
            rows = self._execute(sql, tuple(params)).fetchall()
        return [self._transfer_dict(r) for r in rows]

    @staticmethod
    def _event_dict(values: Any) -> dict[str, Any]:
        row = dict(zip(_EVENT_COLUMNS, values))
        event = json.loads(row["body"])
        # the event's own members, then the logger's (which win over a forged "verified" member)
        return {**event, "event": event, "row_id": row["id"], "event_id": row["event_id"], "topic": row["topic"],
                "received_at": row["received_at"], "verified": bool(row["verified"]), "problem": row["problem"]}

    def events(self, transfer_id: str) -> list[dict[str, Any]]:
        """The stored events of a transfer, oldest first: each is the event's JSON members plus `verified`,
        `problem`, `received_at`, `topic`, `row_id` and the untouched event under `event`."""
        with self._lock:
            rows = self._execute(f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE transfer_id = ? "
                                 "ORDER BY id", (transfer_id,)).fetchall()
        return [self._event_dict(r) for r in rows]

    def recent_events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events of any kind (monitors, schedules, refusals too), newest first."""
        with self._lock:
            rows = self._execute(f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events ORDER BY id DESC LIMIT ?",
                                 (max(0, int(limit)),)).fetchall()
        return [self._event_dict(r) for r in rows]

    def _rows(self, batch: int = 1000) -> Iterator[Any]:
        last = -1
        while True:
            with self._lock:
                rows = self._execute("SELECT id, event_id, body, verified, prev_hash, hash FROM events "
                                     "WHERE id > ? ORDER BY id LIMIT ?", (last, batch)).fetchall()
            if not rows:
                return
            yield from rows
            last = rows[-1][0]

    def verify_chain(self) -> ChainReport:
        """Recompute every row's hash in order; the first row whose hash or link does not hold is named."""
        with self._lock:
            expected = self._anchor()
        checked = 0
        for rid, eid, body, verified, prev_hash, stored in self._rows():
            checked += 1
            if prev_hash != expected:
                return ChainReport(False, checked, rid, eid,
                                   f"row {rid} (event {eid}): its link to the row before does not hold (a row "
                                   "before it was removed, inserted or changed)")
            if chain_hash(prev_hash, body, bool(verified)) != stored:
                return ChainReport(False, checked, rid, eid,
                                   f"row {rid} (event {eid}): its content does not match its hash (the row was "
                                   "changed after it was recorded)")
            expected = stored
        return ChainReport(True, checked, message=f"the chain of {checked} event(s) holds")

    # ---- retention

    def prune(self, keep_days: int, *, now: datetime | None = None) -> int:
        """Remove the events received more than `keep_days` days ago (the oldest rows, so the chain stays one
        piece: its anchor becomes the prev_hash of the oldest row kept) and the transfers none of whose events is
        left. Returns the number of events removed."""
        if keep_days < 0:
            raise ValueError("keep_days is 0 or more")
        cutoff = iso_utc((now or self._clock()) - timedelta(days=keep_days))
        with self._lock, self._transaction():
            found = self._execute("SELECT MAX(id) FROM events WHERE received_at < ?", (cutoff,)).fetchone()
            last = found[0] if found is not None else None
            if last is None:
                removed = 0
            else:
                nxt = self._execute("SELECT prev_hash FROM events WHERE id > ? ORDER BY id LIMIT 1",
                                    (last,)).fetchone()
                anchor = nxt[0] if nxt is not None else \
                    self._execute("SELECT hash FROM events WHERE id = ?", (last,)).fetchone()[0]
                removed = self._execute("DELETE FROM events WHERE id <= ?", (last,)).rowcount
                self._execute("UPDATE meta SET value = ? WHERE key = 'chain_anchor'", (anchor,))
            # a transfer goes with its last event
            self._execute("DELETE FROM transfers WHERE NOT EXISTS (SELECT 1 FROM events "
                          "WHERE events.transfer_id = transfers.transfer_id)")
        return int(removed or 0)


class _Transaction:
    """BEGIN IMMEDIATE on SQLite (one writer at a time); on PostgreSQL a transaction holding an exclusive lock on
    the events table for writes, so two loggers on one database still append one chain."""

    def __init__(self, h: History) -> None:
        self.h = h
        self._tx: Any = None

    def __enter__(self) -> None:
        if self.h.kind == "sqlite":
            self.h._conn.execute("BEGIN IMMEDIATE")
        else:
            self._tx = self.h._conn.transaction()
            self._tx.__enter__()
            self.h._conn.execute("LOCK TABLE meta IN EXCLUSIVE MODE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.h.kind == "sqlite":
            self.h._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        else:
            self._tx.__exit__(exc_type, exc, tb)
