"""Admission (agent.admission): the limits maxSourceTransfers/maxQueuedTransfers/maxDestinationTransfers, the
destination agent known, the sources walked inside the sandbox. No broker: the peers are a stand-in."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.admission import Admission
from agent.commands import CommandRefused
from agent.core import results
from agent.wire.protocol import Resync, Topics, TransferItem, TransferSpec
from agent.sandbox import Sandbox
from agent.store import StateStore, TransferRecord


class _Peers:
    def __init__(self, known: set[str], untrusted: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.known, self._untrusted = known, untrusted
        self.waited: list[tuple[str, float]] = []

    async def wait(self, agent: str, timeout: float) -> bool:
        self.waited.append((agent, timeout))
        return agent in self.known

    def untrusted(self, agent: str) -> bool:
        return agent in self._untrusted


def _settings(**over: Any) -> Any:
    values = dict(maxSourceTransfers=2, maxQueuedTransfers=1, maxDestinationTransfers=2, transferRecoveryTimeout=-1,
                  agentEncryption=False)
    return SimpleNamespace(**{**values, **over})


class _World:
    def __init__(self, tmp_path: Path, *, sources: int = 0, stopping: bool = False, peers: _Peers | None = None,
                 **settings: Any) -> None:
        self.root = tmp_path / "src"
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = StateStore(tmp_path / "state.db")
        self.peers = peers or _Peers({"A2"})
        self.admission = Admission("A1", _settings(**settings), Topics(), self.store, Sandbox([tmp_path]),
                                   self.peers, stopping=lambda: stopping, sources=lambda: sources)  # type: ignore[arg-type]

    def spec(self, *items: tuple[str, str, str], destination: str = "A2", source: str = "A1") -> TransferSpec:
        return TransferSpec(source_agent=source, destination_agent=destination, items=[
            TransferItem(source=str(self.root / s), destination=d, destination_type=t, recursive=True)  # type: ignore[arg-type]
            for s, d, t in items])

    def file(self, name: str, data: bytes = b"x") -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


async def _refused(world: _World, spec: TransferSpec, match: str, **kw: Any) -> CommandRefused:
    with pytest.raises(CommandRefused, match=match) as caught:
        await world.admission.admit(spec, **kw)
    return caught.value


async def test_a_transfer_admitted_is_a_queued_record_of_its_files(tmp_path: Path) -> None:
    w = _World(tmp_path)
    w.file("d/a", b"aa")
    w.file("d/sub/b", b"bbb")
    rec = await w.admission.admit(w.spec(("d", "/out", "directory")), originator="alice")
    assert isinstance(rec, TransferRecord) and rec.state == "queued" and rec.peer == "A2"
    assert [(f.destination, f.size) for f in rec.files] == [("/out/d/a", 2), ("/out/d/sub/b", 3)]
    assert rec.header["originator"] == "alice" and rec.header["kx_public"]
    assert w.store.load_transfer(rec.transfer_id, "source") is None  # not saved: the transfer table does that


@pytest.mark.parametrize("over,sources,code,match", [
    ({"maxSourceTransfers": 0}, 0, 51, "does not send files"),
    ({}, 3, results.COMMAND_FAILED, r"too many transfers \(maxSourceTransfers \+ maxQueuedTransfers = 3\)"),
    ({"maxQueuedTransfers": 0}, 2, results.COMMAND_FAILED, "= 2"),
])
async def test_the_source_limits(tmp_path: Path, over: dict[str, int], sources: int, code: int, match: str) -> None:
    w = _World(tmp_path, sources=sources, **over)
    w.file("a")
    refusal = await _refused(w, w.spec(("a", "/out/a", "file")), match)
    assert refusal.code == code


async def test_one_below_the_limit_is_admitted(tmp_path: Path) -> None:
    w = _World(tmp_path, sources=2)
    w.file("a")
    assert isinstance(await w.admission.admit(w.spec(("a", "/out/a", "file"))), TransferRecord)


async def test_a_stopping_agent_or_another_source_is_refused(tmp_path: Path) -> None:
    w = _World(tmp_path, stopping=True)
    w.file("a")
    await _refused(w, w.spec(("a", "/out/a", "file")), "is stopping")
    w = _World(tmp_path)
    await _refused(w, w.spec(("a", "/out/a", "file"), source="A9"), "not the source agent A9")


async def test_a_resubmission_is_the_same_transfer(tmp_path: Path) -> None:
    w = _World(tmp_path, maxSourceTransfers=0)  # limits are not applied to one already admitted
    tid = "ab" * 24
    w.store.save_transfer(TransferRecord(tid, "source", "queued", "A2", {}, files=[]))
    assert await w.admission.admit(w.spec(("a", "/out/a", "file")), tid) == tid


async def test_the_destination_agent_must_be_known_and_trusted(tmp_path: Path) -> None:
    w = _World(tmp_path, peers=_Peers(set(), untrusted={"A3"}))
    w.file("a")
    refusal = await _refused(w, w.spec(("a", "/out/a", "file"), destination="A2"), "not known on this broker")
    assert refusal.code == results.FAILED and w.peers.waited[0][0] == "A2"
    refusal = await _refused(w, w.spec(("a", "/out/a", "file"), destination="A3"), "does not trust its key")
    assert refusal.code == results.FAILED


@pytest.mark.parametrize("items,match", [
    ([("none*", "/out", "directory")], "matches no file"),
    ([("missing", "/out/x", "file")], "does not exist"),
    ([("d", "/out/x", "file")], "is a directory"),
    ([("a", "/out/x", "file"), ("b", "/out/x", "file")], "same destination file"),
    ([("empty", "/out", "directory")], "contain no files"),
])
async def test_sources_that_do_not_make_a_transfer(tmp_path: Path, items: list[tuple[str, str, str]],
                                                   match: str) -> None:
    w = _World(tmp_path)
    for name in ("a", "b", "d/c"):
        w.file(name)
    (w.root / "empty").mkdir()
    await _refused(w, w.spec(*items), match)


async def test_a_source_outside_the_sandbox_is_refused(tmp_path: Path) -> None:
    w = _World(tmp_path / "inside")
    w.admission._sandbox = Sandbox([tmp_path / "inside" / "src" / "d"])
    w.file("a")
    await _refused(w, w.spec(("a", "/out/a", "file")), "source refused")


def _offer() -> Resync:
    return Resync(kind="resync", transfer_id="ab" * 24, epoch=1, source_agent="A2", destination_agent="A1",
                  exist="error", checksum="none", chunk_size=1024, files=[])


@pytest.mark.parametrize("limit,active,room", [(2, 0, True), (2, 1, True), (2, 2, False), (0, 0, False)])
def test_the_destination_limit(tmp_path: Path, limit: int, active: int, room: bool) -> None:
    w = _World(tmp_path / "x", maxDestinationTransfers=limit)
    assert w.admission.destination_room(_offer(), active) is room


async def test_an_encrypting_source_takes_the_destinations_offer_key_or_refuses_saying_what_to_do(
        tmp_path: Path) -> None:
    peers = _Peers({"A2", "OLD"})
    peers.offer_keys = {"A2": "b2ZmZXIta2V5LW9mLWEy"}  # type: ignore[attr-defined]
    w = _World(tmp_path, peers=peers, agentEncryption=True)
    w.file("a")
    rec = await w.admission.admit(w.spec(("a", "/out/a", "file")))
    assert isinstance(rec, TransferRecord)
    assert rec.header["encryption"] == "aes-256-gcm" and rec.header["peer_offer_key"] == "b2ZmZXIta2V5LW9mLWEy"
    refused = await _refused(w, w.spec(("a", "/out/a", "file"), destination="OLD"),
                             "cannot receive encrypted transfers")
    assert "agentEncryption=false" in str(refused) and refused.code == results.FAILED


# --------------------------------------------------------------------------- a fan-out (-da A2,A3,A4)


def _fanout(w: _World, *agents: str) -> TransferSpec:
    plain = w.spec(("a", "/out/a", "file"), destination=agents[0])
    return TransferSpec.model_validate({**plain.model_dump(), "destination_agents": list(agents)})


async def test_every_destination_of_a_fan_out_must_be_known_and_is_named(tmp_path: Path) -> None:
    w = _World(tmp_path, peers=_Peers({"A2", "A4"}, untrusted={"A5"}))
    w.file("a")
    refusal = await _refused(w, _fanout(w, "A2", "A3", "A4"), r"destination agent 'A3' is not known on this broker")
    assert refusal.code == results.FAILED
    assert sorted(a for a, _ in w.peers.waited) == ["A2", "A3", "A4"]  # every one waited for (at once)
    refusal = await _refused(w, _fanout(w, "A2", "A5"), r"destination agent 'A5' is on the broker, but")
    assert refusal.code == results.FAILED


async def test_a_fan_out_to_known_agents_is_admitted_with_its_destinations_and_made_into_legs(tmp_path: Path) -> None:
    from agent.fanout import is_fanout, leg_id, make_legs

    w = _World(tmp_path, peers=_Peers({"A2", "A3"}))
    w.file("a")
    rec = await w.admission.admit(_fanout(w, "A2", "A3"))
    assert isinstance(rec, TransferRecord) and is_fanout(rec)
    assert rec.header["destination_agents"] == ["A2", "A3"] and rec.peer == "A2"
    legs = make_legs(rec, lambda agent: f"offer-key-of-{agent}")
    assert [leg.transfer_id for leg in legs] == [leg_id(rec.transfer_id, d) for d in ("A2", "A3")]
    assert [leg.peer for leg in legs] == ["A2", "A3"] and rec.peer_confirmed
    assert len({leg.header["kx_private"] for leg in legs}) == 2  # a transfer key each
    assert all(leg.header["leg_of"] == rec.transfer_id and "destination_agents" not in leg.header for leg in legs)
    assert all(len(leg.files) == len(rec.files) and leg.header["disposition"] == "leave" for leg in legs)
    if rec.header.get("encryption"):  # the offer of an encrypted leg carries G and every destination
        assert [leg.header["peer_offer_key"] for leg in legs] == ["offer-key-of-A2", "offer-key-of-A3"]
        assert {leg.header["fanout"]["key"] for leg in legs} == {rec.header["fanout_key"]}
    else:
        assert not any("fanout" in leg.header for leg in legs)
