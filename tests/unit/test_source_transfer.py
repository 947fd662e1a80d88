"""The source driver (agent/source.py) on a real store and real files (no broker: what it publishes is kept)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.link import MessageTooLarge
from agent.source import SourceTransfer
from agent.store import FileRecord, TransferRecord
from tests.support.session_pair import Pair
from tests.unit.test_destination_driver import _context


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


# --------------------------------------------------------------------------- the source file changes while it is sent


def _source_file(tmp_path: Path, size: int = 64 * 1024) -> tuple[Path, Path, bytes]:
    src = tmp_path / "a" / "big.bin"
    src.parent.mkdir(exist_ok=True)
    data = bytes(range(256)) * (size // 256)
    src.write_bytes(data)
    return src, tmp_path / "b" / "out" / "big.bin", data


def test_the_pair_delivers_an_unchanged_file(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    src, dst, data = _source_file(tmp_path)
    completed = pair.run([(src, dst)])
    assert completed["result_code"] == 0, completed
    assert dst.read_bytes() == data
    assert pair.chunks == 16


def _rewrite_in_place(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"\xff" * 1000)


def _append(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"tail" * 5)


def _truncate(path: Path) -> None:
    os.truncate(path, 5000)


def _replace(path: Path) -> None:
    tmp = path.with_name("new.bin")
    tmp.write_bytes(b"\xee" * path.stat().st_size)
    os.replace(tmp, path)


@pytest.mark.parametrize("change, how", [(_append, "size 65536 -> 65556"), (_rewrite_in_place, "rewritten at the same size"),
                                          (_truncate, "size 65536 -> 5000"), (_replace, "replaced by another file")],
                         ids=["appended", "rewritten", "truncated", "replaced"])
def test_a_source_changed_while_it_is_sent_never_succeeds(tmp_path: Path, change: Any, how: str) -> None:
    """The file changes after its first chunks were read and delivered (window 2 of 16 chunks): the source
    finds out after its last read (fstat, and what the path names), fails the file saying so, and sends no
    FileEnd, so the destination never renames a torn or shortened file into place."""
    pair = Pair(tmp_path)
    src, dst, data = _source_file(tmp_path)
    pair.on_chunk = lambda n: n == 2 and change(src)
    completed = pair.run([(src, dst)])
    assert completed["result_code"] == 40, completed
    [f] = completed["files"]
    assert f["result_code"] == 1
    assert f["supplement"] == f"FTEIO0003E: source file changed while it was being sent ({how}); resend it", f
    assert "file_end" not in pair.kinds, pair.kinds
    assert not dst.exists()
    assert not list(dst.parent.glob("*.part"))  # removed when the outcome reached the destination


def test_a_small_file_rewritten_after_the_request_is_not_sent_as_another_version(tmp_path: Path) -> None:
    """Small files travel whole in bundles: a file rewritten (same size, a new mtime) between the request
    and its reading fails, like one that changed during its sending; the other file of the set arrives: 20."""
    pair = Pair(tmp_path)
    (tmp_path / "a").mkdir(exist_ok=True)
    small, other = tmp_path / "a" / "small.txt", tmp_path / "a" / "other.txt"
    small.write_bytes(b"version 1\n")
    other.write_bytes(b"unchanged\n")
    out = tmp_path / "b" / "out"

    def rewrite() -> None:
        small.write_bytes(b"version 2\n")
        st = small.stat()
        os.utime(small, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))  # past any timestamp granularity

    completed = pair.run([(small, out / "small.txt"), (other, out / "other.txt")], before=rewrite)
    assert completed["result_code"] == 20, completed
    by_name = {Path(f["source"]).name: f for f in completed["files"]}
    assert by_name["other.txt"]["result_code"] == 0
    assert by_name["small.txt"]["result_code"] == 1
    assert by_name["small.txt"]["supplement"].startswith("FTEIO0003E: source file changed"), by_name
    assert not (out / "small.txt").exists()
    assert (out / "other.txt").read_bytes() == b"unchanged\n"
