"""Topic names: the wire contract of agent.wire.protocol.Topics, and that agent/ and cli/ build none by hand.

The topics are literal here on purpose: they are what other agents, commands and loggers subscribe to.
"""

from __future__ import annotations

import ast
from pathlib import Path

from agent.wire.protocol import Topics

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ("Agents", "Commands", "Replies", "Data", "Control", "Transfers", "Log", "Templates", "Monitors",
          "Scheduler")


def test_every_topic_on_the_wire() -> None:
    t = Topics("SYSTEM.FTE")
    tid = "ab" * 24
    assert t.agent_status("A1") == "SYSTEM.FTE/Agents/A1"
    assert t.all_agent_status() == "SYSTEM.FTE/Agents/+"
    assert t.probe("A1", "x") == "SYSTEM.FTE/Agents/A1/probe/x"
    assert t.commands("A1") == "SYSTEM.FTE/Commands/A1"
    assert t.replies("c1") == "SYSTEM.FTE/Replies/c1"
    assert t.data("A1", tid) == f"SYSTEM.FTE/Data/A1/{tid}"
    assert t.data_filter("A1") == "SYSTEM.FTE/Data/A1/+"
    assert t.control("A1", tid) == f"SYSTEM.FTE/Control/A1/{tid}"
    assert t.control_filter("A1") == "SYSTEM.FTE/Control/A1/+"
    assert t.progress("A1", tid) == f"SYSTEM.FTE/Transfers/A1/{tid}"
    assert t.progress_filter() == "SYSTEM.FTE/Transfers/+/+"
    assert t.log("A1", tid) == f"SYSTEM.FTE/Log/A1/{tid}"
    assert t.log_filter() == "SYSTEM.FTE/Log/+/+"
    assert t.log_filter("A1", tid) == f"SYSTEM.FTE/Log/A1/{tid}"
    assert t.monitor_log("A1", "M1") == "SYSTEM.FTE/Log/A1/Monitors/M1"
    assert t.every_event("A1") == "SYSTEM.FTE/Log/A1/#"
    assert t.every_event() == "SYSTEM.FTE/Log/+/#"
    assert t.templates("T1") == "SYSTEM.FTE/Templates/T1"
    assert t.templates() == "SYSTEM.FTE/Templates/+"
    assert t.monitors("A1", "M1") == "SYSTEM.FTE/Monitors/A1/M1"
    assert t.monitors() == "SYSTEM.FTE/Monitors/+/+"
    assert t.monitors("A1") == "SYSTEM.FTE/Monitors/A1/+"
    assert t.schedules("A1") == "SYSTEM.FTE/Scheduler/A1"
    assert t.schedules() == "SYSTEM.FTE/Scheduler/+"
    assert Topics("site1/fte").schedules("A1") == "site1/fte/Scheduler/A1"


def _hand_built(path: Path) -> list[str]:
    """The topics in `path` built without Topics: a use of `<topics>.prefix`, or an f-string with a level."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "prefix" and "topics" in ast.unparse(node.value):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.JoinedStr):
            # a piece that opens with a level follows a value (the prefix) or is joined to one; a level inside
            # a sentence ("grant read on <topicPrefix>/Agents/...") is a message, not a topic
            pieces = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            if any(piece.startswith(f"/{level}/") for piece in pieces for level in LEVELS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_topic_is_built_outside_topics() -> None:
    # One place for the topic names: a level renamed or a prefix rule changed there reaches every publisher
    # and subscriber, where a copy built by hand would keep the old name and silently stop matching.
    sources = [p for d in ("agent", "cli") for p in sorted((ROOT / d).rglob("*.py")) if p.name != "protocol.py"]
    assert sources
    found = [hit for p in sources for hit in _hand_built(p)]
    assert found == []
