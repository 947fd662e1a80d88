"""The peers (agent.peers): statuses believed or not, changes reported once, the watched topics and their
limit, waiting for a peer. No broker: the link's subscriptions are recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire import provenance
from agent.auth import Authority, public_text
from agent.wire.binding import agent_requester
from agent.peers import Peers
from agent.wire.protocol import AgentStatus, ProtocolError, Topics, dump, utc_now

T = Topics()


class _Link:
    def __init__(self) -> None:
        self.subscribed: list[str] = []

    async def add_subscription(self, topic: str) -> None:
        self.subscribed.append(topic)

    async def remove_subscription(self, topic: str) -> None:
        self.subscribed.remove(topic)


def _status(agent: str, word: str = "READY", key: Ed25519PrivateKey | None = None) -> bytes:
    body = dump(AgentStatus(agent=agent, status=word, time=utc_now()))
    return provenance.sign_payload(body, provenance.STATUS, agent, key) if key else body


def _peers(authority: Authority | None = None, busy: set[str] | None = None, limit: int = 256,
           own: Any = None) -> tuple[Peers, _Link, list[tuple[str, str]]]:
    link, changes = _Link(), []
    peers = Peers("A1", T, link, authority, own=own or (lambda payload: None), busy=lambda: busy or set(),
                  on_change=lambda agent, word: changes.append((agent, word)), watch_limit=limit)
    return peers, link, changes


async def _settled(peers: Peers) -> None:
    for _ in range(100):
        if not peers.pending:
            return
        await asyncio.sleep(0)
    raise AssertionError("subscriptions not made")


async def test_a_change_is_reported_once() -> None:
    peers, _, changes = _peers()
    peers.on_status("B1", _status("B1"))
    peers.on_status("B1", _status("B1"))
    peers.on_status("B1", _status("B1", "ACTIVE"))
    assert changes == [("B1", "READY"), ("B1", "ACTIVE")] and peers.statuses["B1"] == "ACTIVE"


async def test_without_authority_an_empty_status_forgets_the_peer() -> None:
    peers, _, _ = _peers()
    peers.on_status("B1", _status("B1"))
    peers.on_status("B1", b"")
    assert "B1" not in peers.statuses


async def test_a_status_on_another_agents_topic_is_refused() -> None:
    peers, _, changes = _peers()
    with pytest.raises(ProtocolError, match="published on the topic of"):
        peers.on_status("B1", _status("B2"))
    assert changes == [] and peers.statuses == {}


async def test_the_own_topic_is_judged_by_the_own_status() -> None:
    seen: list[bytes] = []
    peers, _, changes = _peers(own=lambda payload: seen.append(payload) or None)
    peers.on_status("A1", b"garbage")
    assert seen == [b"garbage"] and changes == []


def _authority(tmp_path: Path, agent: str, key: Ed25519PrivateKey, permissions: str = "transfer") -> Authority:
    path = tmp_path / "trust"
    path.write_text(f"{agent_requester(agent)} {public_text(key.public_key())} {permissions}\n")
    return Authority(path)


async def test_with_authority_only_a_signed_status_of_a_trusted_key_counts(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    peers, _, changes = _peers(_authority(tmp_path, "B1", key))
    with pytest.raises(ProtocolError, match="not signed by its trusted key"):
        peers.on_status("B1", _status("B1", key=Ed25519PrivateKey.generate()))
    with pytest.raises(ProtocolError, match="empty status"):
        peers.on_status("B1", b"")
    peers.on_status("B1", _status("B1", key=key))
    assert changes == [("B1", "READY")]
    # a peer whose key is not trusted here is ignored, and remembered as such (for a better refusal)
    peers.on_status("C1", _status("C1", key=Ed25519PrivateKey.generate()))
    assert peers.untrusted("C1") and "C1" not in peers.statuses


async def test_an_unknown_peer_asked_for_is_watched_once_and_names_are_checked() -> None:
    peers, link, _ = _peers()
    for name in ("B7", "B7", "A1", "#", "x/y", "a+b"):
        assert peers.status(name) is None
    await _settled(peers)
    assert link.subscribed == [T.agent_status("B7")]


async def test_beyond_the_limit_the_oldest_idle_peer_is_unwatched() -> None:
    peers, link, _ = _peers(busy={"B1"}, limit=2)
    for name in ("B1", "B2", "B3"):
        peers.watch(name)
        await _settled(peers)
    # B1 is the oldest but a running transfer goes to it: B2 goes
    assert peers.watched == ["B1", "B3"] and link.subscribed == [T.agent_status("B1"), T.agent_status("B3")]
    peers.watch("B1")  # needed again: now the last to go
    peers.watch("B4")
    await _settled(peers)
    assert peers.watched == ["B1", "B4"]


async def test_waiting_for_a_peer() -> None:
    peers, link, _ = _peers()
    assert not await peers.wait("B1", 0.05)
    waiting = asyncio.ensure_future(peers.wait("B1", 5))
    await asyncio.sleep(0)
    peers.on_status("B1", _status("B1"))
    assert await asyncio.wait_for(waiting, 5)
    assert await peers.wait("B1", 0)  # known: at once
    await _settled(peers)
    assert link.subscribed == [T.agent_status("B1")]
