"""The test's own MQTT subscription, on a thread of its own, for tests that watch what crosses the broker."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable

import aiomqtt

from tests.support.brokers import split_url


class Subscription:
    """`handle(topic, payload)` for every message on `topic_filter` (aiomqtt on a thread, QoS 1).

    Live when the constructor returns (the broker acknowledged the subscription), so nothing published
    afterwards is missed; `close()` (or leaving the `with` block) ends it. `handle` runs on the thread.
    """

    def __init__(self, url: str, topic_filter: str, handle: Callable[[str, bytes], None]) -> None:
        self._handle = handle
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(url, topic_filter),), daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise AssertionError(f"could not subscribe to {topic_filter}: {self._error}")

    async def _main(self, url: str, topic_filter: str) -> None:
        self._stop = asyncio.Event()
        host, port = split_url(url)
        try:
            async with aiomqtt.Client(host, port, identifier=f"test-tap-{secrets.token_hex(4)}", timeout=10) as c:
                await c.subscribe(topic_filter, qos=1)
                self._ready.set()

                async def pump() -> None:
                    async for m in c.messages:
                        self._handle(str(m.topic), bytes(m.payload))  # type: ignore[arg-type]

                task = asyncio.create_task(pump())
                await self._stop.wait()
                task.cancel()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._ready.set()

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
