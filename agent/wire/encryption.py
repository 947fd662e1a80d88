"""End-to-end encryption of a transfer's data and control messages (AES-256-GCM), so that the broker and its
subscribers see agent names, transfer ids and the sizes of frames, never a file's bytes, name or size.

Keys. Every key is derived from the transfer key K of agent.wire.binding (X25519 + HKDF, one per transfer),
each for one use, so that no key serves two algorithms or two kinds of message:

    frames    HMAC-SHA256(K, "mqtt-fte frame aes-gcm")     chunk and bundle frames
    control   HMAC-SHA256(K, "mqtt-fte control aes-gcm")   control messages once K is known (replies included)
    offer     HKDF(X25519(source ephemeral, destination's offer key), salt=transfer id, info="mqtt-fte offer")

The offer key encrypts the source's Resync, which is sent before K exists (K needs the destination's answer):
every agent has a static X25519 "offer key", derived from its identity key and published in its signed status
(`offer_key`); the source takes the destination's at admission, keeps it in the transfer's record, and
encrypts each Resync to it with its own ephemeral key (the `kx` it already sends).

Nonces. A fresh random 96-bit nonce per frame and per message, carried in it. Not derived from the frame's
place (epoch, file, offset): a source restarted mid-transfer re-reads files from disk, and a file changed in
between (same size and mtime, as agent.fileio can only see) would give the same place different plaintext
under the same key and nonce, which breaks both confidentiality and authenticity of GCM. A counter would
have to survive restarts and standby takeovers (a store write per frame). Random nonces are safe up to 2^32
messages per key (NIST SP 800-38D §8.3), 1 PiB of 256 KiB chunks in one transfer (docs/security.md).

Formats (the cleartext parts are the associated data, so they are authenticated too):

    frame     magic, version, flags (6 bytes, FLAG_AEAD set) | nonce (12) | AES-GCM(rest of header + data) + tag
    envelope  "FTEE", version, kind (6 bytes) | kx (32, offers and replies only) | nonce (12) | ciphertext + tag

The envelope's kind is OFFER (a Resync, offer key), REPLY (a ResyncReply, which carries the destination's kx:
the source derives K from it first) or CONTROL (the rest, control key); its plaintext is the control message
as it would travel unencrypted (signed or with its MAC), checked as usual once opened. The transfer id is in
the associated data, so an envelope cannot be moved to another transfer.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import struct
from typing import Any, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .protocol import CHUNK_FLAGS_AT, ProtocolError

ENCRYPTION = "aes-256-gcm"  # what the log events and the transfer's record say
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES  # what encryption adds to a frame (the same as the GMAC trailer)
CLEAR_PREFIX = CHUNK_FLAGS_AT + 1  # magic, version, flags: in the clear, to recognise the frame

ENVELOPE_MAGIC = b"FTEE"
ENVELOPE_VERSION = 1
OFFER, REPLY, CONTROL = 1, 2, 3
_ENVELOPE_HEAD = struct.Struct(">4sBB")
KX_BYTES = 32

_FRAME_LABEL = b"mqtt-fte frame aes-gcm"
_CONTROL_LABEL = b"mqtt-fte control aes-gcm"


@functools.lru_cache(maxsize=1024)
def _aead(key: bytes, label: bytes) -> AESGCM:
    return AESGCM(hmac.new(key, label, hashlib.sha256).digest())


def encrypted(header: Mapping[str, Any]) -> bool:
    """Is the transfer of this record (its header in the state store) encrypted?"""
    return header.get("encryption") == ENCRYPTION


# --------------------------------------------------------------------------- frames (chunks and bundles)


def encrypt_frame(frame: bytes | bytearray | memoryview, key: bytes) -> bytearray:
    """A whole frame (header with FLAG_AEAD in its flags, then data) encrypted: its first CLEAR_PREFIX bytes
    stay readable (and are authenticated), the rest of the header and the data are not."""
    view = memoryview(frame)
    out = bytearray(len(view) + OVERHEAD)
    nonce = os.urandom(NONCE_BYTES)
    out[:CLEAR_PREFIX] = view[:CLEAR_PREFIX]
    out[CLEAR_PREFIX:CLEAR_PREFIX + NONCE_BYTES] = nonce
    _aead(key, _FRAME_LABEL).encrypt_into(nonce, view[CLEAR_PREFIX:], view[:CLEAR_PREFIX],
                                          memoryview(out)[CLEAR_PREFIX + NONCE_BYTES:])
    return out


def decrypt_frame(payload: bytes | memoryview, key: bytes) -> memoryview | None:
    """The frame as it was before encrypt_frame, or None (truncated, tampered with, or another key)."""
    view = memoryview(payload)
    if len(view) < CLEAR_PREFIX + OVERHEAD:
        return None
    out = bytearray(len(view) - OVERHEAD)
    out[:CLEAR_PREFIX] = view[:CLEAR_PREFIX]
    start = CLEAR_PREFIX + NONCE_BYTES
    try:
        _aead(key, _FRAME_LABEL).decrypt_into(bytes(view[CLEAR_PREFIX:start]), view[start:], view[:CLEAR_PREFIX],
                                              memoryview(out)[CLEAR_PREFIX:])
    except InvalidTag:
        return None
    return memoryview(out)


# --------------------------------------------------------------------------- the offer key


def offer_private(identity: Ed25519PrivateKey) -> X25519PrivateKey:
    """The agent's static X25519 offer key, derived from its identity key (no second key file to keep)."""
    seed = identity.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mqtt-fte offer key").derive(seed)
    return X25519PrivateKey.from_private_bytes(raw)


def offer_public(identity: Ed25519PrivateKey) -> str:
    """The offer key as the agent's status publishes it (base64)."""
    raw = offer_private(identity).public_key().public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _offer_key(private: X25519PrivateKey, public: bytes, tid: str) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=tid.encode(), info=b"mqtt-fte offer").derive(shared)


def _raw_kx(b64: str) -> bytes:
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != KX_BYTES:
        raise ValueError("not an X25519 public key")
    return raw


# --------------------------------------------------------------------------- control envelopes


def is_envelope(payload: bytes) -> bool:
    return payload[:4] == ENVELOPE_MAGIC


def _seal(kind: int, kx: bytes, payload: bytes, aead: AESGCM, tid: str) -> bytes:
    head = _ENVELOPE_HEAD.pack(ENVELOPE_MAGIC, ENVELOPE_VERSION, kind) + kx
    nonce = os.urandom(NONCE_BYTES)
    return head + nonce + aead.encrypt(nonce, payload, head + tid.encode())


def seal_offer(payload: bytes, kx_private_b64: str, kx_public_b64: str, peer_offer_key: str, tid: str) -> bytes:
    """A Resync (as signed) encrypted to the destination's offer key with the transfer's ephemeral key."""
    private = X25519PrivateKey.from_private_bytes(base64.b64decode(kx_private_b64))
    key = _offer_key(private, _raw_kx(peer_offer_key), tid)
    return _seal(OFFER, _raw_kx(kx_public_b64), payload, AESGCM(key), tid)


def seal_reply(payload: bytes, transfer_key: bytes, kx_public_b64: str, tid: str) -> bytes:
    """A ResyncReply (as signed) under the control key, with the destination's kx readable beside it."""
    return _seal(REPLY, _raw_kx(kx_public_b64), payload, _aead(transfer_key, _CONTROL_LABEL), tid)


def seal_control(payload: bytes, transfer_key: bytes, tid: str) -> bytes:
    """Any other control message (with its MAC) under the control key."""
    return _seal(CONTROL, b"", payload, _aead(transfer_key, _CONTROL_LABEL), tid)


class Envelope:
    """An envelope as read, before it is opened: its kind, the kx it carries (base64; offers and replies)."""

    __slots__ = ("kind", "kx", "_head", "_nonce", "_box")

    def __init__(self, payload: bytes) -> None:
        if len(payload) < _ENVELOPE_HEAD.size:
            raise ProtocolError("encrypted control message shorter than its header")
        magic, version, kind = _ENVELOPE_HEAD.unpack_from(payload)
        if magic != ENVELOPE_MAGIC or version != ENVELOPE_VERSION:
            raise ProtocolError(f"encrypted control message of version {version} is not supported")
        if kind not in (OFFER, REPLY, CONTROL):
            raise ProtocolError(f"encrypted control message of unknown kind {kind}")
        at = _ENVELOPE_HEAD.size + (KX_BYTES if kind != CONTROL else 0)
        if len(payload) < at + OVERHEAD:
            raise ProtocolError("encrypted control message truncated")
        self.kind = kind
        self.kx = base64.b64encode(payload[_ENVELOPE_HEAD.size:at]).decode() if kind != CONTROL else None
        self._head = payload[:at]
        self._nonce = payload[at:at + NONCE_BYTES]
        self._box = payload[at + NONCE_BYTES:]

    def _open(self, aead: AESGCM, tid: str) -> bytes | None:
        try:
            return aead.decrypt(self._nonce, self._box, self._head + tid.encode())
        except InvalidTag:
            return None

    def open_offer(self, identity: Ed25519PrivateKey, tid: str) -> bytes | None:
        """The Resync inside, for the agent of `identity` (None: not encrypted to it, or tampered with)."""
        assert self.kx is not None
        try:
            key = _offer_key(offer_private(identity), _raw_kx(self.kx), tid)
        except ValueError:  # a low-order point (all zeros...): X25519 refuses it, and so do we
            return None
        return self._open(AESGCM(key), tid)

    def open_control(self, transfer_key: bytes, tid: str) -> bytes | None:
        """The message inside a REPLY or CONTROL envelope (None: another key, or tampered with)."""
        return self._open(_aead(transfer_key, _CONTROL_LABEL), tid)


def offer_for(header: Mapping[str, Any], payload: bytes, tid: str) -> bytes:
    """A Resync (as signed) as it travels for the transfer of this (source's) record: encrypted to the
    destination's offer key when the transfer is encrypted, else as it is."""
    if not encrypted(header):
        return payload
    return seal_offer(payload, header["kx_private"], header["kx_public"], header["peer_offer_key"], tid)


def envelope_for(header: Mapping[str, Any], payload: bytes, tid: str) -> bytes:
    """A control message (other than the negotiation) as it travels for the transfer of this record: encrypted
    when the transfer is and its key is known, else as it is (a Complete before any reply: it names no file)."""
    key = header.get("transfer_key")
    if not encrypted(header) or not key:
        return payload
    return seal_control(payload, base64.b64decode(key), tid)
