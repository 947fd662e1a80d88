"""The command lane (agent.command_lane): who a command claims to be, the bounded queue, the count of drops."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from agent import command_lane
from agent.command_lane import CommandLane, claimed_requester


@pytest.mark.parametrize("payload,expected", [
    (b'{"kind":"ping","requester":"alice","signature":"x"}', "alice"),
    (b'{"requester" : "agent.A1"}', "agent.A1"),
    (b'{"kind":"ping"}', None),                               # unsigned
    (b'{"requester":"al\\u0069ce"}', None),                   # another spelling: not a trusted name here
    (b'{"requester":"' + b"a" * 65 + b'"}', None),            # longer than any requester name
    (b"\xff\xfe garbage", None),
    (b'{"requester":"alice",' + b" " * (64 * 1024) + b"}", None),  # too big to be a signed command
])
def test_claimed_requester(payload: bytes, expected: str | None) -> None:
    assert claimed_requester(payload) == expected


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_full_queue_drops_the_oldest_and_the_drops_are_logged(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(command_lane, "QUEUE_LIMIT", 3)
    handled: list[str] = []

    async def handle(payload: bytes) -> None:
        handled.append(json.loads(payload)["request_id"])

    async def go() -> None:
        lane = CommandLane(handle, lambda: {"alice"}, Clock())
        for i in range(5):
            lane.offer(json.dumps({"request_id": f"r{i}", "requester": "alice"}).encode())
        assert len(lane) == 3 and lane.dropped == 2
        task = asyncio.create_task(lane.run())
        while handled != ["r2", "r3", "r4"]:
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level(logging.WARNING, "fte.agent"):
        asyncio.run(asyncio.wait_for(go(), 10))
    assert "with the command queue full" in caplog.text, caplog.text


def test_untrusted_flood_is_dropped_unread_and_a_trusted_requester_gets_through(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    async def handle(payload: bytes) -> None:
        pass

    async def go() -> CommandLane:
        return CommandLane(handle, lambda: {"alice"}, clock)

    lane = asyncio.run(go())
    forged = json.dumps({"request_id": "f", "requester": "mallory"}).encode()
    with caplog.at_level(logging.WARNING, "fte.agent"):
        for _ in range(command_lane.UNTRUSTED_BURST + 1000):
            lane.offer(forged)
        lane.offer(json.dumps({"request_id": "mine", "requester": "alice"}).encode())
    assert lane.dropped == 1000
    assert len(lane) == min(command_lane.QUEUE_LIMIT, command_lane.UNTRUSTED_BURST + 1)
    assert lane._queue[-1] == json.dumps({"request_id": "mine", "requester": "alice"}).encode()
    # one summary line however many were dropped (the next one SUMMARY_INTERVAL later at the earliest)
    assert caplog.text.count("command flood:") == 1, caplog.text
    assert "over the rate limit of untrusted and unsigned requesters" in caplog.text
