"""Scheduled transfers: occurrences, end conditions and missed runs, with an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent.core.schedule import Recurrence, ScheduleError, add, due

UTC = timezone.utc
T0 = datetime(2026, 1, 31, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("unit, n, expected", [
    ("minutes", 90, datetime(2026, 1, 31, 11, 30, tzinfo=UTC)),
    ("hours", 24, datetime(2026, 2, 1, 10, 0, tzinfo=UTC)),
    ("days", 1, datetime(2026, 2, 1, 10, 0, tzinfo=UTC)),
    ("weeks", 2, datetime(2026, 2, 14, 10, 0, tzinfo=UTC)),
    ("months", 1, datetime(2026, 2, 28, 10, 0, tzinfo=UTC)),  # no Feb 31: the last day
    ("months", 13, datetime(2027, 2, 28, 10, 0, tzinfo=UTC)),
    ("years", 2, datetime(2028, 1, 31, 10, 0, tzinfo=UTC)),
])
def test_add(unit: str, n: int, expected: datetime) -> None:
    assert add(T0, unit, n) == expected


def test_months_do_not_drift() -> None:
    r = Recurrence(T0, "months", 1)
    assert [r.occurrence(k).day for k in range(4)] == [31, 28, 31, 30]


@pytest.mark.parametrize("now_offset, next_index, run, missed, nxt", [
    (timedelta(minutes=-1), 0, None, 0, 0),   # not yet
    (timedelta(0), 0, 0, 0, 1),                # exactly on time
    (timedelta(hours=1, minutes=5), 1, 1, 0, 2),
    (timedelta(hours=5, minutes=30), 1, 5, 4, 6),  # agent down: runs once, four missed
])
def test_due_hourly(now_offset: timedelta, next_index: int, run: int | None, missed: int, nxt: int) -> None:
    d = due(Recurrence(T0, "hours", 1), next_index, T0 + now_offset)
    assert (d.run, d.missed, d.next_index) == (run, missed, nxt)


def test_count_ends_the_schedule() -> None:
    r = Recurrence(T0, "days", 1, count=3)
    assert due(r, 2, T0 + timedelta(days=2)).next_index is None
    assert due(r, 3, T0 + timedelta(days=10)).run is None


def test_end_time_ends_the_schedule() -> None:
    r = Recurrence(T0, "days", 2, end=T0 + timedelta(days=5))
    d = due(r, 0, T0 + timedelta(days=30))
    assert (d.run, d.missed, d.next_index) == (2, 2, None)  # days 0, 2, 4; day 6 is after the end


def test_once() -> None:
    r = Recurrence(T0)
    assert due(r, 0, T0).run == 0 and due(r, 0, T0).next_index is None


@pytest.mark.parametrize("kwargs, fragment", [
    ({"start": datetime(2026, 1, 1)}, "time zone"),
    ({"start": T0, "unit": "fortnights"}, "not one of"),
    ({"start": T0, "unit": "days", "every": 0}, "-of"),
    ({"start": T0, "unit": "days", "count": 2, "end": T0}, "not both"),
    ({"start": T0, "count": 3}, "repeating"),
])
def test_invalid(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        Recurrence(**kwargs)
