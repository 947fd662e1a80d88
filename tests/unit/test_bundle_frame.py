"""The bundle frame (FLAG_BUNDLE): whole small files in one chunk frame, parsed as untrusted input."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from agent.wire import protocol as p
from agent.wire.protocol import Bundle, Chunk, ProtocolError, decode_chunk, encode_bundle, encode_chunk


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


FILES = [(0, _sha(b"alpha"), b"alpha"), (7, None, b""), (3, hashlib.md5(b"c").hexdigest(), b"c" * 1000)]


def test_round_trip() -> None:
    frame = decode_chunk(encode_bundle(9, FILES))
    assert isinstance(frame, Bundle)
    assert frame.epoch == 9
    assert [(e.index, e.digest, bytes(e.data)) for e in frame.entries] == FILES


def test_a_plain_chunk_is_still_a_chunk() -> None:
    assert isinstance(decode_chunk(encode_chunk(1, 2, 0, b"x", last=True)), Chunk)


def _reframe(body: bytes, count: int, epoch: int = 1) -> bytes:
    """A well-formed frame (valid CRC) around an arbitrary bundle body: only the body can be wrong."""
    header = bytearray(p.CHUNK_HEADER.pack(p.CHUNK_MAGIC, p.PROTOCOL_VERSION, p.FLAG_BUNDLE, 0, epoch, count, 0,
                                           len(body), 0))
    struct.pack_into(">I", header, 28, zlib.crc32(body, zlib.crc32(bytes(header[:28]))))
    return bytes(header) + body


def _entry(index: int, data: bytes, digest: bytes = b"") -> bytes:
    return p.BUNDLE_ENTRY.pack(index, len(data), len(digest)) + digest + data


@pytest.mark.parametrize("body,count,why", [
    (_entry(1, b"abc"), 0, "bundle of 0 files"),
    (_entry(1, b"abc"), p.MAX_BUNDLE_FILES + 1, "4097 files"),
    (_entry(1, b"abc"), 2, "truncated in the header of entry 1"),
    (_entry(1, b"abc") + _entry(1, b"d"), 2, "out of range or repeated"),
    (_entry(p.MAX_FILES_PER_TRANSFER, b"abc"), 1, "out of range or repeated"),
    (_entry(1, b"abc")[:-1], 1, "runs past the end"),
    (p.BUNDLE_ENTRY.pack(1, 0, 65) + b"\x00" * 65, 1, "runs past the end"),
    (_entry(1, b"abc") + b"junk", 1, "4 bytes after its last entry"),
])
def test_malformed_bundles_are_refused_with_a_reason(body: bytes, count: int, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_chunk(_reframe(body, count))


def test_a_flipped_bit_in_an_entry_fails_the_crc() -> None:
    frame = bytearray(encode_bundle(1, FILES))
    frame[40] ^= 0x01
    with pytest.raises(ProtocolError, match="CRC"):
        decode_chunk(bytes(frame))


def test_encode_refuses_an_empty_or_oversized_bundle() -> None:
    with pytest.raises(ValueError):
        encode_bundle(1, [])
    with pytest.raises(ValueError):
        encode_bundle(1, [(i, None, b"") for i in range(p.MAX_BUNDLE_FILES + 1)])
