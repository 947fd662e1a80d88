"""The message router: every message the agent's link receives goes to one handler, by its topic, once
it has passed the checks of its kind; anything else is dropped with a logged reason.

    <prefix>/Commands/<this agent>      -> the command lane (agent.command_lane), from the link's reader
    <prefix>/Agents/<any agent>         -> the peers (agent.peers), from the link's reader
    <prefix>/Data/<this agent>/<tid>    -> the destination session, after its MAC (bound) or CRC
    <prefix>/Control/<this agent>/<tid> -> the transfer table (agent.transfers), after its MAC, or the
                                           signature of the peer's trusted key for the negotiation messages
    <prefix>/Fanout/<source>/<tid>      -> the destination session of a fan-out transfer this agent receives
                                           from <source>, opened with its group key (chunks only)

Commands and statuses are taken on the link's `urgent` path (`arrival`), as they arrive: commands must never
hold up the data path, and a new transfer waits for its destination's status while it holds the command
lane. Data and control messages are handled in order by the link's one worker (`message`). Topics are read
by `Topics.parse` only (agent.wire.protocol).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any, Awaitable, Callable

import aiomqtt

from .wire.binding import (agent_requester, check_chunk_mac, check_message_mac, derive_key, seal, transfer_key,
                           verify_signed)
from .wire.encryption import CONTROL, OFFER, REPLY, Envelope, is_envelope
from .command_lane import CommandLane
from .context import AgentContext
from .core import results
from .core.policy import DROP_LOG_INTERVAL
from .core.statuses import FileStatus
from .metrics import Metrics
from .peers import Peers
from .programs import ProgramHost
from .wire.programs import ProgramDone, ProgramRun
from .wire.encryption import OVERHEAD
from .wire.protocol import (CHUNK_HEADER, MAX_CHUNK_BYTES, Ack, Bundle, Chunk, Complete, CompleteAck, FileEnd,
                            FileHolding, FileResult, FileResults, ProtocolError, RequestRecovery, Resync, ResyncReply,
                            Topics, decode_chunk, parse_control)
from .fanout import FanoutTransfer, leg_id, running_leg, stored_legs
from .transfers import Transfers
from .watchdog import Watchdog

log = logging.getLogger("fte.agent")

_DROP_KEYS = 1000  # reasons remembered at most (then forgotten all at once)
# the largest frame taken on a shared (fan-out) topic, checked before it is decrypted: a chunk's header, the
# largest chunk of the protocol and what encryption adds
MAX_SHARED_FRAME = CHUNK_HEADER.size + MAX_CHUNK_BYTES + OVERHEAD


class DropLog:
    """Every dropped message is logged with its reason, but a flood costs one line per second per reason."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # reason (its start) -> (last logged, suppressed since)

    def drop(self, topic: str, reason: str) -> bool:
        """Log the drop, unless one for this reason was logged less than a second ago (then it is counted, and
        the next line says how many). True when logged."""
        now = self._clock()
        key = reason[:40]
        last, suppressed = self._seen.get(key, (-1e9, 0))
        if now - last < DROP_LOG_INTERVAL:
            self._seen[key] = (last, suppressed + 1)
            return False
        more = f" (and {suppressed} more like it)" if suppressed else ""
        self._seen[key] = (now, 0)
        if len(self._seen) > _DROP_KEYS:
            self._seen.clear()
        log.warning("dropped a message on %s: %s%s", topic[:200], reason, more)
        return True


def open_frame(payload: bytes, key: bytes | None, tid: str, encrypted: bool = False) -> Chunk | Bundle:
    """A data frame checked and decoded: a Chunk or a Bundle. A bound transfer's frames carry a MAC (or are
    encrypted), which is their check (the CRC then adds nothing and is not computed); an unbound transfer's
    frames, a CRC. `encrypted`: the transfer is, and a frame in the clear is refused."""
    if key is None:
        return decode_chunk(payload)
    frame = check_chunk_mac(payload, key, encrypted)
    if frame is None:
        raise ProtocolError(f"chunk for transfer {tid} without a valid MAC (not from its source"
                            f"{', or not encrypted' if encrypted else ''})")
    return decode_chunk(frame, authenticated=True)


ControlHandler = Callable[[Any], "Awaitable[None] | None"]

# control messages the peer of an encrypted transfer may send in the clear: they name no file and no size
# (a Complete before the source knew the key, a CompleteAck of a transfer the destination never had), or
# they are signed by the peer's identity key and may come before any transfer key exists (the program calls:
# a -predst runs before the first offer; docs/security.md says what of them a broker operator can read)
_CLEAR_OK = (Complete, CompleteAck, ProgramRun, ProgramDone)
# what each kind of envelope may hold (agent.wire.encryption)
_ENVELOPED: dict[int, tuple[type, ...]] = {
    OFFER: (Resync,), REPLY: (ResyncReply,),
    CONTROL: (Ack, FileEnd, FileResult, FileResults, Complete, CompleteAck, RequestRecovery)}

# the role of this agent in a transfer whose peer sends it this (MAC-checked) message: its key is that role's
_MAC_ROLE: dict[type, str] = {FileEnd: "destination", Complete: "destination", Ack: "source", FileResult: "source",
                              FileResults: "source", RequestRecovery: "source", CompleteAck: "source"}


class Router:
    """`arrival` is the link's `urgent` hook, `message` its `on_message`."""

    def __init__(self, ctx: AgentContext, metrics: Metrics, drops: DropLog, *, commands: CommandLane, peers: Peers,
                 transfers: Transfers, watchdog: Watchdog, programs: ProgramHost | None = None) -> None:
        self._ctx = ctx
        self._name = ctx.name
        self._topics = ctx.topics
        self._metrics = metrics
        self._drops = drops
        self._commands = commands
        self._peers = peers
        self._transfers = transfers
        self._watchdog = watchdog
        # each control message, once authenticated (`_authentic`), goes to its handler
        self.control: dict[type, ControlHandler] = {
            Resync: transfers.on_resync,
            ResyncReply: transfers.to_source,
            Ack: transfers.to_source,
            FileResult: transfers.to_source,
            FileResults: transfers.to_source,
            FileEnd: transfers.on_file_end,
            Complete: transfers.on_complete,
            CompleteAck: transfers.on_complete_ack,
            RequestRecovery: self._recovery_request,
            # program calls (agent.programs): the destination runs one, the source hears its outcome
            ProgramRun: programs.on_run if programs is not None else (lambda msg: None),
            ProgramDone: transfers.program_done,
        }
        # the negotiation messages are signed by the peer (the others carry a MAC: _MAC_ROLE)
        self._signed: dict[type, Callable[[str, Any, dict[str, Any]], Awaitable[bool]]] = {
            Resync: self._offer_signed, ResyncReply: self._reply_signed,
            ProgramRun: self._program_run_signed, ProgramDone: self._program_done_signed}

    def arrival(self, message: aiomqtt.Message) -> bool:
        """Commands and agent statuses, as they arrive (True: handled here); the rest is left to the worker."""
        topic = str(message.topic)
        address = self._topics.parse(topic)  # once per message: every data chunk comes this way
        if address is None:
            return False
        kind = address.kind
        if kind == Topics.COMMANDS:
            if address.agent != self._name:
                return False
            self._commands.offer(_payload(message))
        elif kind == Topics.AGENTS:
            try:
                self._peers.on_status(address.agent, _payload(message))
            except ProtocolError as exc:
                self._reject(topic, exc)
        else:
            return False
        return True

    async def message(self, message: aiomqtt.Message) -> None:
        """A message the worker handles in order: the data and control messages of this agent's transfers."""
        topic = str(message.topic)
        address = self._topics.parse(topic)
        if address is None:
            return
        kind = address.kind
        try:
            if kind == Topics.AGENTS:
                self._peers.on_status(address.agent, _payload(message))
            elif kind == Topics.FANOUT:  # the agent of this topic is the transfer's source
                if address.transfer_id is not None:
                    await self._shared(address.agent, address.transfer_id, _payload(message))
            elif address.agent != self._name or address.transfer_id is None:
                return
            elif kind == Topics.DATA:
                await self._data(address.transfer_id, _payload(message))
            elif kind == Topics.CONTROL:
                payload = _payload(message)
                self._transfers.via = None  # the leg of a fan-out it comes from: found by its key (_open, _authentic)
                if is_envelope(payload):
                    await self._sealed(address.transfer_id, payload)
                else:
                    await self._control(address.transfer_id, parse_control(payload), payload, clear=True)
        except ProtocolError as exc:
            self._reject(topic, exc)

    def _reject(self, topic: str, exc: ProtocolError) -> None:
        self._metrics.rejected_messages += 1
        self._drops.drop(topic, str(exc))

    async def _data(self, tid: str, payload: bytes) -> None:
        dest = self._transfers.destination(tid)
        if dest is None:
            # not (or no longer) ours: late chunks of a finished transfer, or garbage
            raise ProtocolError(f"chunk for a transfer this agent is not receiving ({tid[:60]!r})")
        frame = open_frame(payload, dest.key, tid, self._transfers.encrypted_of(tid, "destination"))
        if isinstance(frame, Bundle):
            await dest.on_bundle(frame)
        else:
            await dest.on_chunk(frame)

    async def _shared(self, source: str, tid: str, payload: bytes) -> None:
        """A frame on a fan-out transfer's shared topic: for a transfer this agent receives from `source`, of
        bounded size, sealed under its group key, and a chunk (bundles are never shared); else dropped."""
        dest = self._transfers.destination(tid)
        if dest is None:
            raise ProtocolError(f"shared frame for a transfer this agent is not receiving ({tid[:60]!r})")
        if dest.source_agent != source:
            raise ProtocolError(f"shared frame for transfer {tid} from agent {source[:60]!r}, not its source")
        key = dest.stream.key
        if key is None:
            raise ProtocolError(f"shared frame for transfer {tid}, which is not a fan-out transfer here")
        if len(payload) > MAX_SHARED_FRAME:
            raise ProtocolError(f"shared frame of {len(payload)} bytes for transfer {tid} exceeds the limit")
        frame = check_chunk_mac(payload, key, True)
        if frame is None:
            raise ProtocolError(f"shared frame for transfer {tid} that does not open with its group key")
        chunk = decode_chunk(frame, authenticated=True)
        if isinstance(chunk, Bundle):
            raise ProtocolError(f"bundle on the shared topic of transfer {tid} (bundles are never shared)")
        await dest.on_shared(chunk)

    async def _sealed(self, tid: str, payload: bytes) -> None:
        """An encrypted control message (agent.wire.encryption): opened, then checked as any other."""
        envelope = Envelope(payload)
        inner = self._open(tid, envelope)
        if inner is None:
            raise ProtocolError(f"encrypted control message for transfer {tid} that does not open (not for this "
                                f"agent, not from its peer, or tampered with)")
        msg = parse_control(inner)
        if not isinstance(msg, _ENVELOPED[envelope.kind]):
            raise ProtocolError(f"{msg.kind} in the wrong kind of envelope")
        if envelope.kx is not None and msg.kx != envelope.kx:
            raise ProtocolError(f"{msg.kind} for transfer {tid} carries another key exchange value than its envelope")
        if isinstance(msg, Resync):
            msg._encrypted = True
        await self._control(tid, msg, inner)

    def _open(self, tid: str, envelope: Envelope) -> bytes | None:
        if envelope.kind == OFFER:
            identity = self._ctx.identity
            return envelope.open_offer(identity, tid) if identity is not None else None
        if envelope.kind == REPLY:
            session = self._transfers.source(tid)
            # a fan-out transfer's legs each have their own key exchange: the one that opens it is the sender's
            legs = list(session.legs.values()) if isinstance(session, FanoutTransfer) else [session]
            for leg in legs:
                private = leg.rec.header.get("kx_private") if leg is not None else None
                if not private or envelope.kx is None:
                    continue
                try:
                    key = derive_key(base64.b64decode(private), envelope.kx, tid)
                except ValueError:
                    return None
                inner = envelope.open_control(key, tid)
                if inner is not None:
                    self._transfers.via = leg.dest if leg is not session else None
                    return inner
            return None
        # one agent may be both ends of a transfer; the role with a live session first (no store read per ack)
        roles = ("source", "destination") if self._transfers.source(tid) is not None else ("destination", "source")
        for role in roles:
            key = self._transfers.key_of(tid, role)
            inner = envelope.open_control(key, tid) if key is not None else None
            if inner is not None:
                return inner
        # a fan-out transfer this agent sends (running or finished): the leg whose key opens it is the sender's
        for dest, key in self._leg_keys(tid):
            inner = envelope.open_control(key, tid)
            if inner is not None:
                self._transfers.via = dest
                return inner
        return None

    def _clear_refused(self, tid: str, msg: Any) -> str | None:
        """Why a control message that came in the clear is refused (its transfer is encrypted), or None."""
        if isinstance(msg, _CLEAR_OK) or (isinstance(msg, ResyncReply) and msg.kx is None):
            return None  # a ResyncReply without kx binds nothing: a refusal, every file failed
        role = "destination" if isinstance(msg, Resync) else _MAC_ROLE.get(type(msg), "source")
        if self._transfers.encrypted_of(tid, role):
            return f"{msg.kind} in the clear for transfer {tid}, which is encrypted"
        return None

    async def _control(self, tid: str, msg: Any, payload: bytes, clear: bool = False) -> None:
        if msg.transfer_id != tid:
            raise ProtocolError("transfer id in the message does not match its topic")
        if clear and (why := self._clear_refused(tid, msg)) is not None:
            raise ProtocolError(why)
        if not await self._authentic(tid, msg, json.loads(payload)):
            return
        done = self.control[type(msg)](msg)
        if done is not None:
            await done

    async def _authentic(self, tid: str, msg: Any, raw: dict[str, Any]) -> bool:
        """Is `msg` from the peer of its transfer? The negotiation messages are signed by the peer's trusted
        identity key (authority on); the others carry the MAC of the transfer's key once it is bound. False:
        drop it silently (answered, or not ours); raises ProtocolError for a drop with a reason."""
        check = self._signed.get(type(msg))
        if check is not None:
            return await check(tid, msg, raw)
        role = _MAC_ROLE[type(msg)]
        legs = self._leg_keys(tid) if role == "source" else []
        if legs and self._transfers.via is None:  # a fan-out's, in the clear: the leg whose key made its MAC
            found = next((dest for dest, key in legs if check_message_mac(raw, raw.get("mac"), key)), None)
            if found is None:
                raise ProtocolError(f"{msg.kind} for transfer {tid} without a valid MAC of any of its legs")
            self._transfers.via = found
            return True
        key = None if legs else self._transfers.key_of(tid, role)
        if key is not None and not check_message_mac(raw, raw.get("mac"), key):
            raise ProtocolError(f"{msg.kind} for transfer {tid} without a valid MAC (not from its peer)")
        return True

    async def _offer_signed(self, tid: str, msg: Resync, raw: dict[str, Any]) -> bool:
        if not self._peer_signed(msg.source_agent, raw):
            await self._refuse_negotiation(msg)
            return False
        if not msg._encrypted and getattr(self._ctx.settings, "agentEncryption", False):
            name, src = self._name, msg.source_agent
            await self._refuse_negotiation(msg, (
                f"refused: agent {name} requires end-to-end encryption (agentEncryption=true) and agent {src} sent "
                f"the transfer in the clear (an older version, or agentEncryption=false there); upgrade agent "
                f"{src}, or set agentEncryption=false on agent {name} to accept transfers in the clear"))
            return False
        return True

    def _leg_keys(self, tid: str) -> list[tuple[str, bytes]]:
        """(destination, transfer key) of each bound leg of fan-out transfer `tid` (empty: not a fan-out here)."""
        session = self._transfers.source(tid)
        if isinstance(session, FanoutTransfer):
            legs = [leg.rec for leg in session.legs.values()]
        else:  # an ordinary transfer running: none (no store read per ack); else a finished fan-out's rows
            legs = [] if session is not None else stored_legs(self._ctx.store, tid)
        return [(leg.peer, key) for leg in legs if (key := transfer_key(leg.header)) is not None]

    def _clear_leg(self, tid: str, raw: dict[str, Any]) -> None:
        """A fan-out's negotiation message in the clear: the leg whose destination signed it (with authority
        off, the first leg not yet bound: docs/protocol.md#fan-out)."""
        session = self._transfers.source(tid)
        if self._transfers.via is not None or not isinstance(session, FanoutTransfer):
            return
        legs = list(session.legs.values())
        signed = [leg for leg in legs if self._ctx.verify_peers and self._peer_signed(leg.dest, raw)]
        unbound = [leg for leg in legs if leg.key is None]
        named = [leg for leg in legs if raw.get("kind") == "program_done" and leg.dest == raw.get("destination_agent")]
        pick = signed or named or unbound  # (named, authority on: its signature is checked against that leg's agent)
        self._transfers.via = pick[0].dest if pick else None

    async def _reply_signed(self, tid: str, msg: ResyncReply, raw: dict[str, Any]) -> bool:
        self._clear_leg(tid, raw)
        session = running_leg(self._transfers.source(tid), self._transfers.via)
        peer = session.dest if session is not None else None
        if session is None or peer is None:
            return False
        if not self._peer_signed(peer, raw):
            raise ProtocolError(f"resync reply for {tid} not signed by a trusted key of agent {peer}")
        if msg.kx:
            session.bind(msg.kx)  # the transfer key: every later message of the transfer carries its MAC
        return True

    async def _program_run_signed(self, tid: str, msg: ProgramRun, raw: dict[str, Any]) -> bool:
        # a program runs only at the request of an agent whose key this agent trusts (authority on)
        if not self._peer_signed(msg.source_agent, raw):
            raise ProtocolError(f"program_run for {tid} not signed by a trusted key of agent {msg.source_agent}")
        return True

    async def _program_done_signed(self, tid: str, msg: ProgramDone, raw: dict[str, Any]) -> bool:
        self._clear_leg(tid, raw)
        session = running_leg(self._transfers.source(tid), self._transfers.via)
        peer = session.dest if session is not None else None
        if peer is None:
            return False
        if not self._peer_signed(peer, raw):
            raise ProtocolError(f"program_done for {tid} not signed by a trusted key of agent {peer}")
        return True

    def _peer_signed(self, agent: str, raw: dict[str, Any]) -> bool:
        """Negotiation messages must be signed by the peer agent's trusted identity key (authority on)."""
        if not self._ctx.verify_peers:
            return True
        key = self._ctx.peer_key(agent)
        return key is not None and verify_signed(raw, key)

    async def _refuse_negotiation(self, msg: Resync, reason: str | None = None) -> None:
        """A transfer offered by an agent we do not trust (or in the clear, `reason`): answer (signed) that every
        file failed."""
        name = self._name
        log.warning("refused transfer %s from agent %s: %s", msg.transfer_id, msg.source_agent,
                    "sent in the clear" if reason else "no trusted signature")
        reason = reason or (f"not authorized: agent {name} does not trust agent {msg.source_agent} (add its key "
                            f"with: fte key trust {name} {agent_requester(msg.source_agent)} KEY -p transfer)")
        if self._ctx.store.load_transfer(msg.transfer_id, "destination", files=False) is not None:
            return  # a forged resync for a transfer we run: ignore it
        reply = ResyncReply(kind="resync_reply", transfer_id=msg.transfer_id, epoch=msg.epoch, files=[
            FileHolding(index=f.index, held=0, status=FileStatus.FAILED, result_code=results.FILE_FAILED,
                        supplement=reason)
            for f in msg.files])
        try:
            await self._ctx.publish(self._topics.control(msg.source_agent, msg.transfer_id),
                                    seal(reply, None, self._ctx.identity), 1, False)
        except ConnectionError:
            pass

    async def _recovery_request(self, msg: RequestRecovery) -> None:
        if self._transfers.source(msg.transfer_id) is not None:
            self._transfers.to_source(msg)
        else:  # (of a fan-out: its leg's row, agent/fanout.py)
            via = self._transfers.via
            await self._watchdog.answer_finished(msg.transfer_id if via is None else leg_id(msg.transfer_id, via))


def _payload(message: aiomqtt.Message) -> bytes:
    return bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
