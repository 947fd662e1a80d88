"""What the commands print of a broker's text, made safe for a terminal (`safe` and its kin), and an agent's
status as shown: apart from cli/render.py, which re-exports them, so that a command that prints no transfer
event (fte-list-agents, fte-ping-agent, the agent's log) does not import the event models (docs/development.md,
"Start-up cost")."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from typing import Any

from rich.markup import escape as escape_markup
from rich.text import Text

from agent.core.statuses import AgentState

# Characters a terminal acts on instead of showing, beyond the Unicode categories below: the bidi controls
# (U+061C, U+200E/F, U+202A-E, U+2066-9) are format characters (Cf) too, listed for the reader.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
_escapes: dict[str, str] = {}


def _escape_char(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def safe(value: Any) -> str:
    """`value` as text a terminal shows and never obeys: every control character (C0, DEL, C1), bidi
    override, invisible format character, line separator and lone surrogate becomes a visible escape
    (ESC -> \\x1b, U+202E -> \\u202e); the newline too, so that one field cannot forge a line.

    Everything that came from the broker (file names, job names, messages, status fields) goes through this
    before it is printed; it escapes no rich markup: print the result with markup=False, or use `safe_text`
    / `safe_markup` where markup is on."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to do (isprintable() is False for every unsafe class)
        return text
    out = []
    for ch in text:
        if ch == " ":
            out.append(ch)
            continue
        esc = _escapes.get(ch)
        if esc is None:
            unsafe = ch in _BIDI or unicodedata.category(ch) in _UNSAFE_CATEGORIES
            esc = _escape_char(ch) if unsafe else ch
            if len(_escapes) < 4096:
                _escapes[ch] = esc
        out.append(esc)
    return "".join(out)


class SafeLogFormatter(logging.Formatter):
    """The agent's log lines (its stderr, logs/output0.log, read with tail -f on a terminal) with every message
    escaped as `safe` does: a file name or a peer's text in a message can neither drive the terminal nor forge
    a line of the log. A traceback stays as it is (lines of the agent's own code)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe(record.message)
        return super().formatMessage(record)


def safe_text(value: Any) -> Text:
    """`safe(value)` as a rich Text: a table cell or a Live view that never reads it as markup."""
    return Text(safe(value))


def safe_markup(value: Any) -> str:
    """`safe(value)` with its rich markup escaped, to embed in a string printed with markup on."""
    return escape_markup(safe(value))


def status_text(st: Any) -> str:
    """An agent's status as shown: what it says, and whether it is believed (agent.wire.provenance)."""
    return st.status if st.verified else f"{st.status} (unverified)"


def status_when(st: Any, heard: Mapping[str, Any] | None = None, live_since: str | None = None) -> str:
    """When an agent's status holds: `published TIME` for a status the agent published; for UNREACHABLE (its
    last will, which the broker publishes when the connection is lost and which carries the time the agent
    registered it, not when it fired) when the agent was last heard from (`heard`: its retained heartbeat,
    <prefix>/Agents/<agent>/heard) and since when it is unreachable: `live_since` when this client saw the will
    arrive, else at the latest one heartbeat interval plus 1.5 x keepalive after it was last heard."""
    if st.status != AgentState.UNREACHABLE:
        return f"published {st.time}"
    if heard is None:
        last = "last heard: unknown (no heartbeat retained)"
        latest = None
    else:
        last = f"last heard {heard.get('time')}"
        latest = _plus(heard.get("time"), _num(heard.get("interval")) + 1.5 * _num(heard.get("keepalive")))
    if live_since is not None:
        return f"{last}; unreachable since {live_since}"
    if latest is not None:
        return f"{last}; unreachable since then (by {latest} at the latest)"
    return f"{last}; unreachable (its last will)"


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e6 else 0.0


def _plus(iso: Any, seconds: float) -> str | None:
    from datetime import datetime, timedelta

    try:
        t = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t + timedelta(seconds=seconds)).isoformat(timespec="seconds").replace("+00:00", "Z")
