"""The destination side of one transfer as a sans-IO machine (in the style of aioquic's ``QuicConnection``).

h11's Rule 1 holds here: every rule that decides what the destination does with a transfer lives in this
module. Which resync to answer and what it holds, which chunk or bundle entry to take for which epoch and
offset, when a gap is reported, when a file is verified and renamed, what a digest mismatch or a failed write
does, when to ask the source for recovery, what the source's outcome does (and which part files go). The
shell (agent/destination.py) does the IO: part files, hashing, fsync, rename, the state store, publishing.

The shell feeds inputs with the time passed in (`receive(msg, now)`, `cancel`, `request_recovery`,
`link_changed`, `handle_timer`) and carries out the actions returned, in order. An action whose outcome
decides what comes next (a write, a seal, a rename, a measurement, a removal) is the last of its list: the
shell answers it with the matching input (`chunk_written`/`write_failed`, `files_written`, `sealed`,
`renamed`, `measured`, `parts_removed`, `converted`), handing the action back with the outcome, and carries out the
actions that returns. `get_timer()` is the one deadline: when to ask the source for recovery.

Files are the shell's records (the state store's rows, duck-typed: `FileRow`), changed in place, so that
an action that saves them saves what this session decided. Their status moves only by the table of
agent.core.file_status.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from . import results
from .errors import FteError
from .file_status import FileEvent, next_file_status
from .lifecycle import TERMINAL_STATES, TransferState
from .fanout_ahead import AheadChunks
from .policy import CHECKPOINT_INTERVAL
from .statuses import FileStatus


class FileRow(Protocol):
    """One file of the transfer as the shell keeps it (agent.store.FileRecord has these fields)."""

    index: int
    destination: str
    size: int
    offset: int  # contiguous bytes held in the part file
    status: str
    result_code: int | None
    supplement: str | None
    digest: str | None  # the source's (from its FileEnd; "" when it sent none), then the one computed
    written_digest: str | None  # -t text: the digest of the converted file, which is what was written


class Shared(Enum):
    """A fan-out transfer's shared stream (<prefix>/Fanout/<source>/<tid>, docs/protocol.md#fan-out) here."""

    NONE = "none"  # unicast only: not a fan-out transfer, or its offer came in the clear (no group key)
    OFFERED = "offered"  # the group key is kept, but this process has not subscribed: the next resync does first
    JOINED = "joined"  # subscribed (its SUBACK came): the resync reply says `fanout: true`, shared chunks are taken
    REFUSED = "refused"  # the broker refused the subscription or did not answer in time: unicast only, this process
    LEFT = "left"  # a file that took shared chunks failed its digest (forged by a fellow destination?): unicast only


class Answer(Enum):
    """How the outcome of renamed files is told to the source."""

    NONE = "none"  # not told: a restart finishing its renames (the next resync reply says where they stand)
    ONE = "file_result"  # one FileResult (a file received chunk by chunk)
    TOGETHER = "file_results"  # one FileResults (the files of a bundle)


# ------------------------------------------------------------------ actions (what the shell carries out)


@dataclass(frozen=True, slots=True)
class WriteChunk:
    """Write `data` at `offset` of the file's part file (created if need be; truncated when `offset` is 0),
    hashing it if it continues what was hashed. Answer: `chunk_written(action, now)` or `write_failed`."""

    file: FileRow
    offset: int
    data: Any
    ack: bool  # the chunk asked for an ack (else a later one does: FLAG_NO_ACK)


@dataclass(frozen=True, slots=True)
class WriteFiles:
    """Write each whole file of a bundle to its part file (truncated), compute its digest, make the part files
    durable (together) and close them. `entries` are (file, data, the source's digest). Answer:
    `files_written(action, [(digest computed, error or None) per entry], now)`."""

    entries: tuple[tuple[FileRow, Any, str | None], ...]


@dataclass(frozen=True, slots=True)
class SealPart:
    """Every byte of the file is in its part file: create it if empty, make it durable, close it and compute
    its digest. Answer: `sealed(action, digest, error or None, now)`."""

    file: FileRow


@dataclass(frozen=True, slots=True)
class ConvertParts:
    """-t text: convert each verified part file into its second temporary file (agent/text_parts.py), make it
    durable, and compute its digest. `restart`: an earlier process had begun (its temporary file is made again).
    Answer: `converted(action, [(digest of what was written, error or None) per file], now)`."""

    files: tuple[FileRow, ...]
    answer: Answer
    answered: tuple[FileRow, ...] = ()  # failed before the conversion, told in the same answer
    restart: bool = False


@dataclass(frozen=True, slots=True)
class RenameParts:
    """Rename these verified part files into place (without replacing a file when `noreplace`: -de error),
    then make their directories durable. `restart`: finishing the renames of an earlier process (a part file
    not there any more was renamed; one still there is made durable first). Answer:
    `renamed(action, [error or None per file], now)`."""

    files: tuple[FileRow, ...]
    noreplace: bool
    answer: Answer
    answered: tuple[FileRow, ...] = ()  # failed before the rename, told in the same answer
    restart: bool = False
    converted: bool = False  # -t text: the converted temporary files are renamed, then the part files go


@dataclass(frozen=True, slots=True)
class DiscardPart:
    """The file failed: close and remove its part file if it is there (the failure is what is reported)."""

    file: FileRow


@dataclass(frozen=True, slots=True)
class MeasureParts:
    """How many bytes each of these files' part files holds (None: no part file). Answer:
    `measured(action, sizes, now)`."""

    files: tuple[FileRow, ...]
    moved: tuple[FileRow, ...] = ()  # offsets already changed, saved with the answer


@dataclass(frozen=True, slots=True)
class RemoveParts:
    """The transfer ended: close every part file and remove those of these unfinished files, saying which were
    there. `outcome`: ended by the source's Complete; answer `parts_removed(action, removed paths, now)`."""

    files: tuple[FileRow, ...]
    outcome: TransferState | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to the transfer's shared topic and wait (bounded) for the SUBACK, before this resync is answered.
    Answer: `subscribed(action, granted, now)`."""

    resync: Any


@dataclass(frozen=True, slots=True)
class SaveFiles:
    """Save these file rows in one commit."""

    files: tuple[FileRow, ...]


@dataclass(frozen=True, slots=True)
class SaveTransfer:
    """Save the transfer's row (state, epoch, outcome; with `header` its cancel request too) and these file
    rows, in one commit."""

    files: tuple[FileRow, ...] = ()
    header: bool = False


@dataclass(frozen=True, slots=True)
class Holding:
    index: int
    held: int
    status: str
    result_code: int
    supplement: str | None
    destination: str
    digest: str | None
    written_digest: str | None = None


@dataclass(frozen=True, slots=True)
class SendResyncReply:
    epoch: int
    holdings: tuple[Holding, ...]
    fanout: bool | None = None  # True: subscribed to the shared topic (a member of the shared stream)


@dataclass(frozen=True, slots=True)
class SendAck:
    epoch: int
    index: int
    offset: int
    rewind: bool = False  # a gap: resend from `offset`


@dataclass(frozen=True, slots=True)
class SendResults:
    """The outcome of these files: one FileResult each, or one FileResults for all (`together`)."""

    files: tuple[FileRow, ...]
    together: bool


@dataclass(frozen=True, slots=True)
class SendRequestRecovery:
    reason: str
    cancel: bool


@dataclass(frozen=True, slots=True)
class SendCompleteAck:
    removed_part_files: int


@dataclass(frozen=True, slots=True)
class LogCleanedUp:
    """The transfer log event "cleaned_up" (agent.transferlog): part files of an ended transfer removed."""

    result_code: int | None
    message: str
    part_files_removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LogWarning:
    """A line for the agent's own log, not an event of the transfer."""

    text: str


Action = (WriteChunk | WriteFiles | SealPart | ConvertParts | RenameParts | DiscardPart | MeasureParts | RemoveParts | SaveFiles
          | Subscribe | SaveTransfer | SendResyncReply | SendAck | SendResults | SendRequestRecovery | SendCompleteAck
          | LogCleanedUp | LogWarning)


class DestinationSessionError(FteError):
    """An input the destination cannot take in its state (names the state and the input)."""

    def __init__(self, state: TransferState, event: str, detail: str = "") -> None:
        self.state = state
        self.event = event
        super().__init__(f"cannot handle {event!r} in destination state {state.value!r}{detail}")


# ------------------------------------------------------------------ the machine


class ReadyScan:
    """Whether any file is still READY, asked after every message (DestinationSession.active). The files
    leave READY roughly in order, so the scan starts at the one found READY last and goes round: exact, and
    amortised constant per message (a scan from the first file was quadratic: 13 % of the event loop for
    10,000 small files, docs/performance.md)."""

    def __init__(self, files: list[FileRow]) -> None:
        self._files = files
        self._at = 0

    def any(self) -> bool:
        n = len(self._files)
        for step in range(n):
            i = (self._at + step) % n
            if self._files[i].status == FileStatus.READY:
                self._at = i
                return True
        return False


class DestinationSession:
    def __init__(self, files: Iterable[FileRow], *, agent: str, peer: str,
                 state: TransferState | str = TransferState.IN_PROGRESS, epoch: int = 0, checksum: str = "sha256",
                 exist_error: bool = False, cancel_requested: str | None = None, ack_timeout: float | None = None,
                 fresh: bool = False, now: float = 0.0, text: bool = False, shared: bool = False) -> None:
        self.files: dict[int, FileRow] = {f.index: f for f in files}
        self._ready = ReadyScan(list(self.files.values()))
        self.agent = agent  # this destination agent
        self.peer = peer  # the source agent
        self.state = TransferState(state)
        self.result_code: int | None = None
        self.peer_confirmed = False  # the source's outcome came (and is confirmed to it)
        self.epoch = epoch
        self.checksum = checksum
        self.exist_error = exist_error
        self.text = text  # -t text: a verified file is converted before it is renamed
        # A cancel accepted here is passed on to the source, which owns the outcome; remembered (the shell saves
        # it) and repeated by every later request and resync until the outcome comes: sent once, it was lost
        # when the source was away (tests/fault/test_network.py::
        # test_cancel_at_the_destination_while_the_source_is_cut_off).
        self.cancel_requested = cancel_requested
        self.ack_timeout = ack_timeout
        self.last_activity = now
        self.link_up = True
        # Accepted by this process, not loaded at a restart: only the part files it wrote itself hold bytes of
        # this transfer. A part file already lying where a new transfer writes is another one's leftover, not
        # ours to resume (the first write truncates it), and a new transfer of 10,000 files stats none.
        self._fresh = fresh
        self._written: set[int] = set()
        self._gap_reported: dict[int, int] = {}  # file -> the offset a rewind was asked from (once per gap)
        self._last_checkpoint = float("-inf")
        # Bundle files renamed into place whose "done" is not saved yet: saved with the next save of file rows.
        # Until then their row says "renaming", which a restart finishes the same way (one commit per bundle).
        self._renamed: list[FileRow] = []
        # fan-out: a group key is kept (`shared`); subscribed by this process only once a resync asks
        self.shared = Shared.OFFERED if shared else Shared.NONE
        self.ahead = AheadChunks()  # shared chunks beyond what is written, until the gap is filled (fan-out)
        self._received_again: set[int] = set()  # fan-out: files that failed their digest once, in this process

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[Action]:
        """Loaded after a restart: finish the renames the earlier process had verified but not done."""
        actions: list[Action] = []
        converting = tuple(f for f in self.files.values() if f.status == FileStatus.CONVERTING)
        if converting:
            actions.append(ConvertParts(converting, Answer.NONE, restart=True))
        renaming = tuple(f for f in self.files.values() if f.status == FileStatus.RENAMING)
        if renaming:
            actions.append(RenameParts(renaming, self.exist_error, Answer.NONE, restart=True, converted=self.text))
        return actions

    def receive_shared(self, chunk: Any, now: float) -> list[Action]:
        """A chunk from the shared topic of a fan-out transfer (opened with the group key by the shell). Written
        iff its file is ready and it continues exactly what is held, whatever its epoch (the shared stream
        carries the epoch of the leg that published it), and only while subscribed by this process; one beyond
        what is held is kept (bounded: agent.core.fanout_ahead) and written once this destination's own leg has
        filled the gap with unicast; anything else is dropped silently, no rewind asked. Acked as a unicast chunk
        is, in this session's epoch."""
        f = self.files.get(chunk.index)
        if (self.shared is not Shared.JOINED or self.state in TERMINAL_STATES or f is None or f.status != FileStatus.READY
                or chunk.offset + len(chunk.data) > f.size):
            return []  # not a sign of life either: only a chunk written holds the recovery request back
        if chunk.offset != f.offset:
            self.ahead.hold(chunk, f.offset)  # beyond: kept (bounded) until the leg's unicast fills the gap
            return []
        self.last_activity = now
        self._written.add(f.index)
        return [WriteChunk(f, chunk.offset, chunk.data, chunk.ack)]

    def subscribed(self, action: Subscribe, granted: bool, now: float) -> list[Action]:
        """The shell's answer to Subscribe: the resync it held back is handled now."""
        self.shared = Shared.JOINED if granted else Shared.REFUSED
        return self._on_resync(action.resync, now)

    def receive(self, msg: Any, now: float) -> list[Action]:
        """A message of the source: Resync, FileEnd, Complete (by their `kind`) or a data frame (Chunk, Bundle)."""
        kind = getattr(msg, "kind", None) or ("bundle" if hasattr(msg, "entries") else "chunk")
        handler = self._receivers.get(kind)
        if handler is None:
            raise DestinationSessionError(self.state, kind)
        return handler(self, msg, now)

    def cancel(self, reason: str, now: float) -> list[Action]:
        """A cancel accepted by this agent: remembered and passed on to the source."""
        self.last_activity = now
        actions: list[Action] = []
        if not self.cancel_requested:
            self.cancel_requested = reason
            actions.append(SaveTransfer(header=True))
        return actions + [SendRequestRecovery(self.cancel_requested, True)]

    def request_recovery(self, reason: str, now: float) -> list[Action]:
        """Ask the source to resynchronise (it owns the recovery counter); a pending cancel is repeated instead."""
        self.last_activity = now
        if self.cancel_requested:
            return [SendRequestRecovery(self.cancel_requested, True)]
        return [SendRequestRecovery(reason, False)]

    def link_changed(self, up: bool, now: float) -> list[Action]:
        """The broker link went down (no deadline: nothing can be asked) or came back (ask at once)."""
        if up == self.link_up:
            return []
        self.link_up = up
        if not up or not self.active:
            return []
        return self.request_recovery(f"destination agent {self.agent} (re)connected to the broker", now)

    def get_timer(self) -> float | None:
        """When to ask the source for recovery: `ack_timeout` after the last message, while receiving."""
        if self.ack_timeout is None or not self.link_up or not self.active:
            return None
        return self.last_activity + self.ack_timeout

    def handle_timer(self, now: float) -> list[Action]:
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        return self.request_recovery(f"no data from {self.peer} for {self.ack_timeout:g} s", now)

    def abandon(self) -> list[Action]:
        """The transfer ended: the files not finished fail, and their part files go."""
        unfinished = tuple(f for f in self.files.values() if f.status == FileStatus.READY)
        for f in unfinished:
            self._move(f, FileEvent.ABANDONED, results.FILE_FAILED, f.supplement)
        return [RemoveParts(unfinished)]

    # ------------------------------------------------------------------ outcomes of the shell's IO

    def measured(self, action: MeasureParts, sizes: Sequence[int | None], now: float) -> list[Action]:
        moved = list(action.moved)
        for f, size in zip(action.files, sizes):
            held = 0 if size is None else min(size, f.size)
            if held != f.offset:
                f.offset = held
                moved.append(f)
        return self._answer_resync(moved)

    def chunk_written(self, action: WriteChunk, now: float) -> list[Action]:
        f = action.file
        f.offset = action.offset + len(action.data)
        self._gap_reported.pop(f.index, None)
        if f.offset == f.size and f.digest is not None:  # the FileEnd came first
            return [SealPart(f)]
        actions: list[Action] = []
        held = self.ahead.next(f.index, f.offset) if len(self.ahead) else None
        if held is not None:  # a shared chunk held ahead continues it: written now, acked (agent.core.fanout_ahead)
            actions.append(WriteChunk(f, held.offset, held.data, True))
        elif action.ack:  # else a later chunk asks (FLAG_NO_ACK), and its ack covers this one too
            actions.append(SendAck(self.epoch, f.index, f.offset))
        if now - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            self._last_checkpoint = now
            actions.append(SaveFiles((f,)))
        return actions

    def write_failed(self, file: FileRow, error: str, now: float) -> list[Action]:
        """The part file cannot be written (a full disk, a quota, EIO): resending cannot cure it, so the file fails
        now and the source is told, so that the transfer ends rather than re-sends for ever."""
        self._move(file, FileEvent.FAILED, results.FILE_FAILED, error)
        file.digest = None
        return [DiscardPart(file), self._save((file,)), SendResults((file,), together=False)]

    def sealed(self, action: SealPart, digest: str | None, error: str | None, now: float) -> list[Action]:
        f = action.file
        if (error is None and self.shared is not Shared.NONE and f.index not in self._received_again
                and self._mismatch(f.digest, digest)):
            return self._receive_again(f, self._mismatch(f.digest, digest) or "", now)
        error = error or self._mismatch(f.digest, digest)
        if error is not None:
            self._move(f, FileEvent.FAILED, results.FILE_FAILED, error)
            return [DiscardPart(f), self._save((f,)), SendResults((f,), together=False)]
        # verified: saved before renaming, so that a crash between the rename and the next save cannot turn a
        # delivered file into "already exists" when the source resends it
        f.digest = digest
        if self.text:
            self._move(f, FileEvent.VERIFIED_TEXT)
            return [self._save((f,)), ConvertParts((f,), Answer.ONE)]
        self._move(f, FileEvent.VERIFIED)
        return [self._save((f,)), RenameParts((f,), self.exist_error, Answer.ONE)]

    def _receive_again(self, f: FileRow, mismatch: str, now: float) -> list[Action]:
        """Fan-out: a file failed its digest. The group key is every destination's, so a fellow destination may
        have forged shared chunks of it (docs/authority.md): the part file goes, the shared stream is left for the
        rest of this transfer, and the source is asked to resynchronise, which sends the file again by unicast
        under this destination's own key. Once per file (and process): a second mismatch fails it."""
        self._received_again.add(f.index)
        self.shared = Shared.LEFT
        self.ahead.clear()
        f.offset = 0
        return [DiscardPart(f), SaveFiles((f,)), LogWarning(f"file {f.index}: {mismatch} (shared chunks forged by "
                                                            f"a fellow destination?); received again by unicast only"),
                *self.request_recovery(f"file {f.index} failed its digest after shared chunks", now)]

    def files_written(self, action: WriteFiles, outcomes: Sequence[tuple[str | None, str | None]],
                      now: float) -> list[Action]:
        verified: list[FileRow] = []
        failed: list[FileRow] = []
        actions: list[Action] = []
        for (f, _, expected), (digest, error) in zip(action.entries, outcomes):
            error = error or self._mismatch(expected, digest)
            if error is None:
                f.offset, f.digest = f.size, digest
                self._move(f, FileEvent.VERIFIED_TEXT if self.text else FileEvent.VERIFIED)
                verified.append(f)
            else:
                self._move(f, FileEvent.FAILED, results.FILE_FAILED, error)
                actions.append(DiscardPart(f))
                failed.append(f)
        # as for one file: "verified" saved before the renames (with the failures, one commit)
        actions.append(self._save((*verified, *failed)))
        if verified and self.text:
            actions.append(ConvertParts(tuple(verified), Answer.TOGETHER, answered=tuple(failed)))
        elif verified:
            actions.append(RenameParts(tuple(verified), self.exist_error, Answer.TOGETHER, answered=tuple(failed)))
        elif failed:
            actions.append(SendResults(tuple(failed), together=True))
        return actions

    def converted(self, action: ConvertParts, outcomes: Sequence[tuple[str | None, str | None]],
                  now: float) -> list[Action]:
        """-t text: the converted files are durable (renamed next, as a binary file's part file is), or failed
        (an encoding error: the part file and the temporary file go, the destination is untouched)."""
        actions: list[Action] = []
        done: list[FileRow] = []
        failed: list[FileRow] = []
        for f, (digest, error) in zip(action.files, outcomes):
            if error is None:
                f.written_digest = digest
                self._move(f, FileEvent.CONVERTED)
                done.append(f)
            else:
                self._move(f, FileEvent.FAILED, results.FILE_FAILED, error)
                actions.append(DiscardPart(f))
                failed.append(f)
        # "renaming" saved (with the written digest) before the renames, as a binary file's "verified" is
        actions.append(self._save((*done, *failed)))
        answered = (*action.answered, *failed)
        if done:
            actions.append(RenameParts(tuple(done), self.exist_error, action.answer, answered=answered,
                                       converted=True))
        elif action.answer is Answer.TOGETHER:
            actions.append(SendResults(answered, together=True))
        elif action.answer is Answer.ONE:
            actions.append(SendResults(tuple(failed), together=False))
        return actions

    def renamed(self, action: RenameParts, errors: Sequence[str | None], now: float) -> list[Action]:
        actions: list[Action] = []
        done: list[FileRow] = []
        failed: list[FileRow] = []
        for f, error in zip(action.files, errors):
            if error is None:
                self._move(f, FileEvent.RENAMED, results.FILE_SUCCESS, None)
                done.append(f)
            else:
                self._move(f, FileEvent.FAILED, results.FILE_FAILED, error)
                actions.append(DiscardPart(f))  # a failed file leaves no part file (BFGIO0006E: theirs is kept)
                failed.append(f)
        if action.answer is Answer.TOGETHER:
            self._renamed.extend(done)  # "done" saved with the next commit; until then "renaming" says the same
            if failed:
                actions.append(self._save(tuple(failed)))
            actions.append(SendResults((*action.answered, *action.files), together=True))
        else:
            actions.append(SaveFiles(action.files))
            if action.answer is Answer.ONE:
                actions.extend(SendResults((f,), together=False) for f in action.files)
        return actions

    def parts_removed(self, action: RemoveParts, removed: Sequence[str], now: float) -> list[Action]:
        if action.outcome is None:
            return []  # abandon() alone: the caller saves what it needs
        actions: list[Action] = [self._save_transfer(action.files)]
        if removed:
            actions.append(LogCleanedUp(self.result_code, f"removed {len(removed)} part file(s) of a "
                                    f"transfer that ended {action.outcome.value}", tuple(removed)))
        actions.append(SendCompleteAck(len(removed)))
        return actions

    # ------------------------------------------------------------------ outputs

    @property
    def active(self) -> bool:
        """Still receiving. A transfer all of whose files were refused holds no capacity and asks nothing (a forged
        offer would otherwise occupy a maxDestinationTransfers slot for ever)."""
        return self.state not in TERMINAL_STATES and self._ready.any()

    def progress(self) -> dict[str, int]:
        files = self.files.values()
        return {"bytes_total": sum(f.size for f in files),
                "bytes_done": sum(f.size if f.status == FileStatus.DONE else f.offset for f in files),
                "files_total": len(self.files),
                "files_done": sum(1 for f in files if f.status != FileStatus.READY)}

    # ------------------------------------------------------------------ the messages

    def _on_resync(self, msg: Any, now: float) -> list[Action]:
        self.last_activity = now
        if msg.epoch < self.epoch:
            return []
        if self.cancel_requested:
            return self.request_recovery("", now)  # repeat the cancel; never resume a cancelled transfer
        if self.shared is Shared.OFFERED and self.active:
            return [Subscribe(msg)]  # a member only once the broker has the subscription: then answered
        self.epoch = msg.epoch
        self._gap_reported.clear()
        self.ahead.clear()
        moved: list[FileRow] = []
        measure: list[FileRow] = []
        for offer in msg.files:  # files the source had not yet seen a result for
            f = self.files.get(offer.index)
            if f is None or f.status != FileStatus.READY:
                continue
            if self._fresh and f.index not in self._written:
                if f.offset != 0:  # nothing of ours on disk: held 0, whatever part file lies there
                    f.offset = 0
                    moved.append(f)
            else:
                measure.append(f)  # after a restart the part file may hold more than the last checkpoint
        if measure:
            return [MeasureParts(tuple(measure), tuple(moved))]
        return self._answer_resync(moved)

    def _answer_resync(self, moved: list[FileRow]) -> list[Action]:
        # files whose length is already complete may just be waiting for their FileEnd
        holdings = tuple(Holding(f.index, f.offset if f.status == FileStatus.READY else f.size,
                                 FileStatus.READY if f.status == FileStatus.CONVERTING else f.status,
                                 f.result_code or 0, f.supplement, f.destination, f.digest,
                                 getattr(f, "written_digest", None))
                         for f in self.files.values())
        fanout = True if self.shared is Shared.JOINED else None
        return [self._save_transfer(tuple(moved)), SendResyncReply(self.epoch, holdings, fanout)]

    def _on_chunk(self, chunk: Any, now: float) -> list[Action]:
        self.last_activity = now
        if chunk.epoch != self.epoch:
            return []
        f = self.files.get(chunk.index)
        if f is None or f.status != FileStatus.READY:
            return []
        if chunk.offset + len(chunk.data) > f.size:
            return [LogWarning(f"file {f.index}: chunk beyond the announced size dropped")]
        if chunk.offset == f.offset:
            self._written.add(f.index)
            return [WriteChunk(f, chunk.offset, chunk.data, chunk.ack)]
        if chunk.offset > f.offset and self._gap_reported.get(f.index) != f.offset:
            # a chunk was lost before this one: ask for everything from our offset, once per gap
            self._gap_reported[f.index] = f.offset
            return [SendAck(self.epoch, f.index, f.offset, rewind=True)]
        return []  # a duplicate, or a gap already reported

    def _on_bundle(self, bundle: Any, now: float) -> list[Action]:
        """Whole small files in one frame: each written, verified, made durable with the others, renamed, and
        answered together."""
        self.last_activity = now
        if bundle.epoch != self.epoch:
            return []
        entries = []
        for entry in bundle.entries:
            f = self.files.get(entry.index)
            if f is None or f.status != FileStatus.READY or len(entry.data) != f.size:
                continue  # not expected (any more): a resync will tell the source where this file stands
            self._written.add(f.index)
            entries.append((f, entry.data, entry.digest))
        return [WriteFiles(tuple(entries))] if entries else []

    def _on_file_end(self, msg: Any, now: float) -> list[Action]:
        self.last_activity = now
        f = self.files.get(msg.index)
        if f is None or f.status != FileStatus.READY or msg.size != f.size:
            return []
        f.digest = msg.digest if msg.digest is not None else ""
        actions: list[Action] = [SaveFiles((f,))]
        if f.offset == f.size:
            actions.append(SealPart(f))
        return actions

    def _on_complete(self, msg: Any, now: float) -> list[Action]:
        """The source's outcome (it owns it): the part files of whatever did not arrive go, then it is confirmed.
        Taken again when it comes again (the source resends it until confirmed)."""
        try:
            outcome = TransferState(msg.state)
        except ValueError:
            outcome = None
        if outcome not in TERMINAL_STATES:
            raise DestinationSessionError(self.state, "complete", f" with the non-terminal outcome {msg.state!r}")
        assert outcome is not None
        self.state, self.result_code, self.peer_confirmed = outcome, msg.result_code, True
        [remove] = self.abandon()
        assert isinstance(remove, RemoveParts)
        return [RemoveParts(remove.files, outcome)]

    _receivers = {"resync": _on_resync, "chunk": _on_chunk, "bundle": _on_bundle, "file_end": _on_file_end,
                  "complete": _on_complete}

    # ------------------------------------------------------------------ internals

    def _move(self, f: FileRow, event: FileEvent, result_code: int | None = None,
              supplement: str | None = None) -> None:
        f.status = next_file_status(f.status, event)
        if event is not FileEvent.VERIFIED:
            f.result_code, f.supplement = result_code, supplement

    def _mismatch(self, expected: str | None, actual: str | None) -> str | None:
        if expected and actual != expected:
            return f"digest mismatch: the source sent {self.checksum} {expected}, the destination computed {actual}"
        return None

    def _save(self, files: tuple[FileRow, ...]) -> SaveFiles:
        """Save these rows, and with them the renamed bundle files whose "done" is not saved yet."""
        files, self._renamed = (*self._renamed, *files), []
        return SaveFiles(files)

    def _save_transfer(self, files: tuple[FileRow, ...]) -> SaveTransfer:
        files, self._renamed = (*self._renamed, *files), []
        return SaveTransfer(files)
