"""Broker lists: how `brokerUrl`, `--broker` and `FTE_BROKER_URL` name several brokers, and which one an
agent or a command tries next. No IO; the waits are the reconnection backoff of `agent.core.policy`,
applied here and only here (`agent.link` and `cli.client` sleep what `BrokerRotation.next_attempt` says).

The rule: every (re)connection tries the URLs in the order given; a failed attempt moves to the next URL at
once; only after a full round without success does it wait (the backoff, growing round after round); after
a connection is lost the next round starts with the URL after the one that was lost. A connection that
lasted `STABLE_CONNECTION` starts the backoff afresh; one that dropped sooner does not (a broker throwing
the agent out at once must not be hammered).
"""

from __future__ import annotations

from typing import Callable

from .errors import FteError
from .policy import reconnect_delay


class BrokerListError(FteError, ValueError):
    """A broker list with an entry that is not a broker URL; the message names the entry."""


def split_broker_list(text: str) -> list[str]:
    """The entries of a comma-separated list, stripped (empty entries kept, for check_broker_list to name)."""
    return [entry.strip() for entry in text.split(",")]


def check_broker_list(text: str, check: Callable[[str], object]) -> list[str]:
    """The URLs of `text`, each passed to `check` (which raises ValueError with the reason). A single URL's
    error is `check`'s own; in a list, `entry N "URL" is not a URL: reason` names the entry (from 1)."""
    entries = split_broker_list(text)
    if len(entries) == 1:
        check(entries[0])
        return entries
    for number, entry in enumerate(entries, 1):
        try:
            if not entry:
                raise ValueError("it is empty (two commas in a row, or one at an end)")
            check(entry)
        except ValueError as exc:
            raise BrokerListError(f'entry {number} "{entry}" is not a URL: {exc}') from None
    return entries


class BrokerRotation:
    """Which of `count` brokers to try next and how long to wait before trying.

    `next_attempt()` before every attempt; `connected()` when the attempt's connection came up;
    `lost(stable)` when it went down again. A failed attempt needs no call: the next `next_attempt()`
    moves on."""

    def __init__(self, count: int, delay: Callable[[int], float] = reconnect_delay) -> None:
        if count < 1:
            raise ValueError("no broker to connect to")
        self.count = count
        self._delay = delay
        self.current = 0  # the URL of the last attempt
        self._start = 0  # where the current round started
        self._tried = 0  # attempts in the current round
        self._rounds = 0  # rounds ended without a connection since the backoff started afresh
        self._wait = 0.0  # to wait before the next attempt (set when a connection dropped too soon)

    def next_attempt(self) -> tuple[int, float]:
        """(index of the URL to try, seconds to wait before trying it)."""
        wait, self._wait = self._wait, 0.0
        if self._tried >= self.count:  # a full round failed: back off, then start again where it started
            self._rounds += 1
            self._tried = 0
            wait = max(wait, self._delay(self._rounds))
        self.current = (self._start + self._tried) % self.count
        self._tried += 1
        return self.current, wait

    def connected(self) -> None:
        """The last attempt's connection is up."""
        self._tried = 0

    def lost(self, stable: bool) -> None:
        """The connection to `current` went down; `stable`: it had lasted long enough to start afresh."""
        self._start = (self.current + 1) % self.count
        self._tried = 0
        if stable:
            self._rounds = 0
        else:  # thrown out soon after it came up: wait as after a failed round, and keep growing the wait
            self._rounds += 1
            self._wait = self._delay(self._rounds)
