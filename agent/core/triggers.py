"""Resource monitor rules, without IO: triggers, what a poll fires, and variable substitution.

A monitor polls a directory; each poll gives a snapshot {path: (size, mtime)}. `Trigger.evaluate`
decides which files fire, given the monitor's memory (what already fired, how long a size has been
stable), and returns the new memory, which the agent keeps in its state store, so that a file never
fires twice for the same version, also across agent restarts.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from .errors import FteError

Snapshot = dict[str, tuple[int, float]]

# Reference system's monitor result codes where the meaning matches.
MONITOR_SUBSTITUTION_INVALID = 100
MONITOR_RESOURCE_INCORRECT = 101
MONITOR_TRIGGER_INCORRECT = 102
MONITOR_TASK_INCORRECT = 103
MONITOR_MISSING = 104
MONITOR_ALREADY_PRESENT = 105
MONITOR_TASK_FAILED = 108
MONITOR_RESOURCE_FAILED = 109
MONITOR_VARIABLE_IN_NOMATCH = 110
MONITOR_TASK_SOURCE_AGENT_INVALID = 111
MONITOR_RESOURCE_DENIED = 114

# "K", "M", ... (no B) too: the parse regex below accepts them, and a missing key here made
# `fileSize>=1K,*` fail with a bare KeyError ('K') instead of meaning 1 KB.
_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4,
          "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_VAR = re.compile(r"\$\{([A-Za-z]+)\}")
VARIABLES = ("FilePath", "FileName", "FileNameWithoutExtension", "FileNameExtension", "FileSize",
             "LastModifiedTime", "LastModifiedDate", "LastModifiedTimeUTC", "LastModifiedDateUTC", "AgentName")


def size_bytes(text: str) -> int | None:
    """A trigger's SIZE in bytes: digits with an optional B, K/KB, M/MB, G/GB or T/TB (powers of 1024, any
    case), as the reference's fileSize triggers; None if it is no size. Also the transfer trigger's
    `filesize>=` (agent.core.transfer_trigger), so that 10MB means the same in both."""
    m = re.fullmatch(r"(\d+)\s*([KMGT]?B?)", text.strip(), flags=re.I)
    return int(m.group(1)) * _UNITS[m.group(2).upper()] if m else None


class TriggerError(FteError, ValueError):
    code = MONITOR_TRIGGER_INCORRECT


@dataclass(frozen=True)
class Trigger:
    kind: Literal["match", "noMatch", "noSizeChange", "fileSize"]
    pattern: str
    polls: int = 0  # noSizeChange: polls the size must stay unchanged
    size: int = 0  # fileSize: at least this many bytes

    @classmethod
    def parse(cls, text: str) -> "Trigger":
        """`match,PATTERN` | `noMatch,PATTERN` | `noSizeChange=N,PATTERN` | `fileSize>=SIZE[B|KB|MB|GB],PATTERN`."""
        head, sep, pattern = text.partition(",")
        if not sep or not pattern.strip():
            raise TriggerError(f"trigger {text!r} is not CONDITION,PATTERN (e.g. match,*.csv)")
        head, pattern = head.strip(), pattern.strip()
        if head == "match":
            return cls("match", pattern)
        if head == "noMatch":
            return cls("noMatch", pattern)
        m = re.fullmatch(r"noSizeChange=(\d+)", head)
        if m:
            if int(m.group(1)) < 1:
                raise TriggerError("noSizeChange needs at least 1 poll")
            return cls("noSizeChange", pattern, polls=int(m.group(1)))
        if head[:10].lower() == "filesize>=" and size_bytes(head[10:]) is not None:
            return cls("fileSize", pattern, size=size_bytes(head[10:]) or 0)
        raise TriggerError(f"unknown trigger condition {head!r}: use match, noMatch, noSizeChange=N or fileSize>=SIZE")

    def text(self) -> str:
        head = {"match": "match", "noMatch": "noMatch", "noSizeChange": f"noSizeChange={self.polls}",
                "fileSize": f"fileSize>={self.size}"}[self.kind]
        return f"{head},{self.pattern}"

    def matches(self, path: str, root: str) -> bool:
        name = posixpath.basename(path)
        rel = posixpath.relpath(path, root)
        return fnmatch.fnmatchcase(name, self.pattern) or fnmatch.fnmatchcase(rel, self.pattern)


@dataclass
class MonitorMemory:
    """What a monitor remembers between polls (serialised into the agent's state store)."""

    fired: dict[str, tuple[int, float]] = field(default_factory=dict)  # path -> version that fired
    stable: dict[str, tuple[int, float, int]] = field(default_factory=dict)  # path -> (size, mtime, polls seen)
    absent_fired: bool = False  # noMatch: fired for the current absence

    def to_json(self) -> dict[str, Any]:
        return {"fired": {k: list(v) for k, v in self.fired.items()},
                "stable": {k: list(v) for k, v in self.stable.items()}, "absent_fired": self.absent_fired}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "MonitorMemory":
        if not data:
            return cls()
        return cls({k: (int(v[0]), float(v[1])) for k, v in data.get("fired", {}).items()},
                   {k: (int(v[0]), float(v[1]), int(v[2])) for k, v in data.get("stable", {}).items()},
                   bool(data.get("absent_fired", False)))


def evaluate(trigger: Trigger, root: str, snapshot: Snapshot, memory: MonitorMemory,
             include: str | None = None, exclude: str | None = None) -> tuple[list[str], bool, MonitorMemory]:
    """One poll: (files that fire, whether a noMatch fires, new memory). Pure: same input, same output."""
    def wanted(path: str) -> bool:
        name = posixpath.basename(path)
        if include and not fnmatch.fnmatchcase(name, include):
            return False
        if exclude and fnmatch.fnmatchcase(name, exclude):
            return False
        return trigger.matches(path, root)

    present = {p: v for p, v in snapshot.items() if wanted(p)}
    # a file that disappeared may fire again when it comes back (deleted and re-created)
    fired = {p: v for p, v in memory.fired.items() if p in present}
    new = MonitorMemory(fired=fired, stable={}, absent_fired=memory.absent_fired)

    if trigger.kind == "noMatch":
        if present:
            new.absent_fired = False
            return [], False, new
        fire = not memory.absent_fired
        new.absent_fired = True
        return [], fire, new

    firing: list[str] = []
    for path in sorted(present):
        version = present[path]
        if fired.get(path) == version:
            continue  # this version already fired
        if trigger.kind == "fileSize" and version[0] < trigger.size:
            continue
        if trigger.kind == "noSizeChange":
            last = memory.stable.get(path)
            seen = last[2] + 1 if last and (last[0], last[1]) == version else 0
            new.stable[path] = (version[0], version[1], seen)
            if seen < trigger.polls:
                continue
        firing.append(path)
        new.fired[path] = version
        new.stable.pop(path, None)
    return firing, False, new


def variables(path: str, size: int, mtime: float, agent: str) -> dict[str, str]:
    name = posixpath.basename(path)
    stem, ext = posixpath.splitext(name)
    local = datetime.fromtimestamp(mtime).astimezone()
    utc = datetime.fromtimestamp(mtime, timezone.utc)
    return {
        "FilePath": path, "FileName": name, "FileNameWithoutExtension": stem,
        "FileNameExtension": ext[1:] if ext else "", "FileSize": str(size),
        "LastModifiedTime": local.strftime("%H-%M-%S"), "LastModifiedDate": local.strftime("%Y-%m-%d"),
        "LastModifiedTimeUTC": utc.strftime("%H-%M-%SZ"), "LastModifiedDateUTC": utc.strftime("%Y-%m-%d"),
        "AgentName": agent,
    }


def uses_file_variables(text: str) -> bool:
    return any(v.lower() != "agentname" for v in _VAR.findall(text))


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace ${Name} (case-insensitive names); an unknown variable is an error (code 100)."""
    lower = {k.lower(): v for k, v in values.items()}

    def one(m: re.Match[str]) -> str:
        key = m.group(1).lower()
        if key == "filesize":  # the reference spells it both ways
            key = "filesize"
        if key not in lower:
            raise TriggerError(f"unknown variable ${{{m.group(1)}}} (known: {', '.join(VARIABLES)})",
                               MONITOR_SUBSTITUTION_INVALID)
        return lower[key]

    return _VAR.sub(one, text)


def substitute_all(obj: Any, values: dict[str, str]) -> Any:
    """Substitute in every string of a JSON-like task."""
    if isinstance(obj, str):
        return substitute(obj, values)
    if isinstance(obj, list):
        return [substitute_all(v, values) for v in obj]
    if isinstance(obj, dict):
        return {k: substitute_all(v, values) for k, v in obj.items()}
    return obj


def poll_seconds(interval: int, unit: str) -> int:
    units = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
    if unit not in units:
        raise TriggerError(f"-pu {unit!r} is not one of {', '.join(units)}")
    if interval < 1:
        raise TriggerError("-pi must be at least 1")
    return interval * units[unit]
