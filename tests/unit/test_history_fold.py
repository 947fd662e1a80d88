"""ops.history's pure parts: folding events into a transfer row, the canonical JSON, the chain hash."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from ops.history import canonical_json, chain_hash, event_id_of, fold_event, iso_utc
from tests.support import history_events as ev


def fold_all(*events: Any, verified: bool = True) -> dict[str, Any] | None:
    row = None
    for e in events:
        v = verified if not isinstance(e, tuple) else e[1]
        e = e if not isinstance(e, tuple) else e[0]
        row = fold_event(row, e, v) or row
    return row


# (events in arrival order, expected members of the row)
CASES = [
    ("started only", [ev.started()],
     {"state": "queued", "result_code": None, "started_at": "2025-03-14T09:26:53.589Z", "ended_at": None,
      "job_name": "nightly", "metadata": {"batch": "42"}, "originator": "alice", "last_event": "started",
      "source_agent": "A1", "destination_agent": "A2", "recoveries": 0, "verified": True}),
    ("complete life", [ev.started(), ev.progress(), ev.recovering(), ev.completed()],
     {"state": "complete", "result_code": 0, "ended_at": "2025-03-14T09:26:55.000Z", "recoveries": 1,
      "last_event": "completed", "updated_at": "2025-03-14T09:26:55.000Z"}),
    ("a late progress does not reopen an ended transfer", [ev.started(), ev.completed(), ev.progress()],
     {"state": "complete", "result_code": 0}),
    ("cleaned_up before completed: result from completed", [ev.started(), ev.cleaned_up(code=40),
                                                            ev.completed(state="failed", code=40)],
     {"state": "failed", "result_code": 40}),
    ("cleaned_up alone gives a result", [ev.started(), ev.cleaned_up(code=69, state="recovery_timed_out")],
     {"state": "recovery_timed_out", "result_code": 69}),
    ("started missed: first seen time", [ev.progress(time="2025-03-14T10:00:00.000Z")],
     {"started_at": "2025-03-14T10:00:00.000Z", "state": "in_progress"}),
    ("two recoveries", [ev.recovering(n=1), ev.recovering(n=2, time="2025-03-14T09:26:54.500Z")],
     {"recoveries": 2, "state": "recovering"}),
    ("a forged completed does not change a signed row", [ev.started(), (ev.completed(state="failed", code=40), False)],
     {"state": "queued", "result_code": None, "verified": True, "unverified_events": 1}),
    ("a transfer known only from unverified events", [(ev.started(), False)],
     {"state": "queued", "verified": False, "unverified_events": 1}),
    ("signed events after an unverified one keep the row unverified", [(ev.started(), False), ev.completed()],
     {"state": "complete", "verified": False}),
]


@pytest.mark.parametrize("events, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_fold(events: list[Any], expected: dict[str, Any]) -> None:
    row = fold_all(*events)
    assert row is not None
    for key, value in expected.items():
        assert row[key] == value, key


def test_files_carry_digests_and_results() -> None:
    row = fold_all(ev.started(), ev.progress(), ev.completed())
    assert row is not None
    assert row["files"] == [{"index": 0, "source": "/out/f0", "destination": "/in/f0", "size": 10,
                             "checksum_method": "sha256", "digest": "ab" * 32, "result": 0, "supplement": None}]


def test_a_text_file_keeps_its_written_digest() -> None:
    """-t text: `digest` is over what the source sent, `written_digest` over the converted file written."""
    text = ev.completed()
    text["files"][0]["written_digest"] = "cd" * 32
    row = fold_all(ev.started(), ev.progress(), text)
    assert row is not None
    assert row["files"][0]["digest"] == "ab" * 32 and row["files"][0]["written_digest"] == "cd" * 32
    later = fold_event(row, ev.progress(time="2025-03-14T09:26:56.000Z"), True)  # a late item without one
    assert later is not None and later["files"][0]["written_digest"] == "cd" * 32


def test_started_after_progress_does_not_erase_the_result() -> None:
    row = fold_all(ev.progress(), ev.started())
    assert row is not None and row["files"][0]["digest"] == "ab" * 32 and row["files"][0]["result"] == 0


@pytest.mark.parametrize("event", [ev.monitor_fired(), ev.refusal(), {"action": "started"}, {"no": "action"},
                                   {**ev.started(), "state": 3}])
def test_no_transfer_row(event: dict[str, Any]) -> None:
    assert fold_event(None, event, True) is None


def test_fold_is_pure() -> None:
    row = fold_all(ev.started())
    assert row is not None
    before = canonical_json(row)
    fold_event(row, ev.completed(), True)
    assert canonical_json(row) == before


def test_canonical_json_and_ids() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    e = ev.started()
    assert event_id_of(e) == e["event_id"]
    m = ev.monitor_fired()
    assert event_id_of(m) == event_id_of(dict(reversed(list(m.items()))))  # same content, same id
    assert len(event_id_of(m)) == 32
    assert chain_hash("0" * 64, "{}", True) != chain_hash("0" * 64, "{}", False)


def test_iso_utc() -> None:
    assert iso_utc(datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)) == "2025-03-14T09:26:53.589Z"
    assert iso_utc(datetime(2025, 3, 14, 9, 26, 53)) == "2025-03-14T09:26:53.000Z"


def test_a_fan_out_keeps_every_destination() -> None:
    row = fold_all(ev.fanout_started())
    assert row is not None and row["destination_agent"] == "A2"
    assert row["destinations"] == [{"agent": "A2"}, {"agent": "A3"}]
    row = fold_all(ev.fanout_started(), ev.fanout_completed())
    assert row is not None and row["result_code"] == 20
    assert [(d["agent"], d["result_code"]) for d in row["destinations"]] == [("A2", 0), ("A3", 40)]
    assert fold_all(ev.started(), ev.completed())["destinations"] is None  # type: ignore[index]  # an ordinary one
