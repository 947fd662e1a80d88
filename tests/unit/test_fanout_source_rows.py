"""A fan-out transfer's rows at its source (agent/fanout.py) on a real state store: the parent and one row per
leg, shown as one transfer (its destinations aggregated by agent.core.fanout_outcome)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent.fanout import is_fanout, is_leg_row, leg_id, live_files, make_legs, stored_legs, stored_view
from agent.store import FileRecord, StateStore, TransferRecord

TID = "ab" * 24


def _parent() -> TransferRecord:
    header = {"source_agent": "A1", "destination_agent": "A2", "destination_agents": ["A2", "A3"],
              "disposition": "delete", "kx_private": "x", "kx_public": "y", "priority": 0}
    return TransferRecord(TID, "source", "queued", "A2", header, files=[FileRecord(0, "/s/a", "/d/a", 100)])


@pytest.mark.parametrize("states, codes, state, code", [
    (("complete", "complete"), (0, 0), "complete", 0),
    (("complete", "recovery_timed_out"), (0, 69), "partial", 20),
    (("failed", "recovery_timed_out"), (40, 69), "failed", 40),
])
def test_the_stored_transfer_is_shown_once_with_each_destination(tmp_path: Path, states: tuple[str, str],
                                                                 codes: tuple[int, int], state: str, code: int) -> None:
    store = StateStore(tmp_path / "state.db")
    parent = _parent()
    legs = make_legs(parent, lambda agent: "unused")
    store.save_transfer(parent)
    for leg, st, rc in zip(legs, states, codes):
        leg.state, leg.result_code = st, rc
        leg.files[0].status = "done" if rc == 0 else "failed"
        leg.files[0].supplement = None if rc == 0 else "gone"
        store.save_transfer(leg)
    assert is_fanout(parent) and not any(is_fanout(leg) for leg in legs)
    assert [is_leg_row(r.transfer_id) for r in store.transfers()] == [False, True, True]
    assert [leg.transfer_id for leg in stored_legs(store, TID)] == [leg_id(TID, "A2"), leg_id(TID, "A3")]
    view = stored_view(store, store.load_transfer(TID, "source"), False, lambda f: {})
    assert (view["state"], view["result_code"]) == (state, code)
    assert [d["agent"] for d in view["destinations"]] == ["A2", "A3"]
    assert [d["result_code"] for d in view["destinations"]] == list(codes)
    assert view["files_total"] == 2 and view["bytes_total"] == 200  # summed over the legs
    assert all(leg.header["disposition"] == "leave" for leg in legs)  # -dd: the fan-out deletes, once, at the end
    store.close()



def test_a_finished_leg_is_not_forgotten_while_its_fanout_transfer_runs(tmp_path: Path) -> None:
    """A leg that ended long ago (its destination confirmed it) stays while another leg still recovers: the
    agent rebuilds the running fan-out from every leg row when it restarts (agent.transfers.load)."""
    from agent.core.lifecycle import TERMINAL_STATES

    terminal = {s.value for s in TERMINAL_STATES}
    store = StateStore(tmp_path / "state.db")
    parent = _parent()
    legs = make_legs(parent, lambda agent: "unused")
    parent.state = "in_progress"
    store.save_transfer(parent)
    (done, recovering) = legs
    done.state, done.result_code, done.peer_confirmed = "complete", 0, True
    recovering.state = "recovering"
    for leg in legs:
        store.save_transfer(leg)
    assert store.prune(time.time() + 60, terminal) == 0  # "long ago": everything finished is old enough
    assert [leg.transfer_id for leg in stored_legs(store, TID)] == [leg_id(TID, "A2"), leg_id(TID, "A3")]

    recovering.state, recovering.result_code, recovering.peer_confirmed = "recovery_timed_out", 69, True
    store.save_transfer(recovering)
    parent.state, parent.result_code = "partial", 20
    store.save_transfer(parent)
    assert store.prune(time.time() + 60, terminal) == 3  # the transfer ended: its rows go together
    assert list(store.transfers()) == []


@pytest.mark.parametrize("spoil", ["duplicate file row", "a value that cannot be stored"])
def test_a_fanout_parent_and_its_legs_are_saved_all_or_nothing(tmp_path: Path, spoil: str) -> None:
    # agent.transfers.start saves them with one save_transfer: a write of the second leg that fails (as a crash
    # would cut it) leaves neither the parent nor the first leg written
    store = StateStore(tmp_path / "state.db")
    parent = _parent()
    legs = make_legs(parent, lambda agent: "unused")
    if spoil == "duplicate file row":
        legs[1].files.append(FileRecord(0, "/s/a", "/d/a", 100))  # (transfer_id, role, idx) twice: refused
    else:
        legs[1].files[0].offset = object()  # type: ignore[assignment]
    with pytest.raises(sqlite3.Error):
        store.save_transfer(parent, *legs)
    assert list(store.transfers()) == [], "part of the fan-out was written"
    legs[1].files[1:] = []
    legs[1].files[0].offset = 0
    store.save_transfer(parent, *legs)
    assert [r.transfer_id for r in store.transfers()] == [TID, leg_id(TID, "A2"), leg_id(TID, "A3")]
    assert [len(r.files) for r in store.transfers()] == [1, 1, 1]
    store.close()


def _view(f: FileRecord) -> dict:  # as agent.transfers._file_view
    return {"index": f.index, "status": f.status, "bytes_done": f.size if f.status == "done" else f.offset,
            "supplement": f.supplement}


@pytest.mark.parametrize("second, status, done, supplement", [
    (("ready", 40, None), "ready", 40, None),  # the second destination behind: what both have
    (("failed", 0, "gone"), "done", 0, "A3: gone"),  # arrived at the first, not the second (its reason)
    (("done", 100, None), "done", 100, None),
])
def test_a_running_fanouts_files_are_as_its_destinations_have_them(tmp_path: Path, second: tuple, status: str,
                                                                  done: int, supplement: str | None) -> None:
    # fte-show-transfer of a running fan-out: its files from its legs' rows, not the parent's (never updated
    # while it runs: every file showed "ready 0")
    store = StateStore(tmp_path / "state.db")
    parent = _parent()
    legs = make_legs(parent, lambda agent: "unused")
    legs[0].files[0].status = "done"
    legs[1].files[0].status, legs[1].files[0].offset, legs[1].files[0].supplement = second
    store.save_transfer(parent, *legs)
    [f] = live_files(store, store.load_transfer(TID, "source"), _view)
    assert (f["status"], f["bytes_done"], f["supplement"]) == (status, done, supplement)
    store.close()
