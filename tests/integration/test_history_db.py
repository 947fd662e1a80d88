"""ops.history on a real SQLite file and a real PostgreSQL (the session's own): idempotence, folding, filters,
the hash chain and its tampering, retention."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from ops.history import History, HistoryError, default_history_url
from tests.support import history_events as ev


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/h/history.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def history(db_url: str) -> Iterator[History]:
    with History.open(db_url) as h:
        yield h


def _raw(h: History, sql: str, params: tuple = ()) -> None:
    """Change the database behind the History's back (as an intruder with write access would)."""
    if h.kind == "sqlite":
        conn = sqlite3.connect(h.url.split("://", 1)[1], isolation_level=None)
        conn.execute(sql, params)
        conn.close()
    else:
        import psycopg
        with psycopg.connect(h._conn.info.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute(sql.replace("?", "%s"), params)


def test_record_is_idempotent_and_folds(history: History) -> None:
    events = [ev.started(), ev.progress(), ev.recovering(), ev.completed()]
    assert [history.record(e, verified=True) for e in events] == [True] * 4
    assert history.record(events[1], verified=True) is False  # a redelivery
    t = history.transfer(ev.TID)
    assert t is not None
    assert (t["state"], t["result_code"], t["recoveries"], t["job_name"], t["verified"]) == \
        ("complete", 0, 1, "nightly", True)
    assert t["files"][0]["digest"] == "ab" * 32 and t["metadata"] == {"batch": "42"}
    stored = history.events(ev.TID)
    assert [e["action"] for e in stored] == ["started", "progress", "recovering", "completed"]
    assert all(e["verified"] for e in stored) and stored[0]["event"]["event_id"] == events[0]["event_id"]
    assert history.verify_chain().ok and history.verify_chain().rows_checked == 4


def test_other_families_are_recorded(history: History) -> None:
    assert history.record(ev.monitor_fired(), verified=True, topic="SYSTEM.FTE/Log/A1/Monitors/M1")
    assert not history.record(ev.monitor_fired(), verified=True)  # no event_id: one derived from the content
    assert history.record(ev.refusal(), verified=True)
    assert history.transfers() == []  # neither is a transfer
    assert [e["action"] for e in history.recent_events()] == ["not_authorized", "fired"]


def test_unverified_is_flagged(history: History) -> None:
    history.record(ev.started(), verified=True)
    forged = ev.completed(state="failed", code=40)
    history.record(forged, verified=False, problem="not signed")
    t = history.transfer(ev.TID)
    assert t is not None and t["state"] == "queued" and t["verified"] and t["unverified_events"] == 1
    last = history.events(ev.TID)[-1]
    assert (last["verified"], last["problem"], last["action"]) == (False, "not signed", "completed")


def test_filters(history: History) -> None:
    history.record(ev.started(time="2025-03-14T09:00:00.000Z"), verified=True)
    history.record(ev.completed(), verified=True)
    history.record(ev.started(tid=ev.TID2, job_name="other", time="2025-03-15T09:00:00.000Z"), verified=True)
    assert [t["transfer_id"] for t in history.transfers()] == [ev.TID2, ev.TID]  # newest first
    assert [t["transfer_id"] for t in history.transfers(state="complete")] == [ev.TID]
    assert [t["transfer_id"] for t in history.transfers(job_name="other")] == [ev.TID2]
    assert [t["transfer_id"] for t in history.transfers(since=datetime(2025, 3, 15, tzinfo=timezone.utc))] == [ev.TID2]
    assert len(history.transfers(agent="A2")) == 2 and history.transfers(agent="B9") == []
    assert len(history.transfers(limit=1)) == 1


def test_tampering_is_named(history: History) -> None:
    for e in (ev.started(), ev.progress(), ev.completed()):
        history.record(e, verified=True)
    rows = history.events(ev.TID)
    _raw(history, "UPDATE events SET body = replace(body, 'complete', 'failed') WHERE id = ?", (rows[2]["row_id"],))
    report = history.verify_chain()
    assert not report.ok and report.first_broken == rows[2]["row_id"]
    assert str(rows[2]["row_id"]) in report.message and rows[2]["event_id"] in report.message


def test_a_removed_row_is_found(history: History) -> None:
    for e in (ev.started(), ev.progress(), ev.completed()):
        history.record(e, verified=True)
    rows = history.events(ev.TID)
    _raw(history, "DELETE FROM events WHERE id = ?", (rows[1]["row_id"],))
    report = history.verify_chain()
    assert not report.ok and report.first_broken == rows[2]["row_id"]


def test_flipping_the_verified_flag_breaks_the_chain(history: History) -> None:
    history.record(ev.started(), verified=False, problem="not signed")
    _raw(history, "UPDATE events SET verified = 1, problem = NULL")
    assert not history.verify_chain().ok


def test_prune_keeps_the_chain(db_url: str) -> None:
    now = datetime(2025, 3, 20, tzinfo=timezone.utc)
    with History.open(db_url, clock=lambda: now) as h:
        h.record(ev.started(), verified=True, received_at=now - timedelta(days=10))
        h.record(ev.completed(), verified=True, received_at=now - timedelta(days=10))
        h.record(ev.started(tid=ev.TID2), verified=True, received_at=now - timedelta(days=1))
        assert h.prune(5) == 2
        assert [t["transfer_id"] for t in h.transfers()] == [ev.TID2]
        assert h.verify_chain().ok and h.verify_chain().rows_checked == 1
        h.record(ev.completed(tid=ev.TID2), verified=True)
        assert h.verify_chain().ok
        assert h.prune(5) == 0


def test_reopen_keeps_everything(db_url: str) -> None:
    with History.open(db_url) as h:
        h.record(ev.started(), verified=True)
    with History.open(db_url) as h:
        assert h.transfer(ev.TID) is not None and h.verify_chain().ok


@pytest.mark.parametrize("url, words", [
    ("mysql://x@y/z", "unknown scheme"),
    ("history.db", "not a database URL"),
    ("sqlite://relative.db", "absolute path"),
    ("postgresql://nobody@127.0.0.1:1/nothing", "cannot connect to PostgreSQL"),
])
def test_bad_urls(url: str, words: str) -> None:
    with pytest.raises(HistoryError, match=words):
        History.open(url)


def test_unwritable_sqlite(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(HistoryError, match="cannot open the SQLite database"):
        History.open(f"sqlite:///{tmp_path}/file/sub/h.db")


def test_default_url(fte_home: Path) -> None:
    assert default_history_url() == f"sqlite://{fte_home.resolve()}/logger/history.db"


def test_a_fan_out_keeps_its_destinations_and_an_older_database_gets_the_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old/history.db"
    with History.open(url) as h:
        h.record(ev.started(), verified=True)
        _raw(h, "ALTER TABLE transfers DROP COLUMN destinations")  # as a database made before fan-out
    with History.open(url) as h:  # opened again: the column is added, the old row kept
        assert h.transfer(ev.TID)["destinations"] is None  # type: ignore[index]
        h.record(ev.fanout_started(), verified=True)
        h.record(ev.fanout_completed(), verified=True)
        row = h.transfer(ev.TID3)
    assert row is not None and [d["agent"] for d in row["destinations"]] == ["A2", "A3"]
    assert row["destinations"][1]["result_code"] == 40


def test_the_agent_filter_finds_a_fan_outs_destination_by_its_exact_name(history: History) -> None:
    # '_' is a character of agent names and LIKE's wildcard: -a A_3 must not find a fan-out to AX3
    history.record(ev.started(tid=ev.TID3, destination_agents=["A2", "AX3"]), verified=True)
    assert [t["transfer_id"] for t in history.transfers(agent="AX3")] == [ev.TID3]
    assert history.transfers(agent="A_3") == [] and history.transfers(agent="AX") == []
    history.record(ev.started(tid=ev.TID, destination_agents=["A2", "A_3"]), verified=True)
    assert [t["transfer_id"] for t in history.transfers(agent="A_3")] == [ev.TID]
