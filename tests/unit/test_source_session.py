"""The source session (agent.core.source_session) driven by tables of inputs with their times: no files, no
store, no broker. Each row says what goes in at which time, and what must come out: the state, the actions,
and the next deadline (`get_timer()`)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import pytest

from agent.core import results
from agent.core.lifecycle import TERMINAL_STATES, TRANSITIONS, TransferEvent, TransferState
from agent.core.policy import RESULTS_BATCH, RESULTS_INTERVAL, RESYNC_FIRST_DELAY, resync_delay
from agent.core.source_actions import (CheckSources, CloseFile, Log, PersistState, ReleaseBudget, ResendFrom,
                                       SaveFiles, SendBundle, SendChunk, SendFileEnd, SendResync, UseFeatures)
from agent.core.source_session import ACTIVE, REACTIONS, TRIGGERS, Input, SourceSession, Stall, message

S = TransferState
ROOT = Path(__file__).resolve().parents[2]
TID = "t" * 48


@dataclass
class File:
    """A file record as the session sees one (agent.store.FileRecord has these fields)."""

    index: int
    size: int
    source: str = ""
    destination: str = ""
    mtime: float = 0.0
    offset: int = 0
    status: str = "ready"
    result_code: int | None = None
    supplement: str | None = None
    digest: str | None = None


def make(sizes: tuple[int, ...] = (10,), state: S = S.QUEUED, rt: int = -1, now: float = 0.0, chunk: int = 4,
         window: int = 2, ack_timeout: float = 10.0, retries: int = 3, since: float | None = None) -> SourceSession:
    limits = NS(chunk_size=chunk, window_chunks=window, ack_timeout=ack_timeout, ack_retries=retries)
    files = [File(i, size, source=f"/src/f{i}", destination=f"/dst/f{i}") for i, size in enumerate(sizes)]
    if since is None and state.is_recovery:
        since = now
    return SourceSession(TID, "A2", files, limits, now=now, bundle_entry_bytes=9, max_bundle_files=4096,
                         state=state, recovery_timeout=rt, recovering_since=since, clock_text=lambda t: None
                         if t is None else f"T{t:g}")


def holding(index: int, held: int = 0, status: str = "ready", code: int = 0) -> NS:
    return NS(index=index, held=held, status=status, result_code=code, supplement=None, destination=None,
              digest=None)


def reply(s: SourceSession, *holdings: NS, features: tuple[str, ...] = ()) -> NS:
    return NS(kind="resync_reply", epoch=s.epoch, features=list(features), files=list(holdings))


def ack(s: SourceSession, index: int, offset: int, rewind: bool = False) -> NS:
    return NS(kind="ack", epoch=s.epoch, index=index, offset=offset, rewind=rewind)


def result(index: int, code: int = 0) -> NS:
    return NS(kind="file_result", index=index, result_code=code, supplement=None, destination=None, digest=None)


def answer(s: SourceSession, msg: NS, now: float, changed: dict[int, str | None] | None = None) -> list[Any]:
    """receive() a resync answer and answer its CheckSources as the shell does."""
    out = s.receive(msg, now)
    check = [a for a in out if isinstance(a, CheckSources)]
    if check:
        out += s.sources_checked({i: (changed or {}).get(i) for i in check[0].indexes}, now)
    return out


def negotiated(sizes: tuple[int, ...] = (10,), features: tuple[str, ...] = (), **kw: Any) -> SourceSession:
    s = make(sizes, **kw)
    s.start(0.0, restarted=False, link_up=True, peer="READY")
    s.resync_done(0.0)
    answer(s, reply(s, *(holding(i) for i in range(len(sizes))), features=features), 0.0)
    assert s.state == S.IN_PROGRESS
    return s


def sends(s: SourceSession, budget: int | None = None) -> list[Any]:
    """One round of sending, every send succeeding, as the shell carries them out."""
    left = s.sending.window_left()
    s.sending.start(left if budget is None else budget)
    out = []
    while (send := s.sending.next_send()) is not None:
        out.append(send)
        if isinstance(send, SendFileEnd):
            s.sending.file_end_sent(send.index)
        elif isinstance(send, SendBundle):
            for i in send.indexes:
                s.sending.bundled(i)
            s.sending.bundle_sent(sum(s.files[i].size for i in send.indexes))
    return out


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


def logs(actions: list[Any], action: str) -> list[dict[str, Any]]:
    return [a.fields for a in actions if isinstance(a, Log) and a.action == action]


# --------------------------------------------------------------------------- the lifecycle


def test_a_transfer_negotiates_sends_and_completes() -> None:
    s = make((10,))
    # (time, input, state after, actions, next timer)
    rows = [
        (0.0, lambda t: s.start(t, restarted=False, link_up=True, peer="READY"), S.NEGOTIATING,
         [PersistState(), SendResync(1, (0,))], 10.0),
        (0.0, lambda t: s.resync_done(t), S.NEGOTIATING, [], 10.0),
        (1.0, lambda t: s.receive(reply(s, holding(0)), t), S.NEGOTIATING,
         [UseFeatures(frozenset()), CheckSources((0,))], 10.0),
        (1.0, lambda t: s.sources_checked({0: None}, t), S.IN_PROGRESS, None, 11.0),
        (1.5, lambda t: [] if sends(s) else None, S.IN_PROGRESS, [], 11.0),  # 8 bytes out
        (2.0, lambda t: s.receive(ack(s, 0, 4), t), S.IN_PROGRESS, None, 12.0),
        (3.0, lambda t: s.receive(result(0), t), S.IN_PROGRESS, [CloseFile(0), SaveFiles((s.files[0],)), None], 13.0),
        (3.0, lambda t: s.sent(t), S.COMPLETE, None, None),
    ]
    for t, step, state, actions, timer in rows:
        out = step(t)
        assert s.state == state, (t, out)
        if actions is not None:
            if actions and actions[-1] is None:  # a prefix
                assert out[:len(actions) - 1] == actions[:-1], out
            else:
                assert out == actions, out
        assert s.get_timer() == timer, (t, s.get_timer())
    assert s.files[0].status == "done" and s.result_code == results.SUCCESS


def test_a_resync_with_every_file_failed_there_ends_failed_and_partial_is_partial() -> None:
    s = negotiated((4, 4))
    s.receive(result(0), 1.0)
    s.receive(result(1, code=1), 1.0)
    s.sent(1.0)
    assert s.state == S.PARTIAL and s.result_code == results.PARTIAL
    s = negotiated((4,))
    s.receive(result(0, code=1), 1.0)
    s.sent(1.0)
    assert s.state == S.FAILED


def test_the_answer_to_the_negotiation_can_say_a_file_is_done_failed_or_changed() -> None:
    s = make((4, 4, 4))
    s.start(0.0, restarted=False, link_up=True, peer="READY")
    out = answer(s, reply(s, holding(0, status="done"), holding(1, status="failed", code=1), holding(2, held=2)),
                 1.0, changed={2: "FTEIO0003E: changed"})
    assert [f.status for f in s.files.values()] == ["done", "failed", "failed"]
    assert s.files[2].supplement == "FTEIO0003E: changed"
    assert [a.index for a in out if isinstance(a, CloseFile)] == [0, 1, 2]
    assert s.state == S.IN_PROGRESS


def test_a_resync_answer_rewinds_to_what_the_destination_holds() -> None:
    s = negotiated((10,))
    sends(s)  # 8 bytes out
    out = answer(s, reply(s, holding(0, held=2)), 1.0)  # the answer to a quiet resync
    assert ResendFrom(0, 2) in out and s.bytes_resent == 6 and s.files[0].offset == 2
    assert SaveFiles((s.files[0],)) in out  # the checkpoint moved: saved at once
    assert sends(s)[0] == SendChunk(0, 2, 4, False, True)


def test_the_resync_answer_of_an_older_epoch_is_ignored() -> None:
    s = make((4,))
    s.start(0.0, restarted=False, link_up=True, peer="READY")
    old = reply(s, holding(0))
    old.epoch = s.epoch - 1
    assert s.receive(old, 1.0) == [] and s.state == S.NEGOTIATING


# --------------------------------------------------------------------------- recovery and its timeout


@pytest.mark.parametrize("rt, state, text, timer", [
    (-1, S.RECOVERING, "recovers until successful (recovery timeout -1)", 5.0 + RESYNC_FIRST_DELAY),
    (0, S.RECOVERY_TIMED_OUT, "fails at once (recovery timeout 0)", None),
    (30, S.RECOVERING, "recovery timeout 30 s, until T35", 5.0 + RESYNC_FIRST_DELAY),
])
def test_entering_recovery_with_each_recovery_timeout(rt: int, state: S, text: str, timer: float | None) -> None:
    s = negotiated(rt=rt)
    out = s.link_changed(False, 5.0)
    assert s.state == state
    [event] = logs(out, "recovering")
    assert event["message"] == (f"BFGTR0081I: transfer {TID} entered recovery: lost the connection to the broker; "
                                f"{text}")
    assert event["message_id"] == "BFGTR0081I" and event["trigger"] == "broker_connection"
    assert event["recovery_timeout"] == rt and event["source_agent_time"] == "T5" and event["recoveries"] == 1
    assert ReleaseBudget() in out
    assert s.get_timer() == timer


def test_the_recovery_timeout_runs_out_at_its_deadline() -> None:
    s = negotiated(rt=30)
    s.link_changed(False, 5.0)
    s.link_changed(True, 5.0)  # the link is back, but the destination never answers
    t = 5.0
    while s.state == S.RECOVERING or s.state == S.RESYNCHRONISING:
        t = s.get_timer()
        assert t is not None and t <= 35.0
        for a in s.handle_timer(t):
            if isinstance(a, SendResync):
                s.resync_done(t)
    assert s.state == S.RECOVERY_TIMED_OUT and t == 35.0
    _, reason, unfinished = s.finish(35.0)
    assert reason == f"BFGSS0081E: transfer {TID} failed: recovery timed out after 30 s"
    assert [f.index for f in unfinished] == [0] and s.files[0].supplement == reason and s.files[0].result_code == 1
    assert s.completed_fields(reason, 35.0)["message_id"] == "BFGSS0081E"
    assert s.result_code == results.RECOVERY_TIMED_OUT


def test_the_recovery_counter_goes_back_to_0_when_the_transfer_resumes() -> None:
    s = negotiated(rt=30)
    s.link_changed(False, 5.0)
    out = answer(s, reply(s, holding(0, held=4)), 20.0)  # an answer within the outage
    assert s.state == S.IN_PROGRESS
    [resumed] = logs(out, "resumed")
    assert resumed["message"] == f"BFGTR0082I: transfer {TID} resumed after recovery"
    assert resumed["bytes_held_by_destination"] == 4 and resumed["recovering_since"] == "T5"
    out = s.link_changed(False, 40.0)
    [event] = logs(out, "recovering")
    assert event["recovery_deadline"] == "T70" and event["recoveries"] == 2  # 30 s from the new outage


def test_a_restarted_agent_resumes_counting_from_when_the_outage_began() -> None:
    s = make(state=S.RECOVERING, rt=30, now=100.0, since=90.0)
    s.start(100.0, restarted=True, link_up=True, peer="READY")
    assert s.get_timer() == 0.0  # the first attempt at once
    assert s.lifecycle.recovery_deadline == 120.0


def test_a_restart_in_flight_enters_recovery() -> None:
    s = make(state=S.IN_PROGRESS)
    out = s.start(0.0, restarted=True, link_up=True, peer="READY")
    assert s.state == S.RECOVERING and logs(out, "recovering")[0]["trigger"] == "agent_restart"


# --------------------------------------------------------------------------- the stall guard


REACTING = [S.NEGOTIATING, S.IN_PROGRESS, S.RESYNCHRONISING]


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("how", ["link_down", "send_failed", "peer_gone", "recovery_requested"])
def test_a_stall_applies_only_while_something_is_in_flight(state: S, how: str) -> None:
    s = make(state=state)
    inputs = {"link_down": lambda: s.link_changed(False, 1.0), "send_failed": lambda: s.send_failed(1.0),
              "peer_gone": lambda: s.peer_status("UNREACHABLE", 1.0),
              "recovery_requested": lambda: s.receive(NS(kind="request_recovery", reason="x", cancel=False), 1.0)}
    out = inputs[how]()
    if state in (S.NEGOTIATING, S.IN_PROGRESS):
        assert s.state == S.RECOVERING and len(logs(out, "recovering")) == 1
    elif state == S.RESYNCHRONISING:  # recovery already: back to recovering, quietly, the counter running
        assert s.state == S.RECOVERING and logs(out, "recovering") == []
    else:
        assert s.state == state and out == []


def test_the_stall_triggers_are_the_table_rows() -> None:
    assert TRIGGERS == {"broker_connection", "peer_unreachable", "destination_request", "ack_timeout",
                        "agent_restart"}
    assert set(ACTIVE) == set(REACTING)
    for (event, state), outputs in REACTIONS.items():
        assert not state.is_terminal and state != S.QUEUED, (event, state)
        if any(isinstance(o, Stall) for o in outputs):  # the lifecycle's table allows each stall row
            assert (state, TransferEvent.STALL) in TRANSITIONS, (event, state)


def test_acks_missed_ack_timeout_retries_times_stall_the_transfer() -> None:
    s = negotiated(ack_timeout=10.0, retries=3)
    rows = [(10.0, S.IN_PROGRESS, True, 20.0), (20.0, S.IN_PROGRESS, True, 30.0),
            (30.0, S.RECOVERING, False, 30.0 + RESYNC_FIRST_DELAY)]
    for t, state, quiet_resync, timer in rows:
        out = s.handle_timer(t)
        assert s.state == state and any(isinstance(a, SendResync) for a in out) == quiet_resync
        assert s.get_timer() == timer
    assert s.stall_reason == ("no acknowledgement from A2 for 30 s "
                              "(transferAckTimeout × transferAckTimeoutRetries)")


def test_an_ack_that_is_progress_resets_the_misses() -> None:
    s = negotiated(ack_timeout=10.0, retries=2)
    sends(s)
    s.handle_timer(10.0)
    s.receive(ack(s, 0, 4), 15.0)
    assert s.ack_misses == 0 and s.get_timer() == 25.0
    s.handle_timer(25.0)
    assert s.state == S.IN_PROGRESS  # one miss since the progress, of 2 allowed


def test_an_unanswered_negotiation_stalls_saying_so() -> None:
    s = make(ack_timeout=5.0, retries=1)
    s.start(0.0, restarted=False, link_up=True, peer="READY")
    s.handle_timer(5.0)
    assert s.state == S.RECOVERING and s.stall_reason.startswith("no answer to the negotiation from A2 for 5 s")


# --------------------------------------------------------------------------- resync attempts and backoff


def attempts(s: SourceSession, until: float, now: float = 0.0) -> list[float]:
    """Run the timers from `now` until `until`, every resync published and never answered: when each attempt
    went. The clock moves on to each deadline as the shell's does (never back: a deadline past is due now)."""
    sent = []
    while (deadline := s.get_timer()) is not None and max(deadline, now) <= until:
        now = t = max(deadline, now)
        for a in s.handle_timer(t):
            if isinstance(a, SendResync):
                sent.append(t)
                s.resync_done(t)
    return sent


def test_resync_attempts_back_off() -> None:
    s = negotiated(ack_timeout=0.1)  # each unanswered resync gives up after 0.1 s
    s.link_changed(False, 0.0)
    s.link_changed(True, 0.0)  # the link is back: the first attempt at once
    assert s.get_timer() == 0.0
    expected, t = [0.0], 0.0
    for n in range(1, 7):
        t += resync_delay(n)
        expected.append(t)
    assert [resync_delay(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]
    assert attempts(s, 18.0) == pytest.approx(expected)


def test_reasons_to_try_now_reset_the_backoff() -> None:
    for reset in (lambda s, t: s.link_changed(True, t), lambda s, t: s.peer_status("READY", t),
                  lambda s, t: s.receive(NS(kind="request_recovery", reason="back", cancel=False), t)):
        s = negotiated(ack_timeout=0.1)
        s.send_failed(0.0)
        assert attempts(s, 2.0) == pytest.approx([0.2, 0.7, 1.7])
        reset(s, 2.0)
        assert s.get_timer() == 0.0 and s.resync_attempts == 0
        assert attempts(s, 3.0, now=2.0) == pytest.approx([2.0, 2.5])


def test_no_resync_is_sent_while_the_link_is_down_or_the_peer_is_leaving() -> None:
    for leave in (lambda s: s.link_changed(False, 0.0), lambda s: s.peer_status("STOPPING", 0.0)):
        s = negotiated()
        s.send_failed(0.0)
        leave(s)
        out = s.handle_timer(RESYNC_FIRST_DELAY)
        assert not any(isinstance(a, SendResync) for a in out)
        assert s.state == S.RECOVERING and s.get_timer() == pytest.approx(RESYNC_FIRST_DELAY + resync_delay(1))


def test_a_resync_not_published_leaves_the_transfer_recovering() -> None:
    s = negotiated()
    s.send_failed(0.0)
    [resync] = [a for a in s.handle_timer(1.0) if isinstance(a, SendResync)]
    assert s.resync_done(1.0, sent=False) == [] and s.state == S.RECOVERING
    assert s.resync_done(1.0) == []  # (no resync under way any more)


def test_a_negotiation_too_large_for_the_broker_fails_at_once_even_with_the_peer_gone() -> None:
    s = make((1, 1, 1), rt=0)
    s.start(0.0, restarted=False, link_up=True, peer="UNREACHABLE")
    out = s.resync_done(0.0, sent=False, refused="too big")
    assert s.state == S.FAILED and logs(out, "recovering") == []
    assert s.end_reason.startswith("the negotiation of this transfer (3 files) does not fit through the broker: "
                                   "too big; send the files in smaller transfers")


def test_a_transfer_to_a_gone_peer_recovers_as_soon_as_it_is_negotiated() -> None:
    s = make()
    s.start(0.0, restarted=False, link_up=True, peer="UNREACHABLE")
    out = s.resync_done(0.0)
    assert s.state == S.RECOVERING and logs(out, "recovering")[0]["reason"] == "destination agent A2 is UNREACHABLE"


# --------------------------------------------------------------------------- the window and the frontier


def test_the_window_bounds_what_is_in_flight() -> None:
    s = negotiated((10,), chunk=4, window=2)
    assert s.sending.window_left() == 8
    assert sends(s) == [SendChunk(0, 0, 4, False, True), SendChunk(0, 4, 4, False, True)]
    assert s.sending.window_left() == 0 and sends(s) == []
    s.receive(ack(s, 0, 4), 1.0)
    assert sends(s) == [SendChunk(0, 8, 2, True, True), SendFileEnd(0)]
    assert sends(s) == []


def test_files_are_sent_in_order_and_the_frontier_moves_past_finished_ones() -> None:
    s = negotiated((4, 4, 4), chunk=4, window=2)
    assert sends(s) == [SendChunk(0, 0, 4, True, True), SendFileEnd(0), SendChunk(1, 0, 4, True, True),
                        SendFileEnd(1)]
    assert s.sending.window_left() == 0
    s.receive(result(0), 1.0)
    assert s.sending.window_left() == 4 and sends(s) == [SendChunk(2, 0, 4, True, True), SendFileEnd(2)]


def test_a_rewinding_ack_sends_again_from_its_offset() -> None:
    s = negotiated((12,), chunk=4, window=3)
    sends(s)
    s.receive(ack(s, 0, 4, rewind=True), 1.0)
    assert s.bytes_resent == 8 and sends(s)[0] == SendChunk(0, 4, 4, False, True)


def test_a_file_that_fails_while_sent_ends_its_sending() -> None:
    s = negotiated((12, 4), chunk=4, window=4)
    s.sending.start(s.sending.window_left())
    assert s.sending.next_send() == SendChunk(0, 0, 4, False, True)
    s.source_failed(0, "FTEIO0002E: unreadable", 1.0)
    assert s.sending.next_send() == SendChunk(1, 0, 4, True, True)


def test_sparse_acks_ask_only_where_the_source_would_wait() -> None:
    s = negotiated((32,), chunk=4, window=8, features=("sparse_ack",))
    assert [c.ack for c in sends(s) if isinstance(c, SendChunk)] == [False, True, False, True, False, True, False, True]


def test_small_files_travel_in_bundles_and_large_ones_by_chunks() -> None:
    s = negotiated((1, 2, 1000, 3), chunk=1024, window=4, features=("bundle",))
    assert sends(s) == [SendBundle((0, 1)), SendChunk(2, 0, 1000, True, True), SendFileEnd(2), SendBundle((3,))]
    assert s.sending.end_sent == {0, 1, 2, 3}


def test_no_bundle_of_one_when_little_room_is_left_and_answers_will_make_more() -> None:
    s = negotiated((20,) * 8, chunk=4096, window=1, features=("bundle",))
    # little room (1000 < 2048 < 4096 - 1000), and the answers of what is in flight will make more: wait
    assert sends(s, budget=1000) == []
    assert sends(s, budget=4096) == [SendBundle(tuple(range(8)))]


def test_a_bundle_holds_no_more_files_than_its_answer_can_carry() -> None:
    s = negotiated((20,) * 4, chunk=1024, window=4, features=("bundle",))
    assert sends(s) == [SendBundle((0, 1)), SendBundle((2, 3))]  # 1024 // 512 a bundle


# --------------------------------------------------------------------------- batching and pacing


def test_file_results_are_saved_and_logged_in_batches() -> None:
    s = negotiated((1,) * 4)
    out = s.receive(result(0), 1.0)  # the last flush was long ago (at the start): at once
    assert [len(a.files) for a in out if isinstance(a, SaveFiles)] == [1] and len(logs(out, "progress")) == 1
    out = s.receive(result(1), 1.1) + s.receive(result(2), 1.2)
    assert not any(isinstance(a, SaveFiles) for a in out)
    assert s.get_timer() == 1.0 + RESULTS_INTERVAL
    out = s.handle_timer(1.0 + RESULTS_INTERVAL)
    assert [len(a.files) for a in out if isinstance(a, SaveFiles)] == [2]
    assert [[f["index"] for f in e["files"]] for e in logs(out, "progress")] == [[1, 2]]


def test_a_full_batch_of_results_is_saved_at_once() -> None:
    n = RESULTS_BATCH + 100
    s = negotiated((1,) * n)
    s.receive(result(0), 1.0)
    out = s.receive(NS(kind="file_results", results=[result(i) for i in range(1, n)]), 1.1)
    assert [len(a.files) for a in out if isinstance(a, SaveFiles)] == [RESULTS_BATCH]
    assert s.get_timer() == 1.1 + RESULTS_INTERVAL  # from the last save
    out = s.handle_timer(1.1 + RESULTS_INTERVAL)
    assert [len(a.files) for a in out if isinstance(a, SaveFiles)] == [99]


def test_a_repeated_result_is_ignored() -> None:
    s = negotiated((1, 1))
    s.receive(result(0), 1.0)
    assert s.receive(result(0), 2.0) == []


def test_checkpoints_and_progress_are_paced() -> None:
    s = negotiated((40,), chunk=4, window=10)
    sends(s)
    saved = []
    for n, t in enumerate([1.0, 1.1, 1.2, 1.6], start=1):
        out = s.receive(ack(s, 0, 4 * n), t)
        saved.append(sum(isinstance(a, SaveFiles) for a in out))
    assert saved == [1, 0, 0, 1]


# --------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("state", list(S))
def test_cancel_in_each_state(state: S) -> None:
    s = make(state=state)
    out = s.cancel(1.0, "cancelled by request (fte-cancel-transfer)")
    if state in TERMINAL_STATES:
        assert out == [] and s.state == state
    else:
        assert s.state == S.CANCELLED and out == [PersistState()] and s.get_timer() is None
        assert s.finish(1.0)[1] == "cancelled by request (fte-cancel-transfer)"
        assert s.result_code == results.CANCELLED


def test_a_cancel_passed_on_by_the_destination_says_where_it_came_from() -> None:
    s = negotiated()
    s.receive(NS(kind="request_recovery", reason="cancelled by request", cancel=True), 1.0)
    assert s.state == S.CANCELLED and s.end_reason == "cancelled at the destination agent A2: cancelled by request"


# --------------------------------------------------------------------------- the vocabulary and the purity


def test_the_message_texts_are_the_logged_ones() -> None:
    assert message(results.BFGSS0081E, transfer_id="T", timeout=600) == \
        "BFGSS0081E: transfer T failed: recovery timed out after 600 s"
    assert message(results.BFGTR0082I, transfer_id="T") == "BFGTR0082I: transfer T resumed after recovery"


def test_the_core_imports_no_io_module() -> None:
    banned = {"asyncio", "os", "time", "pathlib", "socket", "sqlite3"}
    mine = ["source_session", "source_actions", "lifecycle", "window", "recovery", "results", "policy"]
    for path in (ROOT / "agent" / "core" / f"{name}.py" for name in mine):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"
                assert not name.startswith("agent.") or name.startswith("agent.core"), f"{path.name} imports {name}"


def test_every_input_of_the_table_is_named() -> None:
    assert {event for event, _ in REACTIONS} == set(Input)
