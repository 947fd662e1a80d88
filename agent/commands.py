"""The commands an agent carries out, and the control protocol around them.

`registry` maps each command class to its handler (`{CreateTransfer: create, CancelTransfer: cancel, ...}`);
a handler returns the reply's data, or raises `CommandRefused` (with its result code) to refuse. `CommandDesk`
is the one place a command becomes a reply: it reads the command (agent.wire.protocol, agent.monitor), checks its
requester's signature (agent.auth), calls the handler, signs the reply (agent.wire.provenance) and sends it.
Commands reach it through its lane (agent.command_lane: rate limits, a bounded queue, a task of its own).

A new command: its model (agent/wire/protocol.py, or beside its feature as monitors and schedules are), a handler
here in `registry`, and its permission (agent/auth.py); tests/unit/test_commands.py fails for a command
kind without a handler.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Collection, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import __version__

from .wire import provenance
from .auth import AuthError, Authority
from .command_lane import CommandLane
from .context import Publish
from .core import results
from .core.errors import FteError
from .core.schedule import ScheduleError
from .core.statuses import AgentState
from .wire.events import refusal as refusal_event
from .fileio import shorten
from .link import MessageTooLarge
from .monitor import CreateMonitor, ListMonitors, MonitorCommand, parse_any_command
from .wire.protocol import (MAX_PATH_CHARS, CancelTransfer, CreateTransfer, ListTransfers, Ping, ProtocolError,
                       QueryTransfer, Reply, StopAgent, Topics, dump, utc_now)
from .scheduler import CreateSchedule, DeleteSchedule, ListSchedules, Scheduler

if TYPE_CHECKING:  # the rooms the handlers call (they import CommandRefused from here)
    from .monitor_host import MonitorHost
    from .transfers import Transfers

log = logging.getLogger("fte.agent")


class CommandRefused(FteError):
    """A command the agent will not carry out: its reply says why, with `code` as its result code."""

    code = results.COMMAND_FAILED


@dataclass(frozen=True)
class Accepted:
    """A handler's answer with something to do once the reply is sent (stop_agent: stop after saying so)."""

    data: dict[str, Any]
    then: Callable[[], None]


Handler = Callable[[Any], Awaitable["dict[str, Any] | Accepted"]]


def registry(name: str, *, status: Callable[[], str], transfers: "Transfers", monitors: "MonitorHost",
             scheduler: Scheduler, stop: Callable[[bool], None]) -> dict[type, Handler]:
    """Every command this agent understands, and its handler."""

    async def ping(cmd: Ping) -> dict[str, Any]:
        return {"agent": name, "status": status(), "time": utc_now(), "version": __version__}

    async def create_transfer(cmd: CreateTransfer) -> dict[str, Any]:
        return await transfers.start(cmd.spec, cmd.transfer_id, cmd.sent_at, originator=cmd.requester)

    async def cancel_transfer(cmd: CancelTransfer) -> dict[str, Any]:
        return await transfers.cancel(cmd.transfer_id)

    async def query_transfer(cmd: QueryTransfer) -> dict[str, Any]:
        return transfers.query(cmd.transfer_id, files=True)

    async def list_transfers(cmd: ListTransfers) -> dict[str, Any]:
        return transfers.listing()

    async def stop_agent(cmd: StopAgent) -> Accepted:
        return Accepted({"agent": name, "status": AgentState.STOPPING}, lambda: stop(cmd.immediate))

    async def create_schedule(cmd: CreateSchedule) -> dict[str, Any]:
        if cmd.spec.source_agent != name:
            raise CommandRefused(f"this is agent {name}, not the source agent {cmd.spec.source_agent}")
        try:
            return scheduler.create(cmd)
        except ScheduleError as exc:
            raise CommandRefused(str(exc)) from None

    async def delete_schedule(cmd: DeleteSchedule) -> dict[str, Any]:
        if not scheduler.delete(cmd.schedule_id):
            raise CommandRefused(f"agent {name} has no schedule {cmd.schedule_id}")
        return {"schedule_id": cmd.schedule_id, "state": "deleted"}

    async def list_schedules(cmd: ListSchedules) -> dict[str, Any]:
        return {"schedules": scheduler.listing()}

    return {Ping: ping, CreateTransfer: create_transfer, CancelTransfer: cancel_transfer,
            QueryTransfer: query_transfer, ListTransfers: list_transfers, StopAgent: stop_agent,
            CreateMonitor: monitors.create, MonitorCommand: monitors.command, ListMonitors: monitors.listing,
            CreateSchedule: create_schedule, DeleteSchedule: delete_schedule, ListSchedules: list_schedules}


class CommandDesk:
    """`lane.offer(payload)` for each command that arrives (the router does); the lane's task calls `handle`."""

    def __init__(self, name: str, topics: Topics, identity: Ed25519PrivateKey, authority: Authority | None, *,
                 publish: Publish, event: Callable[[str, dict[str, Any]], None],
                 handlers: Mapping[type, Handler] | None = None) -> None:
        self._name = name
        self._topics = topics
        self._identity = identity
        self._authority = authority
        self._publish = publish
        self._event = event  # puts a log event in the outbox (topic, event)
        self.handlers: Mapping[type, Handler] = handlers or {}
        trusted: Callable[[], Collection[str]] | None = \
            (lambda: authority.trusted().keys()) if authority is not None else None
        self.lane = CommandLane(self.handle, trusted)
        self._refusals_reported = (0, 0)  # (held, dropped) of the lane at the last not_authorized event

    async def handle(self, payload: bytes) -> None:
        """Read, check and carry out one command, and answer it (to its reply_to, if any)."""
        try:
            cmd = parse_any_command(payload)
        except ProtocolError as exc:
            await self._malformed(payload, exc)
            return
        then = None
        try:
            if self._authority is not None:
                try:
                    self._authority.check(json.loads(payload), agent=self._name, kind=cmd.kind)
                except (AuthError, ValueError) as exc:
                    if not self._log_refusal(cmd, str(exc)):
                        return  # beyond the bound of refusals answered: counted (command_lane), not answered
                    raise CommandRefused(f"not authorized: {exc}", results.NOT_AUTHORIZED) from None
            data = await self._carry_out(cmd)
            if isinstance(data, Accepted):
                data, then = data.data, data.then
            reply = Reply(request_id=cmd.request_id, ok=True, data=data)
        except CommandRefused as exc:
            # a refusal quoting a long path must still fit a reply (or the command goes unanswered)
            reply = Reply(request_id=cmd.request_id, ok=False, result_code=exc.code,
                          message=shorten(str(exc), MAX_PATH_CHARS))
        if cmd.reply_to:
            await self._reply(cmd.reply_to, reply)
        if then is not None:
            then()

    async def _carry_out(self, cmd: Any) -> "dict[str, Any] | Accepted":
        handler = self.handlers.get(type(cmd))
        if handler is None:
            raise CommandRefused(f"unsupported command {type(cmd).__name__}")
        return await handler(cmd)

    async def _malformed(self, payload: bytes, exc: ProtocolError) -> None:
        if not self.lane.refusal_allowed():
            return  # beyond the bound of refusals answered: counted (command_lane), not answered
        log.warning("dropped a command: %s", exc)
        request_id = _peek(payload, "request_id")
        reply_to = _peek(payload, "reply_to")
        if request_id and reply_to:
            await self._reply(reply_to, Reply(request_id=request_id[:64], ok=False,
                                              result_code=results.COMMAND_FAILED, message=f"malformed command: {exc}"))

    def _log_refusal(self, cmd: Any, reason: str) -> bool:
        """A refused command leaves a trace on the log topic (the reply alone could go to anyone), within the
        bound of refusals answered (agent.command_lane); False, when beyond it: then it is only counted, and
        neither answered, logged nor published. The event and the log line say how many were so suppressed,
        and how many commands were dropped unread (rate limits), since the previous event."""
        lane = self.lane
        if not lane.refusal_allowed():
            return False
        held, dropped = lane.refusals.held, lane.dropped
        suppressed, unread = held - self._refusals_reported[0], dropped - self._refusals_reported[1]
        self._refusals_reported = (held, dropped)
        tid = getattr(cmd, "transfer_id", None) or "Security"
        event = refusal_event(self._name, utc_now(), cmd.kind, cmd.request_id, getattr(cmd, "requester", None),
                              getattr(cmd, "transfer_id", None), reason, suppressed, unread)
        more = f" ({suppressed} more refused and {unread} dropped unread since the last refusal logged)" \
            if suppressed or unread else ""
        log.warning("refused %s from %s: %s%s", cmd.kind, event.requester or "an unsigned requester", reason, more)
        self._event(self._topics.log(self._name, tid), event.wire())
        return True

    async def _reply(self, client: str, reply: Reply) -> None:
        topic = self._topics.replies(client)
        try:
            await self._publish(topic, self._signed(reply), 1, False)
        except ConnectionError:
            pass
        except MessageTooLarge as exc:
            # an answer the broker would throw this agent out for (hundreds of transfers listed through a broker
            # with a small maximum): say so, rather than leave the command waiting for its timeout
            log.error("%s; the reply to %s was not sent", exc, client)
            refusal = Reply(request_id=reply.request_id, ok=False, result_code=results.COMMAND_FAILED,
                            message=f"agent {self._name}'s answer does not fit through the broker: {exc}; ask for "
                                    f"less (one transfer: fte-show-transfer ID) or raise the broker's maximum "
                                    f"message size (max_packet_size, max_payload)")
            try:
                await self._publish(topic, self._signed(refusal), 1, False)
            except (ConnectionError, MessageTooLarge):
                pass

    def _signed(self, reply: Reply) -> bytes:
        """A reply the client can tell from a forgery: signed by this agent's key, bound to the agent (the
        signed body names the request_id), agent.wire.provenance."""
        return provenance.sign_payload(dump(reply), provenance.REPLY, self._name, self._identity)


def _peek(payload: bytes, key: str) -> str | None:
    """A short, plain string field of a command that did not parse (to answer it), or None."""
    try:
        v = json.loads(payload).get(key)
        return v if isinstance(v, str) and 0 < len(v) <= 64 and \
            v.replace("-", "").replace("_", "").replace(".", "").isalnum() else None
    except Exception:
        return None
