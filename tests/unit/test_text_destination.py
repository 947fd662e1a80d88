"""-t text at the destination: the session's rules (verified -> converting -> renaming, or failed) as tables,
and the driver with a real state store and real files (a verified part file converted into `<name>.part.part`,
renamed into place; a failure leaves nothing; a restart in `converting` or `renaming` finishes the file)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent.context import AgentContext
from agent.core import results
from agent.core.destination_session import (Answer, ConvertParts, DestinationSession, RenameParts, SealPart,
                                            SendResults, SendResyncReply)
from agent.core.statuses import FileStatus
from agent.destination import DestinationTransfer
from agent.part_files import part_path, text_part_path
from agent.wire.protocol import FileOffer, Resync, TextConversion, decode_chunk, encode_bundle, new_transfer_id
from tests.unit.test_destination_driver import _context
from tests.unit.test_destination_session import Row

READY, CONVERTING, RENAMING, DONE, FAILED = (FileStatus.READY, FileStatus.CONVERTING, FileStatus.RENAMING,
                                             FileStatus.DONE, FileStatus.FAILED)


def session(*rows: Row, **kw: Any) -> DestinationSession:
    return DestinationSession(rows, agent="A2", peer="A1", epoch=1, ack_timeout=60.0, fresh=True, text=True, **kw)


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


# --------------------------------------------------------------------------- the session


def test_a_verified_text_file_is_converted_then_renamed_with_its_written_digest() -> None:
    s = session(Row(0, 3, offset=3, digest="h"))
    actions = s.sealed(SealPart(s.files[0]), "h", None, now=1.0)
    assert kinds(actions) == ["SaveFiles", "ConvertParts"]  # "converting" saved before the conversion
    assert s.files[0].status == CONVERTING and s.files[0].digest == "h"
    convert = actions[1]
    assert convert.answer is Answer.ONE and not convert.restart
    actions = s.converted(convert, [("w", None)], now=1.0)
    assert kinds(actions) == ["SaveFiles", "RenameParts"]
    assert s.files[0].status == RENAMING and s.files[0].written_digest == "w"
    rename = actions[1]
    assert rename.converted and rename.answer is Answer.ONE
    actions = s.renamed(rename, [None], now=1.0)
    assert kinds(actions) == ["SaveFiles", "SendResults"] and s.files[0].status == DONE
    assert (s.files[0].digest, s.files[0].written_digest) == ("h", "w")  # the source's, and what was written


def test_a_digest_mismatch_fails_before_any_conversion() -> None:
    s = session(Row(0, 3, offset=3, digest="h"))
    actions = s.sealed(SealPart(s.files[0]), "other", None, now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"] and s.files[0].status == FAILED


def test_a_file_that_cannot_be_converted_fails_and_its_files_go() -> None:
    s = session(Row(0, 3, offset=3, digest="h"))
    [_, convert] = s.sealed(SealPart(s.files[0]), "h", None, now=1.0)
    actions = s.converted(convert, [(None, "FTEIO0004E: text conversion of /in/f0 failed: ...")], now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"]
    f = s.files[0]
    assert (f.status, f.result_code, f.written_digest) == (FAILED, results.FILE_FAILED, None)
    assert f.supplement.startswith("FTEIO0004E")


def test_a_bundle_is_converted_then_renamed_and_answered_together() -> None:
    s = session(Row(0, 1), Row(1, 1), Row(2, 1))
    bundle = SimpleNamespace(epoch=1, entries=[SimpleNamespace(index=i, data=b"x", digest=f"h{i}") for i in range(3)])
    [write] = s.receive(bundle, now=1.0)
    actions = s.files_written(write, [("h0", None), ("bad", None), ("h2", None)], now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "ConvertParts"]
    convert = actions[2]
    assert convert.answer is Answer.TOGETHER and [f.index for f in convert.answered] == [1]
    actions = s.converted(convert, [("w0", None), (None, "FTEIO0004E: no")], now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "RenameParts"]
    rename = actions[2]
    assert [f.index for f in rename.files] == [0] and [f.index for f in rename.answered] == [1, 2]
    actions = s.renamed(rename, [None], now=1.0)
    assert kinds(actions) == ["SendResults"] and actions[0].together
    assert [f.status for f in s.files.values()] == [DONE, FAILED, FAILED]


def test_a_bundle_none_of_whose_files_converts_is_answered_without_a_rename() -> None:
    s = session(Row(0, 1))
    convert = ConvertParts((s.files[0],), Answer.TOGETHER)
    s.files[0].status = CONVERTING
    actions = s.converted(convert, [(None, "FTEIO0004E: no")], now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"] and actions[2].together


def test_a_restart_converts_again_and_finishes_the_renames() -> None:
    s = session(Row(0, 3, status=CONVERTING), Row(1, 3, status=RENAMING), Row(2, 3))
    convert, rename = s.start(now=0.0)
    assert isinstance(convert, ConvertParts) and convert.restart and convert.answer is Answer.NONE
    assert [f.index for f in convert.files] == [0]
    assert isinstance(rename, RenameParts) and rename.restart and rename.converted
    actions = s.converted(convert, [("w", None)], now=0.0)
    assert kinds(actions) == ["SaveFiles", "RenameParts"] and actions[1].answer is Answer.NONE
    assert not any(isinstance(a, SendResults) for a in actions)  # the next resync reply tells the source


def test_a_converting_file_is_held_whole_and_ready_in_a_resync_reply() -> None:
    """A resync while the file converts: all of it is held, and it is not (yet) done or failed; the FileEnd the
    source may send again is dropped, and the result follows the conversion."""
    s = session(Row(0, 3, offset=3, status=CONVERTING))
    [_, reply] = s.receive(SimpleNamespace(kind="resync", epoch=2, files=[]), now=1.0)
    assert isinstance(reply, SendResyncReply)
    [holding] = reply.holdings
    assert (holding.held, holding.status) == (3, READY)
    assert s.receive(SimpleNamespace(kind="file_end", epoch=2, index=0, size=3, digest="h"), now=1.0) == []


# --------------------------------------------------------------------------- the driver, with real files

LATIN1 = "Genève\r\nZürich\r\n".encode("latin-1")
UTF8_LF = "Genève\nZürich\n".encode()


def _resync(tid: str, out: Path, contents: list[bytes], encoding: str = "latin-1") -> Resync:
    return Resync(kind="resync", transfer_id=tid, epoch=1, source_agent="A1", destination_agent="A2",
                  exist="overwrite", checksum="sha256", chunk_size=262144,
                  files=[FileOffer(index=i, source=f"/src/{i}", destination=str(out / f"f{i}.txt"), size=len(c))
                         for i, c in enumerate(contents)],
                  text=TextConversion(source_encoding=encoding))


def _deliver(ctx: AgentContext, tid: str, out: Path, contents: list[bytes], encoding: str = "latin-1") -> None:
    async def run() -> None:
        msg = _resync(tid, out, contents, encoding)
        dest = DestinationTransfer.accept(ctx, msg)
        await dest.on_resync(msg)
        bundle = encode_bundle(1, [(i, hashlib.sha256(c).hexdigest(), c) for i, c in enumerate(contents)])
        await dest.on_bundle(decode_chunk(bundle))
        await asyncio.wait_for(asyncio.gather(*list(dest._pending)), 5)

    asyncio.run(run())


def test_the_driver_converts_renames_and_answers_both_digests(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    tid, out = new_transfer_id(), tmp_path / "out"
    _deliver(ctx, tid, out, [LATIN1, b"plain\r\n"])
    assert (out / "f0.txt").read_bytes() == UTF8_LF and (out / "f1.txt").read_bytes() == b"plain\n"
    assert sorted(p.name for p in out.iterdir()) == ["f0.txt", "f1.txt"]  # no part file, no temporary file
    [answer] = [m for m in sent if m["kind"] == "file_results"]
    first = answer["results"][0]
    assert first["digest"] == hashlib.sha256(LATIN1).hexdigest()
    assert first["written_digest"] == hashlib.sha256(UTF8_LF).hexdigest()
    rec = ctx.store.load_transfer(tid, "destination")
    assert rec is not None and rec.files[0].written_digest == hashlib.sha256(UTF8_LF).hexdigest()


def test_the_driver_leaves_nothing_of_a_file_it_cannot_convert(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    tid, out = new_transfer_id(), tmp_path / "out"
    _deliver(ctx, tid, out, [LATIN1, b"fine\n"], encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == ["f1.txt"]
    [answer] = [m for m in sent if m["kind"] == "file_results"]
    bad = next(r for r in answer["results"] if r["index"] == 0)
    assert bad["result_code"] == 1 and bad["supplement"].startswith("FTEIO0004E: text conversion of ")
    assert "offset 3" in bad["supplement"] and "written_digest" not in bad


def test_a_restart_in_converting_or_renaming_finishes_the_file(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    ctx = _context(tmp_path, sent)
    tid, out = new_transfer_id(), tmp_path / "out"
    msg = _resync(tid, out, [LATIN1, LATIN1])
    DestinationTransfer.accept(ctx, msg)  # the transfer row and its files, as the first process saved them
    rec = ctx.store.load_transfer(tid, "destination")
    assert rec is not None
    out.mkdir(exist_ok=True)
    # killed while converting file 0 (a half-made temporary file) and after converting file 1
    for f in rec.files:
        Path(part_path(f.destination)).write_bytes(LATIN1)
        f.digest = hashlib.sha256(LATIN1).hexdigest()
    Path(text_part_path(rec.files[0].destination)).write_bytes(b"half")
    Path(text_part_path(rec.files[1].destination)).write_bytes(UTF8_LF)
    rec.files[0].status, rec.files[1].status = CONVERTING, RENAMING
    ctx.store.save_files(tid, "destination", rec.files)
    again = DestinationTransfer(ctx, ctx.store.load_transfer(tid, "destination"))  # type: ignore[arg-type]
    assert [f.status for f in again.files.values()] == [DONE, DONE]
    assert sorted(p.name for p in out.iterdir()) == ["f0.txt", "f1.txt"]
    assert (out / "f0.txt").read_bytes() == UTF8_LF and (out / "f1.txt").read_bytes() == UTF8_LF
    rows = ctx.store.load_transfer(tid, "destination")
    assert rows is not None and rows.files[0].written_digest == hashlib.sha256(UTF8_LF).hexdigest()
