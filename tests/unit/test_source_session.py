"""The source session with a real state store and real files (no broker: what it publishes is kept)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.link import MessageTooLarge
from agent.source import SourceTransfer
from agent.store import FileRecord, TransferRecord
from tests.unit.test_destination_session import _context


def _too_big(topic: str, payload: bytes) -> None:
    raise MessageTooLarge(f"a {len(payload)}-byte message on {topic} is larger than the broker passes (its largest "
                          f"is 100 bytes, found by the broker check)")


@pytest.mark.parametrize("peer", ["READY", "UNREACHABLE"])
def test_a_negotiation_too_big_for_the_broker_fails_the_transfer_at_once(tmp_path: Path, peer: str) -> None:
    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    ctx.name, ctx.check_size, ctx.peer_status = "A1", _too_big, lambda agent: peer
    src = tmp_path / "src"
    src.mkdir()
    rec = TransferRecord("c" * 48, "source", "queued", "A2", {"source_agent": "A1", "destination_agent": "A2"})
    for i in range(3):
        (src / f"f{i}").write_bytes(b"x" * 10)
        rec.files.append(FileRecord(i, str(src / f"f{i}"), f"/out/f{i}", 10, (src / f"f{i}").stat().st_mtime))
    ctx.store.save_transfer(rec)
    session = SourceTransfer(ctx, rec)

    asyncio.run(asyncio.wait_for(session.run(), 10))

    assert session.state.value == "failed"
    kinds = [m["kind"] for m in sent if "kind" in m]  # (the rest: progress on the transfer's status topic)
    assert "resync" not in kinds and "complete" in kinds, kinds
    stored = ctx.store.load_transfer(rec.transfer_id, "source")
    assert stored is not None and stored.state == "failed" and stored.result_code == 40
    events = [json.loads(payload) for _, _, payload, _ in ctx.store.outbox_peek()]
    [completed] = [e for e in events if e["action"] == "completed"]
    assert "does not fit through the broker" in completed["message"], completed
    assert "send the files in smaller transfers" in completed["message"], completed
    assert {f["result_code"] for f in completed["files"]} == {1}
