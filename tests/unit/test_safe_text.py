"""cli.safe_text.safe: what the commands print of a broker string is shown, never obeyed by the terminal."""

from __future__ import annotations

import logging
import sys
import unicodedata

import pytest
from rich.console import Console

from cli.render import format_event
from cli.safe_text import SafeLogFormatter, safe, safe_markup, safe_text


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J", "\\x1b[2J"),                      # CSI: clear the screen
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),   # OSC: set the window title
    ("a\rb\x08c\nd\te\x00", "a\\x0db\\x08c\\x0ad\\x09e\\x00"),
    ("\x7f\x9b\x85", "\\x7f\\x9b\\x85"),          # DEL, C1 CSI, NEL
    ("abc\u202egnp.exe", "abc\\u202egnp.exe"),    # right-to-left override
    ("\u2066x\u2069\u200f\u061c", "\\u2066x\\u2069\\u200f\\u061c"),
    ("a\u2028b\u2029", "a\\u2028b\\u2029"),
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("bad\udcff", "bad\\udcff"),                  # a file name that was not UTF-8 (surrogateescape)
])
def test_unsafe_characters_become_visible_escapes(raw: str, shown: str) -> None:
    assert safe(raw) == shown
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs") for ch in safe(raw))


@pytest.mark.parametrize("text", ["plain.txt", "café 日本語 Ünïcødé.csv", "a b\u00a0c", "[bold]x[/]", "C:\\dir\\f",
                                  "\U0001f600 emoji", ""])
def test_printable_text_is_left_alone(text: str) -> None:
    assert safe(text) == text


def test_markup_in_a_name_is_shown_as_typed() -> None:
    console = Console(record=True, width=200, color_system=None)
    console.print(safe_text("[bold]x\x1b[31m[/]"))
    console.print(f"name: {safe_markup('[red]y[/]')}")
    assert console.export_text() == "[bold]x\\x1b[31m[/]\nname: [red]y[/]\n"


def test_format_event_lines_hold_no_control_character() -> None:
    line = format_event({"transfer_id": "ab" * 24, "action": "completed", "state": "failed", "result_code": 40,
                         "agent": "A1", "files": [{"source": "/in/x\x1b[2J\ny", "result_code": 1,
                                                   "supplement": "bad\x07"}], "statistics": {}})
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line
    assert "/in/x\\x1b[2J\\x0ay: bad\\x07" in line


def test_the_agents_log_lines_hold_no_control_character() -> None:
    """A file name in an agent's log message (e.g. FTEIO0001E: write to /in/<name>.part failed) is escaped;
    the traceback of an exception stays multi-line."""
    formatter = SafeLogFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("fte.agent", logging.ERROR, __file__, 1, "write to %s failed",
                               ("/in/a\x1b[2Jb\x1b]0;t\x07.part",), None)
    line = formatter.format(record)
    assert line == "ERROR fte.agent: write to /in/a\\x1b[2Jb\\x1b]0;t\\x07.part failed"
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("fte.agent", logging.ERROR, __file__, 1, "name\nforged line", (), sys.exc_info())
    text = formatter.format(record)
    assert text.startswith("ERROR fte.agent: name\\x0aforged line\nTraceback (most recent call last):")
