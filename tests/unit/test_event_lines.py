"""The CLI reads log events as their models (agent.wire.events): the line a person sees for each kind, what it
does with a signed message that is no event, and how it tells a progress topic from a log topic."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.wire.events import Completed, TransferProgress, read_event
from agent.wire.protocol import Topics
from cli.render import format_event, is_progress_topic, read_message, read_progress

DOCS = Path(__file__).resolve().parents[2] / "docs"
TID = "414d5120514d312020202020202020206a1c4f6520000b07"


def _blocks() -> list[dict[str, Any]]:
    text = (DOCS / "log-events.md").read_text(encoding="utf-8")
    return [json.loads(m.group(1)) for m in re.finditer(r"^```json\n(.*?)^```", text, re.S | re.M)]


def _example(action: str, index: int = 0) -> dict[str, Any]:
    return [b for b in _blocks() if b.get("action") == action][index]


def test_a_model_and_its_json_object_make_the_same_line() -> None:
    for block in (b for b in _blocks() if "action" in b):
        assert format_event(read_event(block)) == format_event(block)


@pytest.mark.parametrize("event, line", [
    (_example("started"), f"2025-03-14T09:26:53.589Z A1 {TID[:12]} started    [job nightly] queued: transfer of 2 file(s), "
                          "300006 bytes, from A1 to A2"),
    (_example("progress"), f"2025-03-14T09:26:53.708Z A1 {TID[:12]} progress   [job nightly] /data/out/a.csv -> /data/in/a.csv "
                           "(300000 bytes, ok)"),
    (_example("completed"), f"2025-03-14T09:26:53.709Z A1 {TID[:12]} completed  [job nightly] partial (result 20): 1/2 file(s), "
                            '300000 bytes in 0.115 s - /data/out/b.csv: BFGIO0006E: File "/data/in/b.csv" already '
                            "exists."),
    (_example("not_authorized", 1), "2025-03-14T11:00:01.000Z A1 None not_authorized : command ping refused: "
                                    "requester 'mallory' is not trusted by this agent"),
    ({"monitor": "m1", "agent": "A1", "action": "created", "time": "2025-03-14T09:26:53.589Z", "message": "made"},
     "2025-03-14T09:26:53.589Z A1 monitor m1 created: made"),
    ({"schedule_id": "0123456789abcdef", "agent": "A1", "action": "expired", "time": "2025-03-14T09:26:53.589Z",
      "message": "no more"}, "2025-03-14T09:26:53.589Z A1 schedule 0123456789abcdef expired: no more"),
    # a newer agent's action: shown with what it has
    ({"action": "paused", "agent": "A1", "transfer_id": TID, "state": "in_progress", "message": "by request"},
     f" A1 {TID[:12]} paused     in_progress: by request"),
    ({"monitor": "m1", "agent": "A1", "action": "paused", "time": "T", "message": "by request"},
     "T A1 monitor m1 paused: by request"),
    # the outcome an agent reported to a query after an outage (no event: no id, no time, no seconds)
    ({"transfer_id": TID, "action": "completed", "state": "failed", "result_code": 40, "source_agent": "A1",
      "files": [], "statistics": {"files": 1, "bytes": 0, "files_succeeded": 0},
      "message": "transfer ended failed while the broker was unreachable (outcome from agent A1)"},
     f" A1 {TID[:12]} completed  failed (result 40): 0/1 file(s), 0 bytes in ? s - transfer ended failed while the "
     "broker was unreachable (outcome from agent A1)"),
])
def test_the_line_of_each_kind_of_event(event: dict[str, Any], line: str) -> None:
    assert format_event(event) == line


def test_a_progress_topic_is_told_by_the_topics_prefix() -> None:
    topics = Topics("ACME/FTE")
    assert is_progress_topic(topics, topics.progress("A1", TID))
    assert not is_progress_topic(topics, topics.log("A1", TID))
    assert not is_progress_topic(topics, f"SYSTEM.FTE/Transfers/A1/{TID}")  # another prefix: not ours
    assert not is_progress_topic(topics, "ACME/FTE/Log/A1/Transfers")  # "/Transfers" elsewhere in the topic


class _Client:
    """FteClient's part that read_message uses: event_of (None when unsigned) and ignored (the -v notes)."""

    def __init__(self, signed: bool) -> None:
        self.signed = signed
        self.notes: list[str] = []

    def event_of(self, message: Any) -> Any:
        return {} if self.signed else None

    def ignored(self, note: str) -> None:
        self.notes.append(note)


def _message(payload: bytes, topic: str = f"SYSTEM.FTE/Log/A1/{TID}") -> Any:
    return SimpleNamespace(topic=topic, payload=payload)


def test_read_message_gives_the_model_of_a_signed_event() -> None:
    c = _Client(signed=True)
    ev = read_message(c, _message(json.dumps(_example("completed")).encode()))  # type: ignore[arg-type]
    assert isinstance(ev, Completed) and ev.result_code == 20 and not c.notes


def test_read_message_drops_the_unsigned_and_notes_a_signed_message_that_is_no_event() -> None:
    unsigned = _Client(signed=False)
    assert read_message(unsigned, _message(json.dumps(_example("completed")).encode())) is None  # type: ignore[arg-type]
    assert unsigned.notes == []  # event_of has said why already
    signed = _Client(signed=True)
    broken = {**_example("completed"), "result_code": "0"}
    assert read_message(signed, _message(json.dumps(broken).encode())) is None  # type: ignore[arg-type]
    assert signed.notes == [f"ignored a message on SYSTEM.FTE/Log/A1/{TID}: invalid transfer event 'completed': "
                            "result_code: Input should be a valid integer"]


def test_read_progress_gives_the_snapshot() -> None:
    snapshot = next(b for b in _blocks() if "bytes_total" in b)
    c = _Client(signed=True)
    got = read_progress(c, _message(json.dumps(snapshot).encode(), f"SYSTEM.FTE/Transfers/A1/{TID}"))  # type: ignore[arg-type]
    assert isinstance(got, TransferProgress) and got.bytes_done == snapshot["bytes_done"]
    assert read_progress(c, _message(b"[]")) is None and "a progress message is a JSON object" in c.notes[0]  # type: ignore[arg-type]


LISTED = {"transfer_id": "ab" * 24, "role": "source", "state": "complete", "priority": 3, "source_agent": "A1",
          "destination_agent": "A2", "bytes_done": 2048, "bytes_total": 2048, "started_at": "2025-03-14T09:00:00.000Z",
          "ended_at": "2025-03-14T09:00:01.000Z", "verified": True}


@pytest.mark.parametrize("extra, suffix", [
    ({}, ""),
    ({"result_code": 0}, " result 0"),
    ({"job_name": "nightly"}, " job nightly"),
    ({"result_code": 40, "job_name": "nightly"}, " result 40 job nightly"),
])
def test_the_live_and_the_history_listing_end_with_the_same_result_and_job(extra: dict, suffix: str) -> None:
    # cli.main first: importing the command modules registers the commands, and in cli.main's order (commands.md)
    from cli.main import GROUPS
    assert GROUPS
    from cli.logger import history_line
    from cli.observe import transfer_line

    row = {**LISTED, **extra}
    assert transfer_line(row) == f"{'ab' * 24} source      complete           pr 3 A1->A2 2.0 kB/2.0 kB (100%){suffix}"
    assert history_line(row) == (f"{'ab' * 24} complete           A1->A2 started 2025-03-14T09:00:00.000Z "
                                 f"ended 2025-03-14T09:00:01.000Z{suffix}")
