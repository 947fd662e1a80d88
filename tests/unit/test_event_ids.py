"""Log events carry an `event_id`, kept in the outbox with the event, so that a reader can show each event
once although an agent may publish it twice (killed between publishing it and noting it as published)."""

from __future__ import annotations

import json
from pathlib import Path

from agent.wire.protocol import Topics
from agent.store import StateStore, TransferRecord
from agent.transferlog import TransferLog
from cli.client import RecentEvents


def test_the_outbox_keeps_each_event_with_its_own_id(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    log = TransferLog("A1", Topics(), store, lambda: None)
    rec = TransferRecord("a" * 48, "source", "in_progress", "A2", {"source_agent": "A1", "destination_agent": "A2"})
    made = [log.emit(rec, "progress", files=[]), log.emit(rec, "progress", files=[])]
    stored = [json.loads(payload) for _, _, payload, _ in store.outbox_peek()]
    assert [e["event_id"] for e in stored] == [e["event_id"] for e in made]  # what is republished is what was made
    assert made[0]["event_id"] != made[1]["event_id"]
    assert all(len(e["event_id"]) == 32 and int(e["event_id"], 16) >= 0 for e in made)
    store.close()


def test_recent_events_lets_each_id_through_once_and_stays_bounded() -> None:
    recent = RecentEvents(size=3)
    assert recent.first_time({"event_id": "a"})
    assert not recent.first_time({"event_id": "a"})
    assert recent.first_time({"action": "probe"}) and recent.first_time({"action": "probe"})  # no id: shown
    for eid in "bcd":
        assert recent.first_time({"event_id": eid})
    assert recent.first_time({"event_id": "a"}), "the oldest id is forgotten beyond `size`"
    assert not recent.first_time({"event_id": "d"})
