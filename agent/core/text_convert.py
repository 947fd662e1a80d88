"""Text transfers (-t text): the conversion of a file's bytes from one encoding and line ending to another.

Pure (no IO): `TextConverter.feed(chunk)` takes the source's bytes in chunks of any size and returns the bytes
to write; `finish()` returns the rest. It decodes with the source encoding (an incremental decoder, so that a
multi-byte character split between two chunks is decoded whole), turns every line ending (CRLF, LF and a lone
CR, as Python's universal newlines) into the destination's, and encodes with the destination encoding. A CR
at the end of a chunk is held back until the next chunk says whether an LF follows it.

A byte sequence the source encoding cannot decode, or a character the destination encoding cannot encode,
raises `TextConversionError`, which says which encoding, where (the byte offset in the source file) and what
to do. A byte order mark is the codec's business, as in Python: `utf-8` keeps one (U+FEFF), `utf-8-sig` drops
it; `utf-16` reads and writes one.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from .errors import FteError

MODES = ("binary", "text")
LINE_ENDINGS: dict[str, str] = {"LF": "\n", "CRLF": "\r\n"}
# What a file's bytes are decoded and encoded with when -sce / -dce are not given: the agents' platform
# encoding, which is UTF-8 on the platforms the agents run on (Python's UTF-8 mode, PEP 538/540/686).
PLATFORM_ENCODING = "utf-8"
PLATFORM_LINE_ENDING = "LF"


class TextConversionError(FteError):
    """The file cannot be converted: which encoding, the byte offset, what to do (the supplement's words)."""

    def __init__(self, text: str, offset: int) -> None:
        self.offset = offset
        super().__init__(text)


def check_encoding(name: str, what: str) -> str:
    """The codec's canonical name for `name`, or ValueError naming `what` (a flag or a field): only a text
    encoding Python knows (not base64, rot13 or a compression codec)."""
    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError, ValueError):
        raise ValueError(f"{what} {name!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252, "
                         "ascii, utf-16)") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"{what} {name!r} is not a text encoding (e.g. utf-8, latin-1, cp1252)")
    return info.name


def check_line_ending(value: str, what: str) -> str:
    if value.upper() not in LINE_ENDINGS:
        raise ValueError(f"{what} {value!r} is not one of: {', '.join(LINE_ENDINGS)}")
    return value.upper()


@dataclass(frozen=True, slots=True)
class TextMode:
    """How a text file is converted: decoded with `source_encoding`, line endings made `line_ending` (LF or
    CRLF), encoded with `destination_encoding`."""

    source_encoding: str = PLATFORM_ENCODING
    destination_encoding: str = PLATFORM_ENCODING
    line_ending: str = PLATFORM_LINE_ENDING

    def converter(self) -> "TextConverter":
        return TextConverter(self)


class TextConverter:
    """One file's conversion, fed chunk by chunk (see the module's docstring)."""

    def __init__(self, mode: TextMode) -> None:
        self.mode = mode
        self._decoder = codecs.getincrementaldecoder(mode.source_encoding)(errors="strict")
        self._encoder = codecs.getincrementalencoder(mode.destination_encoding)(errors="strict")
        self._eol = LINE_ENDINGS[mode.line_ending]
        self._fed = 0  # source bytes taken so far
        self._cr = False  # the text so far ended in a CR whose LF (or not) is in the next chunk

    def feed(self, data: bytes) -> bytes:
        return self._convert(data, final=False)

    def finish(self) -> bytes:
        return self._convert(b"", final=True)

    def _convert(self, data: bytes, final: bool) -> bytes:
        pending = len(self._decoder.getstate()[0])  # bytes of a character begun in an earlier chunk
        start = self._fed - pending  # the source offset of the first byte decoded now
        self._fed += len(data)
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            offset = start + exc.start
            raise TextConversionError(
                f"the source file is not {self.mode.source_encoding} text: the bytes at offset {offset} "
                f"({exc.object[exc.start:exc.start + 4].hex(' ')}) cannot be decoded ({exc.reason}); give the "
                f"file's encoding with -sce, or transfer it with -t binary", offset) from None
        raw = text
        if self._cr:
            text = "\r" + text
        self._cr = text.endswith("\r") and not final
        if self._cr:
            text = text[:-1]
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self._eol != "\n":
            text = text.replace("\n", self._eol)
        try:
            return self._encoder.encode(text, final)
        except UnicodeEncodeError as exc:
            offset = self._source_offset(raw, text, exc.start, start)
            char = text[exc.start]
            raise TextConversionError(
                f"the character U+{ord(char):04X} at byte offset {offset} of the source file cannot be encoded "
                f"in {self.mode.destination_encoding} ({exc.reason}); give a destination encoding that has "
                f"it with -dce (e.g. utf-8), or transfer the file with -t binary", offset) from None

    def _source_offset(self, raw: str, text: str, position: int, start: int) -> int:
        """The source byte offset of the character at `position` of the converted `text`: the same occurrence of
        it in the decoded `raw` (line endings are all that changed), measured in source-encoded bytes."""
        char = text[position]
        nth = text.count(char, 0, position)
        q = -1
        for _ in range(nth + 1):
            q = raw.index(char, q + 1)
        return start + len(raw[:q].encode(self.mode.source_encoding, errors="replace"))


def convert(data: bytes, mode: TextMode, chunk: int = 1 << 20) -> bytes:
    """The whole of `data` converted (for tests and small files), in chunks of `chunk` bytes."""
    conv = mode.converter()
    out = [conv.feed(data[i:i + chunk]) for i in range(0, len(data), chunk)]
    out.append(conv.finish())
    return b"".join(out)
