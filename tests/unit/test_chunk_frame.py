"""Chunk frames as the source builds them (read straight into the frame) and the destination opens them:
the FLAG_NO_ACK and FLAG_NO_CRC bits, and the MAC that replaces the CRC on a bound transfer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent import protocol as p
from agent.binding import MAC_BYTES, check_chunk_mac, mac_chunk
from agent.daemon import _open_frame
from agent.destination import FEATURES
from agent.protocol import Chunk, ProtocolError, decode_chunk, encode_chunk
from agent.source import read_chunk_frame

KEY = bytes(range(32))
DATA = os.urandom(200_000)


@pytest.fixture()
def fd(tmp_path: Path):
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("last, ack", [(False, True), (False, False), (True, True), (True, False)])
def test_flags_round_trip(last: bool, ack: bool) -> None:
    c = decode_chunk(encode_chunk(3, 4, 65536, b"abc", last=last, ack=ack))
    assert isinstance(c, Chunk)
    assert (c.epoch, c.index, c.offset, bytes(c.data), c.last, c.ack) == (3, 4, 65536, b"abc", last, ack)


def test_a_frame_of_an_older_source_asks_for_every_ack() -> None:
    # no FLAG_NO_ACK bit: what a source that does not know sparse acks sends
    assert decode_chunk(encode_chunk(1, 0, 0, b"x")).ack is True


def test_unbound_frame_built_from_the_file_equals_encode_chunk(fd: int) -> None:
    frame = read_chunk_frame(fd, 5, 2, 1000, 4096, False, False, None, None, mac_no_crc=True)
    assert frame is not None
    # without a key there is no MAC, so the CRC stays whatever the destination advertised
    assert bytes(frame) == encode_chunk(5, 2, 1000, DATA[1000:5096], ack=False)


def test_frame_is_hashed_on_the_way(fd: int) -> None:
    h = hashlib.sha256()
    read_chunk_frame(fd, 1, 0, 0, 100_000, False, True, h, None, False)
    read_chunk_frame(fd, 1, 0, 100_000, 100_000, True, True, h, None, False)
    assert h.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_short_read_is_none(fd: int) -> None:
    assert read_chunk_frame(fd, 1, 0, 150_000, 100_000, True, True, None, None, False) is None


@pytest.mark.parametrize("mac_no_crc", [False, True])
def test_bound_frame_opens_with_its_key(fd: int, mac_no_crc: bool) -> None:
    frame = read_chunk_frame(fd, 9, 1, 0, 65536, False, True, None, KEY, mac_no_crc)
    assert frame is not None and len(frame) == p.CHUNK_HEADER.size + 65536 + MAC_BYTES
    assert bytes(frame[-MAC_BYTES:]) == mac_chunk(bytes(frame[:-MAC_BYTES]), KEY)
    c = _open_frame(bytes(frame), KEY, "t")
    assert isinstance(c, Chunk) and bytes(c.data) == DATA[:65536] and (c.epoch, c.index) == (9, 1)
    flags = frame[5]
    assert bool(flags & p.FLAG_NO_CRC) == mac_no_crc


def test_frame_without_crc_needs_a_mac(fd: int) -> None:
    frame = read_chunk_frame(fd, 9, 1, 0, 1000, False, True, None, KEY, True)
    assert frame is not None
    bare = bytes(frame[:-MAC_BYTES])
    # the MAC stripped: nothing checks this frame, so nobody may accept it
    with pytest.raises(ProtocolError, match="neither a CRC nor a MAC"):
        decode_chunk(bare)
    with pytest.raises(ProtocolError, match="neither a CRC nor a MAC"):
        _open_frame(bare, None, "t")


def test_tampered_bound_frame_is_refused_even_without_crc(fd: int) -> None:
    frame = read_chunk_frame(fd, 9, 1, 0, 1000, False, True, None, KEY, True)
    assert frame is not None
    frame[p.CHUNK_HEADER.size + 10] ^= 0x01
    with pytest.raises(ProtocolError, match="MAC"):
        _open_frame(bytes(frame), KEY, "t")
    assert check_chunk_mac(bytes(frame), KEY) is None


def test_crc_still_guards_unbound_frames() -> None:
    frame = bytearray(encode_chunk(1, 0, 0, b"hello"))
    frame[-1] ^= 0x01
    with pytest.raises(ProtocolError, match="CRC"):
        _open_frame(bytes(frame), None, "t")


def test_the_destination_advertises_what_it_reads() -> None:
    assert {"bundle", "sparse_ack", "mac_no_crc"} <= set(FEATURES)
