"""The text conversion of -t text (agent.core.text_convert), by a table: line endings, chunk boundaries that
split a CRLF or a multi-byte character, byte order marks, encodings, and the failures' words and offsets."""

from __future__ import annotations

import pytest

from agent.core.text_convert import (TextConversionError, TextMode, check_encoding, check_line_ending, convert)

UTF8_LF = TextMode("utf-8", "utf-8", "LF")
UTF8_CRLF = TextMode("utf-8", "utf-8", "CRLF")
LATIN1_TO_UTF8 = TextMode("latin-1", "utf-8", "LF")

CASES = [
    # (what, data, mode, chunk size, expected)
    ("LF stays LF", b"a\nb\n", UTF8_LF, 1024, b"a\nb\n"),
    ("CRLF to LF", b"a\r\nb\r\n", UTF8_LF, 1024, b"a\nb\n"),
    ("a lone CR is a line ending", b"a\rb\r", UTF8_LF, 1024, b"a\nb\n"),
    ("mixed endings to CRLF", b"a\nb\r\nc\rd", UTF8_CRLF, 1024, b"a\r\nb\r\nc\r\nd"),
    ("CRLF stays CRLF (not doubled)", b"a\r\nb\r\n", UTF8_CRLF, 1024, b"a\r\nb\r\n"),
    ("CRLF split between chunks", b"a\r\nb", UTF8_LF, 2, b"a\nb"),
    ("CRLF split, to CRLF", b"a\r\nb\r\n", UTF8_CRLF, 2, b"a\r\nb\r\n"),
    ("CR at the very end", b"a\r", UTF8_LF, 2, b"a\n"),
    ("CR CR LF", b"a\r\r\nb", UTF8_LF, 1, b"a\n\nb"),
    ("a two-byte character split", "é\n".encode(), UTF8_LF, 1, "é\n".encode()),
    ("a four-byte character split", "x😀y".encode(), UTF8_LF, 1, "x😀y".encode()),
    ("latin-1 CRLF to utf-8 LF", "café\r\nnaïve\r\n".encode("latin-1"), LATIN1_TO_UTF8, 3,
     "café\nnaïve\n".encode()),
    ("utf-8 to latin-1", "café\n".encode(), TextMode("utf-8", "latin-1", "LF"), 1, "café\n".encode("latin-1")),
    ("utf-8 keeps a BOM", b"\xef\xbb\xbfa\n", UTF8_LF, 1, b"\xef\xbb\xbfa\n"),
    ("utf-8-sig drops a BOM", b"\xef\xbb\xbfa\r\n", TextMode("utf-8-sig", "utf-8", "LF"), 1, b"a\n"),
    ("utf-16 to utf-8, split everywhere", "a\r\nü".encode("utf-16"), TextMode("utf-16", "utf-8", "LF"), 1,
     "a\nü".encode()),
    ("utf-8 to utf-16le", b"a\n", TextMode("utf-8", "utf-16-le", "CRLF"), 1, "a\r\n".encode("utf-16-le")),
    ("empty file", b"", LATIN1_TO_UTF8, 4, b""),
]


@pytest.mark.parametrize("what,data,mode,chunk,expected", CASES, ids=[c[0] for c in CASES])
def test_conversion(what: str, data: bytes, mode: TextMode, chunk: int, expected: bytes) -> None:
    assert convert(data, mode, chunk) == expected


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1024])
def test_any_chunk_size_gives_the_same_bytes(chunk: int) -> None:
    text = "Zürich\r\nGenève\rLyon\n€ 5\r\n" * 7
    assert convert(text.encode("cp1252"), TextMode("cp1252", "utf-8", "CRLF"), chunk) == \
        text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode()


FAILURES = [
    # (what, data, mode, chunk, offset, words in the supplement)
    ("latin-1 bytes read as utf-8", b"ab\ncaf\xe9\n", UTF8_LF, 2, 6, ("not utf-8 text", "offset 6", "-sce")),
    ("a truncated character at the end", b"ab\xc3", UTF8_LF, 1, 2, ("offset 2", "-sce")),
    ("utf-8 to ascii", "ab\r\ncafé".encode(), TextMode("utf-8", "ascii", "LF"), 3, 7,
     ("U+00E9", "byte offset 7", "ascii", "-dce")),
]


@pytest.mark.parametrize("what,data,mode,chunk,offset,words", FAILURES, ids=[c[0] for c in FAILURES])
def test_failure_says_which_encoding_where_and_what_to_do(what: str, data: bytes, mode: TextMode, chunk: int,
                                                          offset: int, words: tuple[str, ...]) -> None:
    with pytest.raises(TextConversionError) as info:
        convert(data, mode, chunk)
    assert info.value.offset == offset
    for w in words:
        assert w in str(info.value)
    assert "-t binary" in str(info.value)


@pytest.mark.parametrize("name,canonical", [("UTF-8", "utf-8"), ("latin1", "iso8859-1"), ("cp1252", "cp1252"),
                                            ("ISO-8859-1", "iso8859-1")])
def test_known_encodings_are_taken(name: str, canonical: str) -> None:
    assert check_encoding(name, "-sce") == canonical


@pytest.mark.parametrize("name,words", [("klingon", "not an encoding"), ("base64", "not a text encoding"),
                                        ("rot13", "not a text encoding"), ("", "not an encoding")])
def test_unknown_encodings_are_refused_naming_the_flag(name: str, words: str) -> None:
    with pytest.raises(ValueError, match="-dce") as info:
        check_encoding(name, "-dce")
    assert words in str(info.value)


def test_line_endings() -> None:
    assert check_line_ending("crlf", "-dle") == "CRLF"
    with pytest.raises(ValueError, match="-dle 'CR' is not one of: LF, CRLF"):
        check_line_ending("CR", "-dle")
