"""The transfer state table and TransferLifecycle, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import itertools

import pytest

from agent.core import results
from agent.core.lifecycle import (
    RESULT_CODES,
    TERMINAL_STATES,
    TRANSITIONS,
    LifecycleError,
    TransferEvent,
    TransferLifecycle,
    TransferState,
    Transition,
    is_terminal,
    next_state,
)

S = TransferState
E = TransferEvent


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


LIVE = [S.QUEUED, S.NEGOTIATING, S.IN_PROGRESS, S.RECOVERING, S.RESYNCHRONISING]

# Written out independently of the implementation, from the design page and the brief: if the
# table in lifecycle.py drifts, this golden copy catches it.
EXPECTED = {
    (S.QUEUED, E.START): S.NEGOTIATING,
    (S.NEGOTIATING, E.NEGOTIATED): S.IN_PROGRESS,
    (S.NEGOTIATING, E.STALL): S.RECOVERING,
    (S.IN_PROGRESS, E.STALL): S.RECOVERING,
    (S.RECOVERING, E.STALL): S.RECOVERING,
    (S.RESYNCHRONISING, E.STALL): S.RECOVERING,
    (S.RECOVERING, E.RESYNC_SENT): S.RESYNCHRONISING,
    (S.RESYNCHRONISING, E.RESYNC_SENT): S.RESYNCHRONISING,
    (S.RECOVERING, E.RESYNCED): S.IN_PROGRESS,
    (S.RESYNCHRONISING, E.RESYNCED): S.IN_PROGRESS,
    (S.IN_PROGRESS, E.FINISH_OK): S.COMPLETE,
    (S.IN_PROGRESS, E.FINISH_PARTIAL): S.PARTIAL,
    (S.IN_PROGRESS, E.FINISH_FAILED): S.FAILED,
    (S.RECOVERING, E.RECOVERY_TIMEOUT): S.RECOVERY_TIMED_OUT,
    (S.RESYNCHRONISING, E.RECOVERY_TIMEOUT): S.RECOVERY_TIMED_OUT,
    **{(s, E.FAIL): S.FAILED for s in LIVE},
    **{(s, E.CANCEL): S.CANCELLED for s in LIVE},
}

ILLEGAL = sorted(
    set(itertools.product(S, E)) - set(TRANSITIONS), key=lambda p: (p[0].value, p[1].value)
)


def _id(pair: tuple[TransferState, TransferEvent]) -> str:
    return f"{pair[0].value}-{pair[1].value}"


# --- the table ------------------------------------------------------------------------------------


def test_table_matches_golden_copy() -> None:
    assert TRANSITIONS == EXPECTED


def test_table_has_no_edges_out_of_terminal_states() -> None:
    assert not [k for k in TRANSITIONS if k[0].is_terminal]


@pytest.mark.parametrize("pair", sorted(TRANSITIONS, key=_id), ids=_id)
def test_every_legal_pair_lands_where_the_table_says(
    pair: tuple[TransferState, TransferEvent],
) -> None:
    state, event = pair
    assert next_state(state, event) is TRANSITIONS[pair]
    lc = TransferLifecycle(recovery_timeout=-1, clock=FakeClock(), state=state)
    assert lc.handle(event) is TRANSITIONS[pair]
    assert lc.state is TRANSITIONS[pair]


@pytest.mark.parametrize("pair", ILLEGAL, ids=_id)
def test_every_illegal_pair_raises(pair: tuple[TransferState, TransferEvent]) -> None:
    state, event = pair
    with pytest.raises(LifecycleError) as info:
        next_state(state, event)
    assert info.value.state is state
    assert info.value.event is event
    assert f"'{state.value}'" in str(info.value)
    assert f"'{event.value}'" in str(info.value)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.COMPLETE, E.RESYNCED),
        (S.QUEUED, E.STALL),
        (S.QUEUED, E.NEGOTIATED),
        (S.IN_PROGRESS, E.RESYNCED),
        (S.IN_PROGRESS, E.RECOVERY_TIMEOUT),
        (S.RECOVERING, E.FINISH_OK),
        (S.CANCELLED, E.CANCEL),
        (S.RECOVERY_TIMED_OUT, E.FAIL),
    ],
)
def test_illegal_sample_via_lifecycle_leaves_state_alone(
    state: TransferState, event: TransferEvent
) -> None:
    lc = TransferLifecycle(recovery_timeout=-1, clock=FakeClock(), state=state)
    with pytest.raises(LifecycleError, match=f"'{event.value}'.*'{state.value}'"):
        lc.handle(event)
    assert lc.state is state
    assert lc.history == []


def test_error_message_wording() -> None:
    with pytest.raises(LifecycleError) as info:
        next_state(S.COMPLETE, E.RESYNCED)
    assert str(info.value) == "cannot handle event 'resynced' in state 'complete'"


def test_plain_strings_are_accepted() -> None:
    assert next_state("queued", "start") is S.NEGOTIATING  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "terminal", "code"),
    [
        (S.QUEUED, False, None),
        (S.NEGOTIATING, False, None),
        (S.IN_PROGRESS, False, None),
        (S.RECOVERING, False, None),
        (S.RESYNCHRONISING, False, None),
        (S.COMPLETE, True, 0),
        (S.PARTIAL, True, 20),
        (S.FAILED, True, 40),
        (S.CANCELLED, True, 41),
        (S.RECOVERY_TIMED_OUT, True, 69),
    ],
)
def test_terminal_states_and_result_codes(
    state: TransferState, terminal: bool, code: int | None
) -> None:
    assert state.is_terminal is terminal
    assert is_terminal(state) is terminal
    assert (state in TERMINAL_STATES) is terminal
    assert RESULT_CODES.get(state) == code
    lc = TransferLifecycle(recovery_timeout=-1, clock=FakeClock(), state=state)
    assert lc.result_code == code


def test_result_codes_use_the_results_constants() -> None:
    assert RESULT_CODES[S.RECOVERY_TIMED_OUT] == results.RECOVERY_TIMED_OUT
    assert set(RESULT_CODES) == set(TERMINAL_STATES)


# --- the lifecycle with its recovery counter ------------------------------------------------------


def running(timeout: int, clock: FakeClock) -> TransferLifecycle:
    lc = TransferLifecycle(recovery_timeout=timeout, clock=clock)
    lc.handle(E.START)
    lc.handle(E.NEGOTIATED)
    return lc


def test_happy_path_history() -> None:
    clock = FakeClock(5.0)
    lc = running(-1, clock)
    clock.advance(2)
    assert lc.handle(E.FINISH_OK) is S.COMPLETE
    assert lc.result_code == 0
    assert lc.history == [
        Transition(5.0, S.QUEUED, E.START, S.NEGOTIATING),
        Transition(5.0, S.NEGOTIATING, E.NEGOTIATED, S.IN_PROGRESS),
        Transition(7.0, S.IN_PROGRESS, E.FINISH_OK, S.COMPLETE),
    ]
    assert lc.recoveries == 0


def test_history_is_a_copy() -> None:
    lc = running(-1, FakeClock())
    lc.history.clear()
    assert len(lc.history) == 2


def test_forever_never_times_out() -> None:
    clock = FakeClock()
    lc = running(-1, clock)
    lc.handle(E.STALL)
    clock.advance(10**9)
    assert lc.poll() is S.RECOVERING
    assert lc.recovery_deadline is None
    assert lc.seconds_until_timeout() is None
    assert lc.handle(E.RESYNCED) is S.IN_PROGRESS


def test_zero_times_out_on_entering_recovery() -> None:
    clock = FakeClock()
    lc = running(0, clock)
    assert lc.handle(E.STALL) is S.RECOVERY_TIMED_OUT
    assert lc.result_code == 69
    assert lc.recoveries == 1
    # Both steps are recorded, so the shell logs BFGTR0081I and then BFGSS0081E.
    assert [(t.from_state, t.event, t.to_state) for t in lc.history[-2:]] == [
        (S.IN_PROGRESS, E.STALL, S.RECOVERING),
        (S.RECOVERING, E.RECOVERY_TIMEOUT, S.RECOVERY_TIMED_OUT),
    ]


def test_zero_also_applies_to_a_stall_while_negotiating() -> None:
    lc = TransferLifecycle(recovery_timeout=0, clock=FakeClock())
    lc.handle(E.START)
    assert lc.handle(E.STALL) is S.RECOVERY_TIMED_OUT


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (0.0, S.RECOVERING),
        (29.999, S.RECOVERING),
        (30.0 - 0.001, S.RECOVERING),
        (30.0, S.RECOVERY_TIMED_OUT),  # counter == timeout fails the transfer
        (30.001, S.RECOVERY_TIMED_OUT),
        (10**6, S.RECOVERY_TIMED_OUT),
    ],
)
def test_n_expires_exactly_at_n(after: float, expected: TransferState) -> None:
    clock = FakeClock(1234.5)
    lc = running(30, clock)
    lc.handle(E.STALL)
    assert lc.recovery_deadline == 1234.5 + 30
    clock.advance(after)
    assert lc.poll() is expected


def test_seconds_until_timeout_counts_down() -> None:
    clock = FakeClock()
    lc = running(30, clock)
    assert lc.seconds_until_timeout() is None
    lc.handle(E.STALL)
    assert lc.seconds_until_timeout() == 30
    clock.advance(12)
    assert lc.seconds_until_timeout() == 18
    clock.advance(100)
    assert lc.seconds_until_timeout() == 0.0


def test_broker_down_twice_resets_the_counter() -> None:
    """Two outages of N-1 seconds each, with a resume between them, must not time out."""
    clock = FakeClock()
    lc = running(60, clock)
    for _ in range(2):
        lc.handle(E.STALL)
        clock.advance(59)
        assert lc.poll() is S.RECOVERING
        lc.handle(E.RESYNC_SENT)
        assert lc.handle(E.RESYNCED) is S.IN_PROGRESS
        assert lc.recovery_deadline is None
    assert lc.recoveries == 2
    assert lc.handle(E.FINISH_OK) is S.COMPLETE


@pytest.mark.parametrize(
    "repeat",
    [
        [E.STALL],  # another stall while recovering
        [E.RESYNC_SENT, E.STALL],  # resync unanswered, back to recovering
        [E.RESYNC_SENT, E.RESYNC_SENT],  # resync re-sent by the retry loop
        [E.STALL, E.RESYNC_SENT, E.STALL, E.STALL],
    ],
)
def test_repeated_stall_does_not_restart_the_counter(repeat: list[TransferEvent]) -> None:
    clock = FakeClock()
    lc = running(60, clock)
    lc.handle(E.STALL)
    deadline = lc.recovery_deadline
    for event in repeat:
        clock.advance(10)
        lc.handle(event)
    assert lc.recovery_deadline == deadline
    assert lc.recoveries == 1
    clock.now = deadline  # type: ignore[assignment]
    assert lc.poll() is S.RECOVERY_TIMED_OUT


def test_resynchronising_times_out_too() -> None:
    clock = FakeClock()
    lc = running(10, clock)
    lc.handle(E.STALL)
    lc.handle(E.RESYNC_SENT)
    clock.advance(10)
    assert lc.poll() is S.RECOVERY_TIMED_OUT
    assert lc.history[-1].from_state is S.RESYNCHRONISING


def test_event_after_the_deadline_is_too_late() -> None:
    """A resume the shell delivers after the deadline (before it polled) does not win."""
    clock = FakeClock()
    lc = running(10, clock)
    lc.handle(E.STALL)
    clock.advance(10)
    assert lc.handle(E.RESYNCED) is S.RECOVERY_TIMED_OUT
    assert lc.history[-1].event is E.RECOVERY_TIMEOUT
    # Once terminal, further events are errors as usual.
    with pytest.raises(LifecycleError):
        lc.handle(E.RESYNCED)


def test_explicit_recovery_timeout_event() -> None:
    lc = running(-1, FakeClock())
    lc.handle(E.STALL)
    assert lc.handle(E.RECOVERY_TIMEOUT) is S.RECOVERY_TIMED_OUT
    assert lc.recovery_deadline is None


@pytest.mark.parametrize("event", [E.FAIL, E.CANCEL])
def test_leaving_recovery_for_good_stops_the_counter(event: TransferEvent) -> None:
    clock = FakeClock()
    lc = running(10, clock)
    lc.handle(E.STALL)
    lc.handle(event)
    clock.advance(100)
    assert lc.poll() is TRANSITIONS[(S.RECOVERING, event)]
    assert lc.recovery_deadline is None


def test_poll_outside_recovery_does_nothing() -> None:
    clock = FakeClock()
    lc = running(0, clock)
    clock.advance(10**9)
    assert lc.poll() is S.IN_PROGRESS
    assert len(lc.history) == 2


def test_rebuild_after_restart_keeps_counting_from_recovering_since() -> None:
    clock = FakeClock(500.0)
    lc = TransferLifecycle(
        recovery_timeout=60, clock=clock, state=S.RECOVERING, recovering_since=460.0, recoveries=3
    )
    assert lc.recovery_deadline == 520.0
    assert lc.recovering_since == 460.0
    assert lc.recoveries == 3
    lc.handle(E.STALL)  # the restarted shell sees the stall again: no new outage
    assert lc.recovery_deadline == 520.0
    assert lc.recoveries == 3
    clock.now = 520.0
    assert lc.poll() is S.RECOVERY_TIMED_OUT


def test_rebuild_in_recovery_without_start_counts_from_now() -> None:
    lc = TransferLifecycle(recovery_timeout=60, clock=FakeClock(7.0), state=S.RESYNCHRONISING)
    assert lc.recovery_deadline == 67.0


def test_recovering_since_outside_recovery_is_refused() -> None:
    with pytest.raises(ValueError, match="in_progress"):
        TransferLifecycle(-1, FakeClock(), state=S.IN_PROGRESS, recovering_since=1.0)


def test_invalid_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="-2"):
        TransferLifecycle(-2, FakeClock())
