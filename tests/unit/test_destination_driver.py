"""The destination's IO driver (agent/destination.py) with a real state store and real files (no broker: what
it publishes is kept): a bundle's files are renamed into place and answered at once, their "done" rows are
saved with the next commit, and a restart in between finishes them as done; a new transfer never resumes a
stranger's part file."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from agent.context import AgentContext
from agent.destination import DestinationTransfer
from agent.wire.protocol import Complete, FileOffer, Resync, Topics, decode_chunk, encode_bundle, new_transfer_id
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


# --------------------------------------------------------------------------- the destination's disk fills up


def _full_disk_pair(tmp_path: Path) -> tuple[Any, Path, Any]:
    from tests.support.session_pair import Pair
    from tests.support.tmpfs import small_tmpfs

    pair = Pair(tmp_path)
    disk = tmp_path / "b" / "disk"
    mount = small_tmpfs(disk, "64k")
    mount.__enter__()
    return pair, disk, mount


def test_a_full_disk_fails_the_file_at_once_and_removes_its_part_file(tmp_path: Path) -> None:
    """256 KiB to a 64 KiB tmpfs, chunk by chunk: the write fails with ENOSPC (after a short write, which
    is not taken for success), the file fails at once saying so, its part file is removed, the source is
    told and the transfer ends 40 (before: the OSError escaped the handler, the source recovered for ever)."""
    pair, disk, mount = _full_disk_pair(tmp_path)
    try:
        src = tmp_path / "a" / "big.bin"
        src.write_bytes(b"x" * 256 * 1024)
        completed = pair.run([(src, disk / "big.bin")], timeout=10)
        assert completed["result_code"] == 40, completed
        [f] = completed["files"]
        assert f["result_code"] == 1
        assert f["supplement"].startswith(f"FTEIO0001E: write to {disk}/big.bin"), f  # (its part file)
        assert f["supplement"].endswith(" failed: No space left on device (ENOSPC)"), f
        assert os.listdir(disk) == []
    finally:
        mount.__exit__(None, None, None)


def test_a_full_disk_fails_the_big_file_and_the_small_one_arrives(tmp_path: Path) -> None:
    """A set of a small file (in a bundle) and a big one (in chunks) to a 64 KiB tmpfs: 20."""
    pair, disk, mount = _full_disk_pair(tmp_path)
    try:
        small, big = tmp_path / "a" / "small.txt", tmp_path / "a" / "big.bin"
        small.write_bytes(b"small\n")
        big.write_bytes(b"x" * 256 * 1024)
        completed = pair.run([(small, disk / "small.txt"), (big, disk / "big.bin")], timeout=10)
        assert completed["result_code"] == 20, completed
        assert [f["result_code"] for f in completed["files"]] == [0, 1]
        assert "No space left on device (ENOSPC)" in completed["files"][1]["supplement"]
        assert os.listdir(disk) == ["small.txt"]
    finally:
        mount.__exit__(None, None, None)


def test_a_bundle_written_short_to_a_full_disk_is_not_renamed_into_place(tmp_path: Path) -> None:
    """Whole small files (a bundle) to a tmpfs with 8 KiB left: a write that stores only part of a file and
    returns its count is not taken for the whole file (before: the part file was renamed into place short,
    its digest checked against the data meant to be written)."""
    pair, disk, mount = _full_disk_pair(tmp_path)
    try:
        (disk / "filler").write_bytes(b"f" * (64 - 6) * 1024)
        pair.src_ctx.chunk_size = pair.dst_ctx.chunk_size = 65536  # files up to 32 KiB travel in bundles
        src = tmp_path / "a" / "mid.bin"
        src.write_bytes(b"m" * 30 * 1024)
        completed = pair.run([(src, disk / "mid.bin")], timeout=10)
        assert completed["result_code"] == 40, completed
        assert "No space left on device (ENOSPC)" in completed["files"][0]["supplement"], completed
        assert sorted(os.listdir(disk)) == ["filler"]
    finally:
        mount.__exit__(None, None, None)


def test_a_bundles_part_files_are_fsynced_together_each_before_its_rename(tmp_path: Path, monkeypatch: Any) -> None:
    """The part files of a bundle are fsynced concurrently, off the event loop (agent/durability.py: one
    journal commit serves many), and the guarantee per file holds: fsync of its part file, then its rename,
    then the fsync of the directory, then the answer. Before: fsynced one after the other in the event
    loop (the first fsync waited at the barrier for a second that never came)."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    overlap = threading.Barrier(2, timeout=5)
    waited = [0]
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        with lock:
            first_two = path.endswith(".part") and waited[0] < 2
            waited[0] += first_two
        if first_two:
            overlap.wait()  # both part files are in their fsync at once
        real_fsync(fd)
        with lock:
            events.append(("fsync", path))

    def rename(src: str, dst: str, **kw: Any) -> None:
        real_rename(src, dst, **kw)
        with lock:
            events.append(("rename", src))

    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    publish = ctx.publish

    async def recording(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        with lock:
            events.append(("send", json.loads(payload)["kind"]))
        await publish(topic, payload, qos, retain)

    ctx.publish = recording
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    tid = new_transfer_id()
    out = tmp_path / "out"
    asyncio.run(_bundle_delivered(ctx, tid, out))
    assert [p.read_bytes() for p in sorted(out.iterdir())] == CONTENTS
    answer = events.index(("send", "file_results"))
    dir_synced = events.index(("fsync", str(out)))
    for i in range(len(CONTENTS)):
        synced = events.index(("fsync", f"{out}/f{i}.part"))
        renamed = events.index(("rename", f"f{i}.part"))
        assert synced < renamed < dir_synced < answer, events


def test_with_de_error_a_file_created_just_before_the_rename_is_never_replaced(tmp_path: Path,
                                                                                monkeypatch: Any) -> None:
    """-de error: the destination is checked when the transfer starts and again before the rename; a file that
    another process creates between that check and the rename (here: while the part files are fsynced) is
    kept as it is, and the transfer's file fails with BFGIO0006E, its part file removed. Before: a plain
    rename replaced it."""
    out = tmp_path / "out"
    theirs = out / "f1"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("f1.part") and not theirs.exists():
            theirs.write_bytes(b"another process wrote this")

    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    monkeypatch.setattr(os, "fsync", fsync)
    tid = new_transfer_id()

    async def run() -> None:
        resync = _resync(tid, out).model_copy(update={"exist": "error"})
        dest = DestinationTransfer.accept(ctx, resync)
        await dest.on_resync(resync)
        await dest.on_bundle(_bundle())
        await _settle(dest)

    asyncio.run(run())
    assert theirs.read_bytes() == b"another process wrote this"
    assert (out / "f0").read_bytes() == CONTENTS[0] and (out / "f2").read_bytes() == CONTENTS[2]
    assert not list(out.glob("*.part"))
    results = {r["index"]: r for r in sent[-1]["results"]}
    assert results[1]["result_code"] != 0 and "BFGIO0006E" in results[1]["supplement"], results
    assert results[0]["result_code"] == 0 and results[2]["result_code"] == 0, results


def test_the_driver_asks_for_recovery_when_its_timer_runs_out_and_stops_it_at_the_end(tmp_path: Path) -> None:
    """The one timer: armed at the session's deadline (here an ack timeout of 50 ms), it sends the session's
    request for recovery; the outcome of the transfer stops it."""
    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    ctx.ack_timeout = 0.05
    tid = new_transfer_id()
    out = tmp_path / "out"

    async def run() -> None:
        asked = asyncio.Event()
        publish = ctx.publish

        async def recording(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            await publish(topic, payload, qos, retain)
            if sent[-1]["kind"] == "request_recovery":
                asked.set()

        ctx.publish = recording
        dest = DestinationTransfer.accept(ctx, _resync(tid, out))
        await dest.on_resync(_resync(tid, out))
        assert dest._timer is not None
        await asyncio.wait_for(asked.wait(), 5)
        request = sent[-1]
        assert (request["reason"], request["cancel"]) == ("no data from A1 for 0.05 s", False)
        assert dest._timer is not None  # armed again for the next timeout
        await dest.on_complete(Complete(kind="complete", transfer_id=tid, source_agent="A1", state="failed",
                                        result_code=40))
        await _settle(dest)
        assert dest._timer is None and not dest.active
        assert sent[-1]["kind"] == "complete_ack"

    asyncio.run(run())
