"""The fan-out source's pure rules (agent.core.fanout_credits, the early acks of agent.core.window, the next
send position of agent.core.send_order): publishing once, credits, their bound, rewinds (docs/protocol.md#fan-out)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agent.core.fanout_credits import FanoutCredits
from agent.core.send_order import SendOrder
from agent.core.statuses import FileStatus
from agent.core.window import SendWindow

C = 10  # chunk size of these tables


def _credits(*members: str, window: int = 2, sizes: dict[int, int] | None = None) -> FanoutCredits:
    c = FanoutCredits(["A2", "A3", "A4"], window, sizes or {0: 100, 1: 30})
    for m in members:
        c.join(m, True)
    return c


def test_a_member_publishes_beyond_the_head_and_the_others_at_its_position_are_credited() -> None:
    c = _credits("A2", "A3", "A4")
    assert c.publishes("A2", (0, 0, C))
    assert c.published("A2", (0, 0, C), {"A2": (0, 10), "A3": (0, 0), "A4": (0, 0)}, {}) == ["A3", "A4"]
    assert c.head == (0, 0)
    assert not c.publishes("A3", (0, 0, C))  # not beyond the head
    assert c.take("A3", (0, 0, C)) and not c.take("A3", (0, 0, C))  # a credit is spent once


@pytest.mark.parametrize("why, members, chunk, positions, busy, credited", [
    ("a non-member gets no credit", ("A2", "A3"), (0, 0, C), {"A3": (0, 0), "A4": (0, 0)}, {}, ["A3"]),
    ("a leg behind the chunk gets none (served by unicast)", ("A2", "A3", "A4"), (0, 10, C),
     {"A3": (0, 0), "A4": (0, 10)}, {}, ["A4"]),
    ("a leg with unicast chunks of that file unacknowledged gets none", ("A2", "A3", "A4"), (0, 10, C),
     {"A3": (0, 10), "A4": (0, 10)}, {"A4": {0}}, ["A3"]),
    ("a leg done with everything gets none", ("A2", "A3"), (0, 0, C), {"A3": None}, {}, []),
])
def test_who_is_credited(why: str, members: tuple[str, ...], chunk: tuple[int, int, int], positions: dict,
                         busy: dict, credited: list) -> None:
    assert _credits(*members).published("A2", chunk, positions, busy) == credited, why


def test_expected_position_runs_past_the_credits_and_across_files() -> None:
    c = _credits("A2", "A3", window=8)
    pos = {"A3": (0, 0)}
    for off in range(0, 100, C):
        assert c.published("A2", (0, off, C), pos, {}) == ["A3"]
    assert c.expected("A3", (0, 0)) == (1, 0)  # file 0 ends at 100: the next file in order
    assert c.published("A2", (1, 0, C), pos, {}) == ["A3"]
    assert c.expected("A3", (0, 0)) == (1, 10)


def test_credits_are_bounded_to_twice_the_window() -> None:
    c = _credits("A2", "A3", window=2)
    got = [c.published("A2", (0, off, C), {"A3": (0, 0)}, {}) for off in range(0, 60, C)]
    assert got == [["A3"]] * 4 + [[]] * 2  # bound 2 x 2: the slow leg is then served by its own leg
    assert len(c.credits["A3"]) == c.bound == 4


@pytest.mark.parametrize("event", ["rewind", "resync_member", "resync_unicast", "recovery"])
def test_a_rewind_or_resync_or_recovery_clears_the_credits(event: str) -> None:
    c = _credits("A2", "A3")
    c.published("A2", (0, 0, C), {"A3": (0, 0)}, {})
    {"rewind": lambda: c.clear("A3"), "resync_member": lambda: c.join("A3", True),
     "resync_unicast": lambda: c.join("A3", False), "recovery": lambda: c.leave("A3")}[event]()
    assert not c.take("A3", (0, 0, C))
    assert ("A3" in c.members) == (event in ("rewind", "resync_member"))


def test_a_credit_of_another_length_is_not_taken() -> None:
    c = _credits("A2", "A3")
    c.published("A2", (0, 0, C), {"A3": (0, 0)}, {})
    assert not c.take("A3", (0, 0, 5))  # the chunk size changed (broker probe): unicast


# --------------------------------------------------------------------------- early acks (agent.core.window)

@pytest.mark.parametrize("acks, takes, acked, in_flight", [
    ([25], 1, 10, 0),  # an ack beyond what was sent: all that was sent is acked, the rest remembered
    ([25], 3, 25, 1),  # applied when take() passes it (chunks 0-10, 10-20 freed; 20-30 still in flight)
    ([20], 2, 20, 0),
    ([101], 3, 0, 3),  # beyond the file: never (a confused or hostile peer)
    ([25, 15], 3, 25, 1),  # the larger early ack wins
])
def test_early_acks(acks: list[int], takes: int, acked: int, in_flight: int) -> None:
    w = SendWindow(100, C, 8, early_acks=True)
    w.take()
    for a in acks:
        w.on_ack(a)
    for _ in range(takes - 1):
        w.take()
    assert (w.acked, w.in_flight_chunks) == (acked, in_flight)


def test_an_ordinary_window_refuses_an_ack_beyond_what_it_sent() -> None:
    w = SendWindow(100, C, 8)
    w.take()
    assert not w.on_ack(25) and w.acked == 0 and w.early_ack == 0


def test_a_rewind_forgets_an_early_ack() -> None:
    w = SendWindow(100, C, 8, early_acks=True)
    w.take()
    w.on_ack(40)
    w.rewind(0)
    for _ in range(4):
        w.take()
    assert w.acked == 0 and w.early_ack == 0


# --------------------------------------------------------------------------- next send position (send_order)

def test_next_position_is_the_first_file_with_bytes_left() -> None:
    files = {i: SimpleNamespace(index=i, size=s, offset=0, status=FileStatus.READY) for i, s in [(0, 20), (1, 30)]}
    order = SendOrder(files, SimpleNamespace(chunk_size=C, window_chunks=4), 16, 100)
    assert order.next_position() == (0, 0)
    order.windows[0].take()
    order.windows[0].take()
    assert order.next_position() == (1, 0)
    files[1].status = FileStatus.FAILED
    assert order.next_position() is None
    order.take_early_acks()
    order.rewind(0, 0)
    assert order.windows[0].early_acks and order.next_position() == (0, 0)  # kept by a rewind


def _reach(*members: str, window: int = 4) -> FanoutCredits:
    c = FanoutCredits(["A2", "A3", "A4"], window, {0: 100, 1: 30}, reach=3 * C)  # a destination holds 3 ahead
    for m in members:
        c.join(m, True)
    return c


@pytest.mark.parametrize("why, chunk, positions, busy, acked, credited", [
    ("behind the head, the chunk within reach of what it acked: credited (it re-joins)",
     (0, 40, C), {"A3": (0, 30)}, {"A3": {0}}, {"A3": 20}, ["A3"]),
    ("behind, the chunk beyond its reach: none (its destination would not hold it)",
     (0, 40, C), {"A3": (0, 30)}, {}, {"A3": 10}, []),
    ("behind in an earlier file: none (a destination holds ahead within a file)",
     (1, 0, C), {"A3": (0, 90)}, {}, {"A3": 90}, []),
    ("at the head with unicast unacknowledged, within reach: credited (held until the unicast is written)",
     (0, 40, C), {"A3": (0, 40)}, {"A3": {0}}, {"A3": 30}, ["A3"]),
    ("at the head with unicast unacknowledged, beyond reach: none", (0, 40, C), {"A3": (0, 40)}, {"A3": {0}},
     {"A3": 0}, []),
    ("at the head, nothing unacknowledged, beyond reach: credited (everything comes in order)",
     (0, 40, C), {"A3": (0, 40)}, {}, {"A3": 0}, ["A3"]),
    ("no acked offset known: behind gets none", (0, 40, C), {"A3": (0, 30)}, {}, {}, []),
])
def test_who_is_credited_with_a_reach(why: str, chunk: tuple[int, int, int], positions: dict, busy: dict,
                                      acked: dict, credited: list) -> None:
    assert _reach("A2", "A3").published("A2", chunk, positions, busy, acked) == credited, why


def test_a_leg_behind_re_joins_sends_the_gap_unicast_then_takes_its_credits() -> None:
    c = _reach("A2", "A3")
    assert c.published("A2", (0, 30, C), {"A3": (0, 20)}, {}, {"A3": 20}) == ["A3"]  # 20..30 it sends itself
    assert c.published("A2", (0, 40, C), {"A3": (0, 20)}, {}, {"A3": 20}) == ["A3"]
    assert c.published("A2", (0, 50, C), {"A3": (0, 20)}, {}, {"A3": 20}) == []  # 60 - 20 > reach: not yet
    assert not c.take("A3", (0, 20, C)) and not c.publishes("A3", (0, 20, C))  # unicast
    assert c.take("A3", (0, 30, C)) and c.take("A3", (0, 40, C))
    assert c.missed["A3"] == {"behind": 1}


@pytest.mark.parametrize("sizes", [{0: 20, 1: 0, 2: 30}, {0: 20, 1: 0, 2: 0, 3: 30}])
def test_expected_position_runs_past_an_empty_file(sizes: dict[int, int]) -> None:
    """An empty file has no chunk (agent.core.send_order never sends one): a leg credited to the end of the file
    before it is expected at the first chunk of the next file with bytes, and credited with it."""
    c = _credits("A2", "A3", window=8, sizes=sizes)
    pos = {"A3": (0, 0)}
    assert c.published("A2", (0, 0, C), pos, {}) == ["A3"]
    assert c.published("A2", (0, 10, C), pos, {}) == ["A3"]
    last = max(sizes)
    assert c.expected("A3", (0, 0)) == (last, 0)
    assert c.published("A2", (last, 0, C), pos, {}) == ["A3"], c.missed["A3"]
    assert c.expected("A3", (0, 0)) == (last, 10)
    assert c.missed["A3"] == {}


def test_expected_position_past_the_last_file_is_none_even_after_empty_ones() -> None:
    c = _credits("A2", "A3", window=8, sizes={0: 10, 1: 0})
    assert c.published("A2", (0, 0, C), {"A3": (0, 0)}, {}) == ["A3"]
    assert c.expected("A3", (0, 0)) is None  # nothing left to send: idle, as agent.core.send_order says


def test_credits_a_leg_will_never_take_do_not_hold_its_bound() -> None:
    """A3's destination refused file 1 (it exists there, -de error) or it failed there: A3's send order skips it.
    The credits it got for file 1 while it was still on file 0 are never taken; once A3 sends beyond them they are
    forgotten, so that A3 is credited with the shared chunks of file 2 up to its bound again."""
    c = _credits("A2", "A3", window=2, sizes={0: 20, 1: 30, 2: 50})  # bound 4
    on_file_0 = {"A3": (0, 0)}
    for chunk in ((0, 0, C), (0, 10, C), (1, 0, C), (1, 10, C)):
        assert c.published("A2", chunk, on_file_0, {}) == ["A3"]
    assert c.take("A3", (0, 0, C)) and c.take("A3", (0, 10, C))
    on_file_2 = {"A3": (2, 0)}  # file 1 is not A3's to send
    assert c.published("A2", (1, 20, C), on_file_2, {}) == []  # ahead of it
    got = [c.published("A2", (2, off, C), on_file_2, {}) for off in range(0, 50, C)]
    assert got == [["A3"]] * 4 + [[]], (got, c.missed["A3"])  # the bound, 4, all of it for what A3 will send
    assert sorted(c.credits["A3"]) == [(2, 0), (2, 10), (2, 20), (2, 30)]


@pytest.mark.parametrize("why, next_pos, held", [
    ("the credits from its next send on, across the end of a file", (0, 80), 2 * C + 30),
    ("a gap before them (a chunk it sends itself first): none first in line", (0, 70), 0),
    ("done with everything", None, 0),
])
def test_the_credits_a_leg_takes_first_are_what_its_rate_does_not_hold_back(why: str, next_pos: tuple[int, int] | None,
                                                                           held: int) -> None:
    # agent.core.ratelimit.TransferPace.budget(free=...): a credit taken publishes nothing
    c = _credits("A2", "A3")
    for chunk in ((0, 80, C), (0, 90, C), (1, 0, 30)):
        assert c.published("A2", chunk, {"A3": (0, 80)}, {}) == ["A3"]  # A3 sends from (0, 80) on
    assert c.held_ahead("A3", next_pos) == held, why
