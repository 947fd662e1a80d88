"""End-to-end encryption (agent.wire.encryption): frames and envelopes by table, nonces never reused."""

from __future__ import annotations

import base64
import os
from typing import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.router import open_frame
from agent.source_files import read_chunk_frame
from agent.wire.binding import ChunkSealer, check_chunk_mac, derive_key, new_ephemeral
from agent.wire.encryption import (CLEAR_PREFIX, CONTROL, NONCE_BYTES, OFFER, REPLY, Envelope, decrypt_frame,
                                   encrypt_frame, envelope_for, offer_for, offer_public, seal_control, seal_reply)
from agent.wire.protocol import (CHUNK_HEADER, FLAG_AEAD, FLAG_GMAC, Bundle, Chunk, ProtocolError, decode_chunk,
                                 encode_bundle, finish_chunk)

KEY = bytes(range(32))
OTHER = bytes(32)
TID = "ab" * 24
MARKER = b"MARKER-7f3c-the-secret-contents " * 64


def _chunk_frame(data: bytes = MARKER, epoch: int = 3, index: int = 7, offset: int = 262144) -> bytes:
    frame = bytearray(CHUNK_HEADER.size + len(data))
    frame[CHUNK_HEADER.size:] = data
    finish_chunk(frame, epoch, index, offset, len(data), crc=False, mac_flag=FLAG_AEAD)
    return bytes(frame)


def test_an_encrypted_chunk_decrypts_to_what_was_sent_and_hides_it() -> None:
    sealed = ChunkSealer(KEY, gmac=True, aead=True).finish(_chunk_frame())
    assert MARKER[:32] not in sealed
    assert len(sealed) == len(_chunk_frame()) + 28  # the size of a GMAC frame
    chunk = open_frame(bytes(sealed), KEY, TID, encrypted=True)
    assert isinstance(chunk, Chunk)
    assert (chunk.epoch, chunk.index, chunk.offset, bytes(chunk.data)) == (3, 7, 262144, MARKER)


def test_the_header_is_encrypted_too_only_magic_version_and_flags_stay_readable() -> None:
    a = ChunkSealer(KEY, gmac=True, aead=True).finish(_chunk_frame(offset=0))
    b = ChunkSealer(KEY, gmac=True, aead=True).finish(_chunk_frame(offset=1 << 40))
    assert a[:CLEAR_PREFIX] == b[:CLEAR_PREFIX] == _chunk_frame()[:CLEAR_PREFIX]
    assert (1 << 40).to_bytes(8, "big") not in b


def _flip(at: int) -> Callable[[bytes], bytes]:
    def f(frame: bytes) -> bytes:
        out = bytearray(frame)
        out[at] ^= 0x01
        return bytes(out)
    return f


@pytest.mark.parametrize("name, damage, key", [
    ("a bit of the data flipped", _flip(-100), KEY),
    ("a bit of the tag flipped", _flip(-1), KEY),
    ("a bit of the nonce flipped", _flip(CLEAR_PREFIX + 3), KEY),
    ("the clear flags changed (associated data)", _flip(CLEAR_PREFIX - 1), KEY),
    ("truncated by one byte", lambda f: f[:-1], KEY),
    ("truncated to the clear prefix and a nonce", lambda f: f[:CLEAR_PREFIX + NONCE_BYTES], KEY),
    ("truncated to its first byte", lambda f: f[:1], KEY),
    ("a byte appended", lambda f: f + b"\0", KEY),
    ("another transfer's key", lambda f: f, OTHER),
])
def test_a_damaged_or_foreign_encrypted_frame_is_refused(name: str, damage: Callable[[bytes], bytes],
                                                         key: bytes) -> None:
    sealed = bytes(ChunkSealer(KEY, gmac=True, aead=True).finish(_chunk_frame()))
    assert check_chunk_mac(damage(sealed), key, encrypted=True) is None, name
    with pytest.raises(ProtocolError):
        open_frame(damage(sealed), key, TID, encrypted=True)


@pytest.mark.parametrize("sealer", [ChunkSealer(KEY, gmac=True), ChunkSealer(KEY, gmac=False)])
def test_a_frame_in_the_clear_is_refused_on_an_encrypted_transfer(sealer: ChunkSealer) -> None:
    frame = bytearray(CHUNK_HEADER.size + len(MARKER))
    frame[CHUNK_HEADER.size:] = MARKER
    finish_chunk(frame, 1, 0, 0, len(MARKER), crc=False, mac_flag=sealer.flag)
    clear = sealer.finish(frame)
    assert open_frame(bytes(clear), KEY, TID, encrypted=False).data == MARKER  # accepted when not encrypted
    with pytest.raises(ProtocolError, match="not encrypted"):
        open_frame(bytes(clear), KEY, TID, encrypted=True)


def test_an_encrypted_frame_without_a_key_is_refused_as_such() -> None:
    sealed = bytes(ChunkSealer(KEY, gmac=True, aead=True).finish(_chunk_frame()))
    with pytest.raises(ProtocolError):
        decode_chunk(sealed)


def test_an_encrypted_bundle_round_trips() -> None:
    sealer = ChunkSealer(KEY, gmac=True, aead=True)
    entries = [(0, "aa" * 32, b"first " + MARKER), (5, None, b"")]
    sealed = sealer.finish(encode_bundle(2, entries, sealer.flag))
    assert b"first" not in sealed
    bundle = open_frame(bytes(sealed), KEY, TID, encrypted=True)
    assert isinstance(bundle, Bundle)
    assert [(e.index, e.digest, bytes(e.data)) for e in bundle.entries] == entries


def test_read_chunk_frame_encrypts_what_it_reads(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(MARKER)
    fd = os.open(path, os.O_RDONLY)
    try:
        frame = read_chunk_frame(fd, 1, 0, 0, len(MARKER), True, True, None, ChunkSealer(KEY, True, True), True)
    finally:
        os.close(fd)
    assert frame is not None and MARKER[:32] not in frame
    chunk = open_frame(bytes(frame), KEY, TID, encrypted=True)
    assert isinstance(chunk, Chunk) and bytes(chunk.data) == MARKER and chunk.last


# --------------------------------------------------------------------------- nonces


def _nonce(sealed: bytes | bytearray) -> bytes:
    return bytes(sealed[CLEAR_PREFIX:CLEAR_PREFIX + NONCE_BYTES])


def test_a_resend_and_a_restarted_source_never_reuse_a_nonce_under_one_key() -> None:
    """The same place of the same file sent again (a resend), by a new sealer after a restart (the key comes
    back from the store), and with other bytes at that place (the file changed meanwhile): never one nonce
    twice, and never the same nonce for two plaintexts."""
    seen: dict[bytes, bytes] = {}
    for sealer_life in range(50):  # each a source (re)started with the transfer's key
        sealer = ChunkSealer(KEY, gmac=True, aead=True)
        for resend in range(20):
            for data in (MARKER, MARKER[::-1]):  # the file as it was, and as it was rewritten
                plain = _chunk_frame(data)
                nonce = _nonce(sealer.finish(plain))
                assert nonce not in seen, f"nonce reused (life {sealer_life}, resend {resend})"
                seen[nonce] = plain
    envelopes = {seal_control(b"{}", KEY, TID)[6:6 + NONCE_BYTES] for _ in range(2000)}
    assert len(envelopes) == 2000


def test_the_nonce_is_not_a_function_of_the_frames_place() -> None:
    assert _nonce(encrypt_frame(_chunk_frame(), KEY)) != _nonce(encrypt_frame(_chunk_frame(), KEY))


# --------------------------------------------------------------------------- control envelopes


def test_an_offer_opens_only_for_the_destination_it_was_encrypted_to() -> None:
    dest, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    private, public = new_ephemeral()
    header = {"encryption": "aes-256-gcm", "kx_private": base64.b64encode(private).decode(), "kx_public": public,
              "peer_offer_key": offer_public(dest)}
    offer = offer_for(header, b'{"kind":"resync","files":["secret-name.bin"]}', TID)
    assert b"secret-name" not in offer
    envelope = Envelope(offer)
    assert (envelope.kind, envelope.kx) == (OFFER, public)
    assert envelope.open_offer(dest, TID) == b'{"kind":"resync","files":["secret-name.bin"]}'
    assert envelope.open_offer(other, TID) is None
    assert envelope.open_offer(dest, "cd" * 24) is None  # moved to another transfer's topic
    assert offer_for({}, b"plain", TID) == b"plain"  # a transfer in the clear


def test_a_reply_opens_under_the_key_the_source_derives_from_its_kx() -> None:
    src_private, src_public = new_ephemeral()
    dst_private, dst_public = new_ephemeral()
    key = derive_key(dst_private, src_public, TID)
    reply = Envelope(seal_reply(b'{"held":12345}', key, dst_public, TID))
    assert reply.kind == REPLY and reply.kx == dst_public
    assert reply.open_control(derive_key(src_private, reply.kx, TID), TID) == b'{"held":12345}'


def _sealed_control() -> bytes:
    return envelope_for({"encryption": "aes-256-gcm", "transfer_key": base64.b64encode(KEY).decode()},
                        b'{"kind":"file_end","size":4242}', TID)


@pytest.mark.parametrize("name, damage, key, tid", [
    ("intact", lambda p: p, KEY, TID),
    ("a ciphertext bit flipped", _flip(-20), KEY, TID),
    ("the tag's last bit flipped", _flip(-1), KEY, TID),
    ("the kind changed", lambda p: p[:5] + bytes([REPLY]) + bytes(32) + p[6:], KEY, TID),
    ("truncated", lambda p: p[:-3], KEY, TID),
    ("another key", lambda p: p, OTHER, TID),
    ("another transfer's topic", lambda p: p, KEY, "cd" * 24),
])
def test_control_envelopes_by_table(name: str, damage: Callable[[bytes], bytes], key: bytes, tid: str) -> None:
    payload = damage(_sealed_control())
    try:
        opened = Envelope(payload).open_control(key, tid)
    except ProtocolError:
        opened = None
    assert (opened == b'{"kind":"file_end","size":4242}') == (name == "intact"), name


@pytest.mark.parametrize("payload", [b"FTEE", b"FTEE\x02\x03" + bytes(40), b"FTEE\x01\x09" + bytes(40),
                                     b"FTEE\x01\x01" + bytes(20)])
def test_malformed_envelopes_are_refused_with_a_reason(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        Envelope(payload)


def test_an_offer_with_a_degenerate_key_exchange_value_does_not_open() -> None:
    dest = Ed25519PrivateKey.generate()
    envelope = Envelope(b"FTEE\x01\x01" + bytes(32) + bytes(NONCE_BYTES) + bytes(40))
    assert envelope.open_offer(dest, TID) is None


def test_a_control_message_stays_plain_without_encryption_or_before_the_key() -> None:
    assert envelope_for({}, b"m", TID) == b"m"
    assert envelope_for({"encryption": "aes-256-gcm"}, b"m", TID) == b"m"  # a complete before any reply
    assert Envelope(_sealed_control()).kind == CONTROL


def test_decrypt_frame_refuses_what_is_too_short_to_hold_a_nonce_and_tag() -> None:
    assert decrypt_frame(b"FTEC\x01" + bytes([FLAG_AEAD | FLAG_GMAC]) + bytes(27), KEY) is None
