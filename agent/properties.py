"""Java ``.properties`` reading and writing (stdlib only).

MFT users edit ``agent.properties`` by hand and copy snippets from IBM documentation, so we follow
``java.util.Properties.load`` / ``store`` exactly rather than inventing a "close enough" dialect:

* a natural line ending in an odd number of backslashes continues on the next line, whose leading
  whitespace is dropped; a comment line never continues, and a blank line ends a continuation;
* ``#`` or ``!`` as the first non-blank character starts a comment (only at the start of a logical line);
* the key ends at the first unescaped ``=``, ``:`` or whitespace; whitespace around the separator is skipped;
* escapes ``\\t \\n \\r \\f \\uXXXX``, and ``\\`` before any other character means that character
  (so ``\\=``, ``\\:``, ``\\ ``, ``\\\\``, ``\\#``);
* the value keeps its trailing whitespace (callers decide whether to strip);
* when a key is defined twice the last definition wins.

This was checked against OpenJDK 17's ``Properties.load`` on random inputs; the one difference kept on
purpose: a lone ``\\`` on the last line makes Java define an empty key "", we ignore it.
Writing follows ``Properties.store`` (see ``_escape``), and Java reads what we write unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .core.errors import FteError

__all__ = ["PropertyValue", "PropertiesSyntaxError", "parse_properties", "format_properties"]

_WHITESPACE = " \t\f"
_NATURAL_LINES = re.compile(r"\r\n|\r|\n")
_SIMPLE_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


@dataclass(frozen=True, slots=True)
class PropertyValue:
    """A value read from a properties file and the 1-based line where its definition starts."""

    value: str
    line: int


class PropertiesSyntaxError(FteError, ValueError):
    """The text is not a valid properties file (only a malformed ``\\uXXXX`` escape can cause this)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continued natural lines; return (first line number, logical line without leading blanks)."""
    result: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, natural in enumerate(_NATURAL_LINES.split(text), start=1):
        stripped = natural.lstrip(_WHITESPACE)
        if current and not any(current):
            current = []  # Java: a continuation that has gathered nothing yet is still a new line
        if not current:
            if not stripped or stripped[0] in "#!":
                continue  # blank or comment line (a comment never continues, as in Java)
            start = number
        elif not stripped:
            # Java: a blank line after a continuation ends the logical line.
            result.append((start, "".join(current)))
            current = []
            continue
        trailing = len(stripped) - len(stripped.rstrip("\\"))
        if trailing % 2 == 1:
            current.append(stripped[:-1])  # odd count: the last backslash joins the next line
        else:
            current.append(stripped)
            result.append((start, "".join(current)))
            current = []
    if any(current):  # continuation at end of text: Java drops the dangling backslash
        result.append((start, "".join(current)))
    return result


def _split_key_value(line: str) -> tuple[str, str]:
    """Split a logical line into its raw (still escaped) key and value, as Properties.load0 does."""
    key_end = len(line)
    value_start = len(line)
    has_separator = False
    backslash = False
    for i, char in enumerate(line):
        if not backslash and char in "=:":
            key_end, value_start, has_separator = i, i + 1, True
            break
        if not backslash and char in _WHITESPACE:
            key_end, value_start = i, i + 1
            break
        backslash = (not backslash) if char == "\\" else False
    while value_start < len(line):
        char = line[value_start]
        if char not in _WHITESPACE:
            if has_separator or char not in "=:":
                break
            has_separator = True  # "key  = value": one '=' or ':' may follow the blanks
        value_start += 1
    return line[:key_end], line[value_start:]


def _unescape(raw: str, line: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        char = raw[i]
        i += 1
        if char != "\\":
            out.append(char)
            continue
        if i >= len(raw):
            break  # a lone trailing backslash means nothing (Java drops it)
        char = raw[i]
        i += 1
        if char == "u":
            digits = raw[i : i + 4]
            if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise PropertiesSyntaxError(line, f"malformed \\uXXXX escape '\\u{digits}'; write four hex digits")
            out.append(chr(int(digits, 16)))
            i += 4
        else:
            out.append(_SIMPLE_ESCAPES.get(char, char))
    text = "".join(out)
    if any("\ud800" <= c <= "\udfff" for c in text):
        # \uD83D\uDE00 is one character written as a UTF-16 surrogate pair (Java strings are UTF-16).
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return text


def parse_properties(text: str) -> dict[str, PropertyValue]:
    """Parse Java properties text. Later definitions of a key replace earlier ones.

    Raises PropertiesSyntaxError for a malformed ``\\uXXXX`` escape (Java raises too).
    """
    result: dict[str, PropertyValue] = {}
    for number, logical in _logical_lines(text):
        raw_key, raw_value = _split_key_value(logical)
        key = _unescape(raw_key, number)
        try:
            value = _unescape(raw_value, number)
        except PropertiesSyntaxError as exc:  # name the property the bad escape belongs to
            raise PropertiesSyntaxError(number, f"{key}: {exc.message}") from None
        result.pop(key, None)  # keep file order of the winning definitions
        result[key] = PropertyValue(value, number)
    return result


def _escape(text: str, *, is_key: bool) -> str:
    """Escape like Properties.saveConvert with escUnicode=true (the file stays ASCII, so it reads
    the same whether a tool decodes it as ISO-8859-1, as Java's Properties.load does, or as UTF-8).

    One deliberate difference: Java also escapes ``= : # !`` inside values, which is never needed
    (only the key ends at a separator, and a value is never at the start of a line). We leave them
    alone so that ``brokerUrl=mqtt://host:1883`` stays readable; Java reads both forms identically."""
    out: list[str] = []
    for i, char in enumerate(text):
        if char == " ":
            out.append("\\ " if is_key or i == 0 else " ")  # value: only a leading space is significant
        elif char == "\\":
            out.append("\\\\")
        elif char in "\t\n\r\f":
            out.append("\\" + "tnrf"["\t\n\r\f".index(char)])
        elif char in "=:#!" and is_key:
            out.append("\\" + char)
        elif " " < char <= "~":
            out.append(char)
        else:
            out.extend(f"\\u{unit:04X}" for unit in _utf16_units(char))
    return "".join(out)


def _utf16_units(char: str) -> list[int]:
    # Java strings are UTF-16, so characters beyond U+FFFF are written as a surrogate pair.
    data = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[j : j + 2], "big") for j in range(0, len(data), 2)]


def _comment_lines(comment: str) -> list[str]:
    lines = []
    for line in _NATURAL_LINES.split(comment):
        escaped = "".join(
            c if (" " <= c <= "~" or c == "\t") else "".join(f"\\u{u:04X}" for u in _utf16_units(c)) for c in line
        )
        lines.append(f"# {escaped}" if escaped else "#")
    return lines


def format_properties(entries: list[tuple[str, str, str | None]]) -> str:
    """Render ``(key, value, comment)`` entries as properties text, one ``key=value`` line each.

    A comment (may span several lines) is written as ``#`` lines just above its entry. Keys and
    values are escaped as ``Properties.store`` does, so ``parse_properties`` returns them unchanged.
    """
    lines: list[str] = []
    for key, value, comment in entries:
        if comment is not None:
            lines.extend(_comment_lines(comment))
        lines.append(f"{_escape(key, is_key=True)}={_escape(value, is_key=False)}")
    return "".join(line + "\n" for line in lines)
