"""The source side of one transfer as a machine with no IO (in the style of aioquic's QuicConnection).

Inputs come with the time (`receive(msg, now)`, `link_changed(up, now)`, `peer_status(status, now)`,
`cancel(now)`, `handle_timer(now)`, ...); each returns the actions (agent.core.source_actions) the shell must
carry out, and `get_timer()` says when to call `handle_timer` next: the one deadline of the ack timer, the
resync wait, the resync backoff, the recovery timeout and the batching of file results. What to send next
is pulled from `sending` (agent.core.send_order) one item at a time, so a read that fails changes what follows.

Every rule of the source side is here: the lifecycle (agent.core.lifecycle), the recovery counter, the send
windows (agent.core.window), the resync attempts and their backoff (agent.core.policy), the batching of file
results, the checkpoint and progress intervals, and the texts of the recovery messages. What the shell
reads of the agent (chunk size, window, ack timeout and retries) it passes in as `limits`, read live: the
broker probe may change the chunk size while the transfer runs. Files are the store's records, duck-typed
(`SourceFile`); the session updates their offsets and results and says when to save them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from . import results
from .lifecycle import TransferEvent as E
from .lifecycle import TransferLifecycle
from .lifecycle import TransferState as S
from .policy import (CHECKPOINT_INTERVAL, PROGRESS_INTERVAL, RESULTS_BATCH, RESULTS_INTERVAL, RESYNC_FIRST_DELAY,
                     RESYNC_WAIT, resync_delay)
from .progress_tally import ProgressTally
from .send_order import SendOrder
from .source_actions import (Action, CheckSources, CloseFile, Log, Metric, PersistState, PublishProgress,
                             ReleaseBudget, ResendFrom, SaveFiles, SendResync, UseFeatures)
from .statuses import AGENT_GONE, AGENT_LEAVING, AGENT_RUNNING, FileStatus


class SourceFile(Protocol):
    """What the session reads and updates of one file of the transfer (agent.store.FileRecord is one)."""

    index: int
    source: str
    destination: str
    size: int
    mtime: float  # as recorded at the request (the shell compares the file to it)
    offset: int
    status: str
    result_code: int | None
    supplement: str | None
    digest: str | None


class Limits(Protocol):
    """What the session reads of its agent, live (agent.context.AgentContext is one)."""

    chunk_size: int
    window_chunks: int
    ack_timeout: float
    ack_retries: int


# --------------------------------------------------------------------------- the reaction table


class Input(str, Enum):
    """What happens to a transfer from outside, beyond the messages that carry data."""

    LINK_DOWN = "link_down"  # the broker connection was lost
    SEND_FAILED = "send_failed"  # a publish of this transfer failed (the connection is as good as lost)
    LINK_UP = "link_up"
    PEER_GONE = "peer_gone"  # the destination agent is UNREACHABLE or STOPPED
    PEER_RUNNING = "peer_running"  # the destination agent is READY or ACTIVE
    RECOVERY_REQUESTED = "recovery_requested"  # the destination's RequestRecovery
    ACKS_MISSED = "acks_missed"  # agentAckTimeout ran out agentAckTimeoutRetries times in a row
    RESTARTED = "restarted"  # the source agent restarted with this transfer live
    RESUMED = "resumed"  # a resync answer ended the recovery (looked up in the state it resumed to)


@dataclass(frozen=True)
class Stall:
    """Output: enter recovery (or stay in it) because of `trigger`; `reason` is formatted with the input's
    fields. Entering recovery logs `recovering` (BFGTR0081I) and schedules the first resync attempt."""

    trigger: str
    reason: str


class Output(str, Enum):
    RESET_BACKOFF = "reset_backoff"  # the next resync attempt at once, the backoff from its start


RESET_BACKOFF = Output.RESET_BACKOFF
SENDING = (S.NEGOTIATING, S.IN_PROGRESS)
# The states a stall applies in (the stall guard): something is in flight. Queued has sent nothing, a terminal
# state is over, and recovering is recovery already.
ACTIVE = (*SENDING, S.RESYNCHRONISING)
_BROKER = Stall("broker_connection", "lost the connection to the broker")

# (input, state the session is in) -> what it does, in order (magic-wormhole's outputs=). A pair not here is
# ignored: a late or repeated input changes nothing. The triggers are documented (docs/log-event.schema.json,
# docs/concepts.md; tests/unit/test_docs.py holds them to this table).
REACTIONS: dict[tuple[Input, S], tuple[Stall | Output, ...]] = {
    **{(Input.LINK_DOWN, s): (_BROKER,) for s in ACTIVE},
    **{(Input.SEND_FAILED, s): (_BROKER,) for s in ACTIVE},
    **{(Input.PEER_GONE, s): (Stall("peer_unreachable", "destination agent {peer} is {status}"),) for s in ACTIVE},
    **{(Input.RECOVERY_REQUESTED, s): (Stall("destination_request", "the destination asked for recovery: {detail}"),
                                       RESET_BACKOFF) for s in ACTIVE},
    **{(Input.ACKS_MISSED, s): (Stall("ack_timeout", "no {what} from {peer} for {waited:g} s "
                                                     "(transferAckTimeout × transferAckTimeoutRetries)"),)
       for s in SENDING},
    **{(Input.RESTARTED, s): (Stall("agent_restart", "the source agent restarted"),) for s in ACTIVE},
    # a reason to believe a resync would be answered now: try at once rather than after the backoff
    (Input.LINK_UP, S.RECOVERING): (RESET_BACKOFF,),
    (Input.PEER_RUNNING, S.RECOVERING): (RESET_BACKOFF,),
    (Input.RECOVERY_REQUESTED, S.RECOVERING): (RESET_BACKOFF,),
    (Input.RESTARTED, S.RECOVERING): (RESET_BACKOFF,),
    (Input.RESUMED, S.IN_PROGRESS): (RESET_BACKOFF,),
}
TRIGGERS: frozenset[str] = frozenset(o.trigger for outs in REACTIONS.values() for o in outs if isinstance(o, Stall))


def message(message_id: str, **fields: Any) -> str:
    """The text of a message id, as logged: "BFGTR0081I: transfer ... entered recovery: ..."."""
    return f"{message_id}: {results.MESSAGES[message_id].format(**fields)}"


def file_view(f: SourceFile, checksum: str) -> dict[str, Any]:
    """A file with its result, as log events list it (docs/log-events.md)."""
    view: dict[str, Any] = {"index": f.index, "source": f.source, "destination": f.destination, "size": f.size,
            "checksum_method": checksum, "digest": f.digest, "result_code": f.result_code, "supplement": f.supplement}
    written = getattr(f, "written_digest", None)
    if written is not None:  # -t text: the digest of the converted file the destination wrote
        view["written_digest"] = written
    return view


def resync_wait(ack_timeout: float) -> float:
    """How long a resync waits for its answer before it counts as unanswered."""
    return min(RESYNC_WAIT, ack_timeout)


def recovery_timeout_text(timeout: int, deadline: str | None) -> str:
    if timeout < 0:
        return "recovers until successful (recovery timeout -1)"
    if timeout == 0:
        return "fails at once (recovery timeout 0)"
    return f"recovery timeout {timeout} s, until {deadline}"


# --------------------------------------------------------------------------- the session


class SourceSession:
    def __init__(self, transfer_id: str, peer: str, files: Iterable[SourceFile], limits: Limits, *, now: float,
                 bundle_entry_bytes: int, max_bundle_files: int, state: S = S.QUEUED, epoch: int = 0,
                 recovery_timeout: int = -1, recovering_since: float | None = None, recoveries: int = 0,
                 last_stall: str | None = None, checksum: str = "sha256",
                 clock_text: Callable[[float | None], str | None] = lambda t: None if t is None else f"{t:g}"
                 ) -> None:
        """`recovering_since` is on the scale of `now`; `clock_text` names a moment of that scale to people
        (the shell gives its wall-clock time in ISO 8601)."""
        self.tid = transfer_id
        self.peer = peer
        self.limits = limits
        self._now = now
        self.started = now
        self.lifecycle = TransferLifecycle(recovery_timeout, lambda: self._now, state=S(state),
                                           recovering_since=recovering_since, recoveries=recoveries)
        self.files: dict[int, SourceFile] = {f.index: f for f in files}
        self.sending = SendOrder(self.files, limits, bundle_entry_bytes, max_bundle_files)
        self.tally = ProgressTally(self.files, self.sending)  # the live progress figures, kept as files change
        self.epoch = epoch
        self.checksum = checksum
        self.stall_reason = last_stall
        self.end_reason: str | None = None
        self.bytes_resent = 0
        self._clock_text = clock_text
        # what the broker and the destination agent are, as last told
        self.link_up = True
        self.peer_state: str | None = None
        # the timers
        self.last_progress = now
        self.ack_misses = 0
        self.resync_attempts = 0
        self.next_resync_at = 0.0
        self.resync_sent_at = 0.0
        self._resync_for = ""  # why the resync being sent was sent (start, probe, attempt): resync_done
        self._reply: Any = None  # a resync answer waiting for CheckSources
        # pacing of what is saved and published
        self._dirty: set[int] = set()  # files whose checkpoint moved since the last save
        self._resulted: list[SourceFile] = []  # results not yet saved and logged
        self._last_results_flush = now
        self._last_checkpoint = float("-inf")
        self._last_progress_pub = float("-inf")

    # ------------------------------------------------------------------ what the shell reads

    @property
    def state(self) -> S:
        return self.lifecycle.state

    def get_timer(self) -> float | None:
        """When `handle_timer` must run next (on the scale of `now`), or None."""
        st = self.state
        if st.is_terminal or st == S.QUEUED:
            return None
        if st in SENDING:
            t = self.last_progress + self.limits.ack_timeout
        elif st == S.RESYNCHRONISING:
            t = self.resync_sent_at + resync_wait(self.limits.ack_timeout)
        else:
            t = self.next_resync_at
        deadline = self.lifecycle.recovery_deadline
        if deadline is not None:
            t = min(t, deadline)
        if self._resulted:
            t = min(t, self._last_results_flush + RESULTS_INTERVAL)
        return t

    # ------------------------------------------------------------------ inputs

    def start(self, now: float, *, restarted: bool, link_up: bool, peer: str | None) -> list[Action]:
        """The shell runs the transfer: a queued one negotiates; one live when the agent restarted recovers.
        The broker's and the destination's states as known now are recorded, not reacted to."""
        self._now, self.link_up, self.peer_state = now, link_up, peer
        out: list[Action] = []
        if self.state == S.QUEUED:
            self._event(out, E.START)
            self._resync(out, "start")
        elif restarted:
            self._react(out, Input.RESTARTED)
        return out

    def receive(self, msg: Any, now: float) -> list[Action]:
        """A control message from the destination (agent.wire.protocol: resync_reply, ack, file_result(s),
        request_recovery), checked by the shell for its signature or MAC."""
        self._now = now
        out: list[Action] = []
        if self.state.is_terminal:
            return out
        kind = msg.kind
        if kind == "resync_reply":
            if msg.epoch == self.epoch:
                features = frozenset(msg.features)
                self.sending.bundles = "bundle" in features
                self.sending.acks.sparse = "sparse_ack" in features
                self._reply = msg
                out.append(UseFeatures(features))
                out.append(CheckSources(tuple(h.index for h in msg.files if h.status == FileStatus.READY
                                              and self.sending.ready(h.index))))
        elif kind == "ack":
            self._on_ack(out, msg)
        elif kind in ("file_result", "file_results"):
            for r in msg.results if kind == "file_results" else [msg]:
                f = self.files.get(r.index)
                if f is None or f.status != FileStatus.READY:
                    continue  # unknown, or answered already (a repeated message)
                self.last_progress, self.ack_misses = now, 0
                self._file_resulted(out, f, FileStatus.DONE if r.result_code == results.FILE_SUCCESS
                                    else FileStatus.FAILED, r.result_code, r.supplement, r.destination, r.digest,
                                    getattr(r, "written_digest", None))
        elif kind == "request_recovery" and msg.cancel:
            out += self.cancel(now, f"cancelled at the destination agent {self.peer}: {msg.reason}")
        elif kind == "request_recovery":
            self._react(out, Input.RECOVERY_REQUESTED, detail=msg.reason)
        return out

    def sources_checked(self, changed: dict[int, str | None], now: float) -> list[Action]:
        """The answer to CheckSources: why each file is not the one requested (None: it is). Applies the resync
        answer held since: results, rewinds, and the end of the negotiation or of the recovery."""
        self._now = now
        out: list[Action] = []
        msg, self._reply = self._reply, None
        if msg is None or self.state.is_terminal:
            return out
        self._apply_holdings(out, msg.files, changed)
        self.last_progress, self.ack_misses = now, 0
        if self.state == S.NEGOTIATING:
            self._event(out, E.NEGOTIATED)
        elif self.state.is_recovery:
            was = self.lifecycle.recovering_since
            if self._event(out, E.RESYNCED) == S.IN_PROGRESS:
                if was is not None:
                    out.append(Metric("recovery_ended", now - was))
                held = sum(map(self.sending.acked, self.files.values()))
                out.append(Log("resumed", {"message_id": results.BFGTR0082I,
                                           "message": message(results.BFGTR0082I, transfer_id=self.tid),
                                           "bytes_held_by_destination": held,
                                           "recovering_since": self._clock_text(was)}))
                self._react(out, Input.RESUMED)
        return out

    def link_changed(self, up: bool, now: float) -> list[Action]:
        self._now, self.link_up = now, up
        return self._react([], Input.LINK_UP if up else Input.LINK_DOWN)

    def send_failed(self, now: float) -> list[Action]:
        """A publish of this transfer failed (the link's state is not known to have changed)."""
        self._now = now
        return self._react([], Input.SEND_FAILED)

    def peer_status(self, status: str | None, now: float) -> list[Action]:
        self._now, self.peer_state = now, status
        if status in AGENT_GONE:
            return self._react([], Input.PEER_GONE, status=status)
        if status in AGENT_RUNNING:
            return self._react([], Input.PEER_RUNNING)
        return []

    def cancel(self, now: float, reason: str = "cancelled by request") -> list[Action]:
        return self._end(now, E.CANCEL, reason)

    def fail(self, reason: str, now: float) -> list[Action]:
        """The shell could not go on (a bug, an IO error): the transfer fails saying why."""
        return self._end(now, E.FAIL, reason)

    def resync_done(self, now: float, sent: bool = True, refused: str | None = None) -> list[Action]:
        """What became of the last SendResync: published (`sent`), not (the link is down), or `refused`
        (larger than the broker passes: that would never change, so the transfer fails)."""
        self._now = now
        out: list[Action] = []
        why, self._resync_for = self._resync_for, ""
        if refused is not None:
            offered = sum(1 for f in self.files.values() if f.status == FileStatus.READY)
            return self._end(now, E.FAIL, f"the negotiation of this transfer ({offered} files) does not fit through "
                                          f"the broker: {refused}; send the files in smaller transfers, or raise the "
                                          f"broker's maximum message size (max_packet_size, max_payload)")
        if why == "start" and self.peer_state in AGENT_GONE:
            # no point waiting an ack timeout for an answer that cannot come: recover now
            self._react(out, Input.PEER_GONE, status=self.peer_state)
        elif why == "attempt" and sent and self.state == S.RECOVERING:
            self._event(out, E.RESYNC_SENT)
            self.resync_sent_at = now
        return out

    def handle_timer(self, now: float) -> list[Action]:
        """Whatever is due at `now`: results to save, the recovery timeout, the ack timer, the resync wait,
        the next resync attempt. Harmless when nothing is."""
        self._now = now
        out: list[Action] = []
        self._flush(out)
        before = self.state
        if self.lifecycle.poll() != before:
            out.append(PersistState())  # the recovery timeout ran out
        st = self.state
        if st.is_terminal:
            return out
        if st in SENDING and now >= self.last_progress + self.limits.ack_timeout:
            self.ack_misses += 1
            retries = max(1, self.limits.ack_retries)
            if self.ack_misses >= retries:
                what = "answer to the negotiation" if st == S.NEGOTIATING else "acknowledgement"
                self._react(out, Input.ACKS_MISSED, what=what, waited=self.limits.ack_timeout * retries)
            else:
                # a lost chunk, ack or file end: ask the destination where it stands (a quiet resync)
                self.last_progress = now
                self._resync(out, "probe")
        elif st == S.RESYNCHRONISING and now >= self.resync_sent_at + resync_wait(self.limits.ack_timeout):
            self._event(out, E.STALL)  # the resync went unanswered: back to recovering, counter still running
        elif st == S.RECOVERING and now >= self.next_resync_at:
            self.resync_attempts += 1
            self.next_resync_at = now + resync_delay(self.resync_attempts)
            if self.link_up and self.peer_state not in AGENT_LEAVING:
                self._resync(out, "attempt")
        return out

    # ------------------------------------------------------------------ what the shell found sending

    def source_failed(self, index: int, supplement: str, now: float) -> list[Action]:
        """The source file cannot be sent as it was requested (changed, unreadable): it fails, once logged.
        The destination removes what it holds of it when the outcome reaches it."""
        self._now = now
        out: list[Action] = []
        self._file_resulted(out, self.files[index], FileStatus.FAILED, results.FILE_FAILED, supplement)
        return out

    def sent(self, now: float) -> list[Action]:
        """The round of sends is over: publish progress when due; every file has its result: finish."""
        self._now = now
        out: list[Action] = []
        self._progress(out)
        if self.state == S.IN_PROGRESS and not self.sending.windows:  # a file leaves `windows` with its result
            self._flush(out, force=True)
            codes = [f.result_code if f.result_code is not None else results.FILE_FAILED for f in self.files.values()]
            rc = results.transfer_result(codes)
            self._event(out, {results.SUCCESS: E.FINISH_OK, results.PARTIAL: E.FINISH_PARTIAL}.get(rc, E.FINISH_FAILED))
        return out

    # ------------------------------------------------------------------ the end

    def finish(self, now: float) -> tuple[list[Action], str | None, list[SourceFile]]:
        """The transfer has ended: (actions, why it ended, the files failed now). A file without a result is
        reported failed, never as a success; the results still held back are saved."""
        self._now = now
        out: list[Action] = [ReleaseBudget()]
        self._flush(out, force=True)
        st = self.state
        if st == S.RECOVERY_TIMED_OUT:
            reason: str | None = message(results.BFGSS0081E, transfer_id=self.tid,
                                         timeout=self.lifecycle.recovery_timeout)
        elif st == S.CANCELLED:
            reason = self.end_reason or "cancelled"
        else:
            reason = self.end_reason
        unfinished = [f for f in self.files.values() if f.status == FileStatus.READY]
        for f in unfinished:
            self.sending.touched.add(f.index)
            f.status, f.result_code = FileStatus.FAILED, results.FILE_FAILED
            f.supplement = reason or f"the transfer ended {st.value}"
        return out, reason, unfinished

    def completed_fields(self, reason: str | None, now: float) -> dict[str, Any]:
        """The fields of the `completed` event (docs/log-events.md)."""
        rc = self.result_code
        files = self.files.values()
        return {"result_code": rc, "result": results.describe(rc),
                "message_id": results.BFGSS0081E if self.state == S.RECOVERY_TIMED_OUT else None,
                "message": reason, "files": [file_view(f, self.checksum) for f in files],
                "statistics": {"files": len(self.files),
                               "files_succeeded": sum(1 for f in files if f.result_code in (0, 2)),
                               "files_failed": sum(1 for f in files if f.result_code == 1),
                               "bytes": sum(f.size for f in files if f.status == FileStatus.DONE),
                               "seconds": round(now - self.started, 3), "recoveries": self.lifecycle.recoveries,
                               "bytes_resent": self.bytes_resent}}

    @property
    def result_code(self) -> int:
        rc = self.lifecycle.result_code
        return results.FAILED if rc is None else rc

    # ------------------------------------------------------------------ internals

    def _react(self, out: list[Action], event: Input, **fields: Any) -> list[Action]:
        for output in REACTIONS.get((event, self.state), ()):
            if isinstance(output, Stall):
                self._stall(out, output, fields)
            else:  # RESET_BACKOFF
                self.resync_attempts, self.next_resync_at = 0, 0.0
        return out

    def _stall(self, out: list[Action], stall: Stall, fields: dict[str, Any]) -> None:
        before = self.state
        self.stall_reason = reason = stall.reason.format(peer=self.peer, **fields)
        out.append(ReleaseBudget())  # nothing is sent while recovering: room for the others
        after = self._event(out, E.STALL)
        if before.is_recovery:
            return  # still recovering; the counter keeps running
        out.append(Metric("recovery_started"))
        lc = self.lifecycle
        deadline = self._clock_text(lc.recovery_deadline)
        out.append(Log("recovering", {
            "message_id": results.BFGTR0081I,
            "message": message(results.BFGTR0081I, transfer_id=self.tid, reason=reason,
                               timeout=recovery_timeout_text(lc.recovery_timeout, deadline)),
            "reason": reason, "trigger": stall.trigger, "peer": self.peer, "recovery_timeout": lc.recovery_timeout,
            "recovery_deadline": deadline, "source_agent_time": self._clock_text(self._now),
            "recoveries": lc.recoveries}))
        if after == S.RECOVERY_TIMED_OUT:
            out.append(PersistState())
        self.resync_attempts, self.next_resync_at = 0, self._now + RESYNC_FIRST_DELAY

    def _end(self, now: float, event: E, reason: str) -> list[Action]:
        """End the transfer by `event` (cancel, fail), saying why; a transfer that has ended stays as it is."""
        self._now = now
        out: list[Action] = []
        if not self.state.is_terminal:
            self.end_reason = reason
            self._event(out, event)
        return out

    def _event(self, out: list[Action], event: E) -> S:
        after = self.lifecycle.handle(event)
        out.append(PersistState())
        return after

    def _resync(self, out: list[Action], why: str) -> None:
        self.epoch += 1
        self._resync_for = why
        out.append(SendResync(self.epoch, tuple(i for i, f in self.files.items() if f.status == FileStatus.READY)))

    def _on_ack(self, out: list[Action], msg: Any) -> None:
        w = self.sending.windows.get(msg.index)
        if msg.epoch != self.epoch or w is None or msg.offset < w.acked:
            return
        before = w.acked
        self.sending.touched.add(msg.index)
        if msg.rewind and msg.offset < w.next_offset:
            self.bytes_resent += w.next_offset - msg.offset
            self.sending.rewind_in_place(msg.index, msg.offset)
        elif self.sending.on_ack(msg.index, msg.offset):
            out.append(Metric("bytes_sent", w.acked - before))
            self.last_progress, self.ack_misses = self._now, 0
        self.files[msg.index].offset = w.acked
        self._dirty.add(msg.index)
        self._checkpoint(out)

    def _apply_holdings(self, out: list[Action], holdings: Iterable[Any], changed: dict[int, str | None]) -> None:
        for h in holdings:
            f = self.files.get(h.index)
            if f is None or f.status != FileStatus.READY:
                continue
            if h.status == FileStatus.DONE:
                self._file_resulted(out, f, FileStatus.DONE, results.FILE_SUCCESS, h.supplement, h.destination,
                                    h.digest, getattr(h, "written_digest", None))
            elif h.status == FileStatus.FAILED:
                self._file_resulted(out, f, FileStatus.FAILED, h.result_code or results.FILE_FAILED, h.supplement,
                                    h.destination)
            elif (why := changed.get(h.index)) is not None:
                self._file_resulted(out, f, FileStatus.FAILED, results.FILE_FAILED, why)
            else:
                held = min(h.held, f.size)
                self.bytes_resent += self.sending.rewind(h.index, held)
                if f.offset != held:  # a first negotiation of 10,000 files changes none: nothing to save
                    f.offset = held
                    self._dirty.add(h.index)
                out.append(ResendFrom(h.index, held))
        self._checkpoint(out, force=True)

    def _file_resulted(self, out: list[Action], f: SourceFile, status: str, code: int, supplement: str | None = None,
                       destination: str | None = None, digest: str | None = None,
                       written_digest: str | None = None) -> None:
        f.status, f.result_code, f.supplement = status, code, supplement
        self.sending.touched.add(f.index)
        if destination:
            f.destination = destination
        if digest:
            f.digest = digest
        if written_digest:
            f.written_digest = written_digest  # type: ignore[attr-defined]  # -t text; agent.store.FileRecord has it
        if status == FileStatus.DONE:
            f.offset = f.size
        self.sending.drop(f.index)
        out.append(CloseFile(f.index))
        self._dirty.discard(f.index)
        self._resulted.append(f)
        self._flush(out)

    def _flush(self, out: list[Action], force: bool = False) -> None:
        """Save the files that got a result and log them in one `progress` event: per file, a commit and an
        event cost more than sending a small file. A source killed before this runs learns them again from
        the destination at its restart (the resync), so nothing is lost."""
        if not self._resulted:
            return
        now = self._now
        if not force and len(self._resulted) < RESULTS_BATCH and now - self._last_results_flush < RESULTS_INTERVAL:
            return
        self._last_results_flush = now
        done, self._resulted = self._resulted, []
        out.append(SaveFiles(tuple(done)))
        if self.state.is_terminal:
            return  # the `completed` event lists every file with its result
        for i in range(0, len(done), RESULTS_BATCH):
            out.append(Log("progress", {"files": [file_view(f, self.checksum) for f in done[i:i + RESULTS_BATCH]]}))

    def _checkpoint(self, out: list[Action], force: bool = False) -> None:
        now = self._now
        if force or now - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            self._last_checkpoint = now
            # only what moved: O(files in flight), not O(files); in one commit (a resync can move thousands)
            moved = tuple(self.files[i] for i in self._dirty if self.files[i].status == FileStatus.READY)
            if moved:
                out.append(SaveFiles(moved))
            self._dirty.clear()
        self._progress(out)

    def _progress(self, out: list[Action], force: bool = False) -> None:
        if force or self._now - self._last_progress_pub >= PROGRESS_INTERVAL:
            self._last_progress_pub = self._now
            out.append(PublishProgress())
