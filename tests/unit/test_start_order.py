"""Which queued transfer starts next (agent.core.start_order), by table: priority, then first come."""

from __future__ import annotations

import pytest

from agent.core.start_order import StartOrder, check_priority


# (slots, steps) where a step is ("q", tid, priority) queue, ("d", tid) done; expected: the order they start
@pytest.mark.parametrize("slots,steps,expected", [
    # one slot: the first runs at once, the rest by priority, FIFO within one
    (1, [("q", "a", 0), ("q", "b", 0), ("q", "c", 5), ("q", "d", 5), ("q", "e", 9),
         ("d", "a"), ("d", "e"), ("d", "c"), ("d", "d")], ["a", "e", "c", "d", "b"]),
    # all the same priority: first come, first served
    (1, [("q", "a", 3), ("q", "b", 3), ("q", "c", 3), ("d", "a"), ("d", "b")], ["a", "b", "c"]),
    # two slots: two start at once, the next best when one ends
    (2, [("q", "a", 0), ("q", "b", 0), ("q", "c", 1), ("q", "d", 2), ("d", "b")], ["a", "b", "d"]),
    # a queued transfer withdrawn (cancelled before its turn) never starts
    (1, [("q", "a", 0), ("q", "b", 9), ("q", "c", 0), ("d", "b"), ("d", "a")], ["a", "c"]),
    # a high priority arriving late goes ahead of every lower one still waiting
    (1, [("q", "a", 0), ("q", "b", 1), ("q", "c", 1), ("d", "a"), ("q", "d", 8), ("d", "b")], ["a", "b", "d"]),
    # queued twice (a reload) counts once
    (1, [("q", "a", 0), ("q", "a", 0), ("d", "a")], ["a"]),
])
def test_start_order(slots: int, steps: list[tuple], expected: list[str]) -> None:
    order = StartOrder(slots)
    started: list[str] = []
    for step in steps:
        if step[0] == "q":
            order.queue(step[1], step[2])
        else:
            order.done(step[1])
        started += order.due()
    assert started == expected


def test_waiting_lists_the_queue_in_start_order() -> None:
    order = StartOrder(1)
    for tid, pr in (("a", 0), ("b", 0), ("c", 7), ("d", 7), ("e", 2)):
        order.queue(tid, pr)
    assert order.due() == ["c"]  # all queued before a slot was given: the best of them
    assert order.waiting() == ["d", "e", "a", "b"]


@pytest.mark.parametrize("value,ok", [(0, 0), (9, 9), ("5", 5), (10, None), (-1, None), ("high", None),
                                      (True, None), (2.5, None)])
def test_check_priority(value: object, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(ValueError, match=r"^-pr .* from 0 \(lowest, the default\) to 9 \(highest\)"):
            check_priority(value)
    else:
        assert check_priority(value) == ok
