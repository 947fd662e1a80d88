"""Transfer ids as users type them: the whole id or the first characters the logs show (cli.observe)."""

from __future__ import annotations

import pytest

from cli.client import ClientError
from cli.transfer_ids import check_transfer_id, pick_transfer_id

A = "a1b2c3d4e5f6" + "0" * 36
B = "a1b2c3d4ffff" + "1" * 36
C = "0123456789ab" + "2" * 36


@pytest.mark.parametrize("typed, expected", [
    (A, A),
    (A.upper(), A),
    (" a1b2c3d4 ", "a1b2c3d4"),
    ("a1b2c3d4e5f6", "a1b2c3d4e5f6"),
])
def test_what_can_be_an_id(typed: str, expected: str) -> None:
    assert check_transfer_id(typed) == expected


@pytest.mark.parametrize("typed", ["", "a1b2c3d", "nope-nope", "a1b2c3d4e5g6", "a" * 49, "a1b2 c3d4"])
def test_what_cannot(typed: str) -> None:
    with pytest.raises(ClientError) as exc:
        check_transfer_id(typed)
    assert repr(typed) in str(exc.value) and "first 8" in str(exc.value) and exc.value.code == 1


@pytest.mark.parametrize("prefix, known, expected", [
    ("a1b2c3d4e5", [A, B, C], A),
    ("a1b2c3d4ff", [A, B, C], B),
    ("01234567", [C, C, A], C),  # the same transfer listed by its source and its destination
    (A, [A, B], A),
])
def test_one_match(prefix: str, known: list[str], expected: str) -> None:
    assert pick_transfer_id(prefix, known) == expected


def test_several_matches_are_listed() -> None:
    with pytest.raises(ClientError) as exc:
        pick_transfer_id("a1b2c3d4", [A, B, C])
    text = str(exc.value)
    assert "2 transfers" in text and A in text and B in text and C not in text and "more characters" in text


def test_no_match_says_who_was_asked_and_who_did_not_answer() -> None:
    with pytest.raises(ClientError) as exc:
        pick_transfer_id("deadbeef", [A, B], warnings=["agent A3 did not answer within 5 s"])
    assert "no running agent knows a transfer whose id starts with deadbeef" in str(exc.value)
    assert "A3 did not answer" in str(exc.value) and "fte-list-transfers" in str(exc.value)
    with pytest.raises(ClientError) as exc:
        pick_transfer_id("deadbeef", [A], agent="A2")
    assert "agent A2 knows no transfer whose id starts with deadbeef" in str(exc.value)
