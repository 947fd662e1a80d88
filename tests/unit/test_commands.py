"""The command registry and desk (agent.commands): every command kind has a handler, and one place turns a
handler's answer or refusal into a signed reply. No broker: replies are captured where they are published."""

from __future__ import annotations

import json
import typing
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import monitor, scheduler

from agent.wire import protocol, provenance
from agent.commands import Accepted, CommandDesk, CommandRefused, registry
from agent.core import results
from agent.core.errors import FteError
from agent.wire.protocol import Topics


def _classes(union: Any) -> list[type]:
    """The models of a discriminated union (Annotated[Union[...], Field(...)])."""
    return list(typing.get_args(typing.get_args(union)[0]))


def _kinds(cls: type) -> set[str]:
    return set(typing.get_args(cls.model_fields["kind"].annotation))  # type: ignore[attr-defined]


class _Parts:
    """Anything a handler calls: records the call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def handler(*args: Any, **kwargs: Any) -> dict[str, Any]:
            self.calls.append(name)
            return {"called": name}
        return handler


def _registry(stopped: list[bool] | None = None) -> dict[type, Any]:
    return registry("A1", status=lambda: "READY", transfers=_Parts(), monitors=_Parts(),  # type: ignore[arg-type]
                    scheduler=SimpleNamespace(listing=lambda: []),  # type: ignore[arg-type]
                    stop=lambda immediate: (stopped if stopped is not None else []).append(immediate))


def test_every_command_kind_has_a_handler() -> None:
    # A new kind in agent/wire/protocol.py's Command (or a monitor's or schedule's) without a handler fails here.
    handlers = _registry()
    commands = _classes(protocol.Command)
    assert len(commands) >= 6
    kinds = set().union(*(_kinds(c) for c in commands))
    for cls in [monitor.CreateMonitor, monitor.MonitorCommand, monitor.ListMonitors, scheduler.CreateSchedule,
                scheduler.DeleteSchedule, scheduler.ListSchedules]:
        commands.append(cls)
        kinds |= _kinds(cls)
    missing = [c.__name__ for c in commands if c not in handlers]
    assert missing == []
    # every kind the agent reads is one of these classes (nothing parsed goes without a handler)
    assert kinds >= monitor.MONITOR_KINDS | scheduler.SCHEDULE_KINDS
    assert kinds == set().union(*(_kinds(c) for c in handlers))


def test_the_refusal_family() -> None:
    assert issubclass(CommandRefused, FteError)
    assert CommandRefused("no").code == results.COMMAND_FAILED
    assert CommandRefused("no", results.NOT_AUTHORIZED).code == results.NOT_AUTHORIZED


class _Desk:
    def __init__(self, handlers: dict[type, Any]) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.published: list[tuple[str, bytes]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

        async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            self.published.append((topic, payload))

        self.desk = CommandDesk("A1", Topics(), self.key, None, publish=publish,
                                event=lambda t, e: self.events.append((t, e)), handlers=handlers)

    def replies(self) -> list[dict[str, Any]]:
        out = []
        for topic, payload in self.published:
            assert topic == Topics().replies("c1")
            assert provenance.verify_payload(payload, provenance.REPLY, "A1", [self.key.public_key()])
            out.append(json.loads(payload))
        return out


def _command(kind: str, **fields: Any) -> bytes:
    return json.dumps({"kind": kind, "request_id": "r1", "reply_to": "c1", **fields}).encode()


async def test_a_refusal_is_a_reply_with_its_code() -> None:
    async def cancel(cmd: Any) -> dict[str, Any]:
        raise CommandRefused(f"transfer {cmd.transfer_id} already ended", 77)

    d = _Desk({protocol.CancelTransfer: cancel})
    await d.desk.handle(_command("cancel_transfer", transfer_id="ab" * 24))
    [reply] = d.replies()
    assert (reply["ok"], reply["result_code"], reply["request_id"]) == (False, 77, "r1")
    assert "already ended" in reply["message"]


async def test_an_answer_is_a_signed_reply_with_its_data() -> None:
    d = _Desk(_registry())
    await d.desk.handle(_command("ping"))
    [reply] = d.replies()
    assert reply["ok"] and reply["data"]["agent"] == "A1" and reply["data"]["status"] == "READY"


async def test_a_command_without_handler_is_refused_not_dropped() -> None:
    d = _Desk({})
    await d.desk.handle(_command("ping"))
    [reply] = d.replies()
    assert not reply["ok"] and reply["result_code"] == results.COMMAND_FAILED
    assert "unsupported command Ping" in reply["message"]


async def test_a_malformed_command_is_answered_when_it_says_where() -> None:
    d = _Desk(_registry())
    await d.desk.handle(_command("no_such_kind"))
    [reply] = d.replies()
    assert not reply["ok"] and reply["message"].startswith("malformed command")
    d.published.clear()
    await d.desk.handle(b'{"kind": "ping"}')  # no request_id, no reply_to: nobody to answer
    assert d.published == []


async def test_stop_is_carried_out_after_its_reply() -> None:
    stopped: list[bool] = []
    handlers = _registry(stopped)
    d = _Desk(handlers)
    seen_at_reply: list[list[bool]] = []
    publish = d.desk._publish

    async def publish_then_look(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        seen_at_reply.append(list(stopped))
        await publish(topic, payload, qos, retain)

    d.desk._publish = publish_then_look  # type: ignore[method-assign]
    await d.desk.handle(_command("stop_agent", immediate=True))
    assert seen_at_reply == [[]] and stopped == [True]
    assert d.replies()[0]["data"]["status"] == "STOPPING"


async def test_accepted_carries_its_data() -> None:
    out = await _registry()[protocol.StopAgent](protocol.StopAgent(kind="stop_agent", request_id="r"))
    assert isinstance(out, Accepted) and out.data == {"agent": "A1", "status": "STOPPING"}


@pytest.mark.parametrize("kind,called", [("query_transfer", "query"), ("cancel_transfer", "cancel"),
                                         ("list_transfers", "listing")])
async def test_transfer_commands_go_to_the_transfer_table(kind: str, called: str) -> None:
    transfers = _Parts()
    transfers.query = lambda tid, files=False: {"called": "query"}  # type: ignore[attr-defined]
    transfers.listing = lambda: {"called": "listing"}  # type: ignore[attr-defined]
    handlers = registry("A1", status=lambda: "READY", transfers=transfers, monitors=_Parts(),  # type: ignore[arg-type]
                        scheduler=SimpleNamespace(), stop=lambda i: None)  # type: ignore[arg-type]
    d = _Desk(handlers)
    fields = {} if kind == "list_transfers" else {"transfer_id": "ab" * 24}
    await d.desk.handle(_command(kind, **fields))
    [reply] = d.replies()
    assert reply["ok"] and reply["data"] == {"called": called}
