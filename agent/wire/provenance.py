"""Which agent produced a message: replies, log events and statuses signed with the agent's identity key.

Anyone on the broker can publish on an agent's reply, log and status topics, so a client must not believe a
message there because of where it arrived. Every such message an agent publishes is a JSON object that ends
with one more member, `"signature"`: the base64 Ed25519 signature, by the agent's identity key
(agents/<NAME>/agent.key, agent.wire.binding), of

    b"mqtt-fte " + PURPOSE + b"\\n" + SUBJECT + b"\\n" + the message without its signature member

where the message without its signature member is the published bytes with the final `,"signature":"..."`
removed (the object closed again with `}`), PURPOSE says what kind of message it is and SUBJECT what it is
bound to:

    reply   the agent's name            (the reply names its request_id: bound to one request of one agent)
    status  the agent's name            (its `time` says how old it is)
    event   the topic it is published on (Log/<agent>/<transfer id>, Transfers/<agent>/<transfer id>, ...)

So a signature cannot be moved to another agent, another transfer or another kind of message, and the
message stays plain JSON for any subscriber (who may ignore the signature). Signing appends to the bytes
already made (no second serialisation: events are published per file of a big transfer); verifying slices
them, so a verifier in any language needs no canonical JSON.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

REPLY = b"reply"
STATUS = b"status"
EVENT = b"event"

_MEMBER = b'"signature":"'
# an Ed25519 signature is 64 bytes: 88 base64 characters
_TAIL = re.compile(rb'(,?)"signature":"([A-Za-z0-9+/]{86}==)"\s*}\s*\Z')
_TAIL_WINDOW = 160  # bytes: the member (104), its comma, and whitespace a re-indenting relay might add


def _signed_bytes(purpose: bytes, subject: str, body: bytes) -> bytes:
    return b"mqtt-fte " + purpose + b"\n" + subject.encode() + b"\n" + body


def sign_payload(payload: bytes, purpose: bytes, subject: str, key: Ed25519PrivateKey | None) -> bytes:
    """`payload` (a JSON object, as serialised) with its signature member added last. No key, or a payload
    that is not an object (an empty retained message clears a topic): returned as it is."""
    text = payload.rstrip()
    if key is None or not text.endswith(b"}"):
        return payload
    sig = base64.b64encode(key.sign(_signed_bytes(purpose, subject, text)))
    inner = text[:-1].rstrip()
    sep = b"" if inner.endswith(b"{") else b","
    return inner + sep + _MEMBER + sig + b'"}'


def unsigned_body(payload: bytes) -> tuple[bytes, bytes] | None:
    """(the message without its signature member, the raw signature), or None when it carries none."""
    # only the tail can hold it: a 2 MB event is not scanned
    start = max(0, len(payload) - _TAIL_WINDOW)
    m = _TAIL.search(payload, start)
    if m is None:
        return None
    inner = payload[:m.start()].rstrip()
    body = inner + b"}"
    if not m.group(1) and not inner.endswith(b"{"):
        return None  # `"signature"` not at the end of the object's member list
    try:
        return body, base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_payload(payload: bytes, purpose: bytes, subject: str, keys: Iterable[Ed25519PublicKey | Any]) -> bool:
    """True when `payload` is signed, for `purpose` and `subject`, by one of `keys`."""
    found = unsigned_body(payload)
    if found is None:
        return False
    body, sig = found
    data = _signed_bytes(purpose, subject, body)
    for key in keys:
        if key is None:
            continue
        try:
            key.verify(sig, data)
            return True
        except InvalidSignature:
            continue
    return False


def why_unverified(payload: bytes, keys: list[Any], who: str) -> str:
    """Why verify_payload said no, in words for a -v note or a log line."""
    if unsigned_body(payload) is None:
        return "not signed"
    if not keys:
        return f"no key of agent {who} is trusted here"
    return f"the signature is not by agent {who}'s key (a forgery, or the agent's key changed)"
