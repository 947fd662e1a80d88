"""The user documentation stays true to the code.

- docs/commands.md is generated from the typer app (docs/gen_commands.py): a flag change without
  regenerating it fails here.
- Every ```json example in docs/log-events.md validates against docs/log-event.schema.json, and every
  example in docs/protocol.md is accepted by the agent's own strict parsers.
- The schema's enums (actions, triggers, states, agent statuses) match what the code can produce, and the
  events the source and destination sessions really emit validate against it.
- Every result-code constant of agent/core/results.py is in docs/result-codes.md.

The schema is checked with `jsonschema` when it is installed, else with the small validator below, which
understands exactly the keywords the schema uses and refuses any other.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib.util
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCHEMA_PATH = DOCS / "log-event.schema.json"
REGENERATE = "python docs/gen_commands.py"


def _json_blocks(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed object) of every ```json fenced block."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in re.finditer(r"^```json\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, m.start()) + 1
        try:
            blocks.append((line, json.loads(m.group(1))))
        except json.JSONDecodeError as exc:
            pytest.fail(f"{path.name}:{line}: the json example is not valid JSON: {exc}")
    return blocks


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- a tiny JSON Schema checker

_KNOWN = {"$schema", "$id", "$ref", "$defs", "title", "description", "type", "const", "enum", "required",
          "properties", "additionalProperties", "items", "minItems", "minimum", "minLength", "maxLength",
          "pattern", "oneOf", "anyOf"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _same(a: Any, b: Any) -> bool:
    # JSON equality: 1 is not true, 0 is not false
    return a == b and (isinstance(a, bool) == isinstance(b, bool))


def _errors(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> list[str]:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise AssertionError(f"the test's schema checker does not understand {sorted(unknown)} at {where}; "
                             "install jsonschema or extend the checker")
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _errors(value, target, root, where)
    errs: list[str] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            return [f"{where}: {value!r} is not of type {names}"]
    if "const" in schema and not _same(value, schema["const"]):
        errs.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        errs.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errs.append(f"{where}: {value!r} has the wrong length")
    if _is_type(value, "number") and "minimum" in schema and value < schema["minimum"]:
        errs.append(f"{where}: {value!r} is below {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errs.append(f"{where}: missing {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errs += _errors(item, props[key], root, f"{where}.{key}")
            elif extra is False:
                errs.append(f"{where}: unexpected field {key!r}")
            elif isinstance(extra, dict):
                errs += _errors(item, extra, root, f"{where}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errs.append(f"{where}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errs += _errors(item, schema["items"], root, f"{where}[{i}]")
    if "anyOf" in schema:
        if all(_errors(value, s, root, where) for s in schema["anyOf"]):
            errs.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema:
        results = [_errors(value, s, root, where) for s in schema["oneOf"]]
        matching = sum(1 for r in results if not r)
        if matching != 1:
            closest = min(results, key=len)
            errs.append(f"{where}: matches {matching} of oneOf (need 1)" + (f"; closest: {closest}" if closest else ""))
    return errs


def validate(value: Any, pointer: str = "") -> None:
    """Validate `value` against the schema (or against #/$defs/<pointer>); AssertionError on failure."""
    root = _schema()
    schema = root["$defs"][pointer] if pointer else root
    if importlib.util.find_spec("jsonschema") is not None:
        import jsonschema

        sub = {"$ref": f"#/$defs/{pointer}", "$defs": root["$defs"]} if pointer else root
        try:
            jsonschema.Draft202012Validator(sub).validate(value)
        except jsonschema.ValidationError as exc:
            raise AssertionError(str(exc)) from None
        return
    errs = _errors(value, schema, root)
    assert not errs, "\n".join(errs)


def _all_subschemas(node: Any) -> typing.Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for key, child in node.items():
            if key in ("properties", "$defs"):
                for sub in child.values():
                    yield from _all_subschemas(sub)
            elif key in ("items", "additionalProperties") and isinstance(child, dict):
                yield from _all_subschemas(child)
            elif key in ("oneOf", "anyOf"):
                for sub in child:
                    yield from _all_subschemas(sub)


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    if importlib.util.find_spec("jsonschema") is not None:
        import jsonschema

        jsonschema.Draft202012Validator.check_schema(schema)
    for sub in _all_subschemas(schema):
        assert not set(sub) - _KNOWN, f"keywords the checker does not know: {set(sub) - _KNOWN}"
        if "$ref" in sub:
            name = sub["$ref"].removeprefix("#/$defs/")
            assert name in schema["$defs"], f"dangling $ref {sub['$ref']}"


def test_the_checker_catches_mistakes() -> None:
    """The fallback checker is not vacuous: broken events are refused."""
    good = _json_blocks(DOCS / "log-events.md")[0][1]
    validate(good)
    for broken in ({**good, "action": "startd"}, {k: v for k, v in good.items() if k != "time"},
                   {**good, "surprise": 1}, {**good, "recovery_timeout": "-1"},
                   {**good, "transfer_id": "XYZ"}, {**good, "files": [{"index": 0}]}):
        with pytest.raises(AssertionError):
            validate(broken)


# --------------------------------------------------------------------------- docs/commands.md


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_commands", DOCS / "gen_commands.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_commands_md_is_generated_from_the_cli() -> None:
    expected = _load_generator().render()
    actual = (DOCS / "commands.md").read_text(encoding="utf-8")
    assert actual == expected, (
        "docs/commands.md does not match the commands and flags registered in cli/; "
        f"regenerate it with: {REGENERATE}"
    )


def test_every_cli_command_and_flag_is_in_commands_md() -> None:
    import typer.main

    from cli.main import app

    text = (DOCS / "commands.md").read_text(encoding="utf-8")

    def walk(group: Any, prefix: str) -> typing.Iterator[tuple[str, Any]]:
        for name, command in getattr(group, "commands", {}).items():
            yield f"{prefix}{name}", command
            yield from walk(command, f"{prefix}{name} ")

    for name, command in walk(typer.main.get_command(app), ""):
        assert f"## fte-{name}\n" in text or f"## fte {name}\n" in text, f"command {name} has no section"
        for param in command.params:
            for opt in list(param.opts) + list(getattr(param, "secondary_opts", [])):
                if opt.startswith("-"):
                    assert f"`{opt}`" in text, f"flag {opt} of {name} is not in docs/commands.md; run {REGENERATE}"


# --------------------------------------------------------------------------- docs/log-events.md


def _kind_of_example(obj: dict[str, Any]) -> str:
    if "action" in obj:
        return ""
    if "bytes_total" in obj:
        return "transfer_progress"
    if "status" in obj and "agent" in obj:
        return "agent_status"
    raise AssertionError(f"example of an unknown kind: {sorted(obj)}")


def test_log_event_examples_validate_against_the_schema() -> None:
    from agent.wire.protocol import parse_agent_status

    blocks = _json_blocks(DOCS / "log-events.md")
    assert blocks, "docs/log-events.md has no ```json examples"
    actions = set()
    for line, obj in blocks:
        kind = _kind_of_example(obj)
        try:
            validate(obj, kind)
        except AssertionError as exc:
            pytest.fail(f"docs/log-events.md:{line}: the example does not match the schema:\n{exc}")
        if kind == "agent_status":
            parse_agent_status(json.dumps(obj).encode())  # the agents' own (lenient) reader takes it
        if not kind:
            actions.add(obj["action"])
    documented = {s["$ref"].removeprefix("#/$defs/") for s in _schema()["oneOf"]}
    assert actions == documented, f"actions without an example in docs/log-events.md: {documented - actions}"


def _emitted_actions() -> set[str]:
    """Actions the agent code can publish on the log topic: TransferLog.emit(rec, "<action>", ...) calls, the
    sessions' Log("<action>", ...) actions (agent.core.source_actions) and dict literals with an "action" key
    (events written to the outbox directly)."""
    found: set[str] = set()
    for path in (ROOT / "agent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit":
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    found.add(node.args[1].value)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Log":
                if node.args and isinstance(node.args[0], ast.Constant):
                    found.add(node.args[0].value)
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "action" and isinstance(value, ast.Constant):
                        found.add(value.value)
    return found


def test_schema_covers_every_action_the_code_emits() -> None:
    documented = {s["$ref"].removeprefix("#/$defs/") for s in _schema()["oneOf"]}
    emitted = _emitted_actions()
    assert emitted, "found no log events in agent/: has TransferLog.emit been renamed?"
    assert emitted == documented, (f"log actions in the code but not in docs/log-event.schema.json: "
                                   f"{emitted - documented}; documented but never emitted: {documented - emitted}")
    text = (DOCS / "log-events.md").read_text(encoding="utf-8")
    for action in emitted:
        assert f"### {action}" in text, f"docs/log-events.md has no section for the {action!r} event"


def test_schema_triggers_match_the_code() -> None:
    # every stall of the source session is a row of its reaction table (agent/core/source_session.py)
    from agent.core.source_session import TRIGGERS

    triggers = set(TRIGGERS)
    assert triggers, "found no recovery triggers in the source session's REACTIONS table"
    documented = set(_schema()["$defs"]["recovering"]["properties"]["trigger"]["enum"])
    assert triggers == documented
    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    for t in triggers:
        assert f"`{t}`" in text, f"recovery trigger {t} is not explained in docs/concepts.md"


def test_schema_states_match_the_lifecycle() -> None:
    from agent.core.lifecycle import LIVE_STATES, TERMINAL_STATES, TransferState

    defs = _schema()["$defs"]
    assert set(defs["live_state"]["enum"]) == {s.value for s in LIVE_STATES}
    assert set(defs["terminal_state"]["enum"]) == {s.value for s in TERMINAL_STATES}
    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    for s in TransferState:
        assert f"| `{s.value}` |" in text, f"state {s.value} has no row in docs/concepts.md"


def test_agent_status_values_match_the_code() -> None:
    from agent.wire.protocol import AgentStatusValue

    documented = set(_schema()["$defs"]["agent_status"]["properties"]["status"]["enum"])
    assert documented == set(typing.get_args(AgentStatusValue))
    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    for value in documented:
        assert f"| `{value}` |" in text, f"agent status {value} has no row in docs/concepts.md"


# --------------------------------------------------------------------------- real events vs the schema


class _Store:
    """Just enough of StateStore for a session to run without a database."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def outbox_put(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.events.append((topic, json.loads(payload)))

    def __getattr__(self, name: str) -> Any:  # save_transfer, update_transfer, save_file, ...
        return lambda *args, **kwargs: None


def _context(name: str, store: _Store, published: list[tuple[str, bytes]]) -> Any:
    from agent.context import AgentContext
    from agent.wire.protocol import Topics
    from agent.sandbox import Sandbox
    from agent.transferlog import TransferLog

    async def publish(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        published.append((topic, payload))

    values = dict(name=name, topics=Topics(), store=store, log=TransferLog(name, Topics(), store, lambda: None),
                  sandbox=Sandbox(), publish=publish, link_up=lambda: True, peer_status=lambda agent: "READY",
                  chunk_size=4, window_chunks=2, ack_timeout=60.0, ack_retries=5, agent_recovery_timeout=-1,
                  on_state_change=lambda: None)
    accepted = {f.name for f in dataclasses.fields(AgentContext)}
    return AgentContext(**{k: v for k, v in values.items() if k in accepted})


def _source_session(tmp_path: Path, store: _Store, published: list[tuple[str, bytes]], tid: str,
                    recovery_timeout: int) -> Any:
    from agent.source import SourceTransfer
    from agent.store import FileRecord, TransferRecord

    src = tmp_path / f"{tid[-4:]}.bin"
    src.write_bytes(b"0123456789")
    header = {"source_agent": "A1", "destination_agent": "A2", "exist": "error", "disposition": "leave",
              "checksum": "sha256", "job_name": "docs", "metadata": {"k": "v"}}
    rec = TransferRecord(tid, "source", "in_progress", "A2", header, recovery_timeout=recovery_timeout,
                         files=[FileRecord(0, str(src), "/in/out.bin", 10, src.stat().st_mtime)])
    return SourceTransfer(_context("A1", store, published), rec)


async def test_events_the_sessions_emit_validate_against_the_schema(tmp_path: Path) -> None:
    """Drive a source session through recovering → resumed → progress → completed, one with -rt 0, and a
    destination clean-up, and validate every event and progress message they publish. This uses the
    sessions' internal entry points; if they are renamed, adapt the calls, not the schema."""
    from agent.destination import DestinationTransfer
    from agent.wire.protocol import Complete, FileHolding, FileResult, ResyncReply
    from agent.store import FileRecord, TransferRecord

    store, published = _Store(), []
    tid = "ab" * 24
    s = _source_session(tmp_path, store, published, tid, recovery_timeout=30)
    s._handle(("link_down",))
    s._handle(("control", ResyncReply(kind="resync_reply", transfer_id=tid, epoch=s.session.epoch,
                                      files=[FileHolding(index=0, held=4, status="ready")])))
    s._handle(("control", FileResult(kind="file_result", transfer_id=tid, index=0, result_code=0,
                                     destination="/in/out.bin", digest="0" * 64)))
    await s._pump()  # nothing left to send: every file has its result, the transfer finishes
    await s._finish()

    tid0 = "cd" * 24
    s0 = _source_session(tmp_path, store, published, tid0, recovery_timeout=0)
    s0._handle(("peer", "UNREACHABLE"))
    await s0._finish()

    part_dir = tmp_path / "in"
    part_dir.mkdir()
    (part_dir / "out.bin.part").write_bytes(b"0123")
    header = {"source_agent": "A1", "destination_agent": "A2", "exist": "error", "checksum": "sha256",
              "job_name": None, "metadata": {}}
    drec = TransferRecord(tid0, "destination", "in_progress", "A1", header,
                          files=[FileRecord(0, "/out/x.bin", str(part_dir / "out.bin"), 10)])
    d = DestinationTransfer(_context("A2", store, published), drec)
    await d.on_complete(Complete(kind="complete", transfer_id=tid0, source_agent="A1",
                                 state="recovery_timed_out", result_code=69))
    await asyncio.sleep(0)  # let the progress publications run

    actions = [e["action"] for _, e in store.events]
    assert actions == ["recovering", "resumed", "progress", "completed", "recovering", "completed", "cleaned_up"]
    for topic, event in store.events:
        assert topic == f"SYSTEM.FTE/Log/{event['agent']}/{event['transfer_id']}"
        validate(event)
    assert store.events[4][1]["state"] == "recovery_timed_out"  # -rt 0: fails on entering recovery
    assert store.events[5][1]["result_code"] == 69 and store.events[5][1]["message_id"] == "BFGSS0081E"
    progress = [json.loads(p) for t, p in published if "/Transfers/" in t]
    assert progress, "no live progress was published"
    for message in progress:
        validate(message, "transfer_progress")


# --------------------------------------------------------------------------- docs/protocol.md


def test_protocol_examples_are_accepted_by_the_agents_parsers() -> None:
    from agent.wire.protocol import Command, ControlMessage, parse_command, parse_control, parse_reply

    def kinds(union: Any) -> set[str]:
        members = typing.get_args(typing.get_args(union)[0])
        return {typing.get_args(m.model_fields["kind"].annotation)[0] for m in members}

    command_kinds, control_kinds = kinds(Command), kinds(ControlMessage)
    seen: set[str] = set()
    for line, obj in _json_blocks(DOCS / "protocol.md"):
        payload = json.dumps(obj).encode()
        try:
            if obj.get("kind") in command_kinds:
                parse_command(payload)
            elif obj.get("kind") in control_kinds:
                parse_control(payload)
            elif "ok" in obj:
                parse_reply(payload)
            else:
                raise AssertionError("not a command, control message or reply")
        except Exception as exc:  # noqa: BLE001 - report which example, whatever the error
            pytest.fail(f"docs/protocol.md:{line}: example refused: {exc}")
        seen.add(obj.get("kind", "reply"))
    missing = (command_kinds | control_kinds) - seen
    assert not missing, f"docs/protocol.md has no example of: {sorted(missing)}"


def test_protocol_md_names_every_message_field() -> None:
    from agent.wire import protocol

    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    models = [protocol.TransferItem, protocol.TransferSpec, protocol.FileOffer, protocol.FileHolding,
              protocol.Reply]
    for union in (protocol.Command, protocol.ControlMessage):
        models += list(typing.get_args(typing.get_args(union)[0]))
    for model in models:
        for field in model.model_fields:
            assert f"`{field}`" in text, f"field {model.__name__}.{field} is not described in docs/protocol.md"
    # the agent status is described with the other JSON documents people subscribe to
    events = (DOCS / "log-events.md").read_text(encoding="utf-8")
    for field in protocol.AgentStatus.model_fields:
        assert f"`{field}`" in events, f"field AgentStatus.{field} is not described in docs/log-events.md"


def test_protocol_md_has_the_chunk_header_layout() -> None:
    from agent.wire.protocol import CHUNK_HEADER, CHUNK_MAGIC

    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    assert f'"{CHUNK_HEADER.format}"' in text
    assert f"{CHUNK_HEADER.size} bytes" in text
    assert CHUNK_MAGIC.decode() in text


# --------------------------------------------------------------------------- docs/result-codes.md


def test_every_result_code_constant_is_documented() -> None:
    from agent.core import results

    text = (DOCS / "result-codes.md").read_text(encoding="utf-8")
    constants = {name: value for name, value in vars(results).items()
                 if name.isupper() and isinstance(value, (int, str)) and not isinstance(value, bool)}
    assert "RECOVERY_TIMED_OUT" in constants and "BFGSS0081E" in constants
    triggers_path = ROOT / "agent" / "core" / "triggers.py"
    if triggers_path.exists():  # the monitor result codes
        from agent.core import triggers

        constants.update({name: value for name, value in vars(triggers).items()
                          if name.startswith("MONITOR_") and isinstance(value, int)})
    for name, value in constants.items():
        if isinstance(value, int):
            assert re.search(rf"^\| {value} \| `{name}` \|", text, re.M), (
                f"results.{name} = {value} has no row '| {value} | `{name}` |' in docs/result-codes.md")
        else:
            assert f"`{value}`" in text, f"message id {value} is not in docs/result-codes.md"


def test_the_readme_quick_start_transfers_inside_the_agents_sandboxes() -> None:
    # A new user who followed "Use it with a real broker" word for word was refused:
    # "'/data/out/file.bin' is outside the agent's sandbox (/root)", since fte-create-agent's default
    # sandbox is the home directory and the README's files are under /data.
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it with a real broker", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    commands = [ln.split("#", 1)[0].split() for ln in block.splitlines() if ln.strip()]
    sandboxes = []
    for words in commands:
        if words and words[0] == "fte-create-agent":
            assert "--sandbox" in words, f"{' '.join(words)}: the default sandbox (your home) does not hold /data"
            sandboxes.append(words[words.index("--sandbox") + 1].split(":"))
    transfers = [w for w in commands if w and w[0] == "fte-create-transfer"]
    assert sandboxes and transfers
    for words in transfers:
        for path in (w for w in words if w.startswith("/")):
            for roots in sandboxes:
                assert any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots), (path, roots)
