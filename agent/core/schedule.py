"""Scheduled transfers, without IO: when the next occurrence is, and what to do about missed ones.

Times are timezone-aware datetimes; the agent feeds `now` in (an injected clock), so every rule here
is tested without waiting.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .errors import FteError

Unit = Literal["minutes", "hours", "days", "weeks", "months", "years"]
UNITS: tuple[str, ...] = ("minutes", "hours", "days", "weeks", "months", "years")


class ScheduleError(FteError, ValueError):
    pass


def add(t: datetime, unit: str, n: int) -> datetime:
    """t plus n units; months and years keep the day of month where it exists (Jan 31 + 1 month = Feb 28/29)."""
    if unit in ("minutes", "hours", "days", "weeks"):
        return t + timedelta(**{unit: n})
    months = n * (12 if unit == "years" else 1) if unit in ("months", "years") else None
    if months is None:
        raise ScheduleError(f"unknown interval unit {unit!r}: use {', '.join(UNITS)}")
    y, m = divmod(t.month - 1 + months, 12)
    year, month = t.year + y, m + 1
    day = min(t.day, calendar.monthrange(year, month)[1])
    return t.replace(year=year, month=month, day=day)


@dataclass(frozen=True)
class Recurrence:
    start: datetime
    unit: str | None = None  # None: runs once
    every: int = 1
    count: int | None = None  # total occurrences (-oc)
    end: datetime | None = None  # no occurrence after this (-es)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ScheduleError("the start time must have a time zone")
        if self.unit is not None and self.unit not in UNITS:
            raise ScheduleError(f"-oi {self.unit!r} is not one of {', '.join(UNITS)}")
        if self.every < 1:
            raise ScheduleError("-of must be 1 or more")
        if self.count is not None and self.end is not None:
            raise ScheduleError("give -oc (a number of occurrences) or -es (an end time), not both")
        if self.count is not None and self.count < 1:
            raise ScheduleError("-oc must be 1 or more")
        if self.unit is None and (self.count not in (None, 1) or self.end is not None):
            raise ScheduleError("-oc and -es need a repeating schedule (-oi)")
        if self.end is not None and self.end < self.start:
            # such a schedule has no occurrence at all: it was accepted ("first run at <start>") and then
            # silently dropped as expired at the agent's next tick
            raise ScheduleError(f"-es {self.end.isoformat()} is before -ss {self.start.isoformat()}: "
                                f"the schedule would never run")

    def occurrence(self, k: int) -> datetime:
        """The k-th occurrence (0-based); always computed from the start so that months do not drift."""
        return self.start if k == 0 or self.unit is None else add(self.start, self.unit, self.every * k)

    def exists(self, k: int) -> bool:
        if k < 0:
            return False
        if self.unit is None:
            return k == 0
        if self.count is not None and k >= self.count:
            return False
        return self.end is None or self.occurrence(k) <= self.end


@dataclass(frozen=True)
class Due:
    """What to do at `now`: run occurrence `run` (or nothing), how many were missed, and what comes next."""

    run: int | None
    missed: int
    next_index: int | None


def due(rec: Recurrence, next_index: int, now: datetime) -> Due:
    """Given the next occurrence not yet run, decide at `now`.

    Occurrences whose time has passed run once, however many there were (an agent that was down for a
    day runs a missed hourly transfer once at start, not 24 times), and the log says how many were missed.
    """
    if not rec.exists(next_index) or rec.occurrence(next_index) > now:
        return Due(None, 0, next_index if rec.exists(next_index) else None)
    k = next_index
    while rec.exists(k + 1) and rec.occurrence(k + 1) <= now:
        k += 1
    return Due(k, k - next_index, k + 1 if rec.exists(k + 1) else None)
