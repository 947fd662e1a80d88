"""Standby pairs: the lease row in PostgreSQL (who is active) and the agent's state store in PostgreSQL.

`agentStore=postgresql://...` in agent.properties puts the agent's state (agent.store's tables: transfers
and their checkpoints, monitors and their memory, schedules and their next occurrence, nonces, the log
outbox) in a schema of its own, ``fte_<agent>``, of that database, and makes the process one of a standby
pair: it waits for the lease (table ``public.mqtt_fte_lease``, one row per agent name) before it starts as
the agent. The rules (when to renew, when to stop, when to take) are agent.core.lease's.

Fencing: every write of PgStateStore runs in a transaction that first locks the lease row FOR SHARE and
checks that it is still ours (same holder, same epoch, not expired by the server's clock); a taker's UPDATE
of the row waits for such a transaction, so no write of an old active commits after the new one took over.
The renewals run on a thread of their own with their own connection (a blocked event loop cannot keep a
dead active acting): when no renewal succeeded within stop_after, the process exits at once (os._exit 75),
before the lease may expire — its supervisor starts it again and it waits as the standby.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .core.errors import FteError
from .core.lease import LeaseAction, LeasePlan, active_action, may_act, standby_may_take
from .store import SCHEMA, StateStore

log = logging.getLogger("fte.agent.standby")

EXIT_LEASE_LOST = 75
LEASE_TABLE = """CREATE TABLE IF NOT EXISTS public.mqtt_fte_lease (
    agent TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)"""


class LeaseLost(FteError):
    """This process no longer holds the agent's lease (it exits: agent.standby._exit_lost)."""


def _connect(url: str, timeout_s: float, search_path: str | None = None) -> Any:
    import psycopg

    ms = max(1000, int(timeout_s * 1000))
    options = f"-c statement_timeout={ms} -c lock_timeout={ms}"
    if search_path:
        options += f" -c search_path={search_path},public"
    # tcp_user_timeout / keepalives: a cut network fails a call in bounded time instead of hanging it
    return psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout_s)), options=options,
                           keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
                           tcp_user_timeout=ms)


def _ddl_lock(conn: Any) -> None:
    # two processes creating the same tables at once collide in pg_type: serialise DDL on an advisory lock
    conn.execute("SELECT pg_advisory_lock(7316001)")


class PgLease:
    """The lease of agent `agent` held by this process (`holder`), renewed on a thread of its own."""

    def __init__(self, url: str, agent: str, takeover_s: float,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.url, self.agent = url, agent
        self.plan = LeasePlan.for_takeover(takeover_s)
        self.holder = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.epoch: int | None = None
        self._sent: float | None = None  # monotonic time the last successful renewal was sent
        self._attempt: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_lost = on_lost or _exit_lost
        self._conn: Any = None

    # ---- standby: wait

    def _db(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.url, self.plan.renew_every)
        return self._conn

    def try_acquire(self) -> bool:
        sent = time.monotonic()
        conn = self._db()
        row = conn.execute(
            "INSERT INTO public.mqtt_fte_lease AS l (agent, holder, epoch, expires_at) "
            "VALUES (%s, %s, 1, now() + make_interval(secs => %s)) "
            "ON CONFLICT (agent) DO UPDATE SET holder = excluded.holder, epoch = l.epoch + 1, "
            "expires_at = excluded.expires_at WHERE l.expires_at < now() RETURNING epoch",
            (self.agent, self.holder, self.plan.ttl)).fetchone()
        if row is None:
            return False
        self.epoch, self._sent, self._attempt = int(row[0]), sent, sent
        return True

    def wait(self, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Block until this process holds the lease (True) or `stopping()` (False). Database errors are retried."""
        announced = False
        with _connect(self.url, self.plan.renew_every) as conn:
            _ddl_lock(conn)
            conn.execute(LEASE_TABLE)
            conn.execute("SELECT pg_advisory_unlock(7316001)")
        while not stopping():
            try:
                row = self._db().execute("SELECT extract(epoch FROM now()), extract(epoch FROM expires_at) "
                                         "FROM public.mqtt_fte_lease WHERE agent=%s", (self.agent,)).fetchone()
                free = standby_may_take(float(row[0]), float(row[1])) if row else True
                if free and self.try_acquire():
                    log.info("standby: agent %s active: lease taken (epoch %d, holder %s)", self.agent, self.epoch,
                             self.holder)
                    return True
                if not announced:
                    row = self._db().execute("SELECT holder, epoch FROM public.mqtt_fte_lease WHERE agent=%s",
                                             (self.agent,)).fetchone()
                    log.info("standby: agent %s is active elsewhere (holder %s, epoch %s); waiting as the standby",
                             self.agent, *(row or ("?", "?")))
                    announced = True
            except Exception as exc:  # noqa: BLE001 - any database trouble: wait and try again
                log.warning("standby: agent %s: lease database unreachable (%s); retrying", self.agent, exc)
                self._conn = None
            time.sleep(self.plan.poll_every)
        return False

    # ---- active: renew, fence, release

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="fte-lease", daemon=True)
        self._thread.start()

    def may_act(self) -> bool:
        return may_act(self.plan, time.monotonic(), self._sent)

    def check(self) -> None:
        """The fence check before a side effect; a lost lease ends the process."""
        if not self.may_act():
            self.on_lost("no lease renewal within stop_after")
            raise LeaseLost(f"agent {self.agent}: lease lost")

    def _renew_loop(self) -> None:
        while not self._stop.is_set():
            action = active_action(self.plan, time.monotonic(), self._sent, self._attempt)
            if action is LeaseAction.STOP:
                self.on_lost(f"no renewal succeeded within {self.plan.stop_after:.1f} s")
                return
            if action is LeaseAction.RENEW:
                sent = self._attempt = time.monotonic()
                try:
                    row = self._db().execute(
                        "UPDATE public.mqtt_fte_lease SET expires_at = now() + make_interval(secs => %s) "
                        "WHERE agent=%s AND holder=%s AND epoch=%s AND expires_at > now() RETURNING epoch",
                        (self.plan.ttl, self.agent, self.holder, self.epoch)).fetchone()
                except Exception as exc:  # noqa: BLE001 - a failed renewal: try again until stop_after
                    log.warning("standby: agent %s: lease renewal failed (%s)", self.agent, exc)
                    self._conn = None
                    row = ()
                if row is None:  # the row is someone else's: stop at once
                    self.on_lost("the lease is held by another process")
                    return
                if row:
                    self._sent = sent
            self._stop.wait(min(self.plan.renew_every / 4, 0.5))

    def release(self) -> None:
        """At a clean stop: expire the lease now, so that the standby takes over without waiting for the ttl."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        try:
            if self.epoch is not None:
                self._db().execute("UPDATE public.mqtt_fte_lease SET expires_at = now() "
                                   "WHERE agent=%s AND holder=%s AND epoch=%s", (self.agent, self.holder, self.epoch))
        except Exception as exc:  # noqa: BLE001
            log.warning("standby: agent %s: lease not released (%s); the standby waits for its expiry", self.agent, exc)
        finally:
            if self._conn is not None:
                self._conn.close()


def _exit_lost(why: str) -> None:
    msg = f"standby: lease lost ({why}): this process stops acting as the agent now (exit {EXIT_LEASE_LOST})"
    log.critical(msg)
    print(msg, file=sys.stderr, flush=True)
    os._exit(EXIT_LEASE_LOST)


# ------------------------------------------------------------------ the store


def _pg_sql(sql: str) -> str:
    return sql.replace("?", "%s").replace(" offset", ' "offset"').replace("offset=", '"offset"=')


class _PgCursor:
    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> Any:
        return self._cur.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur.fetchall())


class _PgDb:
    """StateStore's `_db` on PostgreSQL: its sqlite SQL translated; every write fenced by the lease."""

    def __init__(self, conn: Any, fence: Callable[[Any], None]) -> None:
        self.conn = conn
        self._fence = fence
        self.in_tx = False

    def execute(self, sql: str, params: Any = ()) -> _PgCursor:
        sql = _pg_sql(sql)
        if sql.lstrip().upper().startswith("SELECT") or self.in_tx:
            return _PgCursor(self.conn.execute(sql, params))
        with self.conn.transaction():
            self._fence(self.conn)
            return _PgCursor(self.conn.execute(sql, params))

    def executemany(self, sql: str, rows: Any) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), list(rows))

    def close(self) -> None:
        self.conn.close()


class PgStateStore(StateStore):
    """agent.store's interface on PostgreSQL (schema fte_<agent>), for a standby pair."""

    def __init__(self, url: str, agent: str, lease: PgLease | None = None) -> None:  # noqa: D107
        self.path = None  # type: ignore[assignment]
        self.lease = lease
        self.agent = agent
        schema = "fte_" + agent.lower().replace(".", "_")
        conn = _connect(url, 10, search_path=schema)
        _ddl_lock(conn)
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        ddl = (SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY").replace("BLOB", "BYTEA")
               .replace("REAL", "DOUBLE PRECISION").replace("INTEGER", "BIGINT").replace(" offset ", ' "offset" '))
        for stmt in filter(str.strip, ddl.split(";")):
            conn.execute(stmt)
        conn.execute("ALTER TABLE files ADD COLUMN IF NOT EXISTS written_digest TEXT")  # before text transfers
        conn.execute("SELECT pg_advisory_unlock(7316001)")
        self._db = _PgDb(conn, self._fence)  # type: ignore[assignment]

    def _fence(self, conn: Any) -> None:
        lease = self.lease
        if lease is None:
            return
        row = conn.execute("SELECT 1 FROM public.mqtt_fte_lease WHERE agent=%s AND holder=%s AND epoch=%s "
                           "AND expires_at > now() FOR SHARE", (lease.agent, lease.holder, lease.epoch)).fetchone()
        if row is None:
            lease.on_lost("a store write found the lease someone else's (fenced)")
            raise LeaseLost(f"agent {self.agent}: store write fenced: the lease is not ours")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        db: _PgDb = self._db  # type: ignore[assignment]
        with db.conn.transaction():
            self._fence(db.conn)
            db.in_tx = True
            try:
                yield
            finally:
                db.in_tx = False

    _SAVE_ROW = ("INSERT INTO transfers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (transfer_id, role) DO UPDATE "
                 "SET state=excluded.state, peer=excluded.peer, header=excluded.header, "
                 "result_code=excluded.result_code, recovery_timeout=excluded.recovery_timeout, "
                 "epoch=excluded.epoch, recoveries=excluded.recoveries, recovering_since=excluded.recovering_since, "
                 "last_stall=excluded.last_stall, peer_confirmed=excluded.peer_confirmed, created=excluded.created, "
                 "updated=excluded.updated")  # save_transfer's (agent.store), an upsert where sqlite replaces

    def save_file(self, transfer_id: str, role: str, f: Any) -> None:
        with self._transaction():
            self._update_files(transfer_id, role, [f])

    def file_totals(self, transfer_id: str, role: str) -> tuple[int, int, int, int]:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status != 'ready' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(size), 0), COALESCE(SUM(CASE WHEN status = 'done' THEN size ELSE offset END), 0) "
            "FROM files WHERE transfer_id=? AND role=?", (transfer_id, role)).fetchone()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def save_schedule(self, sid: str, schedule: dict[str, Any], spec: dict[str, Any], next_index: int,
                      requester: str | None) -> None:
        self._db.execute("INSERT INTO schedules VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
                         "schedule=excluded.schedule, spec=excluded.spec, next_index=excluded.next_index, "
                         "requester=excluded.requester, created=excluded.created",
                         (sid, json.dumps(schedule), json.dumps(spec), next_index, requester, time.time()))

    def claim_nonce(self, nonce: str, expires: float, now: float) -> bool:
        with self._transaction():
            self._db.execute("DELETE FROM nonces WHERE expires <= ?", (now,))
            cur = self._db.execute("INSERT INTO nonces (nonce, expires) VALUES (?,?) ON CONFLICT DO NOTHING",
                                   (nonce, expires))
            return cur.rowcount == 1

    def outbox_put(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._db.execute("INSERT INTO outbox (topic, payload, retain) VALUES (?,?,?)", (topic, payload, int(retain)))


def open_store(settings: Any, state_dir: Any) -> tuple[StateStore, PgLease | None]:
    """The agent's store and, for a PostgreSQL store, its lease (not yet held: PgLease.wait)."""
    url = getattr(settings, "agentStore", None)
    if not url:
        return StateStore(state_dir / "state.db"), None
    lease = PgLease(url, settings.agentName, settings.standbyTakeoverTimeout / 1000.0)
    return PgStateStore(url, settings.agentName, lease), lease
