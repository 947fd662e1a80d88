"""The rate limits of commands (agent.core.ratelimit), by table, on a clock of the test's own."""

from __future__ import annotations

import pytest

from agent.core.units import parse_rate
from agent.core.ratelimit import UNTRUSTED, CommandAdmission, SendRate, Throttle, TokenBucket, TransferPace, bandwidth_bucket


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


# --------------------------------------------------------------------------- bytes a second (agentMaxBandwidth)

# (rate, burst, full?, [(seconds to advance, bytes spent)], expected tokens after each step)
@pytest.mark.parametrize("rate,burst,full,steps,expected", [
    (1000, 500, False, [(0, 0), (0.1, 0), (1, 0)], [0, 100, 500]),    # empty at the start; filled up to burst
    (1000, 500, True, [(0, 800), (0.2, 0), (0.5, 0)], [-300, -100, 400]),  # a debt is paid back by time
    (1000, 500, False, [(0, 100), (-5, 0), (0.1, 0)], [-100, -100, 0]),  # a clock going back refills nothing
])
def test_byte_bucket_spend_and_refill(rate: float, burst: int, full: bool, steps: list[tuple[float, int]],
                                      expected: list[float]) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock, full=full)
    got = []
    for advance, spent in steps:
        clock.now += advance
        if spent:
            bucket.spend(spent)
        got.append(round(bucket.available(), 6))
    assert got == expected


# (tokens in the bucket, burst, message size) -> seconds until the message may go, at 1000 B/s
@pytest.mark.parametrize("spent,burst,size,wait", [
    (0, 500, 100, 0.0),       # full, room for it
    (450, 500, 100, 0.05),    # 50 there, 50 missing
    (700, 500, 100, 0.3),     # a debt of 200, then 100
    (0, 500, 2000, 0.0),      # larger than the burst: a full bucket is enough
    (100, 500, 2000, 0.1),    # ... and waits only for a full bucket, never for more than it holds
])
def test_byte_bucket_wait(spent: int, burst: int, size: int, wait: float) -> None:
    bucket = TokenBucket(1000, burst, Clock())
    bucket.spend(spent)
    assert bucket.wait(size) == pytest.approx(wait)


def test_send_rate_lowest_bucket_applies_and_no_bucket_is_unlimited() -> None:
    clock = Clock()
    agent = TokenBucket(1000, 1000, clock)             # full: 1000 there
    transfer = TokenBucket(100, 400, clock, full=False)  # empty
    assert SendRate().allowance(100) is None and SendRate(None).wait(100) == 0.0
    rate = SendRate(agent, None, transfer)
    assert rate.allowance(100) == 0 and rate.wait(100) == pytest.approx(1.0)  # the transfer's is the lower
    clock.now += 2.5                                   # transfer: 250
    # whole messages of 100 while the allowance is above 0 (agent.core.send_order): 250 - 100 + 1 -> two of them
    assert rate.allowance(100) == 151
    agent.spend(950)                                   # the agent spent on other transfers: 50 left
    assert rate.allowance(100) == 0 and rate.wait(100) == pytest.approx(0.05)


# a sender that sends whole messages while its allowance is above 0, woken when `wait` says: bytes sent by t
# never pass rate x t (the bucket starts empty), and the rate is kept (a tenth of a second's burst)
@pytest.mark.parametrize("rate,message", [(20_000_000, 262144), (1000, 4096), (500_000, 1024)])
def test_bandwidth_bucket_paces_a_sender_to_its_rate(rate: int, message: int) -> None:
    clock = Clock()
    start = clock.now
    bucket = bandwidth_bucket(rate, message, clock)
    assert bucket is not None and bandwidth_bucket(0, message, clock) is None
    pace = SendRate(bucket)
    sent = 0
    total = 200 * message
    while sent < total:
        allowance = pace.allowance(message)
        while allowance is not None and allowance > 0 and sent < total:
            bucket.spend(message)
            sent += message
            allowance -= message
            assert sent <= rate * (clock.now - start) + message
        clock.now += max(pace.wait(message), 1e-6)
    elapsed = clock.now - start
    assert total / rate - message / rate <= elapsed <= total / rate * 1.01 + 1e-3


@pytest.mark.parametrize("text,value", [("0", 0), ("1500", 1500), ("500K", 500_000), ("20M", 20_000_000),
                                        ("20m", 20_000_000), ("1G", 1_000_000_000), (" 7k ", 7000), (42, 42)])
def test_parse_rate(text: object, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["", "fast", "-1", "1.5M", "20MB", "20 M", "M", "1T", -5, True, None])
def test_parse_rate_refuses_what_is_no_rate(text: object) -> None:
    with pytest.raises(ValueError, match="is not a rate in bytes a second: digits with an optional K, M or G"):
        parse_rate(text)


def test_transfer_pace_starts_its_bucket_at_the_first_send_and_wakes_only_when_paced() -> None:
    clock = Clock()
    pace = TransferPace(None, 1000, 100, clock)
    clock.now += 60  # a minute queued saves up nothing
    assert pace.budget(5000, 100) == 0 and pace.paced
    assert pace.wait(1.0, 100) == pytest.approx(0.1)  # a chunk's worth at 1000 B/s
    clock.now += 0.25
    assert pace.budget(5000, 100) == 151  # 250 came: two chunks go (a sender sends while the budget is above 0)
    pace.sent(200)
    assert pace.budget(5000, 100) == 0
    clock.now += 10  # full again, but the window holds the sender back: its own wait, never a spin
    assert pace.budget(5000, 100) == 401 and pace.paced and pace.wait(0.7, 100) == 0.7  # holds 500
    unlimited = TransferPace(None, 0, 100, clock)
    assert unlimited.budget(5000, 100) == 5000 and not unlimited.paced and unlimited.wait(0.7, 100) == 0.7


def test_the_legs_of_a_fanout_share_one_bandwidth_bucket() -> None:
    # --bandwidth of a fan-out is the transfer's: what one leg sent (a shared publish, a unicast resend) is gone
    # for every leg, and they wait for the same tokens; the bucket is made at the first send of any of them
    clock = Clock()
    first, second, alone = (TransferPace(None, 1000, 100, clock) for _ in range(3))
    second.share(first)
    second.sent(50)  # a resync before any send: no bucket yet, nothing to spend from
    assert second.budget(5000, 100) == 0 and first.own is not None and alone.own is None
    clock.now += 0.5  # 500 came, once for both legs (the bucket holds 500)
    assert first.budget(5000, 100) == 401 and second.budget(5000, 100) == 401
    second.sent(400)
    assert first.budget(5000, 100) == 1 and second.budget(5000, 100) == 1
    first.sent(100)
    assert first.budget(5000, 100) == 0 and second.budget(5000, 100) == 0 and second.paced
    assert first.wait(1.0, 100) == pytest.approx(0.1) and second.wait(1.0, 100) == pytest.approx(0.1)
    assert alone.budget(5000, 100) == 0  # a transfer of its own has its own bucket (empty at its first send)
    clock.now += 0.5
    assert alone.budget(5000, 100) == 401 and first.budget(5000, 100) == 401
    # a fan-out leg's credits first in line (free) are not held back by the rate: they publish nothing
    assert second.budget(5000, 100, free=300) == 701 and first.budget(5000, 100, free=0) == 401
    assert first.budget(300, 100, free=300) == 300 and not first.paced
