"""Recovery timeout precedence and the recovery counter (seed 003), with a fake clock."""

from __future__ import annotations

import pytest

from agent.core.recovery import RecoveryTimer, check_recovery_timeout, effective_recovery_timeout
from agent.core.results import (
    BFGSS0081E,
    BFGTR0081I,
    BFGTR0082I,
    FAILED,
    FILE_FAILED,
    FILE_SUCCESS,
    FILE_WARNING,
    PARTIAL,
    SUCCESS,
    describe,
    transfer_result,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- precedence -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rt", "prop", "expected"),
    [
        # no -rt: the agent property decides, and unset means recover forever
        (None, None, -1),
        (None, -1, -1),
        (None, 0, 0),
        (None, 3600, 3600),
        # -rt given: it wins whatever the property says
        (21600, None, 21600),
        (21600, -1, 21600),
        (21600, 0, 21600),
        (21600, 60, 21600),
        (-1, 60, -1),  # -rt -1 overrides a finite property: recover forever
        (0, 60, 0),
        (0, None, 0),
        (-1, None, -1),
        # a bad property is irrelevant when -rt overrides it (it is refused at agent startup)
        (10, -5, 10),
    ],
)
def test_precedence(rt: int | None, prop: int | None, expected: int) -> None:
    assert effective_recovery_timeout(rt, prop) == expected


@pytest.mark.parametrize(
    ("rt", "prop", "message"),
    [
        (
            -5,
            None,
            "-rt -5 is invalid: use -1 (recover forever), 0 (fail as soon as recovery starts) "
            "or a number of seconds",
        ),
        (-2, 60, "-rt -2 is invalid"),
        (None, -5, "transferRecoveryTimeout -5 is invalid: use -1"),
        (None, -100, "transferRecoveryTimeout -100 is invalid"),
    ],
)
def test_invalid_values_name_the_culprit(rt: int | None, prop: int | None, message: str) -> None:
    with pytest.raises(ValueError) as info:
        effective_recovery_timeout(rt, prop)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("bad", [True, 1.5, "60"])
def test_non_integers_are_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="-rt"):
        check_recovery_timeout(bad, "-rt")  # type: ignore[arg-type]


# --- the timer ------------------------------------------------------------------------------------


def test_not_running_until_started() -> None:
    clock = FakeClock()
    t = RecoveryTimer(10, clock)
    clock.advance(100)
    assert (t.running, t.elapsed(), t.expired(), t.deadline) == (False, 0.0, False, None)


def test_forever_never_expires() -> None:
    clock = FakeClock()
    t = RecoveryTimer(-1, clock)
    t.start()
    clock.advance(10**9)
    assert t.running
    assert t.elapsed() == 10**9
    assert not t.expired()
    assert t.deadline is None


def test_zero_expires_as_soon_as_started() -> None:
    clock = FakeClock()
    t = RecoveryTimer(0, clock)
    assert not t.expired()
    t.start()
    assert t.expired()
    assert t.deadline == clock.now


@pytest.mark.parametrize(
    ("timeout", "after", "expired"),
    [
        (1, 0.999, False),
        (1, 1.0, True),
        (60, 59.999, False),
        (60, 60.0, True),
        (60, 60.001, True),
        (21600, 21600 - 0.001, False),
        (21600, 21600, True),
    ],
)
def test_n_expires_exactly_at_n(timeout: int, after: float, expired: bool) -> None:
    clock = FakeClock(0.1)  # an awkward float start on purpose
    t = RecoveryTimer(timeout, clock)
    t.start()
    clock.now = 0.1 + after
    assert t.expired() is expired


def test_start_while_running_does_not_restart() -> None:
    clock = FakeClock()
    t = RecoveryTimer(60, clock)
    t.start()
    clock.advance(40)
    t.start()
    assert t.elapsed() == 40
    clock.advance(20)
    assert t.expired()


def test_reset_puts_the_counter_back_to_zero() -> None:
    clock = FakeClock()
    t = RecoveryTimer(60, clock)
    t.start()
    clock.advance(59)
    t.reset()
    assert (t.running, t.elapsed(), t.deadline) == (False, 0.0, None)
    t.start()
    clock.advance(59)
    assert not t.expired()  # two outages of N-1 seconds: the broker went down twice
    clock.advance(1)
    assert t.expired()


def test_start_at_an_earlier_time() -> None:
    clock = FakeClock(100.0)
    t = RecoveryTimer(60, clock)
    t.start(at=50.0)
    assert t.elapsed() == 50.0
    assert t.deadline == 110.0


def test_invalid_timer_timeout() -> None:
    with pytest.raises(ValueError):
        RecoveryTimer(-2, FakeClock())


# --- result codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([], FAILED),
        ([FILE_SUCCESS], SUCCESS),
        ([FILE_WARNING], SUCCESS),
        ([FILE_SUCCESS, FILE_WARNING, FILE_SUCCESS], SUCCESS),
        ([FILE_FAILED], FAILED),
        ([FILE_FAILED, FILE_FAILED], FAILED),
        ([FILE_SUCCESS, FILE_FAILED], PARTIAL),
        ([FILE_WARNING, FILE_FAILED], PARTIAL),
    ],
)
def test_transfer_result(files: list[int], expected: int) -> None:
    assert transfer_result(files) == expected


def test_transfer_result_refuses_unknown_codes() -> None:
    with pytest.raises(ValueError, match="7"):
        transfer_result([0, 7])


def test_message_ids_and_descriptions() -> None:
    assert (BFGTR0081I, BFGTR0082I, BFGSS0081E) == ("BFGTR0081I", "BFGTR0082I", "BFGSS0081E")
    assert describe(69) == "transfer recovery timed out"
    assert describe(12345) == "result code 12345"
