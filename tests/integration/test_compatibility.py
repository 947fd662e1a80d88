"""Agents of different versions on one broker: a destination that does not list a feature gets frames
without it, and the transfer still arrives intact.

The "older" destination is a real agent process whose advertised features lack "gmac" (a sitecustomize.py
on its PYTHONPATH trims agent.destination.FEATURES before the agent starts). What the source sends is read
off the broker by a subscriber on the destination's data topic: the flags byte of every chunk frame.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from agent.binding import GMAC_BYTES, MAC_BYTES
from agent.protocol import CHUNK_FLAGS_AT, CHUNK_HEADER, FLAG_BUNDLE, FLAG_GMAC
from tests.support.agents import FteEnv
from tests.support.brokers import AmqttProcess, split_url

pytestmark = pytest.mark.timeout(120)

OLDER_DESTINATION = '''
import agent.destination
agent.destination.FEATURES = tuple(f for f in agent.destination.FEATURES if f != "gmac")
'''


class FrameSniffer:
    """The flags byte and length of every frame published on <prefix>/Data/<agent>/+, from a thread of its own."""

    def __init__(self, url: str, topic: str) -> None:
        self.host, self.port = split_url(url)
        self.topic = topic
        self.frames: list[tuple[int, int]] = []
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with aiomqtt.Client(self.host, self.port, timeout=10) as c:
            await c.subscribe(self.topic, qos=1)
            self.ready.set()
            reader = asyncio.ensure_future(self._read(c))
            await self._stop.wait()
            reader.cancel()

    async def _read(self, c: aiomqtt.Client) -> None:
        async for m in c.messages:
            payload = bytes(m.payload)  # type: ignore[arg-type]
            self.frames.append((payload[CHUNK_FLAGS_AT], len(payload)))

    def __enter__(self) -> "FrameSniffer":
        self._thread.start()
        assert self.ready.wait(15), f"could not subscribe to {self.topic}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


@pytest.fixture
def pair(tmp_path: Path, amqtt_broker: AmqttProcess, request: pytest.FixtureRequest) -> Iterator[tuple[FteEnv, Path, bool]]:
    data = tmp_path / "data"
    data.mkdir()
    env = FteEnv(tmp_path / "home", amqtt_broker.ensure_running().url)
    extra: dict[str, str] = {}
    if request.param == "older":
        site = tmp_path / "older-destination"
        site.mkdir()
        (site / "sitecustomize.py").write_text(OLDER_DESTINATION)
        extra["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    try:
        for name in ("A1", "A2"):
            env.create_agent(name, sandbox=data, agentChunkSize=65536, agentWindowSize=4)
        env.start_agent("A1")
        env.start_agent("A2", extra_env=extra)
        yield env, data, request.param == "older"
    finally:
        env.stop_all()


@pytest.mark.parametrize("pair", ["older", "current"], indirect=True)
def test_chunk_mac_follows_the_destinations_features(pair: tuple[FteEnv, Path, bool]) -> None:
    env, data, older = pair
    src = data / "in.bin"
    src.write_bytes(os.urandom(5 * 65536 + 123))  # six chunks
    small = data / "small"
    small.mkdir()
    for i in range(3):
        (small / f"s{i}.txt").write_bytes(os.urandom(100 + i))  # whole files: a bundle
    with FrameSniffer(env.broker_url, "SYSTEM.FTE/Data/A2/+") as sniffer:
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), "-w", "30",
                    str(src), str(small / "s0.txt"), str(small / "s1.txt"), str(small / "s2.txt"))
        assert r.returncode == 0, str(r)
    assert (data / "out" / "in.bin").read_bytes() == src.read_bytes()
    for i in range(3):
        assert (data / "out" / f"s{i}.txt").read_bytes() == (small / f"s{i}.txt").read_bytes()
    chunks = [(flags, size) for flags, size in sniffer.frames if not flags & FLAG_BUNDLE]
    bundles = [(flags, size) for flags, size in sniffer.frames if flags & FLAG_BUNDLE]
    assert len(chunks) >= 6 and bundles, f"frames seen: {sniffer.frames}"
    gmac = [bool(flags & FLAG_GMAC) for flags, _ in sniffer.frames]
    if older:
        assert not any(gmac), "a destination without the 'gmac' feature got AES-GMAC frames"
        # HMAC-SHA256 (first 16 bytes) after the header and the data
        assert {size for _, size in chunks} >= {CHUNK_HEADER.size + 65536 + MAC_BYTES}
    else:
        assert all(gmac), "a destination with the 'gmac' feature got frames without it"
        assert {size for _, size in chunks} >= {CHUNK_HEADER.size + 65536 + GMAC_BYTES}  # nonce, tag
