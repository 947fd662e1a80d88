"""The delayed-ACK rule of the broker probe (agent/core/ack_delay.py), by tables of fabricated round trips (ms)."""

from __future__ import annotations

import pytest

from agent.core.ack_delay import delayed_ack_message, delayed_ack_pattern

STOCK_MOSQUITTO = [42.7, 43.1, 42.9, 44.6, 43.0]  # measured: config/mosquitto.conf, no quick ACKs
WITH_QUICK_ACKS = [1.7, 2.2, 1.1, 5.4, 1.9]  # the same broker, the agent's quick ACKs


@pytest.mark.parametrize("plain, quick, pattern", [
    (STOCK_MOSQUITTO, WITH_QUICK_ACKS, True),
    ([1.0, 1.2, 0.9, 5.0, 1.1], [1.0, 1.1, 0.8, 4.0, 1.2], False),  # set_tcp_nodelay true: no step
    ([45, 47, 44, 46, 52], [44, 46, 45, 47, 43], False),  # a broker 45 ms away: slow both ways, no step
    ([85, 86, 84, 90, 88], [44, 45, 46, 43, 44], False),  # 45 ms away and Nagle: quick still > half the plain
    ([205, 203, 210, 204, 206], [3, 4, 2, 3, 5], True),  # a 200 ms delayed ACK (not Linux's 40)
    ([43, 43, 2, 2, 43], [2, 2, 2, 2, 2], True),  # the median: most round trips waited
    ([2, 2, 43, 2, 43], [2, 2, 2, 2, 2], False),  # a few slow ones (load): not the pattern
    ([26.0], [1.0], True),  # at the step
    ([25.9], [1.0], False),  # just below it
    ([], WITH_QUICK_ACKS, False),  # nothing measured: nothing claimed
    (STOCK_MOSQUITTO, [], False),
])
def test_delayed_ack_pattern(plain: list[float], quick: list[float], pattern: bool) -> None:
    assert delayed_ack_pattern(plain, quick) is pattern


def test_the_warning_says_what_was_measured_and_what_to_do() -> None:
    line = delayed_ack_message(STOCK_MOSQUITTO, WITH_QUICK_ACKS)
    assert "43 ms" in line and "1.9 ms" in line
    assert "set_tcp_nodelay true" in line and "\n" not in line
