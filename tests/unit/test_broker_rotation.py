"""The broker-list rule (agent.core.brokers) by tables: which URL is tried next and how long to wait first."""

from __future__ import annotations

import pytest

from agent.core.brokers import BrokerListError, BrokerRotation, check_broker_list, split_broker_list
from agent.core.policy import reconnect_delay


def _delay(n: int) -> float:
    return float(n)  # round n's wait is n seconds: easy to read in the tables


def _run(count: int, script: str) -> list[tuple[int, float]]:
    """`script`: one letter a step: f = an attempt that fails, u = one that comes up and is lost after a
    stable connection, q = one that comes up and is thrown out quickly. Returns each attempt's (index, wait)."""
    r = BrokerRotation(count, _delay)
    seen = []
    for step in script:
        seen.append(r.next_attempt())
        if step in "uq":
            r.connected()
            r.lost(stable=step == "u")
    return seen


@pytest.mark.parametrize("count, script, expected", [
    # one broker: at once, then the backoff between attempts (each attempt is a round), as before lists
    (1, "ffff", [(0, 0), (0, 1), (0, 2), (0, 3)]),
    # a stable connection lost: at once again, and the backoff afresh
    (1, "fffuff", [(0, 0), (0, 1), (0, 2), (0, 3), (0, 0), (0, 1)]),
    # thrown out soon after coming up: the backoff goes on
    (1, "fqff", [(0, 0), (0, 1), (0, 2), (0, 3)]),
    # three brokers: a failed attempt moves on at once; the wait comes between full rounds, from where it began
    (3, "fffffff", [(0, 0), (1, 0), (2, 0), (0, 1), (1, 0), (2, 0), (0, 2)]),
    # the second answers; when it is lost, the next round starts with the third
    (3, "fufff", [(0, 0), (1, 0), (2, 0), (0, 0), (1, 0)]),
    # ... and wraps around: the last one lost, the first is next
    (3, "ffuf", [(0, 0), (1, 0), (2, 0), (0, 0)]),
    # the round after a loss: a full round of failures from the next one, then the backoff
    (2, "uffff", [(0, 0), (1, 0), (0, 0), (1, 1), (0, 0)]),
    # two brokers, thrown out quickly: the next one after a wait (the backoff keeps growing)
    (2, "qqf", [(0, 0), (1, 1), (0, 2)]),
])
def test_rotation(count: int, script: str, expected: list[tuple[int, float]]) -> None:
    assert _run(count, script) == expected


def test_default_backoff_is_the_reconnection_policy() -> None:
    r = BrokerRotation(1)
    waits = [r.next_attempt()[1] for _ in range(7)]
    assert waits == [0] + [reconnect_delay(n) for n in range(1, 7)]
    assert waits[1] == 0.2 and max(waits) == 1.0  # a short first retry; at most 1 s between rounds


def test_no_brokers() -> None:
    with pytest.raises(ValueError):
        BrokerRotation(0)


def _check(url: str) -> None:
    if "://" not in url:
        raise ValueError("no scheme")


@pytest.mark.parametrize("text, result", [
    ("mqtt://a:1", ["mqtt://a:1"]),
    (" mqtt://a:1 , mqtts://b:2 ", ["mqtt://a:1", "mqtts://b:2"]),
])
def test_lists(text: str, result: list[str]) -> None:
    assert check_broker_list(text, _check) == result
    assert split_broker_list(text) == result


@pytest.mark.parametrize("text, message", [
    ("mqtt://a:1,mqtt//x:1", 'entry 2 "mqtt//x:1" is not a URL: no scheme'),
    ("x,mqtt://a:1", 'entry 1 "x" is not a URL: no scheme'),
    ("mqtt://a:1,,mqtt://b:1", 'entry 2 "" is not a URL: it is empty'),
    ("mqtt://a:1,", 'entry 2 "" is not a URL: it is empty'),
])
def test_malformed_lists_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(BrokerListError) as e:
        check_broker_list(text, _check)
    assert str(e.value).startswith(message)


def test_a_single_url_keeps_its_own_message() -> None:
    with pytest.raises(ValueError) as e:
        check_broker_list("nope", _check)
    assert str(e.value) == "no scheme" and not isinstance(e.value, BrokerListError)
