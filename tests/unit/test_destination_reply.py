"""The destination's answer to a resync is built as JSON directly (agent.destination.ReplyBody), not as
FileHolding models: its bytes must be what the models gave, field for field, and stay a valid ResyncReply."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.destination_session import Holding, SendResyncReply
from agent.core.statuses import FileStatus
from agent.destination import FEATURES, ReplyBody, _resync_reply
from agent.wire.binding import seal, seal_body
from agent.wire.protocol import FileHolding, ResyncReply

TID = "ab" * 24
FULL = Holding(3, 10, FileStatus.DONE, 0, "a supplement", "/d/f", "h" * 64, "w" * 64)
BARE = Holding(0, 0, FileStatus.READY, 0, None, "/d/g", None)
FAILED = Holding(7, 0, FileStatus.FAILED, 70, 'destination "/d/x" already exists', "/d/x", None)


def _as_models(a: SendResyncReply, kx: str | None) -> ResyncReply:
    return ResyncReply(kind="resync_reply", transfer_id=TID, epoch=a.epoch, kx=kx, features=list(FEATURES),
                       fanout=a.fanout,
                       files=[FileHolding(index=h.index, held=h.held, status=h.status.value, result_code=h.result_code,
                                          supplement=h.supplement, destination=h.destination, digest=h.digest,
                                          written_digest=h.written_digest) for h in a.holdings])


@pytest.mark.parametrize(("kx", "fanout"), [(None, None), ("k" * 44, True)])
def test_the_reply_is_the_models_dump_byte_for_byte(kx: str | None, fanout: bool | None) -> None:
    a = SendResyncReply(5, (FULL, BARE, FAILED), fanout)
    [reply] = _resync_reply(a, TID, kx)
    assert isinstance(reply, ReplyBody)
    model = _as_models(a, kx)
    assert reply.body == model.model_dump(mode="json", exclude_none=True)
    key, identity = b"k" * 32, Ed25519PrivateKey.generate()
    assert seal_body(reply.body, key) == seal(model, key)
    signed = seal_body(reply.body, None, identity)
    assert json.loads(signed)["signature"]  # and it parses back as the source reads it
    assert ResyncReply.model_validate_json(signed).files == model.files


def test_every_field_of_a_holding_is_sent() -> None:
    """A field added to FileHolding (and Holding) must be added to the reply's JSON too: this fails until it is."""
    [reply] = _resync_reply(SendResyncReply(1, (FULL,), None), TID, None)
    assert set(reply.body["files"][0]) == set(FileHolding.model_fields)


def test_a_supplement_longer_than_the_wire_allows_is_cut_and_the_answer_still_parses() -> None:
    """A refusal quoting a destination path near its 4095-byte maximum is longer than the 4096 characters a string
    may have on the wire: sent whole, the source refused the whole answer (and the transfer stalled)."""
    from agent.core.destination_session import SendResults
    from agent.destination import _results
    from agent.store import FileRecord
    from agent.wire.protocol import MAX_PATH_CHARS, FileResult, FileResults

    long_path = "/d/" + "p" * (MAX_PATH_CHARS - 4)
    why = f'destination "{long_path}" already exists as the part file of transfer {TID}, which is writing it'
    assert len(why) > MAX_PATH_CHARS
    [reply] = _resync_reply(SendResyncReply(2, (Holding(1, 0, FileStatus.FAILED, 70, why, "/d/x", None),), None),
                            TID, None)
    parsed = ResyncReply.model_validate_json(seal_body(reply.body, None, Ed25519PrivateKey.generate()))
    sent = parsed.files[0].supplement
    assert sent is not None and len(sent) <= MAX_PATH_CHARS and "..." in sent
    head, tail = sent.split("...", 1)
    assert why.startswith(head) and why.endswith(tail) and tail.endswith("which is writing it")
    rec = FileRecord(1, "/s/x", "/d/x", 1, 0.0)
    rec.result_code, rec.supplement = 70, why
    for together, model in ((True, FileResults), (False, FileResult)):
        [msg] = _results(SendResults((rec,), together), TID, None)
        model.model_validate_json(msg.model_dump_json())  # what the source does with it: no error
