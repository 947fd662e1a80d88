"""Resource monitor rules: trigger parsing, what a poll fires, memory across polls, substitution."""

from __future__ import annotations

import pytest

from agent.core.triggers import (MONITOR_SUBSTITUTION_INVALID, MonitorMemory, Trigger, TriggerError, evaluate,
                                 poll_seconds, substitute, substitute_all, uses_file_variables, variables)

ROOT = "/w"


@pytest.mark.parametrize("text, kind, pattern, polls, size", [
    ("match,*.csv", "match", "*.csv", 0, 0),
    ("noMatch,*.zip", "noMatch", "*.zip", 0, 0),
    ("noSizeChange=3,*", "noSizeChange", "*", 3, 0),
    ("fileSize>=10MB,*.bin", "fileSize", "*.bin", 0, 10 * 1024**2),
    ("fileSize>=512,x", "fileSize", "x", 0, 512),
])
def test_parse(text: str, kind: str, pattern: str, polls: int, size: int) -> None:
    t = Trigger.parse(text)
    assert (t.kind, t.pattern, t.polls, t.size) == (kind, pattern, polls, size)
    assert Trigger.parse(t.text()) == t


@pytest.mark.parametrize("text", ["match", "match,", "exists,*", "noSizeChange=0,*", "fileSize>=lots,*"])
def test_parse_errors(text: str) -> None:
    with pytest.raises(TriggerError):
        Trigger.parse(text)


def run(trigger: str, polls: list[dict[str, tuple[int, float]]], **kw: str) -> list[list[str]]:
    t, mem, out = Trigger.parse(trigger), MonitorMemory(), []
    for snap in polls:
        fired, absent, mem = evaluate(t, ROOT, snap, mem, kw.get("include"), kw.get("exclude"))
        out.append(fired + (["<absent>"] if absent else []))
        mem = MonitorMemory.from_json(mem.to_json())  # what survives a restart is enough
    return out


A = "/w/a.csv"
B = "/w/b.txt"


@pytest.mark.parametrize("trigger, polls, expected", [
    # a file fires once per version
    ("match,*.csv", [{A: (1, 1.0)}, {A: (1, 1.0)}, {A: (2, 2.0)}, {A: (2, 2.0)}], [[A], [], [A], []]),
    # deleted and re-created fires again, even with the same size and time
    ("match,*.csv", [{A: (1, 1.0)}, {}, {A: (1, 1.0)}], [[A], [], [A]]),
    ("match,*.csv", [{A: (1, 1.0), B: (1, 1.0)}], [[A]]),
    # half-written: fires only after N unchanged polls
    ("noSizeChange=2,*.csv", [{A: (1, 1.0)}, {A: (5, 2.0)}, {A: (5, 2.0)}, {A: (5, 2.0)}, {A: (5, 2.0)}],
     [[], [], [], [A], []]),
    ("fileSize>=10,*", [{A: (5, 1.0)}, {A: (10, 2.0)}, {A: (10, 2.0)}], [[], [A], []]),
    # noMatch fires once per absence
    ("noMatch,*.csv", [{}, {}, {A: (1, 1.0)}, {}, {B: (1, 1.0)}], [["<absent>"], [], [], ["<absent>"], []]),
])
def test_evaluate(trigger: str, polls: list, expected: list) -> None:
    assert run(trigger, polls) == expected


def test_include_and_exclude() -> None:
    snap = {"/w/a.csv": (1, 1.0), "/w/tmp-a.csv": (1, 1.0)}
    assert run("match,*.csv", [snap], exclude="tmp-*") == [["/w/a.csv"]]
    assert run("match,*.csv", [snap], include="tmp-*") == [["/w/tmp-a.csv"]]


def test_variables_and_substitution() -> None:
    v = variables("/w/sub/report.2026.csv", 42, 0.0, "A1")
    assert v["FileName"] == "report.2026.csv"
    assert v["FileNameWithoutExtension"] == "report.2026"
    assert v["FileNameExtension"] == "csv"
    assert v["FileSize"] == "42"
    assert v["LastModifiedDateUTC"] == "1970-01-01"
    assert substitute("/in/${filename}-${AgentName}", v) == "/in/report.2026.csv-A1"  # names are case-insensitive
    assert substitute_all({"items": [{"source": "${FilePath}"}], "n": 1}, v) == {
        "items": [{"source": "/w/sub/report.2026.csv"}], "n": 1}
    with pytest.raises(TriggerError) as exc:
        substitute("${Nope}", v)
    assert exc.value.code == MONITOR_SUBSTITUTION_INVALID


def test_file_variables_are_detected() -> None:
    assert uses_file_variables("/x/${FileName}")
    assert not uses_file_variables("/x/${AgentName}/y")


@pytest.mark.parametrize("n, unit, seconds", [(1, "seconds", 1), (2, "minutes", 120), (1, "days", 86400)])
def test_poll_seconds(n: int, unit: str, seconds: int) -> None:
    assert poll_seconds(n, unit) == seconds
