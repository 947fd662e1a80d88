"""Fan-out at a destination (docs/protocol.md#fan-out-the-destination), as tables: when it subscribes to the
shared topic and what its resync reply says (agent.core.destination_session: Shared, Subscribe), which shared
chunk it writes (`receive_shared`), what it keeps of an offer (agent.fanout_destination.take_offer), and what
the router drops on a shared topic before any session sees it (agent.router). No broker: see
tests/integration/test_fanout.py for the real thing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.core.destination_session import SealPart, SendAck, SendResyncReply, Shared, Subscribe, WriteChunk
from agent.fanout_destination import SharedStream, group_key, take_offer
from agent.metrics import Metrics
from agent.router import MAX_SHARED_FRAME, Router
from agent.wire.encryption import encrypt_frame
from agent.wire.protocol import FLAG_AEAD, Topics, encode_bundle, encode_chunk

from .test_router import _Transfers
from .test_destination_session import DONE, FAILED, READY, Row, chunk, file_end, kinds, resync, session

TID = "cd" * 24
T = Topics("SYSTEM.FTE")
G = os.urandom(32)


def joined(*rows: Row, **kw: Any) -> Any:
    """A fan-out destination session subscribed to the shared topic (its first resync answered)."""
    s = session(*rows, shared=True, **kw)
    s.shared = Shared.JOINED
    return s


def reply(actions: list[Any]) -> SendResyncReply:
    [r] = [a for a in actions if isinstance(a, SendResyncReply)]
    return r


# --------------------------------------------------------------------------- subscribing, and the reply


@pytest.mark.parametrize("granted, state, fanout", [(True, Shared.JOINED, True), (False, Shared.REFUSED, None)])
def test_a_fan_out_resync_subscribes_first_and_the_reply_says_whether_it_joined(
        granted: bool, state: Shared, fanout: bool | None) -> None:
    s = session(Row(0, 10), shared=True)
    actions = s.receive(resync(1, 0), now=1.0)
    assert kinds(actions) == ["Subscribe"] and s.shared is Shared.OFFERED
    [sub] = actions
    assert isinstance(sub, Subscribe)
    answered = s.subscribed(sub, granted, now=1.5)
    assert s.shared is state and reply(answered).fanout is fanout
    # subscribed (or refused) once per process: the next resync is answered at once, saying the same
    again = s.receive(resync(2, 0), now=2.0)
    assert kinds(again) == ["SaveTransfer", "SendResyncReply"] and reply(again).fanout is fanout


def test_a_unicast_transfer_never_subscribes_and_its_reply_leaves_fanout_off() -> None:
    s = session(Row(0, 10))
    actions = s.receive(resync(1, 0), now=1.0)
    assert kinds(actions) == ["SaveTransfer", "SendResyncReply"] and reply(actions).fanout is None
    assert s.shared is Shared.NONE


def test_after_a_restart_a_live_fan_out_transfer_subscribes_again_before_it_measures_and_answers() -> None:
    s = session(Row(0, 10, offset=4), shared=True, fresh=False)
    [sub] = s.receive(resync(3, 0), now=1.0)
    assert isinstance(sub, Subscribe)
    assert kinds(s.subscribed(sub, True, now=1.1)) == ["MeasureParts"]  # then as any restarted resync


def test_an_old_resync_or_a_cancelled_transfer_does_not_subscribe() -> None:
    s = session(Row(0, 10), shared=True, epoch=5)
    assert s.receive(resync(4, 0), now=1.0) == []
    s.cancel("by request", now=1.0)
    assert kinds(s.receive(resync(6, 0), now=2.0)) == ["SendRequestRecovery"]


# --------------------------------------------------------------------------- shared chunks


@pytest.mark.parametrize("row, frame, written", [
    (Row(0, 10, offset=4), chunk(0, 4, b"abc"), True),              # continues what is held
    (Row(0, 10, offset=4), chunk(0, 4, b"abc", epoch=9), True),     # whatever its epoch
    (Row(0, 10, offset=4), chunk(0, 4, b"abc", epoch=0), True),
    (Row(0, 10, offset=4), chunk(0, 7, b"abc"), False),             # ahead: held (not written yet), no rewind
    (Row(0, 10, offset=4), chunk(0, 1, b"abc"), False),             # behind: a duplicate
    (Row(0, 10, offset=8), chunk(0, 8, b"abc"), False),             # beyond the announced size
    (Row(0, 10, offset=4, status=DONE), chunk(0, 4, b"abc"), False),
    (Row(0, 10, offset=4, status=FAILED), chunk(0, 4, b"abc"), False),
    (Row(0, 10, offset=4), chunk(1, 0, b"abc"), False),             # no such file
])
def test_which_shared_chunk_is_written(row: Row, frame: Any, written: bool) -> None:
    s = joined(row)
    actions = s.receive_shared(frame, now=5.0)
    if not written:
        assert actions == [] and s.last_activity == 0.0  # silent, and no sign of life: the timer runs on
        return
    [w] = actions
    assert isinstance(w, WriteChunk) and (w.file, w.offset, bytes(w.data)) == (row, 4, b"abc")
    assert s.last_activity == 5.0


def test_a_written_shared_chunk_is_acked_in_the_destinations_own_epoch_and_counts_as_held() -> None:
    s = joined(Row(0, 10), epoch=3)
    [w] = s.receive_shared(chunk(0, 0, b"abcd", epoch=7), now=1.0)
    acks = [a for a in s.chunk_written(w, now=1.0) if isinstance(a, SendAck)]
    assert [(a.epoch, a.index, a.offset, a.rewind) for a in acks] == [(3, 0, 4, False)]
    # a fresh transfer's resync measures the files this process wrote, shared chunks included
    assert kinds(s.receive(resync(4, 0), now=2.0)) == ["MeasureParts"]


def test_a_shared_chunk_that_asks_for_no_ack_is_not_acked() -> None:
    s = joined(Row(0, 10))
    [w] = s.receive_shared(chunk(0, 0, b"ab", ack=False), now=1.0)
    assert not any(isinstance(a, SendAck) for a in s.chunk_written(w, now=1.0))


@pytest.mark.parametrize("state", [Shared.OFFERED, Shared.REFUSED, Shared.NONE])
def test_no_shared_chunk_unless_subscribed_by_this_process(state: Shared) -> None:
    s = session(Row(0, 10), shared=state is not Shared.NONE)
    s.shared = state
    assert s.receive_shared(chunk(0, 0, b"ab"), now=2.0) == []


def test_no_shared_chunk_after_the_outcome() -> None:
    s = joined(Row(0, 10))
    s.receive(SimpleNamespace(kind="complete", state="failed", result_code=40), now=1.0)
    assert s.receive_shared(chunk(0, 0, b"ab"), now=2.0) == []


# --------------------------------------------------------------------------- what an offer leaves in the header


def _offer(encrypted: bool = True, key: bytes = G, destinations: tuple[str, ...] = ("A2", "A3")) -> Any:
    msg = SimpleNamespace(transfer_id=TID, _encrypted=encrypted,
                          fanout=SimpleNamespace(key=base64.b64encode(key).decode(), destinations=list(destinations)))
    return msg


@pytest.mark.parametrize("msg, kept", [
    (_offer(), True),
    (_offer(encrypted=False), False),  # in the clear: the broker could read G
    (_offer(key=b"short"), False),
    (_offer(destinations=("A3", "A4")), False),  # not for this agent
    (SimpleNamespace(transfer_id=TID, _encrypted=True, fanout=None), False),
])
def test_what_an_offer_leaves_in_the_transfers_header(msg: Any, kept: bool, caplog: pytest.LogCaptureFixture) -> None:
    header: dict[str, Any] = {}
    with caplog.at_level(logging.WARNING, "fte.destination"):
        take_offer(header, msg, "A2")
    assert (group_key(header) == G) is kept
    if kept:
        assert header["fanout_destinations"] == ["A2", "A3"]
    elif msg.fanout is not None:
        assert "fan-out offer ignored" in caplog.text


async def test_the_shared_stream_subscribes_once_granted_and_leaves_at_the_end() -> None:
    calls: list[tuple[str, str]] = []

    async def subscribe(topic: str) -> bool:
        calls.append(("sub", topic))
        return True

    async def unsubscribe(topic: str) -> None:
        calls.append(("unsub", topic))

    ctx = SimpleNamespace(topics=T, subscribe=subscribe, unsubscribe=unsubscribe)
    rec = SimpleNamespace(peer="A1", transfer_id=TID, header={"fanout_key": base64.b64encode(G).decode()})
    stream = SharedStream(ctx, rec)  # type: ignore[arg-type]
    assert stream.topic == "SYSTEM.FTE/Fanout/A1/" + TID and await stream.join()
    stream.leave()
    stream.leave()  # once
    await asyncio.sleep(0)
    assert calls == [("sub", stream.topic), ("unsub", stream.topic)]


async def test_a_subscription_not_granted_is_undone_so_that_no_reconnection_makes_it() -> None:
    calls: list[str] = []

    async def subscribe(topic: str) -> bool:
        return False

    async def unsubscribe(topic: str) -> None:
        calls.append(topic)

    ctx = SimpleNamespace(topics=T, subscribe=subscribe, unsubscribe=unsubscribe)
    rec = SimpleNamespace(peer="A1", transfer_id=TID, header={"fanout_key": base64.b64encode(G).decode()})
    stream = SharedStream(ctx, rec)  # type: ignore[arg-type]
    assert not await stream.join()
    await asyncio.sleep(0)
    assert calls == [stream.topic]
    stream.leave()  # never joined: nothing more
    await asyncio.sleep(0)
    assert calls == [stream.topic]


async def test_a_suback_that_never_comes_is_waited_for_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.fanout_destination as fd

    monkeypatch.setattr(fd, "FANOUT_SUBSCRIBE_WAIT", 0.05)
    left: list[str] = []

    async def subscribe(topic: str) -> bool:
        await asyncio.Event().wait()  # a broker that never answers
        return True

    async def unsubscribe(topic: str) -> None:
        left.append(topic)

    ctx = SimpleNamespace(topics=T, subscribe=subscribe, unsubscribe=unsubscribe)
    rec = SimpleNamespace(peer="A1", transfer_id=TID, header={"fanout_key": base64.b64encode(G).decode()})
    stream = SharedStream(ctx, rec)  # type: ignore[arg-type]
    assert not await asyncio.wait_for(stream.join(), 5)
    await asyncio.sleep(0)
    assert left == [stream.topic] and not stream.joined


# --------------------------------------------------------------------------- the router, on a shared topic


class _World:
    def __init__(self, dest: Any) -> None:
        self.metrics = Metrics("A2")
        self.dropped: list[str] = []
        drops = SimpleNamespace(drop=lambda topic, reason: self.dropped.append(reason))
        ctx = SimpleNamespace(name="A2", topics=T, verify_peers=False, peer_key=lambda a: None, settings=None,
                              identity=None)
        transfers = _Transfers()
        transfers.destination = lambda tid: dest if tid == TID else None  # type: ignore[method-assign]
        self.router = Router(ctx, self.metrics, drops, commands=SimpleNamespace(), peers=SimpleNamespace(),  # type: ignore[arg-type]
                             transfers=transfers, watchdog=SimpleNamespace())  # type: ignore[arg-type]

    async def send(self, source: str, payload: bytes, tid: str = TID) -> None:
        await self.router.message(SimpleNamespace(topic=T.fanout(source, tid), payload=payload))


def _sealed(frame: bytes, key: bytes = G) -> bytes:
    raw = bytearray(frame)
    raw[5] |= FLAG_AEAD
    return bytes(encrypt_frame(raw, key))


def _dest(got: list[Any], key: bytes | None = G) -> Any:
    async def on_shared(c: Any) -> None:
        got.append((c.epoch, c.index, c.offset, bytes(c.data)))

    return SimpleNamespace(source_agent="A1", stream=SimpleNamespace(key=key), on_shared=on_shared)


async def test_a_sealed_shared_chunk_from_the_transfers_source_reaches_its_session() -> None:
    got: list[Any] = []
    w = _World(_dest(got))
    await w.send("A1", _sealed(encode_chunk(7, 0, 4, b"data", crc=False)))
    assert got == [(7, 0, 4, b"data")] and w.dropped == []


@pytest.mark.parametrize("case, reason", [
    ("unknown transfer", "not receiving"),
    ("another source", "not its source"),
    ("unicast transfer", "not a fan-out transfer"),
    ("another key", "does not open"),
    ("in the clear", "does not open"),
    ("bundle", "bundles are never shared"),
    ("too big", "exceeds the limit"),
])
async def test_what_the_router_drops_on_a_shared_topic(case: str, reason: str) -> None:
    got: list[Any] = []
    w = _World(_dest(got, key=None if case == "unicast transfer" else G))
    good = _sealed(encode_chunk(1, 0, 0, b"x", crc=False))
    payload, source, tid = good, "A1", TID
    if case == "unknown transfer":
        tid = "ef" * 24
    elif case == "another source":
        source = "A3"
    elif case == "another key":
        payload = _sealed(encode_chunk(1, 0, 0, b"x", crc=False), os.urandom(32))
    elif case == "in the clear":
        payload = encode_chunk(1, 0, 0, b"x")
    elif case == "bundle":
        payload = _sealed(encode_bundle(1, [(0, None, b"x")]))
    elif case == "too big":
        payload = good + bytes(MAX_SHARED_FRAME)
    await w.send(source, payload, tid)
    assert got == [] and len(w.dropped) == 1 and reason in w.dropped[0], w.dropped
    assert w.metrics.rejected_messages == 1


# --------------------------------------------------------------------------- the driver, with a real store and files


async def test_the_driver_keeps_g_subscribes_before_it_answers_writes_shared_chunks_and_leaves(tmp_path: Path) -> None:
    from agent.context import AgentContext
    from agent.destination import DestinationTransfer
    from agent.sandbox import Sandbox
    from agent.store import StateStore
    from agent.transferlog import TransferLog
    from agent.wire.binding import derive_key, new_ephemeral
    from agent.wire.encryption import Envelope
    from agent.wire.protocol import Complete, FanoutOffer, FileOffer, Resync, decode_chunk, new_transfer_id, \
        parse_control

    order: list[tuple[str, Any]] = []

    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        order.append(("publish", payload))

    async def subscribe(topic: str) -> bool:
        order.append(("subscribe", topic))
        return True

    async def unsubscribe(topic: str) -> None:
        order.append(("unsubscribe", topic))

    store = StateStore(tmp_path / "state.db")
    ctx = AgentContext(name="A2", topics=T, store=store, log=TransferLog("A2", T, store, lambda: None),
                       sandbox=Sandbox([tmp_path]), publish=publish, link_up=lambda: True,
                       peer_status=lambda agent: "READY", chunk_size=262144, window_chunks=16, ack_timeout=60,
                       ack_retries=1, agent_recovery_timeout=-1, on_state_change=lambda: None,
                       subscribe=subscribe, unsubscribe=unsubscribe)
    tid = new_transfer_id()
    private, public = new_ephemeral()
    data = os.urandom(3000)
    out = tmp_path / "out.bin"
    offer = Resync(kind="resync", transfer_id=tid, epoch=1, source_agent="A1", destination_agent="A2",
                   exist="overwrite", checksum="sha256", chunk_size=262144, kx=public,
                   files=[FileOffer(index=0, source="/src/0", destination=str(out), size=len(data))],
                   fanout=FanoutOffer(key=base64.b64encode(G).decode(), destinations=["A2", "A3"]))
    offer._encrypted = True

    def replies() -> list[Any]:
        dest_rec = store.load_transfer(tid, "destination", files=False)
        assert dest_rec is not None
        key = base64.b64decode(dest_rec.header["transfer_key"])
        got = []
        for kind, payload in order:
            if kind == "publish":
                got.append(parse_control(Envelope(payload).open_control(key, tid)))
        return got

    dest = DestinationTransfer.accept(ctx, offer)
    await dest.on_resync(offer)
    await asyncio.wait_for(asyncio.gather(*list(dest._pending)), 5)
    topic = T.fanout("A1", tid)
    assert [k for k, _ in order] == ["subscribe", "publish"] and order[0][1] == topic
    [first] = replies()
    assert first.kind == "resync_reply" and first.fanout is True
    assert derive_key(private, first.kx, tid)  # a reply the source can bind
    assert group_key(store.load_transfer(tid, "destination", files=False).header) == G  # kept in the store

    # a restart: subscribed again before the next resync is answered
    order.clear()
    dest = DestinationTransfer(ctx, store.load_transfer(tid, "destination"))
    again = offer.model_copy(update={"epoch": 2})
    again._encrypted = True
    await dest.on_resync(again)
    await asyncio.wait_for(asyncio.gather(*list(dest._pending)), 5)
    assert [k for k, _ in order] == ["subscribe", "publish"] and replies()[0].fanout is True

    # a shared chunk of another epoch at the held offset is written and acked in the destination's epoch
    order.clear()
    frame = bytearray(encode_chunk(9, 0, 0, data[:1000], crc=False))
    await dest.on_shared(decode_chunk(bytes(frame), authenticated=True))
    await asyncio.wait_for(asyncio.gather(*list(dest._pending)), 5)
    [ack] = replies()
    assert (ack.kind, ack.epoch, ack.offset) == ("ack", 2, 1000)

    # the rest by unicast, then the file's end: every file has its result, and the shared topic is left
    order.clear()
    await dest.on_chunk(decode_chunk(encode_chunk(2, 0, 1000, data[1000:]), authenticated=False))
    await dest.on_file_end(SimpleNamespace(kind="file_end", index=0, size=len(data),
                                           digest=hashlib.sha256(data).hexdigest()))
    await asyncio.wait_for(asyncio.gather(*list(dest._pending)), 5)
    await asyncio.sleep(0)
    assert out.read_bytes() == data
    assert [(r.kind, getattr(r, "result_code", 0)) for r in replies()] == [("ack", 0), ("file_result", 0)]
    assert ("unsubscribe", topic) in order

    order.clear()
    await dest.on_complete(Complete(kind="complete", transfer_id=tid, source_agent="A1", state="complete",
                                    result_code=0))
    await asyncio.wait_for(asyncio.gather(*list(dest._pending)), 5)
    await asyncio.sleep(0)
    assert ("unsubscribe", topic) not in order  # once
    store.close()


def test_a_transfer_with_nothing_left_to_receive_does_not_subscribe() -> None:
    s = session(Row(0, 10, status=DONE), Row(1, 5, status=FAILED), shared=True)
    actions = s.receive(resync(2, 0, 1), now=1.0)
    assert kinds(actions) == ["SaveTransfer", "SendResyncReply"] and reply(actions).fanout is None


# --------------------------------------------------------------------------- shared chunks held ahead (re-join)


def _write_all(s: Any, actions: list[Any]) -> list[tuple[int, bool]]:
    """Carry out the WriteChunks as the shell does (chunk_written after each): (offset, acked) written, in order."""
    out = []
    while (w := next((a for a in actions if isinstance(a, WriteChunk)), None)) is not None:
        actions = s.chunk_written(w, now=1.0)
        out.append((w.offset, any(isinstance(a, SendAck) for a in actions)))
    return out


def test_a_shared_chunk_ahead_is_held_until_the_unicast_fills_the_gap_then_written_in_order_and_acked() -> None:
    s2 = joined(Row(0, 12, offset=0), epoch=3)
    assert s2.receive_shared(chunk(0, 6, b"ghi", ack=False), now=1.0) == []  # beyond what is written: held
    assert s2.receive_shared(chunk(0, 9, b"jkl", ack=False), now=1.0) == []
    first = s2.receive(chunk(0, 0, b"abc", epoch=3), now=1.0)  # the leg's unicast
    assert _write_all(s2, first) == [(0, True)]  # a gap (3..6) remains: the held ones wait
    second = s2.receive(chunk(0, 3, b"def", epoch=3, ack=False), now=1.0)
    # the unicast that fills the gap, then the held chunks in order, and the last of them acked (whatever its
    # flag): the ack covers the run
    assert _write_all(s2, second) == [(3, False), (6, False), (9, True)]
    assert s2.files[0].offset == 12 and len(s2.ahead) == 0


def test_held_chunks_are_bounded_and_dropped_once_passed_or_at_a_resync() -> None:
    from agent.core.fanout_ahead import AHEAD_CHUNKS, AheadChunks

    a = AheadChunks()
    held = [a.hold(SimpleNamespace(index=0, offset=o, data=b"x"), 0) for o in range(1, AHEAD_CHUNKS + 2)]
    assert held == [True] * AHEAD_CHUNKS + [False]  # bounded: the rest is dropped (the leg resends it)
    assert not a.hold(SimpleNamespace(index=0, offset=0, data=b"x"), 0)  # not beyond what is written
    assert a.next(0, 5).offset == 5 and len(a) == AHEAD_CHUNKS - 5  # 1..4 passed: gone
    s = joined(Row(0, 12, offset=0), epoch=3)
    s.receive_shared(chunk(0, 6, b"ghi"), now=1.0)
    s.receive(resync(4, 0), now=2.0)
    assert len(s.ahead) == 0  # a resync: what is held is the destination's word again


def test_held_chunks_are_bounded_in_bytes_too() -> None:
    # 64 chunks of a 16 MiB agentChunkSize would be 1 GiB held: the bytes are bounded as well, and the source's
    # reach (what it credits beyond an ack) is no further than what a destination holds
    from agent.core.fanout_ahead import AHEAD_BYTES, AheadChunks, ahead_reach
    a = AheadChunks()
    big = 4 * 1024 * 1024
    held = [a.hold(SimpleNamespace(index=0, offset=(o + 1) * big, data=b"x" * big), 0) for o in range(6)]
    assert held == [True] * (AHEAD_BYTES // big) + [False] * (6 - AHEAD_BYTES // big)
    assert a.next(0, big) is not None and a.hold(SimpleNamespace(index=0, offset=9 * big, data=b"x" * big), big)
    assert ahead_reach(256 * 1024) == 64 * 256 * 1024 and ahead_reach(16 * 1024 * 1024) == AHEAD_BYTES


# --------------------------------------------------------------------------- a shared chunk forged by a fellow destination


def _sealed_after_shared(s: Any) -> list[Any]:
    """File 0 (4 bytes) written from the shared stream, its FileEnd come, sealed with another digest."""
    [w] = s.receive_shared(chunk(0, 0, b"evil"), now=1.0)
    s.chunk_written(w, now=1.0)
    [_, seal] = s.receive(file_end(0, 4, digest="a" * 64), now=1.0)
    return s.sealed(seal, "b" * 64, None, now=2.0)


def test_a_file_that_took_shared_chunks_and_fails_its_digest_is_received_again_by_unicast_alone() -> None:
    s = joined(Row(0, 4))
    actions = _sealed_after_shared(s)
    assert kinds(actions) == ["DiscardPart", "SaveFiles", "LogWarning", "SendRequestRecovery"]
    assert s.files[0].status == READY and s.files[0].offset == 0 and s.shared is Shared.LEFT
    assert s.receive_shared(chunk(0, 0, b"evil"), now=3.0) == []  # the shared stream is left for good
    [measure] = s.receive(resync(2, 0), now=3.0)
    assert reply(s.measured(measure, [None], now=3.0)).fanout is None  # the source: unicast only to it now
    # a second mismatch (by unicast, under this destination's own key) fails the file, as for any transfer
    [w] = s.receive(chunk(0, 0, b"abcd", epoch=2), now=4.0)
    assert kinds(s.chunk_written(w, now=4.0)) == ["SealPart"]
    assert kinds(s.sealed(SealPart(s.files[0]), "c" * 64, None, now=5.0)) == ["DiscardPart", "SaveFiles", "SendResults"]
    assert s.files[0].status == FAILED


def test_a_digest_mismatch_of_a_unicast_transfer_or_a_seal_error_fails_the_file_as_before() -> None:
    s = session(Row(0, 4))  # no group key: not a fan-out transfer here
    [w] = s.receive(chunk(0, 0, b"abcd"), now=1.0)
    s.chunk_written(w, now=1.0)
    [_, seal] = s.receive(file_end(0, 4, digest="a" * 64), now=1.0)
    assert kinds(s.sealed(seal, "b" * 64, None, now=2.0)) == ["DiscardPart", "SaveFiles", "SendResults"]
    s = joined(Row(0, 4))
    [w] = s.receive_shared(chunk(0, 0, b"abcd"), now=1.0)
    s.chunk_written(w, now=1.0)
    [_, seal] = s.receive(file_end(0, 4, digest="a" * 64), now=1.0)
    assert kinds(s.sealed(seal, None, "EIO", now=2.0)) == ["DiscardPart", "SaveFiles", "SendResults"]


def test_each_file_of_a_fan_out_that_fails_its_digest_is_received_again_once() -> None:
    s = joined(Row(0, 4), Row(1, 4))
    written = [s.receive_shared(chunk(i, 0, b"evil"), now=1.0)[0] for i in (0, 1)]  # both forged
    for w in written:
        s.chunk_written(w, now=1.0)
    for i in (0, 1):  # the second file too, though the shared stream was left after the first
        [_, seal] = s.receive(file_end(i, 4, digest="a" * 64), now=1.0)
        assert kinds(s.sealed(seal, "b" * 64, None, now=2.0))[-1] == "SendRequestRecovery", i
        assert s.files[i].status == READY and s.files[i].offset == 0
