"""agent.link.subscribe_all: every topic's SUBSCRIBE is under way at once, a refused one is asked for again
without holding the others back, and each topic's outcome is reported in order."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import pytest

from agent.core.policy import SUBSCRIBE_ATTEMPTS
from agent.link import subscribe_all


class Broker:
    """A client whose broker answers no SUBACK until `answer` is set; refuses each topic of `refuse` that many
    times (0x80) first, and a topic of `never` every time."""

    def __init__(self, refuse: dict[str, int] | None = None, never: tuple[str, ...] = ()) -> None:
        self.refuse = dict(refuse or {})
        self.never = never
        self.asked: list[str] = []
        self.waiting = 0
        self.most_waiting = 0
        self.answer = asyncio.Event()

    async def subscribe(self, topic: str, qos: int = 0, **_: Any) -> tuple[int, ...]:
        self.asked.append(topic)
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await self.answer.wait()
        finally:
            self.waiting -= 1
        if topic in self.never or self.refuse.get(topic, 0) > 0:
            self.refuse[topic] = self.refuse.get(topic, 0) - 1
            return (0x80,)
        return (qos,)


def run(broker: Broker, topics: list[str]) -> list[bool]:
    async def go() -> list[bool]:
        task = asyncio.ensure_future(subscribe_all(broker, topics))  # type: ignore[arg-type]
        while len(broker.asked) < len(topics) and not task.done():
            await asyncio.sleep(0)
        broker.answer.set()  # the first SUBACK only once every topic was asked for
        return await task
    return asyncio.run(asyncio.wait_for(go(), 30))


def test_every_topic_is_asked_for_before_the_broker_answers_one() -> None:
    broker = Broker()
    assert run(broker, ["a", "b", "c", "d"]) == [True, True, True, True]
    assert broker.most_waiting == 4
    assert sorted(broker.asked) == ["a", "b", "c", "d"]


def test_a_refused_topic_is_asked_for_again_and_the_outcomes_are_in_order() -> None:
    broker = Broker(refuse={"b": 2}, never=("c",))
    assert run(broker, ["a", "b", "c", "d"]) == [True, True, False, True]
    assert broker.asked.count("a") == broker.asked.count("d") == 1
    assert broker.asked.count("b") == 3
    assert broker.asked.count("c") == SUBSCRIBE_ATTEMPTS


def test_a_lost_connection_raises_and_cancels_the_other_subscriptions() -> None:
    class Lost(Broker):
        async def subscribe(self, topic: str, qos: int = 0, **kw: Any) -> tuple[int, ...]:
            if topic == "gone":
                self.asked.append(topic)
                raise aiomqtt.MqttError("the connection is gone")
            return await super().subscribe(topic, qos, **kw)

    broker = Lost()

    async def go() -> None:
        with pytest.raises(aiomqtt.MqttError):
            await subscribe_all(broker, ["a", "gone", "b"])  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert broker.waiting == 0  # "a" and "b" no longer wait for their SUBACK

    asyncio.run(asyncio.wait_for(go(), 30))
