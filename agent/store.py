"""The agent's durable state store (sqlite): transfers, per-file checkpoints and the log outbox.

An agent killed with SIGKILL finds here, at restart, every transfer it was part of with the last
checkpoint of each file, the outcomes its peers have not yet confirmed, the log events it
produced while the broker was unreachable (published in order, with their original times), the
nonces of the signed commands it accepted (so that a captured command replayed after a restart is refused),
and the program calls it ran for its sources with their outcomes (so that a replayed program_run is answered
from the record and never runs the program again).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from .core.statuses import FileStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('source', 'destination')),
    state TEXT NOT NULL,
    peer TEXT NOT NULL,
    header TEXT NOT NULL,
    result_code INTEGER,
    recovery_timeout INTEGER NOT NULL DEFAULT -1,
    epoch INTEGER NOT NULL DEFAULT 0,
    recoveries INTEGER NOT NULL DEFAULT 0,
    recovering_since REAL,
    last_stall TEXT,
    peer_confirmed INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (transfer_id, role)
);
CREATE TABLE IF NOT EXISTS files (
    transfer_id TEXT NOT NULL,
    role TEXT NOT NULL,
    idx INTEGER NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL DEFAULT 0,
    offset INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'ready',
    result_code INTEGER,
    supplement TEXT,
    digest TEXT,
    written_digest TEXT,
    PRIMARY KEY (transfer_id, role, idx)
);
CREATE TABLE IF NOT EXISTS monitors (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'started',
    memory TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    requester TEXT
);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    schedule TEXT NOT NULL,
    spec TEXT NOT NULL,
    next_index INTEGER NOT NULL DEFAULT 0,
    requester TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS nonces_expires ON nonces (expires);
CREATE TABLE IF NOT EXISTS program_runs (
    transfer_id TEXT NOT NULL,
    call_when TEXT NOT NULL,
    source_agent TEXT NOT NULL,
    outcome TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (transfer_id, call_when)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass
class FileRecord:
    index: int
    source: str
    destination: str
    size: int
    mtime: float = 0.0
    offset: int = 0
    status: str = FileStatus.READY  # ready | done | failed
    result_code: int | None = None
    supplement: str | None = None
    digest: str | None = None
    written_digest: str | None = None  # -t text: the digest of the converted file the destination wrote


@dataclass
class TransferRecord:
    transfer_id: str
    role: str
    state: str
    peer: str
    header: dict[str, Any]
    result_code: int | None = None
    recovery_timeout: int = -1
    epoch: int = 0
    recoveries: int = 0
    recovering_since: float | None = None  # wall clock, so it survives a restart
    last_stall: str | None = None
    peer_confirmed: bool = False
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    files: list[FileRecord] = field(default_factory=list)


def _transfer_row(rec: TransferRecord) -> tuple[Any, ...]:
    """The values of the transfer's row, in the order of the table's columns."""
    return (rec.transfer_id, rec.role, rec.state, rec.peer, json.dumps(rec.header), rec.result_code,
            rec.recovery_timeout, rec.epoch, rec.recoveries, rec.recovering_since, rec.last_stall,
            int(rec.peer_confirmed), rec.created, rec.updated)


class StateStore:
    """One sqlite file per agent. Calls are short and made from the event loop thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        # a state store from before monitors kept their creator: add the column (NULL: creator unknown)
        if "requester" not in {r[1] for r in self._db.execute("PRAGMA table_info(monitors)")}:
            self._db.execute("ALTER TABLE monitors ADD COLUMN requester TEXT")
        # a state store from before text transfers: add the column (NULL: a binary file's, none)
        if "written_digest" not in {r[1] for r in self._db.execute("PRAGMA table_info(files)")}:
            self._db.execute("ALTER TABLE files ADD COLUMN written_digest TEXT")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction, committed at the end or rolled back on an error. (The connection is in autocommit
        mode, where `with connection:` begins nothing: each statement of an executemany was its own
        transaction, a commit per file, and save_transfer's DELETE and INSERTs could be cut apart by a crash.)"""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- transfers

    # the transfer row's write (agent.standby.PgStateStore: its upsert)
    _SAVE_ROW = "INSERT OR REPLACE INTO transfers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"

    def save_transfer(self, *recs: TransferRecord) -> None:
        """Each transfer's row and all its file rows, all in one transaction: a fan-out's parent with its legs
        (agent.transfers.start), so that a crash never leaves a parent without its legs, nor some of them."""
        with self._transaction():
            for rec in recs:
                rec.updated = time.time()
                self._db.execute(self._SAVE_ROW, _transfer_row(rec))
                self._db.execute("DELETE FROM files WHERE transfer_id=? AND role=?", (rec.transfer_id, rec.role))
                self._db.executemany(
                    "INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(rec.transfer_id, rec.role, f.index, f.source, f.destination, f.size, f.mtime, f.offset,
                      f.status, f.result_code, f.supplement, f.digest, f.written_digest) for f in rec.files],
                )

    def update_transfer(self, rec: TransferRecord, header: bool = False,
                        files: list[FileRecord] | None = None) -> None:
        """Save the transfer row only (cheap; files are saved by save_file/save_transfer); with `header`, the
        header too; with `files`, those file rows too, in the same transaction (the end of a transfer of
        10,000 files changes a few of them, and save_transfer rewrote all)."""
        rec.updated = time.time()
        with self._transaction():
            if header:
                self._db.execute("UPDATE transfers SET header=? WHERE transfer_id=? AND role=?",
                                 (json.dumps(rec.header), rec.transfer_id, rec.role))
            self._db.execute(
                "UPDATE transfers SET state=?, result_code=?, epoch=?, recoveries=?, recovering_since=?, "
                "last_stall=?, peer_confirmed=?, updated=? WHERE transfer_id=? AND role=?",
                (rec.state, rec.result_code, rec.epoch, rec.recoveries, rec.recovering_since, rec.last_stall,
                 int(rec.peer_confirmed), rec.updated, rec.transfer_id, rec.role),
            )
            if files:
                self._update_files(rec.transfer_id, rec.role, files)

    def save_file(self, transfer_id: str, role: str, f: FileRecord) -> None:
        self._db.execute(
            "UPDATE files SET offset=?, status=?, result_code=?, supplement=?, digest=?, destination=?, "
            "written_digest=? WHERE transfer_id=? AND role=? AND idx=?",
            (f.offset, f.status, f.result_code, f.supplement, f.digest, f.destination, f.written_digest, transfer_id,
             role, f.index),
        )

    def save_files(self, transfer_id: str, role: str, files: list[FileRecord]) -> None:
        """`save_file` of several files in one transaction (one commit for a bundle of small files)."""
        if not files:
            return
        with self._transaction():
            self._update_files(transfer_id, role, files)

    def _update_files(self, transfer_id: str, role: str, files: list[FileRecord]) -> None:
        self._db.executemany(
            "UPDATE files SET offset=?, status=?, result_code=?, supplement=?, digest=?, destination=?, "
            "written_digest=? WHERE transfer_id=? AND role=? AND idx=?",
            [(f.offset, f.status, f.result_code, f.supplement, f.digest, f.destination, f.written_digest,
              transfer_id, role, f.index) for f in files],
        )

    def load_transfer(self, transfer_id: str, role: str, files: bool = True) -> TransferRecord | None:
        """The transfer and its files; with files=False its row only (`files` empty): its key, state or
        header, without reading 10,000 file rows."""
        row = self._db.execute("SELECT * FROM transfers WHERE transfer_id=? AND role=?",
                               (transfer_id, role)).fetchone()
        return self._record(row, files) if row else None

    def transfers(self, role: str | None = None, files: bool = True) -> Iterator[TransferRecord]:
        """Every transfer kept (oldest first); with files=False their rows only: a history of transfers of
        thousands of files each is read in milliseconds, not seconds."""
        if role:
            rows = self._db.execute("SELECT * FROM transfers WHERE role=? ORDER BY created", (role,)).fetchall()
        else:
            rows = self._db.execute("SELECT * FROM transfers ORDER BY created").fetchall()
        for row in rows:
            yield self._record(row, files)

    def file_totals(self, transfer_id: str, role: str) -> tuple[int, int, int, int]:
        """(files, files with a result, bytes, bytes done) of a transfer, summed by SQLite: a listing of a
        history of transfers of 10,000 files each does not read every file row."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(status != 'ready'), 0), COALESCE(SUM(size), 0), "
            "COALESCE(SUM(CASE WHEN status = 'done' THEN size ELSE offset END), 0) "
            "FROM files WHERE transfer_id=? AND role=?", (transfer_id, role)).fetchone()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def prune(self, older_than: float, terminal: AbstractSet[str]) -> int:
        """Forget finished transfers last changed before `older_than` (the peer has confirmed the outcome). A
        fan-out's leg row (`<tid>/<destination>`, agent/fanout.py) stays while its parent row `<tid>` has not
        finished: the running transfer is rebuilt from all its legs."""
        marks = ",".join("?" * len(terminal))
        rows = self._db.execute(
            f"SELECT transfer_id, role FROM transfers t WHERE updated < ? AND state IN ({marks}) "
            "AND (peer_confirmed = 1 OR role = 'destination') AND NOT (role = 'source' AND EXISTS ("
            "SELECT 1 FROM transfers p WHERE p.role = 'source' AND p.transfer_id <> t.transfer_id "
            f"AND p.state NOT IN ({marks}) "  # (SQL that SQLite and PostgreSQL share: agent/standby.py)
            "AND substr(t.transfer_id, 1, length(p.transfer_id) + 1) = p.transfer_id || '/'))",
            (older_than, *sorted(terminal), *sorted(terminal))).fetchall()
        for tid, role in rows:
            self.delete_transfer(tid, role)
        return len(rows)

    def delete_transfer(self, transfer_id: str, role: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM transfers WHERE transfer_id=? AND role=?", (transfer_id, role))
            self._db.execute("DELETE FROM files WHERE transfer_id=? AND role=?", (transfer_id, role))

    def _record(self, row: tuple[Any, ...], files: bool = True) -> TransferRecord:
        (tid, role, state, peer, header, result_code, rt, epoch, recoveries, since, stall, confirmed,
         created, updated) = row
        rec = TransferRecord(tid, role, state, peer, json.loads(header), result_code, rt, epoch, recoveries,
                             since, stall, bool(confirmed), created, updated)
        if not files:
            return rec
        rec.files = [FileRecord(*r) for r in self._db.execute(
            "SELECT idx, source, destination, size, mtime, offset, status, result_code, supplement, digest, "
            "written_digest FROM files WHERE transfer_id=? AND role=? ORDER BY idx", (tid, role))]
        return rec

    # ---- monitors: definitions and what each has already fired for

    def save_monitor(self, name: str, spec: dict[str, Any], state: str = "started",
                     requester: str | None = None) -> None:
        """`requester`: who created it (the verified signer of create_monitor; None without authority checking)."""
        self._db.execute(
            "INSERT INTO monitors (name, spec, state, memory, created, requester) VALUES (?,?,?,'{}',?,?) "
            "ON CONFLICT(name) DO UPDATE SET spec=excluded.spec, state=excluded.state, memory='{}', "
            "requester=excluded.requester",
            (name, json.dumps(spec), state, time.time(), requester))

    def monitor_requester(self, name: str) -> str | None:
        row = self._db.execute("SELECT requester FROM monitors WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_monitor_state(self, name: str, state: str) -> None:
        self._db.execute("UPDATE monitors SET state=? WHERE name=?", (state, name))

    def save_monitor_memory(self, name: str, memory: dict[str, Any]) -> None:
        self._db.execute("UPDATE monitors SET memory=? WHERE name=?", (json.dumps(memory), name))

    def delete_monitor(self, name: str) -> bool:
        return self._db.execute("DELETE FROM monitors WHERE name=?", (name,)).rowcount > 0

    def monitors(self) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
        return [(n, json.loads(sp), st, json.loads(m)) for n, sp, st, m in self._db.execute(
            "SELECT name, spec, state, memory FROM monitors ORDER BY name")]

    # ---- schedules: scheduled transfers and the next occurrence to run

    def save_schedule(self, sid: str, schedule: dict[str, Any], spec: dict[str, Any], next_index: int,
                      requester: str | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO schedules VALUES (?,?,?,?,?,?)",
                         (sid, json.dumps(schedule), json.dumps(spec), next_index, requester, time.time()))

    def set_schedule_next(self, sid: str, next_index: int) -> None:
        self._db.execute("UPDATE schedules SET next_index=? WHERE id=?", (next_index, sid))

    def delete_schedule(self, sid: str) -> bool:
        return self._db.execute("DELETE FROM schedules WHERE id=?", (sid,)).rowcount > 0

    def schedules(self) -> list[tuple[str, dict[str, Any], dict[str, Any], int, str | None]]:
        return [(i, json.loads(sc), json.loads(sp), n, r) for i, sc, sp, n, r in self._db.execute(
            "SELECT id, schedule, spec, next_index, requester FROM schedules ORDER BY created")]

    # ---- nonces of accepted commands (agent.auth.NonceLedger)

    def claim_nonce(self, nonce: str, expires: float, now: float) -> bool:
        """Record a command's nonce until `expires`; False if it is recorded already. Committed before the
        command runs: an agent killed right after obeying a command still refuses its replay at restart."""
        with self._transaction():
            self._db.execute("DELETE FROM nonces WHERE expires <= ?", (now,))
            cur = self._db.execute("INSERT OR IGNORE INTO nonces (nonce, expires) VALUES (?,?)", (nonce, expires))
            return cur.rowcount == 1

    # ---- program calls an agent ran: a destination for its sources (agent.programs.ProgramHost), a source its own

    def claim_program_run(self, transfer_id: str, when: str, source_agent: str,
                          now: float) -> tuple[bool, str | None]:
        """Note that the call `when` of `transfer_id` is about to run, committed before it runs: (True, None)
        the first time; (False, its outcome's JSON, or None if it never finished: the agent stopped while it
        ran) ever after, restarts included. A call runs at most once, however often it is asked for."""
        with self._transaction():
            cur = self._db.execute("INSERT INTO program_runs (transfer_id, call_when, source_agent, outcome, created)"
                                   " VALUES (?,?,?,NULL,?) ON CONFLICT DO NOTHING",
                                   (transfer_id, when, source_agent, now))
            if cur.rowcount == 1:
                return True, None
            row = self._db.execute("SELECT outcome FROM program_runs WHERE transfer_id=? AND call_when=?",
                                   (transfer_id, when)).fetchone()
            return False, (row[0] if row else None)

    def save_program_outcome(self, transfer_id: str, when: str, outcome: str) -> None:
        self._db.execute("UPDATE program_runs SET outcome=? WHERE transfer_id=? AND call_when=?",
                         (outcome, transfer_id, when))

    def prune_program_runs(self, older_than: float) -> int:
        return int(self._db.execute("DELETE FROM program_runs WHERE created < ?", (older_than,)).rowcount)

    # ---- outbox: log events waiting for the broker

    def outbox_put(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._db.execute("INSERT INTO outbox (topic, payload, retain) VALUES (?,?,?)", (topic, payload, int(retain)))

    def outbox_peek(self, limit: int = 100) -> list[tuple[int, str, bytes, bool]]:
        return [(s, t, bytes(p), bool(r)) for s, t, p, r in self._db.execute(
            "SELECT seq, topic, payload, retain FROM outbox ORDER BY seq LIMIT ?", (limit,))]

    def outbox_done(self, seq: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq=?", (seq,))

    def outbox_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
