"""seal(): a control message sent in its canonical form with its signature or MAC as the last member; the
receiving side (parse, then check over the canonical form of what it parsed) accepts exactly that."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire.binding import check_message_mac, seal, verify_signed
from agent.wire.protocol import (Ack, FileHolding, FileOffer, FileOutcome, FileResults, Resync, ResyncReply,
                            new_transfer_id, parse_control)

TID = new_transfer_id()
KEY = bytes(range(32))

MESSAGES = [
    Ack(kind="ack", transfer_id=TID, epoch=3, index=7, offset=262144),
    Resync(kind="resync", transfer_id=TID, epoch=1, source_agent="A1", destination_agent="A2", exist="error",
           checksum="sha256", chunk_size=262144, job_name="nightly é", metadata={"k": "v"},
           files=[FileOffer(index=i, source=f"/in/{i}.csv", destination=f"/out/{i}.csv", size=i * 10,
                            mtime=1764000000.123456 + i) for i in range(50)]),
    ResyncReply(kind="resync_reply", transfer_id=TID, epoch=1, features=["bundle", "sparse_ack"], files=[
        FileHolding.model_construct(index=0, held=0, status="ready", result_code=0, supplement=None,
                                    destination="/out/0.csv", digest=None)]),
    FileResults(kind="file_results", transfer_id=TID, results=[
        FileOutcome.model_construct(index=1, result_code=0, supplement=None, destination="/out/1.csv",
                                    digest="ab" * 32)]),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.kind)
def test_mac_is_accepted_and_the_message_parses(msg) -> None:
    payload = seal(msg, KEY)
    body = json.loads(payload)
    assert check_message_mac(body, body["mac"], KEY)
    parsed = parse_control(payload)
    assert parsed.model_dump(exclude_none=True, exclude={"mac"}) == msg.model_dump(exclude_none=True)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.kind)
def test_signature_is_accepted(msg) -> None:
    identity = Ed25519PrivateKey.generate()
    body = json.loads(seal(msg, None, identity))
    assert "mac" not in body
    assert verify_signed(body, identity.public_key())
    assert not verify_signed(body, Ed25519PrivateKey.generate().public_key())


def test_a_changed_message_fails_its_mac() -> None:
    body = json.loads(seal(MESSAGES[0], KEY))
    body["offset"] += 1
    assert not check_message_mac(body, body["mac"], KEY)
    assert not check_message_mac(json.loads(seal(MESSAGES[0], KEY)), json.loads(seal(MESSAGES[0], KEY))["mac"],
                                 bytes(32))


def test_unsealed_message_has_neither() -> None:
    body = json.loads(seal(MESSAGES[0], None))
    assert "mac" not in body and "signature" not in body and body["offset"] == 262144
