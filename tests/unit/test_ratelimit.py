"""The rate limits of commands (agent.core.ratelimit), by table, on a clock of the test's own."""

from __future__ import annotations

import pytest

from agent.core.ratelimit import UNTRUSTED, CommandAdmission, Throttle, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# (rate, burst, [(seconds to advance, takes)], expected grants per step)
@pytest.mark.parametrize("rate,burst,steps,expected", [
    (10, 5, [(0, 8)], [5]),                       # full at the start: the burst, then nothing
    (10, 5, [(0, 5), (0.1, 3)], [5, 1]),          # 0.1 s at 10/s: one more
    (8, 5, [(0, 5), (0.0625, 1)], [5, 0]),        # half a token is not a token
    (8, 5, [(0, 5), (0.0625, 1), (0.0625, 1)], [5, 0, 1]),  # ... but the halves add up
    (10, 5, [(0, 5), (100, 10)], [5, 5]),         # a long pause refills up to the burst, no more
    (2, 1, [(0, 1), (0.5, 1), (0.5, 1), (0.25, 1)], [1, 1, 1, 0]),
    (10, 5, [(0, 5), (-50, 1), (0.1, 1)], [5, 0, 1]),  # a clock going back refills nothing
])
def test_token_bucket(rate: float, burst: int, steps: list[tuple[float, int]], expected: list[int]) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock)
    got = []
    for advance, takes in steps:
        clock.now += advance
        got.append(sum(bucket.take() for _ in range(takes)))
    assert got == expected


@pytest.mark.parametrize("rate,burst", [(0, 5), (-1, 5), (1, 0)])
def test_token_bucket_refuses_a_policy_that_admits_nothing(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        TokenBucket(rate, burst, Clock())


# commands offered at one instant, as (claimed requester, trusted?); per-requester 3, untrusted 2
@pytest.mark.parametrize("offers,admitted,dropped", [
    # forgeries in the names of nobody trusted share one bucket, whatever name they claim
    ([("mallory", False)] * 5, 2, {UNTRUSTED: 3}),
    ([("mallory", False), ("eve", False), (None, False), ("x", False)], 2, {UNTRUSTED: 2}),
    # ... and never touch a trusted requester's bucket
    ([("mallory", False)] * 50 + [("alice", True)] * 3, 2 + 3, {UNTRUSTED: 48}),
    # trusted requesters each have their own
    ([("alice", True)] * 4 + [("bob", True)] * 4, 6, {"alice": 1, "bob": 1}),
    # forgeries in a trusted name use up that requester's bucket, and only that one
    ([("alice", True)] * 10 + [("bob", True)], 4, {"alice": 7}),
    # a trusted flag without a name is the untrusted class
    ([(None, True)] * 3, 2, {UNTRUSTED: 1}),
])
def test_command_admission(offers: list[tuple[str | None, bool]], admitted: int, dropped: dict[str, int]) -> None:
    a = CommandAdmission(Clock(), requester_rate=1, requester_burst=3, untrusted_rate=1, untrusted_burst=2)
    assert sum(a.admit(r, t) for r, t in offers) == admitted
    assert dict(a.dropped) == dropped


def test_admission_refills_each_bucket_at_its_rate() -> None:
    clock = Clock()
    a = CommandAdmission(clock, requester_rate=10, requester_burst=1, untrusted_rate=1, untrusted_burst=1)
    assert a.admit("alice", True) and not a.admit("alice", True)
    assert a.admit("eve", False) and not a.admit("eve", False)
    clock.now += 0.1
    assert a.admit("alice", True)       # 10/s: one more after 0.1 s
    assert not a.admit("eve", False)    # 1/s: not yet
    clock.now += 0.9
    assert a.admit("eve", False)


def test_admission_keeps_a_bounded_number_of_buckets() -> None:
    a = CommandAdmission(Clock(), requester_rate=1, requester_burst=1, untrusted_rate=1, untrusted_burst=1,
                         max_requesters=3)
    for i in range(10):
        assert a.admit(f"r{i}", True)
    assert len(a._buckets) == 3


@pytest.mark.parametrize("rate,burst,steps,allowed,held", [
    (5, 2, [(0, 10)], 2, 8),
    (5, 2, [(0, 10), (1, 10)], 4, 16),          # 1 s at 5/s refills 5, capped at the burst of 2
    (4, 2, [(0, 3), (0.25, 3)], 3, 3),          # 0.25 s at 4/s: one more
])
def test_throttle_counts_what_it_held_back(rate: float, burst: int, steps: list[tuple[float, int]], allowed: int,
                                           held: int) -> None:
    clock = Clock()
    t = Throttle(rate, burst, clock)
    n = 0
    for advance, tries in steps:
        clock.now += advance
        n += sum(t.allow() for _ in range(tries))
    assert (n, t.held) == (allowed, held)
