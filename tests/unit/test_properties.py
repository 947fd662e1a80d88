"""agent/properties.py: Java .properties semantics (checked against OpenJDK's Properties.load)."""

from __future__ import annotations

import pytest

from agent.properties import PropertiesSyntaxError, PropertyValue, format_properties, parse_properties


def values(text: str) -> dict[str, str]:
    return {key: prop.value for key, prop in parse_properties(text).items()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=1", {"a": "1"}),
        ("a:1", {"a": "1"}),
        ("a 1", {"a": "1"}),
        ("a\t1", {"a": "1"}),
        ("a = 1", {"a": "1"}),
        ("a  :  1", {"a": "1"}),
        ("a = = 1", {"a": "= 1"}),  # only one separator is skipped
        ("   a=1", {"a": "1"}),  # leading whitespace
        ("\f\ta=1", {"a": "1"}),
        ("a=1   ", {"a": "1   "}),  # Java keeps trailing blanks
        ("a", {"a": ""}),
        ("a=", {"a": ""}),
        ("a=b=c:d", {"a": "b=c:d"}),
        ("url=mqtt://h:1883", {"url": "mqtt://h:1883"}),
        ("# comment\n! also\na=1", {"a": "1"}),
        ("  # indented comment\na=1", {"a": "1"}),
        ("a=1 # not a comment", {"a": "1 # not a comment"}),
        ("\n\n  \n", {}),
        ("a=1\na=2", {"a": "2"}),  # last definition wins
        ("a=1\r\nb=2\rc=3\n", {"a": "1", "b": "2", "c": "3"}),
    ],
)
def test_key_value_forms(text: str, expected: dict[str, str]) -> None:
    assert values(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"a=x\ty", {"a": "x\ty"}),
        (r"a=x\ny\rz\f", {"a": "x\ny\rz\f"}),
        (r"a=C:\\temp", {"a": "C:\\temp"}),
        (r"a=\u0041\u00e9", {"a": "Aé"}),
        (r"a=\uD83D\uDE00", {"a": "\U0001f600"}),  # UTF-16 surrogate pair -> one character
        (r"k\=ey=v", {"k=ey": "v"}),
        (r"k\:ey=v", {"k:ey": "v"}),
        (r"k\ ey=v", {"k ey": "v"}),
        (r"a=\ leading", {"a": " leading"}),
        (r"a=\q", {"a": "q"}),  # unknown escape: the backslash is dropped
        (r"\#a=1", {"#a": "1"}),
    ],
)
def test_escapes(text: str, expected: dict[str, str]) -> None:
    assert values(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=one \\\n    two", {"a": "one two"}),  # continuation drops the next line's indentation
        ("a=x\\\n\\\n  y", {"a": "xy"}),
        ("a=x\\\\\nb=y", {"a": "x\\", "b": "y"}),  # even number of backslashes: no continuation
        ("a=x\\\n# not a comment", {"a": "x# not a comment"}),
        ("a=x\\\n\nb=y", {"a": "x", "b": "y"}),  # a blank line ends a continuation
        ("# comment \\\na=1", {"a": "1"}),  # comments never continue
        ("ke\\\n  y=v", {"key": "v"}),
        ("a=x\\", {"a": "x"}),  # dangling backslash at end of text
        ("a=x\\\r\n  y", {"a": "xy"}),
    ],
)
def test_continuations(text: str, expected: dict[str, str]) -> None:
    assert values(text) == expected


def test_line_numbers_are_where_the_definition_starts() -> None:
    props = parse_properties("# header\n\na=1\nb=one \\\n  two\nc=3\na=4\n")
    assert props == {
        "b": PropertyValue("one two", 4),
        "c": PropertyValue("3", 6),
        "a": PropertyValue("4", 7),
    }


@pytest.mark.parametrize("text", [r"a=\u12", r"a=\uZZZZ", "a=1\nb=\\u00"])
def test_malformed_unicode_escape_names_the_line(text: str) -> None:
    with pytest.raises(PropertiesSyntaxError) as info:
        parse_properties(text)
    assert info.value.line == text.count("\n") + 1
    assert "\\uXXXX" in str(info.value)


def test_property_value_is_frozen() -> None:
    with pytest.raises(AttributeError):
        PropertyValue("x", 1).value = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([("a", "1", None)], "a=1\n"),
        ([("a", "1", "explains a")], "# explains a\na=1\n"),
        ([("a", "1", "two\nlines")], "# two\n# lines\na=1\n"),
        ([("a", "1", "")], "#\na=1\n"),
        ([("k ey", " v v", None)], "k\\ ey=\\ v v\n"),  # key spaces and a leading value space escaped
        ([("k=:#!", "v", None)], "k\\=\\:\\#\\!=v\n"),
        ([("url", "mqtt://h:1883", None)], "url=mqtt://h:1883\n"),  # not needed in values, kept readable
        ([("p", "C:\\temp", None)], "p=C:\\\\temp\n"),
        ([("t", "a\tb\nc\rd\fe", None)], "t=a\\tb\\nc\\rd\\fe\n"),
        ([("u", "é€\x00", None)], "u=\\u00E9\\u20AC\\u0000\n"),
        ([("u", "\U0001f600", None)], "u=\\uD83D\\uDE00\n"),
        ([("a", "1", None), ("b", "2", None)], "a=1\nb=2\n"),
        ([], ""),
    ],
)
def test_format_escapes_like_java(entries: list[tuple[str, str, str | None]], expected: str) -> None:
    assert format_properties(entries) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("plain", "value"),
        ("with space", "  spaces  "),
        ("=:#!", "=:#!"),
        ("back\\slash", "\\\\ \\"),
        ("ctl", "\t\n\r\f\x00\x7f"),
        ("uni", "é€\U0001f600"),
        ("#looks-like-comment", "!x"),
        ("empty", ""),
    ],
)
def test_format_then_parse_round_trips(key: str, value: str) -> None:
    text = format_properties([(key, value, "a comment with é"), ("after", "1", None)])
    assert text.isascii()
    assert values(text) == {key: value, "after": "1"}
