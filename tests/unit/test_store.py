"""The state store writes what belongs together in one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.store import FileRecord, StateStore, TransferRecord


def _store_with_transfer(tmp_path: Path, n: int = 3) -> tuple[StateStore, TransferRecord]:
    store = StateStore(tmp_path / "state.db")
    rec = TransferRecord("b" * 48, "destination", "in_progress", "A1", {})
    rec.files = [FileRecord(i, f"/src/{i}", f"/dst/{i}", 10, 0.0) for i in range(n)]
    store.save_transfer(rec)
    return store, rec


def _statuses(store: StateStore, rec: TransferRecord) -> list[str]:
    loaded = store.load_transfer(rec.transfer_id, rec.role)
    assert loaded is not None
    return [f.status for f in loaded.files]


def test_save_files_is_all_or_nothing(tmp_path: Path) -> None:
    store, rec = _store_with_transfer(tmp_path)
    for f in rec.files:
        f.status = "done"
    rec.files[2].offset = object()  # type: ignore[assignment]  # cannot be stored: the third update fails
    with pytest.raises(Exception):
        store.save_files(rec.transfer_id, rec.role, rec.files)
    assert _statuses(store, rec) == ["ready"] * 3, "the first two updates were kept without the third"
    rec.files[2].offset = 10
    store.save_files(rec.transfer_id, rec.role, rec.files)
    assert _statuses(store, rec) == ["done"] * 3
    store.close()


def test_save_transfer_never_leaves_a_transfer_without_its_files(tmp_path: Path) -> None:
    store, rec = _store_with_transfer(tmp_path)
    rec.files.insert(0, FileRecord(3, "/src/3", object(), 10, 0.0))  # type: ignore[arg-type]
    with pytest.raises(Exception):
        store.save_transfer(rec)  # DELETE of the old rows, then an INSERT that fails
    loaded = store.load_transfer(rec.transfer_id, rec.role)
    assert loaded is not None and [f.index for f in loaded.files] == [0, 1, 2], \
        "the old file rows were deleted and not replaced"
    store.close()


def test_update_transfer_saves_the_row_and_the_given_files_together(tmp_path: Path) -> None:
    store, rec = _store_with_transfer(tmp_path)
    rec.state, rec.result_code = "failed", 40
    rec.files[1].status = "failed"
    store.update_transfer(rec, files=[rec.files[1]])
    loaded = store.load_transfer(rec.transfer_id, rec.role)
    assert loaded is not None and (loaded.state, loaded.result_code) == ("failed", 40)
    assert [f.status for f in loaded.files] == ["ready", "failed", "ready"]
    # all or nothing: a file row that cannot be stored takes the transfer row's change back with it
    rec.state = "complete"
    rec.files[0].status, rec.files[0].offset = "done", object()  # type: ignore[assignment]
    with pytest.raises(Exception):
        store.update_transfer(rec, files=[rec.files[0]])
    loaded = store.load_transfer(rec.transfer_id, rec.role)
    assert loaded is not None and loaded.state == "failed"
    assert [f.status for f in loaded.files] == ["ready", "failed", "ready"]
    store.close()


def test_rows_without_files(tmp_path: Path) -> None:
    store, rec = _store_with_transfer(tmp_path, n=5)
    bare = store.load_transfer(rec.transfer_id, rec.role, files=False)
    assert bare is not None and bare.files == [] and bare.state == "in_progress" and bare.peer == "A1"
    [listed] = store.transfers(files=False)
    assert listed.transfer_id == rec.transfer_id and listed.files == []
    [full] = store.transfers()
    assert [f.index for f in full.files] == [0, 1, 2, 3, 4]
    store.close()


def test_file_totals_are_the_sums_of_the_file_rows(tmp_path: Path) -> None:
    store, rec = _store_with_transfer(tmp_path, n=6)
    # each of 10 bytes: ready part way, done (its offset may lag: its size counts), failed (its offset
    # counts), renaming, ready untouched, done
    for f, (status, offset) in zip(rec.files, [("ready", 4), ("done", 0), ("failed", 3), ("renaming", 5),
                                               ("ready", 0), ("done", 2)]):
        f.status, f.offset = status, offset
    store.save_files(rec.transfer_id, rec.role, rec.files)
    loaded = store.load_transfer(rec.transfer_id, rec.role)
    assert loaded is not None
    expected = (len(loaded.files), sum(1 for f in loaded.files if f.status != "ready"),
                sum(f.size for f in loaded.files),
                sum(f.size if f.status == "done" else f.offset for f in loaded.files))
    assert store.file_totals(rec.transfer_id, rec.role) == expected == (6, 4, 60, 4 + 10 + 3 + 5 + 0 + 10)
    assert store.file_totals(rec.transfer_id, "source") == (0, 0, 0, 0)  # no such transfer: zeros
    store.close()


def test_a_monitor_keeps_its_creator_also_in_an_older_store(tmp_path: Path) -> None:
    """A state store made before monitors kept their creator gains the column; old rows say None."""
    import sqlite3

    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE monitors (name TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL DEFAULT "
               "'started', memory TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL)")
    db.execute("INSERT INTO monitors VALUES ('old', '{}', 'started', '{}', 0)")
    db.commit()
    db.close()
    store = StateStore(path)
    assert store.monitor_requester("old") is None
    store.save_monitor("new", {"x": 1}, "started", "alice")
    assert store.monitor_requester("new") == "alice"
    store.save_monitor("new", {"x": 2}, "started", "bob")  # replaced (-f): the new creator
    assert store.monitor_requester("new") == "bob" and store.monitor_requester("none") is None
    assert [n for n, *_ in store.monitors()] == ["new", "old"]
    store.close()
