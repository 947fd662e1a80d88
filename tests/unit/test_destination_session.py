"""The destination's rules, as tables: inputs -> (state, file statuses, actions, timer).

agent.core.destination_session with no files, no store and no broker: the files are plain records, the
messages plain objects with the fields of agent.wire.protocol's, the time a number. What the IO driver does with
the actions is tested in test_destination_driver.py and the integration tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from agent.core import results
from agent.core.destination_session import (Answer, DestinationSession, DestinationSessionError, DiscardPart,
                                            LogCleanedUp, LogWarning, MeasureParts, RemoveParts, RenameParts,
                                            SaveFiles, SaveTransfer, SealPart, SendAck, SendCompleteAck,
                                            SendRequestRecovery, SendResults, SendResyncReply, WriteChunk,
                                            WriteFiles)
from agent.core.file_status import FILE_TRANSITIONS, FileEvent, FileStatusError, next_file_status
from agent.core.lifecycle import TERMINAL_STATES, TransferState
from agent.core.policy import CHECKPOINT_INTERVAL
from agent.core.statuses import FileStatus

S = TransferState
READY, RENAMING, DONE, FAILED = FileStatus.READY, FileStatus.RENAMING, FileStatus.DONE, FileStatus.FAILED
ACK_TIMEOUT = 60.0


@dataclass
class Row:
    """A file as the driver keeps it (agent.store.FileRecord's fields the session uses)."""

    index: int
    size: int
    offset: int = 0
    status: str = READY
    result_code: int | None = None
    supplement: str | None = None
    digest: str | None = None
    destination: str = ""
    written_digest: str | None = None  # -t text (tests/unit/test_text_destination.py)

    def __post_init__(self) -> None:
        self.destination = self.destination or f"/in/f{self.index}"


def session(*rows: Row, fresh: bool = True, epoch: int = 1, now: float = 0.0, **kw: Any) -> DestinationSession:
    return DestinationSession(rows, agent="A2", peer="A1", epoch=epoch, ack_timeout=ACK_TIMEOUT, fresh=fresh,
                              now=now, **kw)


def resync(epoch: int, *indices: int) -> SimpleNamespace:
    return SimpleNamespace(kind="resync", epoch=epoch, files=[SimpleNamespace(index=i) for i in indices])


def chunk(index: int, offset: int, data: bytes, epoch: int = 1, ack: bool = True) -> SimpleNamespace:
    return SimpleNamespace(epoch=epoch, index=index, offset=offset, data=data, ack=ack)  # no kind: a data frame


def bundle(*entries: tuple[int, bytes, str | None], epoch: int = 1) -> SimpleNamespace:
    return SimpleNamespace(epoch=epoch, entries=[SimpleNamespace(index=i, data=d, digest=h) for i, d, h in entries])


def file_end(index: int, size: int, digest: str | None = "d" * 64, epoch: int = 1) -> SimpleNamespace:
    return SimpleNamespace(kind="file_end", epoch=epoch, index=index, size=size, digest=digest)


def complete(state: str, code: int = 0) -> SimpleNamespace:
    return SimpleNamespace(kind="complete", state=state, result_code=code)


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


def statuses(s: DestinationSession) -> list[str]:
    return [f.status for f in s.files.values()]


def holdings(actions: list[Any]) -> list[tuple[int, int, str]]:
    [reply] = [a for a in actions if isinstance(a, SendResyncReply)]
    return [(h.index, h.held, h.status) for h in reply.holdings]


# --------------------------------------------------------------------------- the file status table


@pytest.mark.parametrize("status", list(FileStatus))
@pytest.mark.parametrize("event", list(FileEvent))
def test_the_file_status_table_allows_its_rows_and_names_the_rest(status: FileStatus, event: FileEvent) -> None:
    if (status, event) in FILE_TRANSITIONS:
        assert next_file_status(status, event) is FILE_TRANSITIONS[(status, event)]
        return
    with pytest.raises(FileStatusError) as caught:
        next_file_status(status, event)
    assert status.value in str(caught.value) and event.value in str(caught.value)
    assert (caught.value.status, caught.value.event) == (status, event)


def test_a_file_reaches_done_only_through_renaming() -> None:
    assert {new for (_, _), new in FILE_TRANSITIONS.items()} == {FileStatus.CONVERTING, RENAMING, DONE, FAILED}
    assert [old for (old, _), new in FILE_TRANSITIONS.items() if new is DONE] == [RENAMING]


# --------------------------------------------------------------------------- resync: what the destination holds


def test_a_fresh_transfer_holds_nothing_and_measures_no_part_file() -> None:
    s = session(Row(0, 10, offset=4), Row(1, 5), epoch=1)
    actions = s.receive(resync(1, 0, 1), now=1.0)
    assert kinds(actions) == ["SaveTransfer", "SendResyncReply"]
    assert holdings(actions) == [(0, 0, READY), (1, 0, READY)]
    assert actions[0].files == (s.files[0],)  # its offset moved back to 0: saved with the transfer row


def test_after_a_restart_the_part_files_say_what_is_held() -> None:
    s = session(Row(0, 10, offset=4), Row(1, 5), Row(2, 7, status=DONE), Row(3, 3, offset=1), fresh=False)
    [measure] = s.receive(resync(2, 0, 1, 3), now=1.0)
    assert isinstance(measure, MeasureParts) and [f.index for f in measure.files] == [0, 1, 3]
    # file 0 holds more than its last checkpoint; file 1 has no part file; file 3 holds more than its size
    actions = s.measured(measure, [8, None, 9], now=1.0)
    assert kinds(actions) == ["SaveTransfer", "SendResyncReply"]
    assert holdings(actions) == [(0, 8, READY), (1, 0, READY), (2, 7, DONE), (3, 3, READY)]
    assert [f.index for f in actions[0].files] == [0, 3]  # only the rows that moved
    assert s.epoch == 2


def test_a_file_written_by_this_process_is_measured_in_a_fresh_transfer() -> None:
    s = session(Row(0, 10), Row(1, 10))
    [write] = s.receive(chunk(0, 0, b"abcd"), now=1.0)
    s.chunk_written(write, now=1.0)
    [measure] = s.receive(resync(2, 0, 1), now=2.0)
    assert [f.index for f in measure.files] == [0]  # never a stranger's part file for file 1


def test_a_restart_finishes_the_renames_it_had_verified() -> None:
    s = session(Row(0, 3, status=RENAMING), Row(1, 3, status=RENAMING), Row(2, 3), fresh=False,
                exist_error=True)
    [rename] = s.start(now=0.0)
    assert isinstance(rename, RenameParts)
    assert (rename.restart, rename.answer, rename.noreplace) == (True, Answer.NONE, True)
    actions = s.renamed(rename, [None, 'BFGIO0006E: File "/in/f1" already exists.'], now=0.0)
    assert statuses(s) == [DONE, FAILED, READY]
    assert kinds(actions) == ["DiscardPart", "SaveFiles"]  # the next resync reply tells the source
    assert s.files[1].supplement.startswith("BFGIO0006E") and s.files[0].result_code == results.FILE_SUCCESS
    assert session(Row(0, 3), fresh=False).start(now=0.0) == []


@pytest.mark.parametrize("epoch, answered", [(0, False), (1, True), (5, True)])
def test_a_resync_of_an_older_epoch_is_ignored(epoch: int, answered: bool) -> None:
    s = session(Row(0, 10), epoch=1)
    actions = s.receive(resync(epoch, 0), now=1.0)
    assert bool(actions) is answered
    assert s.epoch == max(1, epoch)


# --------------------------------------------------------------------------- chunks


@pytest.mark.parametrize("frame, expected", [
    (chunk(0, 4, b"efgh"), ["WriteChunk"]),  # where the file stands
    (chunk(0, 4, b"efgh", epoch=0), []),  # an older epoch's
    (chunk(0, 4, b"efgh", epoch=2), []),  # a newer epoch than negotiated
    (chunk(0, 0, b"abcd"), []),  # behind: a duplicate
    (chunk(0, 8, b"ij"), ["SendAck"]),  # ahead: a chunk was lost, rewind
    (chunk(0, 8, b"ijklm"), ["LogWarning"]),  # beyond the announced size
    (chunk(1, 0, b"x"), []),  # a file that is done
    (chunk(9, 0, b"x"), []),  # no such file
])
def test_which_chunk_is_taken(frame: Any, expected: list[str]) -> None:
    s = session(Row(0, 10, offset=4), Row(1, 1, status=DONE))
    actions = s.receive(frame, now=1.0)
    assert kinds(actions) == expected
    if expected == ["SendAck"]:
        assert (actions[0].offset, actions[0].rewind) == (4, True)
    if expected == ["LogWarning"]:
        assert "beyond the announced size" in actions[0].text


def test_a_gap_is_reported_once_and_again_after_a_resync() -> None:
    s = session(Row(0, 10, offset=4))
    assert kinds(s.receive(chunk(0, 6, b"g"), now=1.0)) == ["SendAck"]
    assert s.receive(chunk(0, 8, b"i"), now=1.1) == []  # the same gap: asked already
    s.receive(resync(2, 0), now=2.0)
    assert kinds(s.receive(chunk(0, 6, b"g", epoch=2), now=2.1)) == ["SendAck"]


def test_a_written_chunk_is_acked_when_asked_and_checkpointed_at_intervals() -> None:
    s = session(Row(0, 100))
    t = 10.0
    [write] = s.receive(chunk(0, 0, b"a" * 10), now=t)
    assert isinstance(write, WriteChunk) and (write.offset, write.ack) == (0, True)
    assert kinds(s.chunk_written(write, now=t)) == ["SendAck", "SaveFiles"]  # the first checkpoint at once
    assert s.files[0].offset == 10
    [write] = s.receive(chunk(0, 10, b"b" * 10, ack=False), now=t + 0.1)
    assert s.chunk_written(write, now=t + 0.1) == []  # FLAG_NO_ACK, and checkpointed just now
    [write] = s.receive(chunk(0, 20, b"c" * 10), now=t + CHECKPOINT_INTERVAL)
    actions = s.chunk_written(write, now=t + CHECKPOINT_INTERVAL)
    assert kinds(actions) == ["SendAck", "SaveFiles"] and actions[0].offset == 30


@pytest.mark.parametrize("digest_first", [True, False])
def test_a_file_is_sealed_when_its_last_byte_and_its_digest_are_in(digest_first: bool) -> None:
    s = session(Row(0, 4))
    if digest_first:
        assert kinds(s.receive(file_end(0, 4), now=1.0)) == ["SaveFiles"]
        [write] = s.receive(chunk(0, 0, b"abcd"), now=1.1)
        assert kinds(s.chunk_written(write, now=1.1)) == ["SealPart"]  # no ack: the FileResult answers
    else:
        [write] = s.receive(chunk(0, 0, b"abcd"), now=1.0)
        assert kinds(s.chunk_written(write, now=1.0)) == ["SendAck", "SaveFiles"]
        assert kinds(s.receive(file_end(0, 4), now=1.1)) == ["SaveFiles", "SealPart"]
    assert s.files[0].digest == "d" * 64


@pytest.mark.parametrize("end, expected", [
    (file_end(0, 5), []),  # not the size offered
    (file_end(1, 1), []),  # a file that failed
    (file_end(0, 4, digest=None), ["SaveFiles", "SealPart"]),  # no checksum: sealed, nothing compared
])
def test_which_file_end_is_taken(end: Any, expected: list[str]) -> None:
    s = session(Row(0, 4, offset=4), Row(1, 1, status=FAILED))
    assert kinds(s.receive(end, now=1.0)) == expected
    if expected:
        assert s.files[0].digest == ""


# --------------------------------------------------------------------------- verify, rename, fail


def test_a_verified_file_is_saved_renaming_then_renamed_and_answered() -> None:
    s = session(Row(0, 4, offset=4, digest="d" * 64))
    seal = SealPart(s.files[0])
    actions = s.sealed(seal, "d" * 64, None, now=1.0)
    assert kinds(actions) == ["SaveFiles", "RenameParts"] and statuses(s) == [RENAMING]
    rename = actions[1]
    assert (rename.answer, rename.restart) == (Answer.ONE, False)
    actions = s.renamed(rename, [None], now=1.0)
    assert kinds(actions) == ["SaveFiles", "SendResults"] and statuses(s) == [DONE]
    assert actions[1].together is False and s.files[0].result_code == results.FILE_SUCCESS
    assert not s.active and s.get_timer() is None


def test_a_digest_mismatch_fails_the_file_and_discards_its_part_file() -> None:
    s = session(Row(0, 4, offset=4, digest="a" * 64))
    actions = s.sealed(SealPart(s.files[0]), "b" * 64, None, now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"] and statuses(s) == [FAILED]
    assert s.files[0].supplement == f"digest mismatch: the source sent sha256 {'a' * 64}, the destination " \
                                    f"computed {'b' * 64}"
    assert s.files[0].result_code == results.FILE_FAILED


def test_a_write_that_fails_fails_the_file_at_once() -> None:
    s = session(Row(0, 10, digest="a" * 64), Row(1, 3))
    [write] = s.receive(chunk(0, 0, b"abcd"), now=1.0)
    text = "FTEIO0001E: write to /in/f0.part failed: No space left on device (ENOSPC)"
    actions = s.write_failed(write.file, text, now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"]
    assert statuses(s) == [FAILED, READY] and s.files[0].supplement == text and s.files[0].digest is None
    assert s.receive(chunk(0, 4, b"efgh"), now=1.1) == []  # the rest of it is not taken
    assert s.active  # the other file still arrives


def test_a_rename_that_fails_fails_the_file() -> None:
    s = session(Row(0, 4, offset=4, digest=""))
    [_, rename] = s.sealed(SealPart(s.files[0]), None, None, now=1.0)
    actions = s.renamed(rename, ['BFGIO0006E: File "/in/f0" already exists.'], now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"] and statuses(s) == [FAILED]


def test_a_seal_that_fails_fails_the_file() -> None:
    s = session(Row(0, 4, offset=4, digest="a" * 64))
    actions = s.sealed(SealPart(s.files[0]), None, "rename of /in/f0.part to /in/f0 failed: EIO", now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"] and statuses(s) == [FAILED]


# --------------------------------------------------------------------------- bundles


def test_a_bundle_takes_the_entries_it_expects() -> None:
    s = session(Row(0, 3), Row(1, 3, status=DONE), Row(2, 4), Row(3, 2))
    [write] = s.receive(bundle((0, b"abc", "h0"), (1, b"abc", "h1"), (2, b"abc", "h2"), (3, b"ab", "h3"),
                               (7, b"x", "h7")), now=1.0)
    assert isinstance(write, WriteFiles)
    assert [(f.index, data, digest) for f, data, digest in write.entries] == [(0, b"abc", "h0"), (3, b"ab", "h3")]
    assert s.receive(bundle((0, b"abc", "h0"), epoch=2), now=1.0) == []  # another epoch's
    assert s.receive(bundle((1, b"abc", "h1")), now=1.0) == []  # nothing expected in it


def test_a_bundle_is_verified_renamed_and_answered_together() -> None:
    s = session(Row(0, 1), Row(1, 1), Row(2, 1), Row(3, 1))
    [write] = s.receive(bundle((0, b"a", "h0"), (1, b"b", "h1"), (2, b"c", "h2"), (3, b"d", None)), now=1.0)
    actions = s.files_written(write, [("h0", None), ("bad", None), (None, "FTEIO0001E: write to x failed"),
                                      (None, None)], now=1.0)
    assert kinds(actions) == ["DiscardPart", "DiscardPart", "SaveFiles", "RenameParts"]
    assert statuses(s) == [RENAMING, FAILED, FAILED, RENAMING]
    assert [f.index for f in actions[2].files] == [0, 3, 1, 2]  # "verified" saved before the renames
    assert "digest mismatch" in s.files[1].supplement
    rename = actions[3]
    assert rename.answer is Answer.TOGETHER and [f.index for f in rename.answered] == [1, 2]
    actions = s.renamed(rename, [None, None], now=1.0)
    assert kinds(actions) == ["SendResults"] and statuses(s) == [DONE, FAILED, FAILED, DONE]
    assert actions[0].together and [f.index for f in actions[0].files] == [1, 2, 0, 3]
    # their "done" rows go with the next commit (one per bundle): here the complete's
    [remove] = s.receive(complete("partial", 20), now=2.0)
    [save, _] = s.parts_removed(remove, [], now=2.0)
    assert isinstance(save, SaveTransfer) and [f.index for f in save.files] == [0, 3]


def test_a_bundle_whose_files_all_fail_is_answered_without_a_rename() -> None:
    s = session(Row(0, 1))
    [write] = s.receive(bundle((0, b"a", "h0")), now=1.0)
    actions = s.files_written(write, [(None, "FTEIO0001E: no space")], now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"] and actions[2].together


def test_a_bundle_file_renamed_but_failing_later_is_saved_at_once() -> None:
    s = session(Row(0, 1), Row(1, 1))
    [write] = s.receive(bundle((0, b"a", "h0"), (1, b"b", "h1")), now=1.0)
    [_, rename] = s.files_written(write, [("h0", None), ("h1", None)], now=1.0)
    actions = s.renamed(rename, [None, "fsync of directory /in failed"], now=1.0)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "SendResults"]
    assert [f.index for f in actions[1].files] == [0, 1]  # the done one goes with the failure's commit


# --------------------------------------------------------------------------- the source's outcome


@pytest.mark.parametrize("outcome", sorted(TERMINAL_STATES))
def test_the_outcome_removes_the_unfinished_part_files_and_is_confirmed(outcome: TransferState) -> None:
    s = session(Row(0, 4, status=DONE), Row(1, 4, offset=2), Row(2, 4, status=FAILED), Row(3, 4))
    [remove] = s.receive(complete(outcome.value, 69), now=5.0)
    assert isinstance(remove, RemoveParts) and remove.outcome is outcome
    assert [f.index for f in remove.files] == [1, 3]  # done: in place; failed: its part file already gone
    assert statuses(s) == [DONE, FAILED, FAILED, FAILED]
    actions = s.parts_removed(remove, ["/in/f1.part"], now=5.0)
    assert kinds(actions) == ["SaveTransfer", "LogCleanedUp", "SendCompleteAck"]
    assert actions[1] == LogCleanedUp(69, f"removed 1 part file(s) of a transfer that ended {outcome.value}",
                                      ("/in/f1.part",))
    assert actions[2] == SendCompleteAck(1)
    assert (s.state, s.result_code, s.peer_confirmed) == (outcome, 69, True)
    assert not s.active and s.get_timer() is None


def test_after_a_recovery_timeout_the_part_files_go_seed_003() -> None:
    """Seed 003: after RecoveryTimedOut the destination removes the part files of the transfer and sends a
    completion message to the source."""
    s = session(Row(0, 100, offset=40), fresh=False)
    [remove] = s.receive(complete("recovery_timed_out", results.RECOVERY_TIMED_OUT), now=1.0)
    assert [f.index for f in remove.files] == [0]
    assert kinds(s.parts_removed(remove, ["/in/f0.part"], now=1.0)) == ["SaveTransfer", "LogCleanedUp",
                                                                         "SendCompleteAck"]
    assert s.state is S.RECOVERY_TIMED_OUT


def test_an_outcome_with_nothing_to_remove_is_confirmed_without_an_event() -> None:
    s = session(Row(0, 4, status=DONE))
    [remove] = s.receive(complete("complete"), now=1.0)
    assert remove.files == ()
    assert s.parts_removed(remove, [], now=1.0)[1:] == [SendCompleteAck(0)]
    # sent again (its ack was lost): confirmed again
    [remove] = s.receive(complete("complete"), now=2.0)
    assert s.parts_removed(remove, [], now=2.0)[1:] == [SendCompleteAck(0)]


@pytest.mark.parametrize("state", ["in_progress", "recovering", "nonsense"])
def test_an_outcome_that_is_not_terminal_is_refused_naming_the_state(state: str) -> None:
    s = session(Row(0, 4))
    with pytest.raises(DestinationSessionError, match=f"'complete'.*'in_progress'.*{state}"):
        s.receive(complete(state), now=1.0)
    assert s.state is S.IN_PROGRESS and statuses(s) == [READY]


def test_abandon_alone_fails_the_unfinished_files_and_asks_nothing_more() -> None:
    s = session(Row(0, 4), Row(1, 4, status=DONE))
    [remove] = s.abandon()
    assert remove.outcome is None and [f.index for f in remove.files] == [0]
    assert s.parts_removed(remove, ["/in/f0.part"], now=1.0) == []
    assert statuses(s) == [FAILED, DONE] and s.files[0].result_code == results.FILE_FAILED


def test_an_unknown_input_is_refused() -> None:
    with pytest.raises(DestinationSessionError, match="'ack'"):
        session(Row(0, 1)).receive(SimpleNamespace(kind="ack"), now=0.0)


# --------------------------------------------------------------------------- cancel


def test_a_cancel_is_remembered_and_repeated_until_the_outcome_comes() -> None:
    s = session(Row(0, 10))
    actions = s.cancel("cancelled by request", now=1.0)
    assert actions == [SaveTransfer(header=True), SendRequestRecovery("cancelled by request", True)]
    assert s.cancel("again", now=2.0) == [SendRequestRecovery("cancelled by request", True)]
    assert s.request_recovery("no data", now=3.0) == [SendRequestRecovery("cancelled by request", True)]
    # a resync never resumes a cancelled transfer: the cancel is repeated instead
    assert s.receive(resync(2, 0), now=4.0) == [SendRequestRecovery("cancelled by request", True)]
    assert s.epoch == 1
    assert s.handle_timer(4.0 + ACK_TIMEOUT) == [SendRequestRecovery("cancelled by request", True)]


def test_a_cancel_loaded_after_a_restart_is_repeated() -> None:
    s = session(Row(0, 10), cancel_requested="cancelled by request", fresh=False)
    assert s.request_recovery("destination agent A2 (re)connected to the broker", now=0.0) == \
        [SendRequestRecovery("cancelled by request", True)]


# --------------------------------------------------------------------------- the timer


def test_the_recovery_request_timer_and_its_reset_on_data() -> None:
    s = session(Row(0, 100), now=10.0)
    assert s.get_timer() == 10.0 + ACK_TIMEOUT
    assert s.handle_timer(69.9) == []
    [write] = s.receive(chunk(0, 0, b"abcd"), now=30.0)  # data: the deadline moves
    s.chunk_written(write, now=30.0)
    assert s.get_timer() == 30.0 + ACK_TIMEOUT
    assert s.handle_timer(70.0) == []
    assert s.handle_timer(90.0) == [SendRequestRecovery("no data from A1 for 60 s", False)]
    assert s.get_timer() == 90.0 + ACK_TIMEOUT  # asked: asked again one timeout later
    s.receive(chunk(0, 4, b"efgh", epoch=0), now=100.0)  # even an old epoch's chunk shows the source is there
    assert s.get_timer() == 100.0 + ACK_TIMEOUT


@pytest.mark.parametrize("message", [resync(1, 0), file_end(0, 100), bundle((0, b"x", None))])
def test_every_message_of_the_source_resets_the_timer(message: Any) -> None:
    s = session(Row(0, 100), now=0.0)
    s.receive(message, now=42.0)
    assert s.get_timer() == 42.0 + ACK_TIMEOUT


def test_no_timer_while_the_link_is_down_and_a_request_when_it_is_back() -> None:
    s = session(Row(0, 100), now=0.0)
    assert s.link_changed(False, now=5.0) == []
    assert s.get_timer() is None and s.handle_timer(1000.0) == []
    assert s.link_changed(False, now=6.0) == []
    assert s.link_changed(True, now=7.0) == [SendRequestRecovery("destination agent A2 (re)connected to the broker",
                                                                 False)]
    assert s.get_timer() == 7.0 + ACK_TIMEOUT


@pytest.mark.parametrize("rows, state, ack_timeout", [
    ((Row(0, 1, status=DONE),), S.IN_PROGRESS, ACK_TIMEOUT),  # nothing left to receive
    ((Row(0, 1, status=FAILED),), S.IN_PROGRESS, ACK_TIMEOUT),  # every file refused: holds nothing
    ((Row(0, 1),), S.COMPLETE, ACK_TIMEOUT),  # ended
    ((Row(0, 1),), S.IN_PROGRESS, None),  # no timeout given
])
def test_no_timer_when_nothing_is_awaited(rows: tuple[Row, ...], state: TransferState,
                                          ack_timeout: float | None) -> None:
    s = DestinationSession(rows, agent="A2", peer="A1", state=state, ack_timeout=ack_timeout)
    assert s.get_timer() is None and s.handle_timer(1e9) == []
    if not s.active:  # nothing to ask for when the link is back either
        assert s.link_changed(False, 1.0) == [] and s.link_changed(True, 2.0) == []


def test_progress_counts_what_arrived() -> None:
    s = session(Row(0, 10, status=DONE, offset=0), Row(1, 10, offset=4), Row(2, 5, status=FAILED, offset=1))
    assert s.progress() == {"bytes_total": 25, "bytes_done": 15, "files_total": 3, "files_done": 2}


def test_the_actions_are_frozen() -> None:
    a = SendAck(1, 0, 4)
    with pytest.raises(AttributeError):
        a.offset = 5  # type: ignore[misc]
    assert DiscardPart(Row(0, 1)) == DiscardPart(Row(0, 1)) and LogWarning("x") == LogWarning("x")
    assert SendResults((), True) == SendResults((), together=True) and SaveFiles(()) == SaveFiles(())


@pytest.mark.parametrize("module", ["destination_session", "file_status"])
def test_the_destination_rules_import_no_io_module(module: str) -> None:
    import ast
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "agent" / "core" / f"{module}.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported, path
    assert not imported & {"asyncio", "os", "time", "pathlib", "socket", "sqlite3", "logging", "agent"}
