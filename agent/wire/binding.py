"""Binding a transfer's data and control messages to it, so that nobody else on the broker can
inject chunks, forge acknowledgements or end it.

Each agent has an Ed25519 identity key (agents/<NAME>/agent.key). When a transfer is negotiated, the
source's Resync carries a fresh X25519 public key and is signed with the source's identity key; the
destination answers with its own fresh X25519 key in a ResyncReply signed with its identity key.
Each side checks the other's signature against its authorized_requesters file (entry
`agent.<NAME>` with the transfer permission). Both then derive the transfer key

    K = HKDF-SHA256(X25519(own ephemeral, peer ephemeral), salt=transfer id, info="mqtt-fte transfer")

and every later message of the transfer carries a MAC under K: a trailer on chunks (AES-GMAC under a key
derived from K, 28 bytes: nonce and tag, to a destination with the feature "gmac"; else the first 16 bytes
of HMAC-SHA256), a `mac` field on control messages. Nobody without one of the two ephemeral private keys can compute K,
and nobody without a trusted identity key can substitute their own ephemeral key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..atomic_files import write_atomic
from ..auth import canonical, load_public
from .encryption import decrypt_frame, encrypt_frame
from .protocol import CHUNK_FLAGS_AT, FLAG_AEAD, FLAG_GMAC

MAC_BYTES = 16  # HMAC-SHA256 trailer of a chunk frame (first 16 bytes), and of control messages
GMAC_NONCE_BYTES = 12
GMAC_TAG_BYTES = 16
GMAC_BYTES = GMAC_NONCE_BYTES + GMAC_TAG_BYTES  # AES-GMAC trailer of a chunk frame: random nonce, tag
MAX_TRAILER_BYTES = max(MAC_BYTES, GMAC_BYTES)
AGENT_KEY_FILE = "agent.key"


def agent_requester(agent: str) -> str:
    """The name under which an agent's identity key appears in another agent's trust file."""
    return f"agent.{agent}"


def load_or_create_agent_key(agent_home: Path) -> Ed25519PrivateKey:
    path = agent_home / AGENT_KEY_FILE
    if not path.exists():
        # written whole and linked into place (agent.atomic_files): a neighbour reading it at that moment
        # (fte-create-agent trusting the agents beside it) sees no key or the whole key, never half of one
        key = Ed25519PrivateKey.generate()
        try:
            write_atomic(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600, replace=False)
            return key
        except FileExistsError:
            pass  # another process made it a moment ago: that one is the agent's key
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def new_ephemeral() -> tuple[bytes, str]:
    """A fresh X25519 key for one transfer: (private bytes to keep in the state store, public base64)."""
    priv = X25519PrivateKey.generate()
    raw = priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw, base64.b64encode(pub).decode()


def derive_key(own_private: bytes, peer_public_b64: str, transfer_id: str) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(base64.b64decode(peer_public_b64, validate=True))
    except Exception:
        raise ValueError("the peer's key exchange value is not an X25519 public key") from None
    shared = X25519PrivateKey.from_private_bytes(own_private).exchange(peer)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=transfer_id.encode(),
                info=b"mqtt-fte transfer").derive(shared)


# --------------------------------------------------------------------------- signatures (negotiation)


def sign_message(body: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.sign(canonical(_unsigned(body)))).decode()


def verify_message(body: Mapping[str, Any], signature: str | None, public_b64: str) -> bool:
    if not signature:
        return False
    try:
        load_public(public_b64).verify(base64.b64decode(signature, validate=True), canonical(_unsigned(body)))
        return True
    except Exception:
        return False


def _unsigned(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("signature", "mac")}


# --------------------------------------------------------------------------- MACs (everything after)


def _mac(data: bytes | memoryview, key: bytes) -> bytes:
    """The MAC of a message's canonical form or of a chunk frame: HMAC-SHA256, first MAC_BYTES bytes."""
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_BYTES]


def mac_message(body: Mapping[str, Any], key: bytes) -> str:
    return base64.b64encode(_mac(canonical(_unsigned(body)), key)).decode()


def check_message_mac(body: Mapping[str, Any], mac: str | None, key: bytes) -> bool:
    return bool(mac) and hmac.compare_digest(mac_message(body, key), mac or "")


def mac_chunk(frame: bytes | memoryview, key: bytes) -> bytes:
    """The HMAC trailer of a chunk frame (a destination without the feature "gmac")."""
    return _mac(frame, key)


# AES-GMAC (AES-GCM authenticating the frame as associated data, nothing encrypted) instead of HMAC-SHA256 for
# chunk frames: every byte of a transfer goes through the MAC on both sides, and HMAC-SHA256 cost as much as
# the file's own sha256 (0.93 s per GiB on the measuring machine, against 0.05 s: AES-NI and carry-less
# multiplication). Its own key, derived from the transfer key, so that no key serves two algorithms. A fresh
# random 96-bit nonce per frame: a resend of the same place never reuses one, and no counter has to survive a
# restart; random nonces are safe to about 2^32 frames per key (NIST SP 800-38D), 1 PiB of 256 KiB chunks.
def gmac_key(key: bytes) -> bytes:
    return hmac.new(key, b"mqtt-fte chunk gmac", hashlib.sha256).digest()


@functools.lru_cache(maxsize=512)
def _gcm(key: bytes) -> AESGCM:
    return AESGCM(gmac_key(key))


def gmac_chunk(frame: bytes | memoryview, key: bytes) -> bytes:
    """The AES-GMAC trailer of a chunk frame (flag FLAG_GMAC set in it): nonce + tag."""
    nonce = os.urandom(GMAC_NONCE_BYTES)
    return nonce + _gcm(key).encrypt(nonce, b"", frame)


class ChunkSealer:
    """How a bound transfer's source seals its frames: encrypted (AES-GCM, agent.wire.encryption) on an encrypted
    transfer, else authenticated by a trailer (AES-GMAC to a destination with "gmac", else HMAC). `room`: the
    bytes to leave after a frame for its trailer; `flag`: the frame flag saying which."""

    __slots__ = ("key", "gmac", "aead", "trailer", "room", "flag")

    def __init__(self, key: bytes, gmac: bool, aead: bool = False) -> None:
        self.key = key
        self.gmac = gmac
        self.aead = aead
        self.trailer = GMAC_BYTES if gmac or aead else MAC_BYTES
        self.room = 0 if aead else self.trailer  # encrypt_frame writes a new buffer
        self.flag = FLAG_AEAD if aead else FLAG_GMAC if gmac else 0

    def seal(self, frame: bytes | memoryview) -> bytes:
        """The trailer for `frame` (whose flags already include self.flag); not for an encrypted transfer."""
        assert not self.aead
        return gmac_chunk(frame, self.key) if self.gmac else mac_chunk(frame, self.key)

    def finish(self, frame: bytes | bytearray | memoryview) -> bytes | bytearray:
        """`frame` as it travels: encrypted, or with its trailer after it."""
        if self.aead:
            return encrypt_frame(frame, self.key)
        return bytes(frame) + self.seal(frame)


def check_chunk_mac(frame_with_mac: bytes, key: bytes, encrypted: bool = False) -> memoryview | None:
    """The frame without its MAC trailer (a view: 256 KiB not copied), or decrypted, when its MAC is right,
    else None. The frame's flags say which trailer it carries; each is unforgeable without the transfer key,
    so flipping a flag gains an attacker nothing but a refusal. `encrypted`: the transfer is, and a frame that
    is not (a downgrade, or a source that does not encrypt) is refused."""
    if len(frame_with_mac) <= CHUNK_FLAGS_AT:
        return None
    view = memoryview(frame_with_mac)
    flags = view[CHUNK_FLAGS_AT]
    if flags & FLAG_AEAD:
        return decrypt_frame(view, key)
    if encrypted:
        return None
    if flags & FLAG_GMAC:
        if len(view) < GMAC_BYTES:
            return None
        frame = view[:-GMAC_BYTES]
        nonce = bytes(view[-GMAC_BYTES:-GMAC_TAG_BYTES])
        try:
            _gcm(key).decrypt(nonce, bytes(view[-GMAC_TAG_BYTES:]), frame)
        except InvalidTag:
            return None
        return frame
    if len(view) < MAC_BYTES:
        return None
    frame = view[:-MAC_BYTES]
    if hmac.compare_digest(mac_chunk(frame, key), view[-MAC_BYTES:]):
        return frame
    return None


# --------------------------------------------------------------------------- what the sessions call


def transfer_key(header: Mapping[str, Any]) -> bytes | None:
    """The transfer key kept in a transfer's header in the state store (None: the peer has no binding)."""
    k = header.get("transfer_key")
    return base64.b64decode(k) if k else None


def seal(msg: Any, key: bytes | None, identity: Ed25519PrivateKey | None = None) -> bytes:
    """The bytes of a control message: with its MAC under the transfer key, or signed by the agent's
    identity (negotiation), or plain when the peer has no binding."""
    return seal_body(msg.model_dump(mode="json", exclude_none=True), key, identity)


def seal_body(body: Mapping[str, Any], key: bytes | None, identity: Ed25519PrivateKey | None = None) -> bytes:
    """`seal` of a message already in its JSON form (what model_dump(mode="json", exclude_none=True) gives)."""
    import json

    if identity is None and key is None:
        return json.dumps(body, separators=(",", ":")).encode()
    # The canonical form (what the signature or MAC covers) is sent as it is, with the seal added as its last
    # member: one serialisation of the message instead of three (a resync of 10,000 files is 2 MB of JSON).
    text = canonical(_unsigned(body))
    if identity is not None:
        seal_field = b'"signature":"' + base64.b64encode(identity.sign(text)) + b'"'
    else:
        seal_field = b'"mac":"' + base64.b64encode(_mac(text, key)) + b'"'  # type: ignore[arg-type]
    return text[:-1] + (b"," if len(text) > 2 else b"") + seal_field + b"}"


def verify_signed(body: Mapping[str, Any], public: Any) -> bool:
    """`public`: an Ed25519PublicKey (from the trust file)."""
    sig = body.get("signature")
    if not sig:
        return False
    try:
        public.verify(base64.b64decode(str(sig), validate=True), canonical(_unsigned(body)))
        return True
    except Exception:
        return False
