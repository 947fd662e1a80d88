"""The message router (agent.router) and Topics.parse: which handler a topic goes to, what is dropped and
why, and the rate-limited log of drops. No broker: messages are plain objects with a topic and a payload."""

from __future__ import annotations

import json
import logging
import typing
from types import SimpleNamespace
from typing import Any

import pytest

from agent.wire import protocol
from agent.wire.binding import seal
from agent.metrics import Metrics
from agent.wire.protocol import Ack, Topics, encode_chunk
from agent.router import DropLog, Router

TID = "ab" * 24
T = Topics("SYSTEM.FTE")


@pytest.mark.parametrize("topic,expected", [
    ("SYSTEM.FTE/Agents/A1", ("Agents", "A1", None)),
    ("SYSTEM.FTE/Commands/A1", ("Commands", "A1", None)),
    (f"SYSTEM.FTE/Data/A1/{TID}", ("Data", "A1", TID)),
    (f"SYSTEM.FTE/Control/A2/{TID}", ("Control", "A2", TID)),
    ("SYSTEM.FTE/Agents/A1/probe/x", None),       # a probe, not a status
    ("SYSTEM.FTE/Data/A1", None),                 # no transfer
    (f"SYSTEM.FTE/Commands/A1/{TID}", None),
    ("SYSTEM.FTE/Replies/c1", None),
    (f"SYSTEM.FTE/Log/A1/{TID}", None),
    ("SYSTEM/FTE/Agents/A1", None),               # another prefix (RabbitMQ's rewriting of the '.')
    ("SYSTEM.FTEX/Agents/A1", None),
    ("", None),
])
def test_parse(topic: str, expected: tuple[str, str, str | None] | None) -> None:
    address = T.parse(topic)
    assert (None if address is None else (address.kind, address.agent, address.transfer_id)) == expected


def test_parse_reads_what_the_builders_write() -> None:
    t = Topics("site1/fte")
    for topic, kind in [(t.agent_status("A1"), t.AGENTS), (t.commands("A1"), t.COMMANDS),
                        (t.data("A1", TID), t.DATA), (t.control("A1", TID), t.CONTROL)]:
        address = t.parse(topic)
        assert address is not None and (address.kind, address.agent) == (kind, "A1")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_drops_of_one_reason_are_logged_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    drops = DropLog(clock)
    with caplog.at_level(logging.WARNING, "fte.agent"):
        assert drops.drop("t", "bad chunk")
        assert not drops.drop("t", "bad chunk")
        assert not drops.drop("t", "bad chunk")
        assert drops.drop("t", "another reason")
        clock.now += 1.0
        assert drops.drop("t", "bad chunk")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["dropped a message on t: bad chunk", "dropped a message on t: another reason",
                     "dropped a message on t: bad chunk (and 2 more like it)"]


class _Transfers:
    def __init__(self) -> None:
        self.posted: list[Any] = []
        self.keys: dict[tuple[str, str], bytes] = {}
        self.encrypted: set[tuple[str, str]] = set()
        self.dest: Any = None

    def destination(self, tid: str) -> Any:
        return self.dest

    def source(self, tid: str) -> Any:
        return object() if self.posted is not None else None

    def peer_of(self, tid: str) -> str:
        return "A2"

    def key_of(self, tid: str, role: str) -> bytes | None:
        return self.keys.get((tid, role))

    def encrypted_of(self, tid: str, role: str) -> bool:
        return (tid, role) in self.encrypted

    def to_source(self, msg: Any) -> None:
        self.posted.append(msg)

    def program_done(self, msg: Any) -> None:
        self.posted.append(msg)

    async def on_resync(self, msg: Any) -> None:
        self.posted.append(msg)

    on_file_end = on_complete = on_resync

    def on_complete_ack(self, msg: Any) -> None:
        self.posted.append(msg)


class _World:
    def __init__(self, **ctx_fields: Any) -> None:
        self.offered: list[bytes] = []
        self.statuses: list[tuple[str, bytes]] = []
        self.transfers = _Transfers()
        self.metrics = Metrics("A1")
        self.dropped: list[str] = []
        drops = SimpleNamespace(drop=lambda topic, reason: self.dropped.append(reason))
        ctx = SimpleNamespace(**{"name": "A1", "topics": T, "verify_peers": False, "peer_key": lambda a: None,
                                 "settings": None, "identity": None, **ctx_fields})
        peers = SimpleNamespace(on_status=self._status)
        self.router = Router(ctx, self.metrics, drops, commands=SimpleNamespace(offer=self.offered.append),  # type: ignore[arg-type]
                             peers=peers, transfers=self.transfers, watchdog=SimpleNamespace())  # type: ignore[arg-type]

    def _status(self, agent: str, payload: bytes) -> None:
        if payload == b"forged":
            raise protocol.ProtocolError("not signed")
        self.statuses.append((agent, payload))


def _msg(topic: str, payload: bytes) -> Any:
    return SimpleNamespace(topic=topic, payload=payload)


def test_arrival_takes_commands_and_statuses_and_leaves_the_rest() -> None:
    w = _World()
    assert w.router.arrival(_msg(T.commands("A1"), b"cmd"))
    assert not w.router.arrival(_msg(T.commands("A2"), b"not ours"))
    assert w.router.arrival(_msg(T.agent_status("B1"), b"status"))
    assert not w.router.arrival(_msg(T.data("A1", TID), b"chunk"))
    assert not w.router.arrival(_msg(T.control("A1", TID), b"{}"))
    assert not w.router.arrival(_msg("other/Commands/A1", b"x"))
    assert w.offered == [b"cmd"] and w.statuses == [("B1", b"status")]


def test_a_status_that_fails_its_check_is_counted_and_dropped() -> None:
    w = _World()
    assert w.router.arrival(_msg(T.agent_status("B1"), b"forged"))
    assert w.metrics.rejected_messages == 1 and w.dropped == ["not signed"]


async def test_a_chunk_for_no_transfer_is_dropped_with_its_reason() -> None:
    w = _World()
    await w.router.message(_msg(T.data("A1", TID), encode_chunk(1, 0, 0, b"x")))
    assert w.metrics.rejected_messages == 1 and "not receiving" in w.dropped[0]


async def test_a_chunk_with_a_bad_crc_is_dropped_before_its_session() -> None:
    w = _World()
    got: list[Any] = []

    async def on_chunk(chunk: Any) -> None:
        got.append(chunk)

    w.transfers.dest = SimpleNamespace(key=None, on_chunk=on_chunk)
    frame = bytearray(encode_chunk(1, 0, 0, b"abc"))
    await w.router.message(_msg(T.data("A1", TID), bytes(frame)))
    frame[-1] ^= 1
    await w.router.message(_msg(T.data("A1", TID), bytes(frame)))
    assert len(got) == 1 and "CRC" in w.dropped[0]


async def test_messages_of_other_agents_transfers_are_ignored() -> None:
    w = _World()
    await w.router.message(_msg(T.data("A2", TID), b"x"))
    await w.router.message(_msg(T.control("A2", TID), b"garbage"))
    assert w.dropped == [] and w.transfers.posted == []


def _ack(tid: str = TID, key: bytes | None = None) -> bytes:
    return seal(Ack(kind="ack", transfer_id=tid, epoch=1, index=0, offset=3), key)


async def test_control_goes_to_its_handler_once_its_mac_is_good() -> None:
    w = _World()
    key = bytes(range(32))
    w.transfers.keys[(TID, "source")] = key
    await w.router.message(_msg(T.control("A1", TID), _ack(key=key)))
    assert [m.kind for m in w.transfers.posted] == ["ack"]
    await w.router.message(_msg(T.control("A1", TID), _ack(key=bytes(32))))  # another key
    await w.router.message(_msg(T.control("A1", TID), _ack()))  # no MAC on a bound transfer
    assert len(w.transfers.posted) == 1 and w.metrics.rejected_messages == 2
    assert all("without a valid MAC" in r for r in w.dropped)


async def test_control_on_the_topic_of_another_transfer_is_dropped() -> None:
    w = _World()
    await w.router.message(_msg(T.control("A1", "cd" * 24), _ack()))
    await w.router.message(_msg(T.control("A1", TID), json.dumps({"kind": "nonsense"}).encode()))
    assert w.transfers.posted == [] and len(w.dropped) == 2 and "does not match its topic" in w.dropped[0]


def test_every_control_message_has_a_handler_and_a_check() -> None:
    from agent.router import _MAC_ROLE

    kinds = typing.get_args(typing.get_args(protocol.ControlMessage)[0])
    w = _World()
    assert set(w.router.control) == set(kinds)
    # each is either signed (negotiation) or MAC-checked under the role whose key it carries
    assert set(_MAC_ROLE) | set(w.router._signed) == set(kinds)
    assert not set(_MAC_ROLE) & set(w.router._signed)


# --------------------------------------------------------------------------- encrypted transfers


def _offer(encrypted_to: Any = None) -> tuple[bytes, Any]:
    """A Resync as signed by A2 for A1 (authority off: not checked), encrypted to `encrypted_to` if given."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.wire.binding import new_ephemeral
    from agent.wire.encryption import offer_for, offer_public

    private, public = new_ephemeral()
    msg = protocol.Resync(kind="resync", transfer_id=TID, epoch=1, source_agent="A2", destination_agent="A1",
                          exist="error", checksum="sha256", chunk_size=262144, kx=public,
                          files=[protocol.FileOffer(index=0, source="/in/secret.bin", destination="/out/secret.bin",
                                                    size=1234567, mtime=1.0)])
    signed = seal(msg, None, Ed25519PrivateKey.generate())
    if encrypted_to is None:
        return signed, msg
    header = {"encryption": "aes-256-gcm", "kx_private": base64.b64encode(private).decode(), "kx_public": public,
              "peer_offer_key": offer_public(encrypted_to)}
    return offer_for(header, signed, TID), msg


async def test_an_encrypted_offer_is_opened_and_marked_encrypted_for_the_destination() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    me = Ed25519PrivateKey.generate()
    w = _World(identity=me)
    payload, _ = _offer(encrypted_to=me)
    assert b"secret" not in payload and b"1234567" not in payload
    await w.router.message(_msg(T.control("A1", TID), payload))
    [msg] = w.transfers.posted
    assert msg.kind == "resync" and msg._encrypted and msg.files[0].size == 1234567
    other = _World(identity=Ed25519PrivateKey.generate())  # encrypted to another agent: does not open
    await other.router.message(_msg(T.control("A1", TID), payload))
    assert other.transfers.posted == [] and "does not open" in other.dropped[0]


async def test_an_offer_in_the_clear_is_refused_by_a_destination_that_requires_encryption() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    published: list[tuple[str, bytes]] = []

    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        published.append((topic, payload))

    w = _World(identity=Ed25519PrivateKey.generate(), settings=SimpleNamespace(agentEncryption=True),
               publish=publish, store=SimpleNamespace(load_transfer=lambda tid, role, files=True: None))
    payload, _ = _offer()
    await w.router.message(_msg(T.control("A1", TID), payload))
    assert w.transfers.posted == []
    [(topic, reply)] = published
    assert topic == T.control("A2", TID)
    answer = protocol.parse_control(reply)
    assert answer.kind == "resync_reply" and answer.kx is None
    assert "requires end-to-end encryption" in (answer.files[0].supplement or "")


async def test_control_messages_of_an_encrypted_transfer_travel_and_are_taken_only_in_envelopes() -> None:
    import base64

    from agent.wire.encryption import envelope_for

    w = _World()
    key = bytes(range(32))
    w.transfers.keys[(TID, "source")] = key
    w.transfers.encrypted.add((TID, "source"))
    header = {"encryption": "aes-256-gcm", "transfer_key": base64.b64encode(key).decode()}
    sealed = envelope_for(header, _ack(key=key), TID)
    await w.router.message(_msg(T.control("A1", TID), sealed))
    assert [m.kind for m in w.transfers.posted] == ["ack"]
    await w.router.message(_msg(T.control("A1", TID), _ack(key=key)))  # right MAC, but in the clear
    tampered = bytearray(sealed)
    tampered[-5] ^= 1
    await w.router.message(_msg(T.control("A1", TID), bytes(tampered)))
    assert len(w.transfers.posted) == 1
    assert "in the clear" in w.dropped[0] and "does not open" in w.dropped[1]
