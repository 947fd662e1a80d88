"""Log events as models (agent.wire.events): every action the agent emits has one, they are the schema that
docs/log-event.schema.json and docs/log-events.md describe, what the agent writes is checked strictly and what a
reader gets is read leniently (a newer agent's fields and actions), garbage is refused with a reason."""

from __future__ import annotations

import ast
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from agent.wire import events as ev
from agent.wire.events import EventError, build_event, parse_event, parse_progress, read_event
from agent.wire.protocol import Topics
from agent.store import StateStore, TransferRecord
from agent.transferlog import TransferLog

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SIGNATURE = "A" * 86 + "=="


def _examples() -> list[dict[str, Any]]:
    """The ```json examples of docs/log-events.md that are log events (they have an action)."""
    text = (DOCS / "log-events.md").read_text(encoding="utf-8")
    blocks = [json.loads(m.group(1)) for m in re.finditer(r"^```json\n(.*?)^```", text, re.S | re.M)]
    return [b for b in blocks if "action" in b]


def _schema() -> dict[str, Any]:
    return json.loads((DOCS / "log-event.schema.json").read_text(encoding="utf-8"))


def _completed() -> dict[str, Any]:
    return next(e for e in _examples() if e["action"] == "completed")


# --------------------------------------------------------------------------- every emitted action has a model


def _emitted() -> set[tuple[str, str]]:
    """(family, action) of every event the agent code emits, read off the source with ast: TransferLog.emit(rec,
    "<action>", ...), the monitors' _emit("<action>", ...) and the scheduler's _emit(sid, "<action>", ...), the
    daemon's _monitor_event(name, "<action>", ...) / _schedule_event(sid, "<action>", ...), and dict literals
    with an "action" (a monitor's or schedule's when it also has "monitor" or "schedule_id")."""
    found: set[tuple[str, str]] = set()
    positional = {"emit": ("transfer", 1), "_monitor_event": ("monitor", 1), "_schedule_event": ("schedule", 1)}
    for path in (ROOT / "agent").rglob("*.py"):
        module = path.stem
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                where = positional.get(name)
                if name == "_emit" and module in ("monitor", "scheduler"):
                    where = ("monitor", 0) if module == "monitor" else ("schedule", 1)
                if where is not None and len(node.args) > where[1]:
                    arg = node.args[where[1]]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.add((where[0], arg.value))
            if isinstance(node, ast.Dict):
                keys = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
                action = keys.get("action")
                if isinstance(action, ast.Constant) and isinstance(action.value, str):
                    family = "monitor" if "monitor" in keys else "schedule" if "schedule_id" in keys else "transfer"
                    found.add((family, action.value))
    return found


def test_every_action_the_agent_emits_has_a_model() -> None:
    emitted = _emitted()
    for family in ("transfer", "monitor", "schedule"):
        assert any(f == family for f, _ in emitted), f"found no {family} event in agent/: was an emitter renamed?"
    missing = emitted - set(ev.MODELS)
    assert not missing, f"events emitted without a model in agent/wire/events.py: {sorted(missing)}"


def test_every_transfer_action_is_documented_and_in_the_schema() -> None:
    documented = {s["$ref"].removeprefix("#/$defs/") for s in _schema()["oneOf"]}
    modelled = {a for f, a in ev.MODELS if f == "transfer"}
    assert modelled == documented
    text = (DOCS / "log-events.md").read_text(encoding="utf-8")
    for family, action in ev.MODELS:
        assert f"`{action}`" in text, f"docs/log-events.md does not name the {family} event {action!r}"


@pytest.mark.parametrize("action", sorted(a for f, a in ev.MODELS if f == "transfer"))
def test_the_schema_has_the_fields_of_each_model(action: str) -> None:
    """docs/log-event.schema.json describes the models: the same members, the same required ones."""
    model = ev.MODELS[("transfer", action)]
    schema = _schema()["$defs"][action]
    assert set(schema["properties"]) == set(model.model_fields), action
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    assert set(schema["required"]) == required, action
    for name, prop in schema["properties"].items():
        args = typing.get_args(model.model_fields[name].annotation)
        if "const" in prop and args and all(isinstance(a, str) for a in args):
            assert set(args) == {prop["const"]}, f"{action}.{name}"
        elif "enum" in prop and args and all(isinstance(a, str) for a in args):
            assert set(args) == set(prop["enum"]), f"{action}.{name}"


def test_the_schema_names_every_command_a_refusal_can_name() -> None:
    from agent.monitor import MONITOR_KINDS
    from agent.wire.protocol import Command
    from agent.scheduler import SCHEDULE_KINDS

    members = typing.get_args(typing.get_args(Command)[0])
    kinds = {typing.get_args(m.model_fields["kind"].annotation)[0] for m in members} | MONITOR_KINDS | SCHEDULE_KINDS
    assert set(_schema()["$defs"]["not_authorized"]["properties"]["command"]["enum"]) == kinds
    for kind in kinds:
        assert re.fullmatch(r"[a-z_]{1,32}", kind)  # what the model takes (agent.wire.events.CommandKind)


def test_the_model_vocabularies_are_the_code_ones() -> None:
    from agent.core.lifecycle import RESULT_CODES, TERMINAL_STATE_VALUES

    assert set(typing.get_args(ev.TerminalState)) == TERMINAL_STATE_VALUES
    trigger = _schema()["$defs"]["recovering"]["properties"]["trigger"]["enum"]
    assert set(typing.get_args(ev.RecoveryTrigger)) == set(trigger)
    assert set(_schema()["$defs"]["completed"]["properties"]["result_code"]["enum"]) == set(RESULT_CODES.values())


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("example", _examples(), ids=lambda e: e["action"])
def test_each_documented_example_is_built_and_read_back_the_same(example: dict[str, Any]) -> None:
    event = build_event(example)
    assert type(event) is ev.MODELS[(ev.family_of(example), example["action"])]
    assert event.wire() == example
    again = parse_event(event.to_json())
    assert again == event and again.wire() == example
    signed = parse_event(json.dumps({**example, "signature": SIGNATURE}).encode())
    assert signed.signature == SIGNATURE


MONITOR_AND_SCHEDULE = [
    {"monitor": "m1", "agent": "A1", "action": "created", "time": "2025-03-14T09:26:53.589Z",
     "message": "monitor m1 created on /data/in"},
    {"monitor": "m1", "agent": "A1", "action": "fired", "time": "2025-03-14T09:26:53.589Z", "result_code": 0,
     "files": ["/data/in/a.csv"], "transfer_id": "ab" * 24, "message": "1 file(s) triggered ..."},
    {"monitor": "m1", "agent": "A1", "action": "failed", "time": "2025-03-14T09:26:53.589Z", "result_code": 124,
     "message": "poll failed: boom"},
    {"schedule_id": "0123456789abcdef", "agent": "A1", "action": "created", "time": "2025-03-14T09:26:53.589Z",
     "message": "schedule 0123456789abcdef: first run at ...", "next_run": "2025-03-14T10:00:00+00:00"},
    {"schedule_id": "0123456789abcdef", "agent": "A1", "action": "run", "time": "2025-03-14T09:26:53.589Z",
     "transfer_id": "ab" * 24, "occurrence": 3, "missed": 1, "scheduled_for": "2025-03-14T10:00:00+00:00",
     "message": "schedule 0123456789abcdef started transfer ..."},
    {"schedule_id": "0123456789abcdef", "agent": "A1", "action": "expired", "time": "2025-03-14T09:26:53.589Z",
     "message": "schedule 0123456789abcdef has no more occurrences"},
]


@pytest.mark.parametrize("example", MONITOR_AND_SCHEDULE, ids=lambda e: f"{ev.family_of(e)}-{e['action']}")
def test_monitor_and_schedule_events_round_trip(example: dict[str, Any]) -> None:
    event = parse_event(build_event(example).to_json())
    assert event.wire() == example
    # a monitor's `created` and a schedule's `created` are different models
    assert type(event) is ev.MODELS[(ev.family_of(example), example["action"])]


def test_the_monitor_and_scheduler_builders_validate() -> None:
    from agent.monitor import event as monitor_event
    from agent.scheduler import event as schedule_event

    made = monitor_event("A1", "m1", "failed", {"result_code": 124, "message": "poll failed", "files": None})
    assert made["monitor"] == "m1" and "files" not in made and isinstance(read_event(made), ev.MonitorFailed)
    with pytest.raises(EventError, match="monitor event 'fird'"):
        monitor_event("A1", "m1", "fird", {"message": "x"})
    with pytest.raises(EventError, match="transfer_id"):
        monitor_event("A1", "m1", "fired", {"result_code": 0, "files": [], "message": "x"})
    made = schedule_event("A1", "0123456789abcdef", "deleted", {"message": "schedule deleted"})
    assert isinstance(read_event(made), ev.ScheduleDeleted)
    with pytest.raises(EventError, match="occurrence"):
        schedule_event("A1", "0123456789abcdef", "run", {"transfer_id": "ab" * 24, "occurrence": "3", "missed": 0,
                                                         "scheduled_for": "x", "message": "m"})


def test_a_refusal_is_built_as_the_agent_publishes_it() -> None:
    refused = ev.refusal("A1", "2025-03-14T11:00:00.000Z", "cancel_transfer", "9f1c2b7e44d0a3e1", "mallory",
                         "ab" * 24, "requester 'mallory' is not trusted by this agent", 0, 0)
    assert refused.wire()["message"] == "command cancel_transfer refused: requester 'mallory' is not trusted by this agent"
    assert refused.result_code == 53 and parse_event(refused.to_json()) == refused


# --------------------------------------------------------------------------- the agent's writer


def _log(tmp_path: Path) -> tuple[TransferLog, StateStore, TransferRecord]:
    store = StateStore(tmp_path / "state.db")
    header = {"source_agent": "A1", "destination_agent": "A2", "job_name": None, "metadata": {"k": "v"}}
    return TransferLog("A1", Topics(), store, lambda: None), store, TransferRecord("a" * 48, "source", "in_progress",
                                                                                  "A2", header)


def test_emit_writes_what_the_model_reads_back(tmp_path: Path) -> None:
    log, store, rec = _log(tmp_path)
    heard: list[dict[str, Any]] = []
    log.listeners.append(heard.append)
    made = log.emit(rec, "resumed", message_id="BFGTR0082I", message="resumed", bytes_held_by_destination=8,
                    recovering_since=None)
    [(_, topic, payload, _)] = store.outbox_peek()
    assert topic == f"SYSTEM.FTE/Log/A1/{'a' * 48}"
    event = parse_event(payload)
    assert isinstance(event, ev.Resumed) and event.wire() == made == heard[0]
    assert "recovering_since" not in made and made["job_name"] is None  # None: left out, but job_name is null
    assert list(made)[:11] == ["event_id", "transfer_id", "action", "state", "time", "agent", "agent_role",
                               "source_agent", "destination_agent", "job_name", "metadata"]
    store.close()


@pytest.mark.parametrize("action, fields, error", [
    ("resumd", {}, "no transfer event 'resumd'"),
    ("progress", {"files": "none"}, "files"),
    ("progress", {"files": [{"index": 0}]}, "files.0"),
    ("resumed", {"message_id": "BFGTR0082I", "message": "m", "bytes_held_by_destination": "8"},
     "bytes_held_by_destination"),
    ("resumed", {"message_id": "BFGTR0082I", "message": "m", "bytes_held_by_destination": True},
     "bytes_held_by_destination"),
    ("resumed", {"message_id": "BFGTR0082I", "message": "m", "bytes_held_by_destination": 8, "surprise": 1},
     "surprise: Extra inputs are not permitted"),
    ("completed", {"result_code": 0, "result": "success", "files": [], "statistics": {}}, "state"),
])
def test_emit_refuses_what_no_model_describes(tmp_path: Path, action: str, fields: dict[str, Any], error: str) -> None:
    log, store, rec = _log(tmp_path)
    with pytest.raises(EventError, match=re.escape(error)):
        log.emit(rec, action, **fields)
    assert store.outbox_peek() == [], "nothing half-made is published"
    store.close()


def test_a_nested_member_the_model_does_not_declare_is_refused_on_write() -> None:
    example = next(e for e in _examples() if e["action"] == "progress")
    files = [{**example["files"][0], "colour": "red"}]
    with pytest.raises(EventError, match=re.escape("files.0.colour: Extra inputs are not permitted")):
        build_event({**example, "files": files})


# --------------------------------------------------------------------------- the readers' side


def test_a_newer_agents_extra_members_are_kept_on_read() -> None:
    completed = _completed()
    newer = {**completed, "priority": 5, "statistics": {**completed["statistics"], "hops": 2},
             "files": [{**completed["files"][0], "owner": "bob"}]}
    event = parse_event(json.dumps(newer).encode())
    assert isinstance(event, ev.Completed)
    assert event.model_extra == {"priority": 5} and event.statistics.model_extra == {"hops": 2}
    assert event.files[0].model_extra == {"owner": "bob"}
    assert event.wire() == newer


def test_an_action_this_version_does_not_know_is_read_as_unknown() -> None:
    event = parse_event(b'{"action": "paused", "agent": "A9", "message": "by request", "level": 3}')
    assert isinstance(event, ev.UnknownEvent)
    assert (event.action, event.agent, event.message, event.model_extra) == ("paused", "A9", "by request", {"level": 3})
    with pytest.raises(EventError, match="no transfer event 'paused'"):
        build_event(event.wire())


@pytest.mark.parametrize("payload, error", [
    (b"\x00garbage", "not JSON"),
    (b"", "not JSON"),
    (b"[1, 2]", "an event is a JSON object, not list"),
    (b'"started"', "not str"),
    (b'{"state": "queued"}', "it has no action"),
    (b'{"action": 7}', "it has no action"),
    (b"[" * 10_000 + b"]" * 10_000, "not JSON"),
])
def test_what_is_no_event_is_refused_with_the_reason(payload: bytes, error: str) -> None:
    with pytest.raises(EventError, match=re.escape(error)):
        parse_event(payload)


@pytest.mark.parametrize("change, error", [
    ({"transfer_id": "XYZ"}, "transfer_id"),
    ({"result_code": "0"}, "result_code"),
    ({"result_code": False}, "result_code"),
    ({"result_code": 7}, "result_code"),
    ({"state": "in_progress"}, "state"),
    ({"statistics": {"files": 1}}, "statistics.files_succeeded"),
    ({"time": "yesterday"}, "time"),
    ({"metadata": {"k": 1}}, "metadata.k"),
])
def test_a_known_action_with_a_wrong_field_is_refused_on_read(change: dict[str, Any], error: str) -> None:
    with pytest.raises(EventError, match=f"invalid transfer event 'completed': {re.escape(error)}"):
        parse_event(json.dumps({**_completed(), **change}).encode())
    missing = {k: v for k, v in _completed().items() if k != "event_id"}
    with pytest.raises(EventError, match="event_id: Field required"):
        parse_event(json.dumps(missing).encode())


def test_the_size_limit_is_checked_before_parsing() -> None:
    payload = json.dumps(_completed()).encode()
    assert parse_event(payload, limit=len(payload))
    with pytest.raises(EventError, match=f"event of {len(payload)} bytes exceeds the limit of {len(payload) - 1}"):
        parse_event(payload, limit=len(payload) - 1)
    with pytest.raises(EventError, match="exceeds the limit"):
        parse_event(b"\x00" * 64, limit=32)  # not even looked at
    assert ev.MAX_EVENT_BYTES == 268_435_455  # the largest MQTT message: no event the agent publishes is refused


def test_the_progress_snapshot_is_read_as_its_model() -> None:
    text = (DOCS / "log-events.md").read_text(encoding="utf-8")
    blocks = [json.loads(m.group(1)) for m in re.finditer(r"^```json\n(.*?)^```", text, re.S | re.M)]
    snapshot = next(b for b in blocks if "bytes_total" in b)
    progress = parse_progress(json.dumps({**snapshot, "eta": 3}).encode())
    assert (progress.bytes_done, progress.bytes_total, progress.state) == (12582912, 25165824, "in_progress")
    assert progress.model_extra == {"eta": 3}
    schema = _schema()["$defs"]["transfer_progress"]
    assert set(schema["properties"]) == set(ev.TransferProgress.model_fields)
    assert set(schema["required"]) == {n for n, f in ev.TransferProgress.model_fields.items() if f.is_required()}
    with pytest.raises(EventError, match="bytes_done"):
        parse_progress(json.dumps({**snapshot, "bytes_done": "1"}).encode())
    with pytest.raises(EventError, match="exceeds the limit"):
        parse_progress(b" " * (1024 * 1024 + 1))


def test_a_fanout_progress_snapshot_is_built_strictly_and_read_leniently() -> None:
    text = (DOCS / "log-events.md").read_text(encoding="utf-8")
    blocks = [json.loads(m.group(1)) for m in re.finditer(r"^```json\n(.*?)^```", text, re.S | re.M)]
    snapshot = next(b for b in blocks if "bytes_total" in b and "destinations" in b)
    built = ev.build_progress(snapshot)
    assert [(d.agent, d.state) for d in built.destinations or []] == [("A2", "in_progress"), ("A3", "recovering")]
    assert sum(d.bytes_done for d in built.destinations or []) == snapshot["bytes_done"]
    ordinary = {k: v for k, v in snapshot.items() if k != "destinations"}
    assert ev.build_progress(ordinary).destinations is None  # absent when not a fan-out
    newer = {**snapshot, "destinations": [{**d, "eta": 3} for d in snapshot["destinations"]]}
    with pytest.raises(EventError, match=r"destinations\.0\.eta"):
        ev.build_progress(newer)  # the agent writes nothing its model lacks, at any depth
    assert parse_progress(json.dumps(newer).encode()).destinations[0].model_extra == {"eta": 3}  # type: ignore[index]
    with pytest.raises(EventError, match=r"destinations\.1\.bytes_done"):
        parse_progress(json.dumps({**snapshot, "destinations": [snapshot["destinations"][0], {
            **snapshot["destinations"][1], "bytes_done": "8"}]}).encode())
    with pytest.raises(EventError, match=r"destinations\.0\.state"):
        ev.build_progress({**snapshot, "destinations": [{**snapshot["destinations"][0], "state": "behind"},
                                                        snapshot["destinations"][1]]})
    with pytest.raises(EventError, match="destinations"):
        ev.build_progress({**snapshot, "destinations": snapshot["destinations"][:1]})  # a fan-out has 2 or more
    with pytest.raises(EventError, match="eta"):
        ev.build_progress({**ordinary, "eta": 3})
