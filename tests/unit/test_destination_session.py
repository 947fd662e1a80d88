"""The destination session with a real state store and real files (no broker: what it publishes is kept):
a bundle's files are renamed into place and answered at once, their "done" rows are saved with the next
commit, and a restart in between finishes them as done; a new transfer never resumes a stranger's part file."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from agent.context import AgentContext
from agent.destination import DestinationTransfer
from agent.protocol import Complete, FileOffer, Resync, Topics, decode_chunk, encode_bundle, new_transfer_id
from agent.sandbox import Sandbox
from agent.store import StateStore
from agent.transferlog import TransferLog

CONTENTS = [b"alpha", b"b" * 3000, b""]


def _context(tmp_path: Path, sent: list[dict[str, Any]]) -> AgentContext:
    store = StateStore(tmp_path / "state.db")
    topics = Topics("SYSTEM.FTE")

    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        sent.append(json.loads(payload))

    return AgentContext(name="A2", topics=topics, store=store, log=TransferLog("A2", topics, store, lambda: None),
                        sandbox=Sandbox([tmp_path]), publish=publish, link_up=lambda: True,
                        peer_status=lambda agent: "READY", chunk_size=262144, window_chunks=16, ack_timeout=60,
                        ack_retries=1, agent_recovery_timeout=-1, on_state_change=lambda: None)


def _resync(tid: str, out: Path, epoch: int = 1) -> Resync:
    return Resync(kind="resync", transfer_id=tid, epoch=epoch, source_agent="A1", destination_agent="A2",
                  exist="overwrite", checksum="sha256", chunk_size=262144,
                  files=[FileOffer(index=i, source=f"/src/{i}", destination=str(out / f"f{i}"), size=len(c))
                         for i, c in enumerate(CONTENTS)])


def _bundle() -> Any:
    return decode_chunk(encode_bundle(1, [(i, hashlib.sha256(c).hexdigest(), c) for i, c in enumerate(CONTENTS)]))


def _rows(ctx: AgentContext, tid: str) -> list[str]:
    rec = ctx.store.load_transfer(tid, "destination")
    assert rec is not None
    return [f.status for f in rec.files]


async def _settle(dest: DestinationTransfer) -> None:
    # its replies are published by tasks of their own (not awaited by the handler)
    await asyncio.wait_for(asyncio.gather(*list(dest._pending)), 5)


async def _bundle_delivered(ctx: AgentContext, tid: str, out: Path) -> DestinationTransfer:
    """A new transfer of CONTENTS negotiated and its one bundle received."""
    dest = DestinationTransfer.accept(ctx, _resync(tid, out))
    await dest.on_resync(_resync(tid, out))
    await dest.on_bundle(_bundle())
    await _settle(dest)
    return dest


def test_a_bundle_is_answered_at_once_and_its_rows_saved_with_the_next_commit(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    tid = new_transfer_id()
    out = tmp_path / "out"

    async def run() -> None:
        dest = await _bundle_delivered(ctx, tid, out)
        assert [p.read_bytes() for p in sorted(out.iterdir())] == CONTENTS
        assert not list(out.glob("*.part"))
        answer = sent[-1]
        assert answer["kind"] == "file_results"
        assert [(r["index"], r["result_code"]) for r in answer["results"]] == [(0, 0), (1, 0), (2, 0)]
        # verified and renamed; "done" not committed yet: the rows say "renaming"
        assert _rows(ctx, tid) == ["renaming"] * 3
        await dest.on_complete(Complete(kind="complete", transfer_id=tid, source_agent="A1", state="complete",
                                        result_code=0))
        await _settle(dest)
        assert _rows(ctx, tid) == ["done"] * 3

    asyncio.run(run())


def test_a_restart_before_the_next_commit_finishes_the_files_as_done(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    tid = new_transfer_id()
    out = tmp_path / "out"

    asyncio.run(_bundle_delivered(ctx, tid, out))
    assert _rows(ctx, tid) == ["renaming"] * 3
    # the agent is killed here; at its restart the session is built again from the store
    rec = ctx.store.load_transfer(tid, "destination")
    assert rec is not None
    again = DestinationTransfer(ctx, rec)
    assert [f.status for f in again.files.values()] == ["done"] * 3
    assert _rows(ctx, tid) == ["done"] * 3
    assert [p.read_bytes() for p in sorted(out.iterdir())] == CONTENTS


def test_a_new_transfer_holds_nothing_whatever_part_file_lies_there(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    tid = new_transfer_id()
    out = tmp_path / "out"
    out.mkdir()
    (out / "f1.part").write_bytes(b"x" * 2000)  # left by some other transfer

    async def run() -> None:
        dest = DestinationTransfer.accept(ctx, _resync(tid, out))
        for epoch in (1, 2):  # the negotiation, then a quiet resync before anything was written
            await dest.on_resync(_resync(tid, out, epoch))
            await _settle(dest)
            reply = sent[-1]
            assert reply["kind"] == "resync_reply"
            assert [h["held"] for h in reply["files"]] == [0, 0, 0]
        await dest.on_bundle(decode_chunk(encode_bundle(2, [(i, hashlib.sha256(c).hexdigest(), c)
                                                            for i, c in enumerate(CONTENTS)])))
        await _settle(dest)
        assert (out / "f1").read_bytes() == CONTENTS[1]

    asyncio.run(run())
