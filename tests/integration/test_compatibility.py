"""Agents of different versions on one broker: a destination that does not list a feature gets frames
without it, and the transfer still arrives intact.

The "older" destination is a real agent process whose advertised features lack "gmac" (a sitecustomize.py
on its PYTHONPATH trims agent.destination.FEATURES before the agent starts). What the source sends is read
off the broker by a subscriber on the destination's data topic: the flags byte of every chunk frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.wire.binding import GMAC_BYTES, MAC_BYTES
from agent.wire.protocol import CHUNK_FLAGS_AT, CHUNK_HEADER, FLAG_BUNDLE, FLAG_GMAC
from tests.support.agents import FteEnv
from tests.support.brokers import AmqttProcess
from tests.support.subscription import Subscription

pytestmark = pytest.mark.timeout(120)

OLDER_DESTINATION = '''
import agent.destination
agent.destination.FEATURES = tuple(f for f in agent.destination.FEATURES if f != "gmac")
'''


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
            env.create_agent(name, sandbox=data, agentChunkSize=65536, agentWindowSize=4,
                             agentEncryption="false")  # the MAC trailers, not encryption, are under test
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
    frames: list[tuple[int, int]] = []  # flags byte and length of each frame to A2, as the broker passed it
    with Subscription(env.broker_url, "SYSTEM.FTE/Data/A2/+",
                      lambda topic, payload: frames.append((payload[CHUNK_FLAGS_AT], len(payload)))):
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), "-w", "30",
                    str(src), str(small / "s0.txt"), str(small / "s1.txt"), str(small / "s2.txt"))
        assert r.returncode == 0, str(r)
    assert (data / "out" / "in.bin").read_bytes() == src.read_bytes()
    for i in range(3):
        assert (data / "out" / f"s{i}.txt").read_bytes() == (small / f"s{i}.txt").read_bytes()
    chunks = [(flags, size) for flags, size in frames if not flags & FLAG_BUNDLE]
    bundles = [(flags, size) for flags, size in frames if flags & FLAG_BUNDLE]
    assert len(chunks) >= 6 and bundles, f"frames seen: {frames}"
    gmac = [bool(flags & FLAG_GMAC) for flags, _ in frames]
    if older:
        assert not any(gmac), "a destination without the 'gmac' feature got AES-GMAC frames"
        # HMAC-SHA256 (first 16 bytes) after the header and the data
        assert {size for _, size in chunks} >= {CHUNK_HEADER.size + 65536 + MAC_BYTES}
    else:
        assert all(gmac), "a destination with the 'gmac' feature got frames without it"
        assert {size for _, size in chunks} >= {CHUNK_HEADER.size + 65536 + GMAC_BYTES}  # nonce, tag
