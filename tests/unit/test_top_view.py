"""What a person reads (issue 15's smaller things): fte top's order and columns, the time of an UNREACHABLE
agent's status, and the one convention for sizes and rates (decimal units, powers of 1000)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agent.core.units import duration_text, rate_text, size_text
from cli.observe import eta_text, file_text, top_order, top_row
from cli.render import format_event
from cli.safe_text import status_when


def _t(i: int, state: str = "complete", **kw: object) -> dict[str, object]:
    return {"transfer_id": f"{i:032x}", "state": state, "at": f"2026-12-02T10:{i // 60:02d}:{i % 60:02d}.000Z", **kw}


def test_top_shows_the_newest_finished_first_however_many() -> None:
    # 60 finished transfers whose ids sort the other way round from their times: the newest must be shown
    finished = [dict(_t(i), transfer_id=f"{999 - i:032x}") for i in range(60)]
    live = [_t(5, "in_progress"), _t(7, "recovering")]
    shown = top_order(finished + live, limit=40)
    assert len(shown) == 40
    assert [t["state"] for t in shown[:2]] == ["recovering", "in_progress"]  # unfinished first, newest first
    assert shown[2]["at"] == finished[59]["at"] and shown[-1]["at"] == finished[22]["at"]


def test_top_orders_by_updated_or_created_without_news() -> None:
    a = {"transfer_id": "a", "state": "failed", "updated": "2026-12-02T10:00:05Z"}
    b = {"transfer_id": "b", "state": "complete", "created": "2026-12-02T10:00:09Z"}
    assert [t["transfer_id"] for t in top_order([a, b])] == ["b", "a"]


@pytest.mark.parametrize("t,eta", [
    ({"state": "in_progress", "bytes_total": 10_000_000, "bytes_done": 4_000_000, "rate_bytes_per_second": 1_000_000},
     "6s"),
    ({"state": "in_progress", "bytes_total": 10**10, "bytes_done": 0, "rate_bytes_per_second": 1_000_000}, "2h46m"),
    ({"state": "in_progress", "bytes_total": 10, "bytes_done": 0, "rate_bytes_per_second": 0}, ""),  # no rate yet
    ({"state": "complete", "bytes_total": 10, "bytes_done": 5, "rate_bytes_per_second": 5}, ""),
])
def test_eta(t: dict[str, object], eta: str) -> None:
    assert eta_text(t) == eta


def test_file_and_job_columns() -> None:
    assert file_text({"current_file": "/data/out/report.csv", "files_total": 3}) == "report.csv +2"
    assert file_text({"first_file": "/data/a.bin", "files_total": 1}) == "a.bin"
    assert file_text({}) == ""
    row = top_row(_t(1, "in_progress", job_name="nightly", current_file="/x/y.bin", files_total=1,
                     bytes_total=2_000_000, bytes_done=1_000_000, rate_bytes_per_second=500_000))
    cells = [str(c) for c in row]
    assert cells[1] == "nightly" and cells[3] == "y.bin" and cells[6] == "500.0 kB/s" and cells[7] == "2s", cells


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_500_000, "1.5 MB"), (262_144, "262.1 kB"),
    (999_999, "1.0 MB"), (3 * 10**12, "3.0 TB"), (None, "?"), ("x", "?"), (-1, "?"),
])
def test_sizes_are_decimal(n: object, text: str) -> None:
    assert size_text(n) == text


def test_rates_and_durations() -> None:
    assert rate_text(125_000_000) == "125.0 MB/s"
    assert duration_text(59.4) == "59s" and duration_text(61) == "1m01s" and duration_text(None) == ""


def _status(word: str, time: str = "2026-12-02T09:00:00.000Z") -> SimpleNamespace:
    return SimpleNamespace(status=word, time=time)


def test_status_time_of_a_running_agent_is_when_it_was_published() -> None:
    assert status_when(_status("READY")) == "published 2026-12-02T09:00:00.000Z"


def test_an_unreachable_agent_shows_when_it_was_last_heard_not_its_start() -> None:
    will = _status("UNREACHABLE", "2026-12-02T09:00:00.000Z")  # the will's time: when it was registered
    heard = {"agent": "A1", "time": "2026-12-02T10:30:00.000Z", "interval": 30.0, "keepalive": 10}
    text = status_when(will, heard)
    assert "09:00:00" not in text
    assert text == "last heard 2026-12-02T10:30:00.000Z; unreachable since then (by 2026-12-02T10:30:45Z at the latest)"
    assert status_when(will, heard, live_since="2026-12-02T10:30:20.000Z").endswith(
        "unreachable since 2026-12-02T10:30:20.000Z")
    assert status_when(will) == "last heard: unknown (no heartbeat retained); unreachable (its last will)"


def test_the_text_log_names_the_job() -> None:
    outcome = {"transfer_id": "ab" * 16, "action": "completed", "state": "complete", "result_code": 0,
               "source_agent": "A1", "job_name": "payroll", "files": [],
               "statistics": {"files": 1, "bytes": 5, "files_succeeded": 1}}
    assert "[job payroll] complete" in format_event(outcome)
    outcome.pop("job_name")
    assert "[job" not in format_event(outcome)
