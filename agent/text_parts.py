"""-t text at the destination: a verified part file converted into a second temporary file next to it.

The part file holds the source's bytes, verified against the source's digest (agent.core.destination_session
decides when). It is read in chunks through agent.core.text_convert, and what that gives is written to
`text_part_path` (`<name>.part.part`, agent/part_files.py) through the transfer's ConfinedDirs (directory
descriptors, links never followed), hashed as it is written, and made durable; the session then renames it
into place as it renames a binary file's part file. A file that cannot be converted leaves nothing: the
temporary file is removed here, the part file by the session's DiscardPart, and the destination is untouched.
Run in a worker thread: a big file's conversion takes seconds, in which the agent goes on.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .core.results import FTEIO0004E
from .core.text_convert import (PLATFORM_ENCODING, PLATFORM_LINE_ENDING, TextConversionError, TextConverter,
                                TextMode)
from .fileio import write_all, write_failed
from .fsops import ConfinedDirs
from .part_files import part_path, text_part_path
from .store import FileRecord

CHUNK = 1 << 20  # bytes read from the part file at a time


def conversion_failed(destination: str, reason: str) -> str:
    """The supplement of a text file that could not be converted: FTEIO0004E."""
    return f"{FTEIO0004E}: text conversion of {destination} failed: {reason}"


def convert_part(dirs: ConfinedDirs, f: FileRecord, mode: TextMode, checksum: str,
                 fsync: bool) -> tuple[str | None, str | None]:
    """Convert the file's verified part file into its text part file, durable. (digest of what was written
    or None with checksum "none", None) or (None, the supplement); on failure the text part file is gone."""
    part, out_path = part_path(f.destination), text_part_path(f.destination)
    digest = None if checksum == "none" else hashlib.new(checksum)
    try:
        src = dirs.open(part, os.O_RDONLY)
        try:
            out = dirs.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _copy_converted(src, out, mode.converter(), digest)
                if fsync:
                    os.fsync(out)  # durable before it is renamed into place (a crash cannot leave it torn)
            finally:
                os.close(out)
        finally:
            os.close(src)
    except TextConversionError as exc:
        _remove(dirs, out_path)
        return None, conversion_failed(f.destination, str(exc))
    except OSError as exc:
        _remove(dirs, out_path)
        return None, write_failed(f"text conversion of {part} into {out_path}", exc)
    return (None if digest is None else digest.hexdigest()), None


def _copy_converted(src: int, out: int, converter: TextConverter, digest: Any) -> None:
    offset = 0
    while True:
        data = os.read(src, CHUNK)
        piece = converter.feed(data) if data else converter.finish()
        if piece:
            write_all(out, piece, offset)
            offset += len(piece)
            if digest is not None:
                digest.update(piece)
        if not data:
            return


def _remove(dirs: ConfinedDirs, path: str) -> None:
    try:
        dirs.unlink(path)
    except OSError:
        pass


def text_mode(header: dict[str, Any] | None) -> TextMode | None:
    """The conversion a transfer's header holds (the Resync's `text`, checked when it came), with this
    destination's defaults for what the request left out; None: a binary transfer."""
    if not header:
        return None
    return TextMode(source_encoding=header["source_encoding"],
                    destination_encoding=header.get("destination_encoding") or PLATFORM_ENCODING,
                    line_ending=header.get("line_ending") or PLATFORM_LINE_ENDING)
