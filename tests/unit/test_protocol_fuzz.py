"""Property tests over every parser of untrusted input (agent/wire/protocol.py).

* arbitrary bytes (and arbitrary JSON) never raise anything but ProtocolError;
* valid messages, generated from the models' own field constraints, round-trip through dump() and parse;
* oversized payloads are refused by their size, before any parsing;
* truncated, extended or bit-flipped chunk frames are refused (CRC, length, magic, version, index);
* wrong types, extra fields, negative or out-of-range numbers, over-long paths, malformed transfer ids and
  mismatched discriminators are refused, with a reason that names the field.

The strategies are derived from the pydantic models (types, Literal values, patterns, bounds, lengths), so a
field added to a model is covered without touching this file.
"""

from __future__ import annotations

import json
import struct
import types
import typing
import zlib
from typing import Any, Callable, Literal, Union

import annotated_types as at
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.wire import protocol as p
from agent.wire.protocol import (Ack, AgentStatus, CancelTransfer, Complete, CompleteAck, CreateTransfer, FileEnd,
                            FileResult, ListTransfers, Ping, ProtocolError, QueryTransfer, Reply, RequestRecovery,
                            Resync, ResyncReply, StopAgent, decode_chunk, dump, encode_chunk, parse_agent_status,
                            parse_command, parse_control, parse_reply)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STATUS_LIMIT = 1024 * 1024
JSON_PARSERS: list[tuple[str, Callable[[bytes], Any], int]] = [
    ("command", parse_command, p.MAX_COMMAND_BYTES),
    ("control", parse_control, p.MAX_CONTROL_BYTES),
    ("reply", parse_reply, p.MAX_CONTROL_BYTES),
    ("agent_status", parse_agent_status, STATUS_LIMIT),
]
PARSERS = JSON_PARSERS + [("chunk", decode_chunk, p.CHUNK_HEADER.size + p.MAX_CHUNK_BYTES)]
PARSER_IDS = [name for name, _, _ in PARSERS]
JSON_PARSER_IDS = [name for name, _, _ in JSON_PARSERS]

COMMANDS = [CreateTransfer, CancelTransfer, Ping, QueryTransfer, ListTransfers, StopAgent]
CONTROLS = [Resync, ResyncReply, Ack, FileEnd, FileResult, Complete, CompleteAck, RequestRecovery]
TID = "0123456789abcdef" * 3


# ------------------------------------------------------------------------- strategies from the models

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, at.Ge):
            out["min_value"] = m.ge
        elif isinstance(m, at.Gt):
            out["min_value"] = m.gt + 1
        elif isinstance(m, at.Le):
            out["max_value"] = m.le
        elif isinstance(m, at.Lt):
            out["max_value"] = m.lt - 1
        elif isinstance(m, at.MinLen):
            out["min_size"] = m.min_length
        elif isinstance(m, at.MaxLen):
            out["max_size"] = m.max_length
        elif getattr(m, "pattern", None):
            out["pattern"] = m.pattern
    return out


def from_annotation(tp: Any, metadata: list[Any] = ()) -> st.SearchStrategy[Any]:  # type: ignore[assignment]
    """A strategy for values valid for the annotation `tp` with pydantic/annotated-types `metadata`."""
    metadata = list(metadata)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(tp)
        examples = [x for e in extra for x in (getattr(e, "examples", None) or ())]
        if examples:  # a value checked by a validator (an encoding's name): its documented examples
            return st.sampled_from(examples)
        more: list[Any] = []
        for e in extra:
            more.extend(getattr(e, "metadata", [e]))
        return from_annotation(base, metadata + more)
    b = _bounds(metadata)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        strat = st.one_of(*[from_annotation(a, metadata) for a in options])
        return st.none() | strat if len(options) < len(typing.get_args(tp)) else strat
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        unique_by = (lambda m: m.index) if isinstance(item, type) and "index" in getattr(item, "model_fields", {}) \
            else None
        lo = b.get("min_size", 0)
        return st.lists(from_annotation(item), min_size=lo, max_size=max(lo, min(b.get("max_size", 3), 3)),
                        unique_by=unique_by)
    if origin is dict:
        k, v = typing.get_args(tp)
        return st.dictionaries(from_annotation(k), from_annotation(v), max_size=min(b.get("max_size", 3), 3))
    if tp is Any:
        return json_values
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(b.get("min_value", -(2**63)), b.get("max_value", 2**63 - 1))
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        if "pattern" in b:
            return st.from_regex(b["pattern"], fullmatch=True)
        lo = b.get("min_size", 0)
        return st.text(min_size=lo, max_size=max(lo, min(b.get("max_size", 24), 24)))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_strategy(tp)
    raise NotImplementedError(f"no strategy for {tp!r}; extend from_annotation")


def model_strategy(model: type[BaseModel]) -> st.SearchStrategy[BaseModel]:
    """Instances of `model`: every required field, and each optional field sometimes."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, field in model.model_fields.items():
        strat = from_annotation(field.annotation, field.metadata)
        if field.examples:  # a value checked by a validator (an encoding's name): its documented examples
            strat = st.sampled_from(field.examples)
        if field.is_required():
            required[name] = strat
        else:
            if field.get_default(call_default_factory=True) is not None:
                # dump() leaves out None values: only generate None where None is the default
                strat = strat.filter(lambda v: v is not None)
            optional[name] = strat
    fix = CROSS_FIELD.get(model, lambda kw: kw)
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: model(**fix(kw)))


def _fanout_list(kw: dict[str, Any]) -> dict[str, Any]:
    """TransferSpec.destination_agents depends on two other fields (the first is destination_agent, the source
    is not among them): the generated names made consistent, as distinct as they were generated."""
    def other(name: str, avoid: set[str]) -> str:
        return next(c for c in (name[:27] + x for x in "xyz") if c not in avoid)

    if kw.get("destination_agents") is not None:
        first = kw["destination_agent"]
        if kw["source_agent"] == first:
            kw["source_agent"] = other(first, {first})
        source = kw["source_agent"]
        rest = [a for a in dict.fromkeys(kw["destination_agents"]) if a not in (first, source)]
        kw["destination_agents"] = [first, *(rest or [other(first, {first, source})])]
    return kw


CROSS_FIELD: dict[type[BaseModel], Callable[[dict[str, Any]], dict[str, Any]]] = {p.TransferSpec: _fanout_list}


command_models = st.one_of(*[model_strategy(m) for m in COMMANDS])
control_models = st.one_of(*[model_strategy(m) for m in CONTROLS])
reply_models = model_strategy(Reply)
status_models = model_strategy(AgentStatus)

ROUND_TRIPS = [
    pytest.param(command_models, parse_command, id="command"),
    pytest.param(control_models, parse_control, id="control"),
    pytest.param(reply_models, parse_reply, id="reply"),
    pytest.param(status_models, parse_agent_status, id="agent_status"),
]


def parse_or_refuse(parser: Callable[[bytes], Any], payload: bytes) -> Any:
    """The parser's result, or None when it refused with a ProtocolError (anything else propagates)."""
    try:
        return parser(payload)
    except ProtocolError as exc:
        assert str(exc), "a refusal must carry a reason"
        return None


# ------------------------------------------------------------------------- arbitrary input


@pytest.mark.parametrize(("name", "parser", "limit"), PARSERS, ids=PARSER_IDS)
@FUZZ
@given(payload=st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_protocol_error(name: str, parser: Callable[[bytes], Any], limit: int,
                                                   payload: bytes) -> None:
    parse_or_refuse(parser, payload)


@FUZZ
@given(tail=st.binary(max_size=300))
def test_arbitrary_frames_with_a_valid_magic_only_raise_protocol_error(tail: bytes) -> None:
    """Past the magic and version checks: lengths, indexes and CRCs of random headers."""
    c = parse_or_refuse(decode_chunk, p.CHUNK_MAGIC + bytes([p.PROTOCOL_VERSION]) + tail)
    if c is not None:
        assert len(c.data) == len(tail) + 5 - p.CHUNK_HEADER.size


@pytest.mark.parametrize(("name", "parser", "limit"), JSON_PARSERS, ids=JSON_PARSER_IDS)
@FUZZ
@given(value=json_values)
def test_arbitrary_json_only_raises_protocol_error(name: str, parser: Callable[[bytes], Any], limit: int,
                                                   value: Any) -> None:
    parse_or_refuse(parser, json.dumps(value).encode())


@pytest.mark.parametrize(("name", "parser", "limit"), JSON_PARSERS, ids=JSON_PARSER_IDS)
@pytest.mark.parametrize("payload", [
    pytest.param(b"[" * 100_000, id="deeply-nested-array"),
    pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="deeply-nested-object"),
    pytest.param(b"9" * 5000, id="5000-digit-integer"),
    pytest.param(b'{"kind":"ping","request_id":"r","x":' + b"1" * 5000 + b"}", id="5000-digit-integer-inside"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b'"\\ud800"', id="lone-surrogate"),
    pytest.param(b"\xff\xfe{\x00}\x00", id="utf16"),
    pytest.param(b"", id="empty"),
    pytest.param(b"null", id="null"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"ping"', id="string"),
    pytest.param(b"\x00" * 64, id="nul-bytes"),
])
def test_hostile_json_is_refused(name: str, parser: Callable[[bytes], Any], limit: int, payload: bytes) -> None:
    """Regression: json.loads raised RecursionError / ValueError (not ProtocolError) on the first three."""
    with pytest.raises(ProtocolError):
        parser(payload)


@pytest.mark.parametrize(("model", "parser"), [
    pytest.param(command_models, parse_command, id="command"),
    pytest.param(control_models, parse_control, id="control"),
    pytest.param(reply_models, parse_reply, id="reply"),
])
@FUZZ
@given(data=st.data())
def test_mutated_messages_are_refused_or_still_valid(model: st.SearchStrategy[BaseModel],
                                                     parser: Callable[[bytes], Any], data: st.DataObject) -> None:
    """Replace, delete or add one field (at any depth) of a valid message: refused, or a valid message."""
    doc = json.loads(dump(data.draw(model)))
    # pick a dict somewhere in the document
    holders: list[dict[str, Any]] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            holders.append(v)
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(doc)
    target = data.draw(st.sampled_from(holders))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "add" or not target:
        target[data.draw(st.text(min_size=1, max_size=12))] = data.draw(json_values)
    else:
        key = data.draw(st.sampled_from(sorted(target)))
        if action == "delete":
            del target[key]
        else:
            target[key] = data.draw(json_values)
    result = parse_or_refuse(parser, json.dumps(doc).encode())
    if result is not None:
        assert parser(dump(result)) == result


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("model", "parser"), ROUND_TRIPS)
@FUZZ
@given(data=st.data())
def test_valid_messages_round_trip(model: st.SearchStrategy[BaseModel], parser: Callable[[bytes], Any],
                                   data: st.DataObject) -> None:
    msg = data.draw(model)
    again = parser(dump(msg))
    assert type(again) is type(msg)
    assert again == msg
    assert dump(again) == dump(msg)


@FUZZ
@given(epoch=st.integers(0, p.MAX_EPOCH), index=st.integers(0, p.MAX_FILES_PER_TRANSFER - 1),
       offset=st.integers(0, 2**64 - 1), data=st.binary(max_size=2048), last=st.booleans())
def test_chunks_round_trip(epoch: int, index: int, offset: int, data: bytes, last: bool) -> None:
    c = decode_chunk(encode_chunk(epoch, index, offset, data, last))
    assert (c.epoch, c.index, c.offset, bytes(c.data), c.last) == (epoch, index, offset, data, last)


# ------------------------------------------------------------------------- size limits


@pytest.mark.parametrize(("name", "parser", "limit"), PARSERS, ids=PARSER_IDS)
def test_oversized_payload_is_refused_before_parsing(name: str, parser: Callable[[bytes], Any], limit: int) -> None:
    # not JSON and not a chunk either: the refusal must be about the size, so the size came first
    payload = b"\xff" * (limit + 1)
    with pytest.raises(ProtocolError, match=r"exceeds the limit"):
        parser(payload)


@pytest.mark.parametrize(("name", "parser", "limit"), JSON_PARSERS, ids=JSON_PARSER_IDS)
def test_valid_message_padded_over_the_limit_is_refused(name: str, parser: Callable[[bytes], Any],
                                                        limit: int) -> None:
    body = {
        "command": dump(Ping(kind="ping", request_id="r1")),
        "control": dump(RequestRecovery(kind="request_recovery", transfer_id=TID, reason="x")),
        "reply": dump(Reply(request_id="r1", ok=True)),
        "agent_status": dump(AgentStatus(agent="A1", status="READY", time="t")),
    }[name]
    at_limit = body + b" " * (limit - len(body))
    assert parser(at_limit) is not None  # the limit itself is allowed
    with pytest.raises(ProtocolError, match=f"{limit + 1} bytes exceeds the limit of {limit}"):
        parser(at_limit + b" ")


def test_chunk_at_the_limit_is_accepted_and_one_byte_more_is_refused() -> None:
    frame = encode_chunk(0, 0, 0, bytes(p.MAX_CHUNK_BYTES))
    assert len(decode_chunk(frame).data) == p.MAX_CHUNK_BYTES
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode_chunk(frame + b"\x00")


def test_control_message_with_too_many_files_is_refused() -> None:
    files = [{"index": 0, "held": 0, "status": "ready"}] * (p.MAX_FILES_PER_TRANSFER + 1)
    doc = {"kind": "resync_reply", "transfer_id": TID, "epoch": 0, "files": files}
    with pytest.raises(ProtocolError, match=r"resync_reply\.files: List should have at most 100000 items"):
        parse_control(json.dumps(doc, separators=(",", ":")).encode())


# ------------------------------------------------------------------------- chunk frames

FRAME = encode_chunk(7, 3, 65536, b"some file content " * 8, last=True)


@FUZZ
@given(cut=st.integers(0, len(FRAME) - 1))
def test_truncated_chunk_is_refused(cut: int) -> None:
    with pytest.raises(ProtocolError, match="shorter than its header|truncated"):
        decode_chunk(FRAME[:cut])


@FUZZ
@given(extra=st.binary(min_size=1, max_size=64))
def test_extended_chunk_is_refused(extra: bytes) -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        decode_chunk(FRAME + extra)


@FUZZ
@given(bit=st.integers(0, len(FRAME) * 8 - 1))
def test_any_single_bit_flip_is_refused(bit: int) -> None:
    """Including flips in epoch, index and offset (the CRC covers the header; it used to cover only the data)."""
    frame = bytearray(FRAME)
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtocolError):
        decode_chunk(bytes(frame))


@FUZZ
@given(data=st.binary(max_size=256), junk=st.binary(min_size=1, max_size=8), where=st.integers(0, 300))
def test_corrupted_chunk_is_refused(data: bytes, junk: bytes, where: int) -> None:
    frame = bytearray(encode_chunk(1, 0, 0, data))
    where = min(where, len(frame) - 1)
    before = bytes(frame)
    frame[where:where + len(junk)] = bytes(b ^ 0xFF for b in junk)[:len(frame) - where]
    assume(bytes(frame) != before)
    with pytest.raises(ProtocolError):
        decode_chunk(bytes(frame))


def _frame(magic: bytes = p.CHUNK_MAGIC, version: int = p.PROTOCOL_VERSION, index: int = 0,
           length: int | None = None, data: bytes = b"abc", crc: int | None = None) -> bytes:
    header = p.CHUNK_HEADER.pack(magic, version, 0, 0, 0, index, 0, len(data) if length is None else length, 0)
    if crc is None:
        crc = zlib.crc32(data, zlib.crc32(header[:p.CHUNK_HEADER.size - 4]))
    return header[:-4] + struct.pack(">I", crc) + data


@pytest.mark.parametrize(("frame", "reason"), [
    pytest.param(_frame(), None, id="well-formed"),
    pytest.param(_frame(magic=b"FTEX"), "bad magic", id="magic"),
    pytest.param(_frame(magic=b"\x00" * 4), "bad magic", id="zero-magic"),
    pytest.param(_frame(version=0), "version 0 is not supported", id="version-0"),
    pytest.param(_frame(version=2), "version 2 is not supported", id="version-2"),
    pytest.param(_frame(length=4), "says 4 bytes but carries 3", id="length-too-big"),
    pytest.param(_frame(length=2), "says 2 bytes but carries 3", id="length-too-small"),
    pytest.param(_frame(length=2**32 - 1), "truncated", id="length-huge"),
    pytest.param(_frame(index=p.MAX_FILES_PER_TRANSFER), "index 100000 out of range", id="index"),
    pytest.param(_frame(crc=0), "CRC mismatch", id="crc"),
    pytest.param(_frame(data=b"abc", crc=zlib.crc32(b"abc")), "CRC mismatch", id="payload-only-crc"),
    pytest.param(b"FTEC", "shorter than its header", id="magic-only"),
    pytest.param(b"", "shorter than its header", id="empty"),
])
def test_chunk_frame_checks(frame: bytes, reason: str | None) -> None:
    if reason is None:
        assert bytes(decode_chunk(frame).data) == b"abc"
    else:
        with pytest.raises(ProtocolError, match=reason):
            decode_chunk(frame)


# ------------------------------------------------------------------------- refusals, field by field


def ack(**changes: Any) -> bytes:
    doc: dict[str, Any] = {"kind": "ack", "transfer_id": TID, "epoch": 1, "index": 0, "offset": 0}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def resync(files: list[dict[str, Any]] | None = None, **changes: Any) -> bytes:
    doc: dict[str, Any] = {"kind": "resync", "transfer_id": TID, "epoch": 0, "source_agent": "A1",
                           "destination_agent": "A2", "exist": "error", "checksum": "sha256", "chunk_size": 65536,
                           "files": files if files is not None else
                           [{"index": 0, "source": "/in/a", "destination": "/out/a", "size": 10}]}
    doc.update(changes)
    return json.dumps(doc).encode()


def create(**item: Any) -> bytes:
    it = {"source": "/in/a", "destination": "/out/a", "destination_type": "file", **item}
    return json.dumps({"kind": "create_transfer", "request_id": "r1",
                       "spec": {"source_agent": "A1", "destination_agent": "A2", "items": [it]}}).encode()


LONG = "x" * (p.MAX_PATH_CHARS + 1)

REFUSED_CONTROL = [
    # wrong types (no coercion: strict)
    pytest.param(ack(epoch="1"), "ack.epoch", id="epoch-as-string"),
    pytest.param(ack(index=0.0), "ack.index", id="index-as-float"),
    pytest.param(ack(offset=True), "ack.offset", id="offset-as-bool"),
    pytest.param(ack(rewind="yes"), "ack.rewind", id="bool-as-string"),
    pytest.param(ack(rewind=1), "ack.rewind", id="bool-as-int"),
    pytest.param(ack(transfer_id=12345), "ack.transfer_id", id="tid-as-int"),
    pytest.param(ack(epoch=None), "ack.epoch", id="epoch-null"),
    pytest.param(ack(offset=[0]), "ack.offset", id="offset-as-list"),
    # extra and missing fields
    pytest.param(ack(extra="x"), "ack.extra", id="extra-field"),
    pytest.param(ack(__proto__={}), "ack.__proto__", id="extra-proto"),
    pytest.param(ack(offset=...), "ack.offset", id="missing-field"),
    # numbers out of range
    pytest.param(ack(offset=-1), "ack.offset", id="negative-offset"),
    pytest.param(ack(epoch=-1), "ack.epoch", id="negative-epoch"),
    pytest.param(ack(index=-1), "ack.index", id="negative-index"),
    pytest.param(ack(index=p.MAX_FILES_PER_TRANSFER), "ack.index", id="index-too-big"),
    pytest.param(ack(epoch=2**32), "ack.epoch", id="epoch-over-32-bits"),
    pytest.param(ack(offset=2**63), "ack.offset", id="offset-over-int64"),
    pytest.param(ack(offset=2**200), "ack.offset", id="offset-huge"),
    # transfer ids
    pytest.param(ack(transfer_id=TID.upper()), "ack.transfer_id", id="tid-uppercase"),
    pytest.param(ack(transfer_id=TID[:-1]), "ack.transfer_id", id="tid-47"),
    pytest.param(ack(transfer_id=TID + "0"), "ack.transfer_id", id="tid-49"),
    pytest.param(ack(transfer_id=TID + "\n"), "ack.transfer_id", id="tid-trailing-newline"),
    pytest.param(ack(transfer_id="../" + TID[3:]), "ack.transfer_id", id="tid-path"),
    pytest.param(ack(transfer_id=TID[:-1] + "+"), "ack.transfer_id", id="tid-wildcard"),
    pytest.param(ack(transfer_id=""), "ack.transfer_id", id="tid-empty"),
    # discriminators
    pytest.param(ack(kind="resync"), "resync", id="ack-fields-resync-kind"),
    pytest.param(ack(kind="evil"), "kind", id="unknown-kind"),
    pytest.param(ack(kind=...), "control message", id="no-kind"),
    pytest.param(ack(kind="ACK"), "kind", id="kind-case"),
    pytest.param(ack(kind="ping"), "kind", id="command-kind-on-control"),
    pytest.param(ack(kind=["ack"]), "kind", id="kind-as-list"),
    # resync: paths, names, files
    pytest.param(resync(files=[{"index": 0, "source": "a", "destination": LONG, "size": 1}]),
                 "resync.files.0.destination", id="path-over-limit"),
    pytest.param(resync(files=[{"index": 0, "source": "a", "destination": "", "size": 1}]),
                 "resync.files.0.destination", id="empty-path"),
    pytest.param(resync(files=[{"index": 0, "source": "a", "destination": "b", "size": -1}]),
                 "resync.files.0.size", id="negative-size"),
    pytest.param(resync(files=[{"index": 0, "source": "a", "destination": "b", "size": 2**63}]),
                 "resync.files.0.size", id="size-over-int64"),
    pytest.param(resync(files=[{"index": 0, "source": "a", "destination": "b", "size": 1, "mode": 0o4755}]),
                 "resync.files.0.mode", id="extra-file-field"),
    pytest.param(resync(files=[{"index": 0, "source": "a", "destination": "b", "size": 1},
                               {"index": 0, "source": "c", "destination": "d", "size": 1}]),
                 "appears more than once", id="duplicate-index"),
    pytest.param(resync(destination_agent="A2/../B"), "resync.destination_agent", id="agent-name-with-slash"),
    pytest.param(resync(source_agent="#"), "resync.source_agent", id="agent-name-wildcard"),
    pytest.param(resync(source_agent="A" * 29), "resync.source_agent", id="agent-name-too-long"),
    pytest.param(resync(chunk_size=0), "resync.chunk_size", id="chunk-size-zero"),
    pytest.param(resync(chunk_size=p.MAX_CHUNK_BYTES + 1), "resync.chunk_size", id="chunk-size-too-big"),
    pytest.param(resync(exist="replace"), "resync.exist", id="bad-literal"),
    pytest.param(resync(metadata={"k": 1}), "resync.metadata.k", id="metadata-value-not-str"),
    pytest.param(resync(metadata={f"k{i}": "v" for i in range(65)}), "resync.metadata", id="metadata-too-many"),
    pytest.param(resync(job_name=LONG), "resync.job_name", id="job-name-over-limit"),
    pytest.param(resync(files={"0": {}}), "resync.files", id="files-as-object"),
    pytest.param(resync(files=[{"index": 0, "source": "a", "destination": "b", "size": 1, "mtime": "now"}]),
                 "resync.files.0.mtime", id="mtime-as-string"),
]


@pytest.mark.parametrize(("payload", "where"), REFUSED_CONTROL)
def test_control_refusals_name_the_field(payload: bytes, where: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_control(payload)
    assert where in str(info.value), str(info.value)


def test_control_baselines_are_valid() -> None:
    """The tables above change one thing each from these."""
    assert isinstance(parse_control(ack()), Ack)
    assert isinstance(parse_control(resync()), Resync)
    assert isinstance(parse_command(create()), CreateTransfer)
    assert parse_control(resync(files=[])).files == []


def test_nan_mtime_is_refused() -> None:
    """Regression: NaN was accepted and dumped as null, which then failed to parse (no round trip)."""
    payload = resync().replace(b'"size": 10}', b'"size": 10, "mtime": NaN}')
    with pytest.raises(ProtocolError, match="mtime"):
        parse_control(payload)


@pytest.mark.parametrize(("payload", "where"), [
    pytest.param(create(destination=LONG), "spec.items.0.destination", id="path-over-limit"),
    pytest.param(create(source=""), "spec.items.0.source", id="empty-source"),
    pytest.param(create(destination_type="symlink"), "destination_type", id="bad-destination-type"),
    pytest.param(create(recursive="true"), "recursive", id="bool-as-string"),
    pytest.param(create(owner="root"), "owner", id="extra-item-field"),
    pytest.param(json.dumps({"kind": "cancel_transfer", "request_id": "r", "transfer_id": "x" * 48}).encode(),
                 "transfer_id", id="cancel-bad-tid"),
    pytest.param(json.dumps({"kind": "query_transfer", "request_id": "r"}).encode(), "transfer_id",
                 id="query-missing-tid"),
    pytest.param(json.dumps({"kind": "ping", "request_id": ""}).encode(), "request_id", id="empty-request-id"),
    pytest.param(json.dumps({"kind": "ping", "request_id": "r" * 65}).encode(), "request_id",
                 id="long-request-id"),
    pytest.param(json.dumps({"kind": "ping", "request_id": "r", "reply_to": "a/b"}).encode(), "reply_to",
                 id="reply-to-with-slash"),
    pytest.param(json.dumps({"kind": "ping", "request_id": "r", "reply_to": "#"}).encode(), "reply_to",
                 id="reply-to-wildcard"),
    pytest.param(json.dumps({"kind": "ping", "request_id": 7}).encode(), "request_id", id="request-id-int"),
    pytest.param(json.dumps({"kind": "stop_agent", "request_id": "r", "immediate": "yes"}).encode(), "immediate",
                 id="immediate-as-string"),
    pytest.param(json.dumps({"kind": "ping", "request_id": "r", "x": 1}).encode(), "x", id="extra-field"),
    pytest.param(json.dumps({"kind": "resync", "request_id": "r"}).encode(), "kind", id="control-kind-on-command"),
    pytest.param(json.dumps({"request_id": "r"}).encode(), "command", id="no-kind"),
    pytest.param(json.dumps({"kind": "create_transfer", "request_id": "r", "spec": "rm -rf /"}).encode(), "spec",
                 id="spec-as-string"),
])
def test_command_refusals_name_the_field(payload: bytes, where: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(payload)
    assert where in str(info.value), str(info.value)


@pytest.mark.parametrize(("doc", "where"), [
    pytest.param({"request_id": "r", "ok": "true"}, "ok", id="ok-as-string"),
    pytest.param({"request_id": "r", "ok": True, "result_code": "0"}, "result_code", id="code-as-string"),
    pytest.param({"request_id": "r", "ok": True, "result_code": 2**63}, "result_code", id="code-too-big"),
    pytest.param({"request_id": "r", "ok": True, "data": []}, "data", id="data-as-list"),
    pytest.param({"request_id": "r", "ok": True, "extra": 1}, "extra", id="extra-field"),
    pytest.param({"ok": True}, "request_id", id="missing-request-id"),
])
def test_reply_refusals(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_reply(json.dumps(doc).encode())
    assert where in str(info.value)


@pytest.mark.parametrize(("doc", "where"), [
    pytest.param({"agent": "A/1", "status": "READY", "time": "t"}, "agent", id="name-with-slash"),
    pytest.param({"agent": "", "status": "READY", "time": "t"}, "agent", id="empty-name"),
    pytest.param({"agent": "A1", "status": "BORED", "time": "t"}, "status", id="unknown-status"),
    pytest.param({"agent": "A1", "status": "READY", "time": 5}, "time", id="time-as-int"),
    pytest.param({"agent": "A1", "status": "READY", "time": "t", "pid": "12"}, "pid", id="pid-as-string"),
    pytest.param({"agent": "A1", "status": "READY", "time": "t", "source_transfers": {"x": 1}},
                 "source_transfers", id="transfers-wrong-shape"),
    pytest.param({"status": "READY", "time": "t"}, "agent", id="missing-name"),
])
def test_agent_status_refusals(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_agent_status(json.dumps(doc).encode())
    assert where in str(info.value)


def test_agent_status_is_lenient_about_extra_fields() -> None:
    """Newer agents may publish more: extra fields are kept, not refused."""
    st_ = parse_agent_status(json.dumps({"agent": "A1", "status": "READY", "time": "t", "future": [1]}).encode())
    assert st_.agent == "A1" and st_.model_extra == {"future": [1]}


@FEW
@given(name=st.from_regex(p.NAME_PATTERN, fullmatch=True))
def test_valid_agent_names_are_accepted(name: str) -> None:
    assert parse_agent_status(dump(AgentStatus(agent=name, status="READY", time="t"))).agent == name


@FEW
@given(tid=st.text(max_size=60).filter(lambda s: not p.TRANSFER_ID_RE.fullmatch(s)))
def test_any_malformed_transfer_id_is_refused(tid: str) -> None:
    with pytest.raises(ProtocolError, match="transfer_id"):
        parse_control(ack(transfer_id=tid))
    with pytest.raises(ProtocolError, match="transfer_id"):
        parse_command(json.dumps({"kind": "cancel_transfer", "request_id": "r", "transfer_id": tid}).encode())


@FEW
@given(kind=st.sampled_from([m.model_fields["kind"].annotation.__args__[0] for m in CONTROLS]),
       other=st.sampled_from([m.model_fields["kind"].annotation.__args__[0] for m in COMMANDS]))
def test_kinds_do_not_cross_parsers(kind: str, other: str) -> None:
    """A control kind is never a command and a command kind never a control message, whatever the fields."""
    with pytest.raises(ProtocolError):
        parse_command(json.dumps({"kind": kind, "request_id": "r", "transfer_id": TID}).encode())
    with pytest.raises(ProtocolError):
        parse_control(json.dumps({"kind": other, "request_id": "r", "transfer_id": TID}).encode())


@FEW
@given(data=st.data())
def test_fields_of_one_kind_under_another_kind_are_refused(data: st.DataObject) -> None:
    a, b = data.draw(st.lists(st.sampled_from(CONTROLS), min_size=2, max_size=2, unique=True))
    doc = json.loads(dump(data.draw(model_strategy(a))))
    doc["kind"] = b.model_fields["kind"].annotation.__args__[0]
    result = parse_or_refuse(parse_control, json.dumps(doc).encode())
    # only acceptable when the fields happen to be valid for the other kind too
    if result is not None:
        assert type(result) is b
        assert set(doc) <= set(b.model_fields)
