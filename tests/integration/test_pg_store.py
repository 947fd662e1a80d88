"""agent.standby.PgStateStore on a real PostgreSQL: the sqlite store's interface, and the lease's fence."""

from __future__ import annotations

import time

import psycopg
import pytest

from agent.standby import LeaseLost, PgLease, PgStateStore
from agent.store import FileRecord, TransferRecord


def _lease(url: str, lost: list[str]) -> PgLease:
    lease = PgLease(url, "P1", takeover_s=30, on_lost=lost.append)
    assert lease.wait()
    return lease


def test_the_store_keeps_what_sqlite_keeps(postgres_url: str) -> None:
    lost: list[str] = []
    store = PgStateStore(postgres_url, "P1", _lease(postgres_url, lost))
    rec = TransferRecord("t1", "source", "running", "A2", {"k": "v"},
                         files=[FileRecord(0, "/a", "/b", 10 * 2**32), FileRecord(1, "/c", "/d", 5)])
    store.save_transfer(rec)
    rec.files[0].offset = 3 * 2**32  # offsets beyond 32 bits
    store.save_file("t1", "source", rec.files[0])
    rec.files[1].status = "done"
    store.update_transfer(rec, header=True, files=[rec.files[1]])
    back = store.load_transfer("t1", "source")
    assert back and back.header == {"k": "v"} and back.files[0].offset == 3 * 2**32 and back.files[1].status == "done"
    assert store.file_totals("t1", "source") == (2, 1, 10 * 2**32 + 5, 3 * 2**32 + 5)
    store.save_transfer(rec)  # again: an upsert
    assert [r.transfer_id for r in store.transfers()] == ["t1"]
    store.save_monitor("M1", {"a": 1})
    store.save_monitor_memory("M1", {"seen": ["x"]})
    assert store.monitors() == [("M1", {"a": 1}, "started", {"seen": ["x"]})]
    store.save_schedule("s1", {"every": 1}, {"spec": 1}, 0, None)
    store.save_schedule("s1", {"every": 1}, {"spec": 1}, 3, None)
    assert store.schedules() == [("s1", {"every": 1}, {"spec": 1}, 3, None)]
    assert store.claim_nonce("n", 2e9, 1e9) and not store.claim_nonce("n", 2e9, 1e9)
    store.outbox_put("t/x", b"\x00payload", retain=True)
    assert [(t, p, r) for _, t, p, r in store.outbox_peek()] == [("t/x", b"\x00payload", True)]
    assert store.outbox_size() == 1
    assert store.claim_program_run("t1", "pre_destination", "A1", 1e9) == (True, None)  # a -predst runs once
    assert store.claim_program_run("t1", "pre_destination", "A1", 1e9 + 1) == (False, None)
    store.save_program_outcome("t1", "pre_destination", '{"outcome": "success"}')
    assert store.claim_program_run("t1", "pre_destination", "A1", 1e9 + 2) == (False, '{"outcome": "success"}')
    assert store.prune_program_runs(1e9 + 1) == 1
    # a fan-out's finished leg stays while its transfer runs (the same SQL as sqlite's: agent.store.prune)
    terminal = {"complete", "failed"}
    store.save_transfer(TransferRecord("p1", "source", "in_progress", "A2", {}, peer_confirmed=True))
    store.save_transfer(TransferRecord("p1/A2", "source", "complete", "A2", {}, peer_confirmed=True))
    assert store.prune(time.time() + 60, terminal) == 0
    store.save_transfer(TransferRecord("p1", "source", "complete", "A2", {}, peer_confirmed=True))
    assert store.prune(time.time() + 60, terminal) == 2
    store.close()
    assert lost == []


def test_a_fanout_parent_and_its_legs_are_saved_all_or_nothing(postgres_url: str) -> None:
    # save_transfer(parent, *legs) (agent.transfers.start: a fan-out's parent and legs) is one transaction here too
    lost: list[str] = []
    store = PgStateStore(postgres_url, "P1", _lease(postgres_url, lost))
    legs = [TransferRecord(f"f1/{d}", "source", "queued", d, {}, files=[FileRecord(0, "/a", "/b", 5)])
            for d in ("A2", "A3")]
    legs[1].files.append(FileRecord(0, "/a", "/b", 5))  # the same file row twice: the second leg is refused
    parent = TransferRecord("f1", "source", "queued", "A2", {"destination_agents": ["A2", "A3"]})
    with pytest.raises(psycopg.Error):
        store.save_transfer(parent, *legs)
    assert [r.transfer_id for r in store.transfers()] == [], "part of the fan-out was written"
    del legs[1].files[1]
    store.save_transfer(parent, *legs)
    assert sorted(r.transfer_id for r in store.transfers()) == ["f1", "f1/A2", "f1/A3"]
    store.close()
    assert lost == []


def test_writes_of_an_old_active_are_fenced_after_a_takeover(postgres_url: str) -> None:
    lost_a: list[str] = []
    lease_a = _lease(postgres_url, lost_a)
    store_a = PgStateStore(postgres_url, "P1", lease_a)
    store_a.save_monitor("M1", {"a": 1})
    # A's lease runs out (a network cut, a pause): B takes it
    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute("UPDATE mqtt_fte_lease SET expires_at = now() - interval '1 second'")
    lost_b: list[str] = []
    lease_b = _lease(postgres_url, lost_b)
    assert lease_b.epoch == lease_a.epoch + 1
    store_b = PgStateStore(postgres_url, "P1", lease_b)
    with pytest.raises(LeaseLost):
        store_a.set_monitor_state("M1", "stopped")
    with pytest.raises(LeaseLost):
        store_a.save_transfer(TransferRecord("t1", "source", "running", "A2", {}))
    assert lost_a and not lost_b
    assert store_b.monitors()[0][2] == "started"  # A's write did not land
    store_b.set_monitor_state("M1", "stopped")
    assert store_b.monitors()[0][2] == "stopped"
    store_a.close()
    store_b.close()
