"""Chunk frames as the source builds them (read straight into the frame) and the destination opens them:
the FLAG_NO_ACK and FLAG_NO_CRC bits, and the MAC that replaces the CRC on a bound transfer (HMAC-SHA256, or
AES-GMAC with FLAG_GMAC to a destination with the feature "gmac")."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.wire import protocol as p
from agent.wire.binding import GMAC_BYTES, MAC_BYTES, ChunkSealer, check_chunk_mac, mac_chunk
from agent.router import open_frame as _open_frame
from agent.destination import FEATURES
from agent.wire.protocol import Chunk, ProtocolError, decode_chunk, encode_chunk
from agent.source_files import read_chunk_frame

KEY = bytes(range(32))
DATA = os.urandom(200_000)
HMAC = ChunkSealer(KEY, gmac=False)
GMAC = ChunkSealer(KEY, gmac=True)


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
    frame = read_chunk_frame(fd, 9, 1, 0, 65536, False, True, None, HMAC, mac_no_crc)
    assert frame is not None and len(frame) == p.CHUNK_HEADER.size + 65536 + MAC_BYTES
    assert bytes(frame[-MAC_BYTES:]) == mac_chunk(bytes(frame[:-MAC_BYTES]), KEY)
    c = _open_frame(bytes(frame), KEY, "t")
    assert isinstance(c, Chunk) and bytes(c.data) == DATA[:65536] and (c.epoch, c.index) == (9, 1)
    flags = frame[5]
    assert bool(flags & p.FLAG_NO_CRC) == mac_no_crc
    assert not flags & p.FLAG_GMAC


@pytest.mark.parametrize("mac_no_crc", [False, True])
def test_gmac_frame_opens_with_its_key(fd: int, mac_no_crc: bool) -> None:
    frame = read_chunk_frame(fd, 9, 1, 0, 65536, True, False, None, GMAC, mac_no_crc)
    assert frame is not None and len(frame) == p.CHUNK_HEADER.size + 65536 + GMAC_BYTES
    assert frame[p.CHUNK_FLAGS_AT] & p.FLAG_GMAC
    c = _open_frame(bytes(frame), KEY, "t")
    assert isinstance(c, Chunk) and bytes(c.data) == DATA[:65536]
    assert (c.epoch, c.index, c.offset, c.last, c.ack) == (9, 1, 0, True, False)
    # a fresh nonce per frame: the same chunk sealed twice never repeats a nonce (nor, so, a tag)
    again = read_chunk_frame(fd, 9, 1, 0, 65536, True, False, None, GMAC, mac_no_crc)
    assert again is not None and bytes(again[-GMAC_BYTES:]) != bytes(frame[-GMAC_BYTES:])
    assert bytes(again[:-GMAC_BYTES]) == bytes(frame[:-GMAC_BYTES])


@pytest.mark.parametrize("where", ["header", "data", "nonce", "tag"])
def test_tampered_gmac_frame_is_refused(fd: int, where: str) -> None:
    frame = read_chunk_frame(fd, 9, 1, 0, 1000, False, True, None, GMAC, True)
    assert frame is not None
    at = {"header": 12, "data": p.CHUNK_HEADER.size + 10, "nonce": -GMAC_BYTES, "tag": -1}[where]
    frame[at] ^= 0x01
    assert check_chunk_mac(bytes(frame), KEY) is None
    with pytest.raises(ProtocolError, match="MAC"):
        _open_frame(bytes(frame), KEY, "t")


@pytest.mark.parametrize("sealer", [HMAC, GMAC], ids=["hmac", "gmac"])
def test_flipping_the_gmac_flag_is_refused(fd: int, sealer: ChunkSealer) -> None:
    # the flag picks the trailer before the MAC is checked; the MAC covers the flag, so a flip never passes
    frame = read_chunk_frame(fd, 9, 1, 0, 1000, False, True, None, sealer, True)
    assert frame is not None
    frame[p.CHUNK_FLAGS_AT] ^= p.FLAG_GMAC
    assert check_chunk_mac(bytes(frame), KEY) is None


def test_gmac_frame_under_another_key_is_refused(fd: int) -> None:
    frame = read_chunk_frame(fd, 9, 1, 0, 1000, False, True, None, ChunkSealer(bytes(32), gmac=True), True)
    assert frame is not None
    assert check_chunk_mac(bytes(frame), KEY) is None


def test_gmac_flag_without_a_mac_is_refused() -> None:
    frame = bytearray(encode_chunk(1, 0, 0, b"hello"))
    frame[p.CHUNK_FLAGS_AT] |= p.FLAG_GMAC
    with pytest.raises(ProtocolError, match="GMAC"):
        decode_chunk(bytes(frame))


@pytest.mark.parametrize("length", [0, 3, 5, 6, 27, 28])
def test_frames_too_short_for_their_trailer_are_refused(length: int) -> None:
    payload = bytearray(length)
    if length > p.CHUNK_FLAGS_AT:
        payload[p.CHUNK_FLAGS_AT] = p.FLAG_GMAC
    assert check_chunk_mac(bytes(payload), KEY) is None


def test_bundle_frame_sealed_with_gmac_opens() -> None:
    frame = p.encode_bundle(4, [(0, None, b"abc"), (1, None, b"")], GMAC.flag)
    frame += GMAC.seal(frame)
    b = _open_frame(frame, KEY, "t")
    assert isinstance(b, p.Bundle) and [bytes(e.data) for e in b.entries] == [b"abc", b""]


def test_frame_without_crc_needs_a_mac(fd: int) -> None:
    frame = read_chunk_frame(fd, 9, 1, 0, 1000, False, True, None, HMAC, True)
    assert frame is not None
    bare = bytes(frame[:-MAC_BYTES])
    # the MAC stripped: nothing checks this frame, so nobody may accept it
    with pytest.raises(ProtocolError, match="neither a CRC nor a MAC"):
        decode_chunk(bare)
    with pytest.raises(ProtocolError, match="neither a CRC nor a MAC"):
        _open_frame(bare, None, "t")


def test_tampered_bound_frame_is_refused_even_without_crc(fd: int) -> None:
    frame = read_chunk_frame(fd, 9, 1, 0, 1000, False, True, None, HMAC, True)
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
    assert {"bundle", "sparse_ack", "mac_no_crc", "gmac"} <= set(FEATURES)
