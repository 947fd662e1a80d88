"""InFlightBudget: the per-agent cap on data in flight, by table."""

from __future__ import annotations

import pytest

from agent.core.budget import InFlightBudget

MiB = 1 << 20


@pytest.mark.parametrize("cap,others,own,chunk,expected", [
    (0, 100 * MiB, 0, MiB, None),                 # no cap
    (64 * MiB, 0, 0, MiB, 64 * MiB),              # alone
    (64 * MiB, 60 * MiB, 2 * MiB, MiB, 2 * MiB),  # what is left of the cap
    (64 * MiB, 64 * MiB, 2 * MiB, MiB, 0),        # full: wait for acknowledgements
    (64 * MiB, 64 * MiB, 0, MiB, MiB),            # full, but nothing of its own out: one chunk, never starved
    (64 * MiB, 70 * MiB, 0, MiB, MiB),
])
def test_allowance(cap: int, others: int, own: int, chunk: int, expected: int | None) -> None:
    b = InFlightBudget(cap)
    b.report("other", others)
    assert b.allowance("t", own, chunk) == expected


def test_a_held_back_transfer_is_woken_when_another_frees_bytes() -> None:
    b = InFlightBudget(8 * MiB)
    assert b.allowance("a", 8 * MiB, MiB) == 0
    assert b.allowance("b", 0, MiB) == MiB  # may send one chunk
    assert b.report("b", MiB) == set()      # the total went up: nobody to wake
    assert b.allowance("b", MiB, MiB) == 0  # and now b waits too
    assert b.report("a", 6 * MiB) == {"b"}  # a's acknowledgements free room: b is woken, once
    assert b.report("a", 5 * MiB) == set()
    assert b.total == 6 * MiB


def test_release_forgets_a_transfer_and_wakes_the_others() -> None:
    b = InFlightBudget(4 * MiB)
    b.report("a", 4 * MiB)
    assert b.allowance("b", 2 * MiB, MiB) == 0
    assert b.release("a") == {"b"}
    assert b.total == 2 * MiB
    assert b.allowance("b", 2 * MiB, MiB) == 2 * MiB


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        InFlightBudget(-1)


def test_an_allowance_is_reserved_until_the_next_report() -> None:
    """Sessions send while others run: two asking at once must not both be granted the whole cap."""
    b = InFlightBudget(8 * MiB)
    assert b.allowance("a", 0, MiB) == 8 * MiB
    assert b.allowance("b", 0, MiB) == MiB  # only the one chunk every transfer may have
    assert b.report("a", 3 * MiB) == set()  # a sent 3 MiB: the rest of its reservation comes back
    assert b.allowance("c", 0, MiB) == 4 * MiB
