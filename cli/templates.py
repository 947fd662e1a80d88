"""Transfer templates and transfer request files.

* A **template** is a named, possibly partial transfer: `fte-create-template -tn NAME [transfer flags]
  [SOURCE...]` publishes it, retained (QoS 1), on `SYSTEM.FTE/Templates/<NAME>` as
  `{"name", "created", "created_by", "spec", "signature"}`, where `spec` has the fields of a TransferSpec,
  any of which may be missing, and `signature` is the creator's (agent.definitions): every reader verifies
  it against the creators it trusts before using or showing the template as good, because anyone who may
  publish on the broker can replace a retained message. `fte-list-templates`, `fte-delete-templates` read and remove them, and
  `fte-create-transfer -tn NAME [flags] [SOURCE...]` submits one (beyond the reference system, where
  templates are submitted from a GUI only).
* A **transfer request file** is `{"version": 1, "spec": <a complete TransferSpec>}`, written by
  `fte-create-transfer ... -gt FILE` and submitted by `fte-create-transfer -td FILE`; resource monitors
  take the same file as their task (`load_request_file`). `-td` also accepts a template's JSON (one line
  of `fte-list-templates --json NAME`).

The override rules (`merge`): a flag given on the command line replaces the template's value; sources
given on the command line replace the template's sources (they go to the command line's -df/-dd, else to
the template's destination); `-md` adds keys to the template's metadata (a key given on both sides takes
the command line's value); whatever is still missing afterwards is an error naming the flag to give.
See docs/templates.md.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, List, Literal, Optional

import typer
from pydantic import Field, ValidationError, model_validator

from agent.wire.programs import ProgramCalls
from agent.wire.protocol import (MAX_COMMAND_BYTES, MAX_FANOUT, MAX_INT64, AgentName, Checksum, EncodingName,
                                LineEnding, Metadata, Path_, Strict, TransferSpec, TriggerText, fanout_problem, utc_now)

from agent.definitions import DefinitionTrust, DefinitionTrustError

from .app import BROKER_HELP, command, err, fail, out, run
from .client import ClientError, FteClient, broker_url
from .safe_text import safe
from .transfer_request import (BANDWIDTH_HELP, DESTINATION_ENCODING_OPTION, LINE_ENDING_OPTION, MODE_OPTION,
                               DESTINATION_AGENT_HELP, PRIORITY_HELP, SOURCE_ENCODING_OPTION, check_flags,
                               check_trigger, destination_agents, destinations_text, parse_metadata,
                               priority_and_bandwidth, text_fields, text_flags_without_text_mode)
TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
TEMPLATE_NAME_RE = re.compile(TEMPLATE_NAME_PATTERN)
REQUEST_VERSION = 1
TEXT_FIELDS = ("mode", "source_encoding", "destination_encoding", "destination_line_ending")  # -t -sce -dce -dle
# What `fte-list-templates --json` adds to a template's document (not part of what is signed).
LISTING_FIELDS = ("verified", "problem")
# How long to wait for retained messages after subscribing (they come at once when they exist).
SETTLE = 0.7


class TemplateError(ClientError):
    """A template or transfer request cannot be used; the message says what to give instead."""


class RequestFileError(TemplateError, ValueError):
    """A transfer request file (or template file) that cannot be read. `str(exc)` is the problem;
    `exc.path` the file; `exc.line()` both, as one line for the user."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(problem, 1)
        self.path = Path(path)
        self.problem = problem

    def line(self) -> str:
        return f"transfer request file {self.path}: {self.problem}"


# --------------------------------------------------------------------------- models


TemplateName = Annotated[str, Field(pattern=TEMPLATE_NAME_PATTERN)]


class TemplateItem(Strict):
    """A TransferItem of which any part may be missing. An item without `source` gives the destination
    (and -r) for the sources given at submit time; it is then the template's only item."""

    source: Path_ | None = None
    destination: Path_ | None = None
    destination_type: Literal["file", "directory"] | None = None
    recursive: bool = False

    @model_validator(mode="after")
    def _destination_and_type(self) -> "TemplateItem":
        if (self.destination is None) != (self.destination_type is None):
            raise ValueError("destination and destination_type go together: give both or neither")
        return self


class TemplateSpec(Strict):
    """A TransferSpec whose fields may be missing (a template's `spec`)."""

    source_agent: AgentName | None = None
    destination_agent: AgentName | None = None
    items: Annotated[list[TemplateItem], Field(max_length=10_000)] = Field(default_factory=list)
    exist: Literal["error", "overwrite"] | None = None
    disposition: Literal["leave", "delete"] | None = None
    checksum: Checksum | None = None
    recovery_timeout: Annotated[int, Field(ge=-1, le=MAX_INT64)] | None = None
    job_name: Annotated[str, Field(max_length=256)] | None = None
    metadata: Metadata = Field(default_factory=dict)
    mode: Literal["binary", "text"] | None = None
    source_encoding: EncodingName | None = None
    destination_encoding: EncodingName | None = None
    destination_line_ending: LineEnding | None = None
    programs: ProgramCalls | None = None
    priority: Annotated[int, Field(ge=0, le=9)] | None = None  # -pr
    bandwidth: Annotated[int, Field(ge=1, le=MAX_INT64)] | None = None  # --bandwidth, bytes a second
    trigger: TriggerText | None = None
    # -da A2,A3,A4: a fan-out template (destination_agent is its first)
    destination_agents: Annotated[list[AgentName], Field(min_length=2, max_length=MAX_FANOUT)] | None = None

    @model_validator(mode="after")
    def _sourceless_item_alone(self) -> "TemplateSpec":
        if len(self.items) > 1 and any(i.source is None for i in self.items):
            raise ValueError("an item without a source must be the only item")
        agents = self.destination_agents
        if agents is not None:  # a fan-out template: as TransferSpec checks it, with what the template has
            problem = fanout_problem(self.source_agent or "", agents)
            if problem is None and agents[0] != self.destination_agent:
                problem = f"the first of destination_agents ({agents[0]}) must be destination_agent"
            if problem is not None:
                raise ValueError(problem)
        return self


class Template(Strict):
    """The retained message on <prefix>/Templates/<name>."""

    name: TemplateName
    created: Annotated[str, Field(max_length=64)]
    created_by: Annotated[str, Field(max_length=256)] | None = None
    spec: TemplateSpec
    # the creator's Ed25519 signature (agent.definitions); None only in templates of an older fte
    signature: Annotated[str, Field(max_length=128)] | None = None


class RequestFile(Strict):
    """A transfer request file: `fte-create-transfer -gt` writes it, `-td` and monitors (-mt) read it."""

    version: Literal[1]
    spec: TransferSpec


def validate_template_name(name: str) -> str:
    if not TEMPLATE_NAME_RE.match(name or ""):
        raise TemplateError(f"{name!r} is not a valid template name: 1-64 characters of A-Z a-z 0-9 . _ -")
    return name


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    if e.get("type") == "json_invalid":
        return f"not JSON: {e.get('msg')}"
    where = ".".join(str(p) for p in e.get("loc", ()))
    msg = str(e.get("msg", "invalid"))
    return f"{where}: {msg}" if where else msg


# --------------------------------------------------------------------------- merging


@dataclass
class Overrides:
    """What the command line gave; None (or empty) = not given, so the template's value stands."""

    source_agent: str | None = None
    destination_agent: str | None = None
    destination_agents: list[str] | None = None  # -da A2,A3,A4 (destination_agent is then A2)
    dest_file: str | None = None
    dest_dir: str | None = None
    exist: str | None = None
    disposition: str | None = None
    checksum: str | None = None
    recursive: bool | None = None
    recovery_timeout: int | None = None
    job_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    text: dict[str, Any] = field(default_factory=dict)  # -t, -sce, -dce, -dle given (transfer_request.text_fields)
    priority: int | None = None
    bandwidth: int | None = None  # bytes a second (parsed from --bandwidth RATE)
    trigger: str | None = None


def _destination(file: str | None, directory: str | None) -> tuple[str, Literal["file", "directory"]] | None:
    if file is not None and directory is not None:
        raise TemplateError("give at most one destination: -df FILE or -dd DIRECTORY")
    if file is not None:
        return file, "file"
    if directory is not None:
        return directory, "directory"
    return None


def _template_destination(base: TemplateSpec, label: str) -> tuple[str, Literal["file", "directory"]]:
    found = {(i.destination, i.destination_type) for i in base.items if i.destination is not None}
    if not found:
        raise TemplateError(f"{label} has no destination; give -df FILE or -dd DIRECTORY")
    if len(found) > 1:
        raise TemplateError(f"{label} sends its files to different destinations; with new sources give "
                            f"-df FILE or -dd DIRECTORY")
    dest, kind = found.pop()
    assert dest is not None and kind is not None
    return dest, kind


def merge(base: TemplateSpec | dict[str, Any] | None, ov: Overrides, label: str = "the template") -> TransferSpec:
    """The transfer that `base` (a template's or request file's spec) and the command line make together.

    Flags given override `base`; sources given replace its sources; -md adds keys. Raises TemplateError
    naming what is missing ("template T has no destination agent; give -da") or invalid.
    """
    if base is None:
        base = TemplateSpec()
    elif isinstance(base, dict):
        try:
            base = TemplateSpec.model_validate(base)
        except ValidationError as exc:
            raise TemplateError(f"{label} is invalid: {_first_error(exc)}") from None
    cli_dest = _destination(ov.dest_file, ov.dest_dir)
    source_agent = ov.source_agent or base.source_agent
    if not source_agent:
        raise TemplateError(f"{label} has no source agent; give -sa")
    destination_agent = ov.destination_agent or base.destination_agent
    if not destination_agent:
        raise TemplateError(f"{label} has no destination agent; give -da")
    # -da given replaces the template's destinations, all of them (-da A5 makes a fan-out template's one transfer)
    fanout = ov.destination_agents if ov.destination_agent else base.destination_agents
    items: list[dict[str, Any]] = []
    if ov.sources:
        dest, kind = cli_dest or _template_destination(base, label)
        recursive = bool(ov.recursive) or any(i.recursive for i in base.items)
        items = [dict(source=s, destination=dest, destination_type=kind, recursive=recursive) for s in ov.sources]
    else:
        sourced = [i for i in base.items if i.source is not None]
        if not sourced:
            raise TemplateError(f"{label} has no source files; give them as arguments (after the flags)")
        for i in sourced:
            d = cli_dest or ((i.destination, i.destination_type) if i.destination is not None else None)
            if d is None:
                raise TemplateError(f"{label} has no destination for {i.source}; give -df FILE or -dd DIRECTORY")
            items.append(dict(source=i.source, destination=d[0], destination_type=d[1],
                              recursive=bool(ov.recursive) or i.recursive))
    values: dict[str, Any] = dict(source_agent=source_agent, destination_agent=destination_agent, items=items,
                                  metadata={**base.metadata, **ov.metadata})
    if fanout is not None:
        values["destination_agents"] = fanout
    for name in ("exist", "disposition", "checksum", "recovery_timeout", "job_name", "priority", "bandwidth",
                 "trigger"):
        value = getattr(ov, name)
        if value is None:
            value = getattr(base, name)
        if value is not None:
            values[name] = value.lower() if name == "checksum" else value
    for name in TEXT_FIELDS:
        value = ov.text.get(name, getattr(base, name))
        if value is not None:
            values[name] = value
    if base.programs is not None:  # -presrc etc. given on the command line replace these (with_programs)
        values["programs"] = base.programs
    try:
        spec = TransferSpec.model_validate(values)
    except ValidationError as exc:
        raise TemplateError(f"invalid transfer request from {label}: {_first_error(exc)}") from None
    problem = text_flags_without_text_mode(spec)
    if problem:
        raise TemplateError(f"{label}: {problem}")
    return spec


def template_spec(ov: Overrides) -> TemplateSpec:
    """The (partial) spec that fte-create-template's flags describe."""
    dest = _destination(ov.dest_file, ov.dest_dir)
    item: dict[str, Any] = {"recursive": bool(ov.recursive)}
    if dest is not None:
        item.update(destination=dest[0], destination_type=dest[1])
    if ov.sources:
        items = [dict(item, source=s) for s in ov.sources]
    elif dest is not None or ov.recursive:
        items = [item]
    else:
        items = []
    values: dict[str, Any] = dict(source_agent=ov.source_agent, destination_agent=ov.destination_agent,
                                  destination_agents=ov.destination_agents, items=items, exist=ov.exist,
                                  disposition=ov.disposition,
                                  checksum=ov.checksum.lower() if ov.checksum else None,
                                  recovery_timeout=ov.recovery_timeout, job_name=ov.job_name, metadata=ov.metadata,
                                  **ov.text, priority=ov.priority, bandwidth=ov.bandwidth, trigger=ov.trigger)
    try:
        return TemplateSpec.model_validate(values)
    except ValidationError as exc:
        raise TemplateError(f"invalid template: {_first_error(exc)}") from None


def given(ctx: Any, name: str) -> bool:
    """Whether parameter `name` came from the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and getattr(source, "name", "") != "DEFAULT"


def overrides_from(ctx: Any, **values: Any) -> Overrides:
    """Overrides holding only the values the user gave (by parameter name, as in create-transfer)."""
    kept = {k: v for k, v in values.items() if given(ctx, k)}
    priority, bandwidth = priority_and_bandwidth(kept.get("priority"), kept.get("bandwidth"))
    first, fanout = (destination_agents(kept["destination_agent"], kept.get("source_agent"))
                     if kept.get("destination_agent") else (None, None))
    return Overrides(
        source_agent=kept.get("source_agent"), destination_agent=first, destination_agents=fanout,
        dest_file=kept.get("dest_file"), dest_dir=kept.get("dest_dir"), exist=kept.get("exist"),
        disposition=kept.get("disposition"), checksum=kept.get("checksum"),
        recursive=True if kept.get("recursive") else None, recovery_timeout=kept.get("recovery_timeout"),
        job_name=kept.get("job_name"), metadata=parse_metadata(kept.get("metadata")),
        sources=list(values.get("sources") or []),
        text=text_fields(kept.get("mode"), kept.get("source_encoding"), kept.get("destination_encoding"),
                         kept.get("destination_line_ending")), priority=priority, bandwidth=bandwidth,
        trigger=kept.get("trigger"))


# --------------------------------------------------------------------------- request files


def request_document(spec: TransferSpec) -> dict[str, Any]:
    """The JSON document of a transfer request file."""
    return {"version": REQUEST_VERSION, "spec": json.loads(spec.model_dump_json(exclude_none=True))}


def write_request_file(path: Path | str, spec: TransferSpec) -> Path:
    path = Path(path)
    try:
        path.write_text(json.dumps(request_document(spec), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise RequestFileError(path, f"cannot write it: {exc.strerror or exc}") from None
    return path


def read_definition_file(path: Path | str, trust: DefinitionTrust | None = None) -> tuple[str, TemplateSpec, str]:
    """A transfer request file or a template's JSON, as (kind "request"|"template", spec, label).

    The spec of a template may be partial; a template must verify (`verify_template`). Raises
    RequestFileError (one line: the file and the problem).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise RequestFileError(path, "is a directory, not a file")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_COMMAND_BYTES + 1)
    except OSError as exc:
        raise RequestFileError(path, f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_COMMAND_BYTES:
        raise RequestFileError(path, f"larger than {MAX_COMMAND_BYTES} bytes")
    from pydantic_core import from_json

    try:
        data = from_json(raw)
    except ValueError as exc:
        raise RequestFileError(path, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestFileError(path, 'not a JSON object; expected {"version": 1, "spec": {...}}')
    if "version" in data:
        if data["version"] != REQUEST_VERSION:
            raise RequestFileError(path, f"version {data['version']!r} is not supported (this fte reads "
                                         f"version {REQUEST_VERSION})")
        try:
            req = RequestFile.model_validate_json(raw, strict=True)
        except ValidationError as exc:
            raise RequestFileError(path, _first_error(exc)) from None
        return "request", TemplateSpec.model_validate(req.spec.model_dump()), f"transfer request file {path}"
    if "name" in data and "spec" in data:
        # a line of `fte-list-templates --json` carries the listing's verdict; the file is verified afresh
        document = {k: v for k, v in data.items() if k not in LISTING_FIELDS}
        try:
            t = Template.model_validate(document, strict=True)
        except ValidationError as exc:
            raise RequestFileError(path, f"template: {_first_error(exc)}") from None
        try:
            creator = verify_template(t.name, document, trust)
        except TemplateError as exc:
            raise RequestFileError(path, str(exc)) from None
        return "template", t.spec, f"template {t.name} (file {path}, signed by {creator})"
    raise RequestFileError(path, 'neither a transfer request ({"version": 1, "spec": {...}}, from '
                                 'fte-create-transfer -gt) nor a template ({"name", "spec", ...})')


def load_request_file(path: Path | str, trust: DefinitionTrust | None = None) -> dict[str, Any]:
    """A complete transfer request from `path`: {"version": 1, "spec": <TransferSpec dict>}.

    Accepts what `fte-create-transfer -gt` writes, and a template's JSON when the template is complete.
    Raises RequestFileError (a ValueError; `str(exc)` is the problem, `exc.line()` names the file too).
    """
    kind, spec, label = read_definition_file(path, trust)
    try:
        full = merge(spec, Overrides(), label)
    except TemplateError as exc:
        raise RequestFileError(path, str(exc)) from None
    return request_document(full)


# --------------------------------------------------------------------------- the broker


def _parse_template(name: str, payload: bytes) -> Template:
    if len(payload) > MAX_COMMAND_BYTES:
        raise TemplateError(f"template {name} on the broker is invalid: larger than {MAX_COMMAND_BYTES} bytes")
    try:
        t = Template.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        raise TemplateError(f"template {name} on the broker is invalid: {_first_error(exc)}; replace it with "
                            f"fte-create-template -tn {name} --force, or delete it") from None
    if t.name != name:
        raise TemplateError(f"template {name} on the broker is invalid: its name field says {t.name!r}")
    return t


async def read_templates(c: FteClient, name: str | None = None, settle: float = SETTLE
                         ) -> dict[str, bytes]:
    """The retained template payloads: {name: payload}. With `name`, returns as soon as it arrives."""
    q = await c.subscribe(c.topics.templates(name))
    found: dict[str, bytes] = {}
    while True:
        try:
            m = await asyncio.wait_for(q.get(), settle)
        except asyncio.TimeoutError:
            return found
        levels = c.topics.split(str(m.topic))
        if len(levels) != 2 or levels[0] != c.topics.TEMPLATES:
            continue
        payload = bytes(m.payload) if isinstance(m.payload, (bytes, bytearray)) else b""
        if payload:
            found[levels[1]] = payload
        else:  # deleted while we listened
            found.pop(levels[1], None)
        if name is not None and levels[1] == name and payload:
            return found


def trust_here() -> DefinitionTrust:
    """The creators this client trusts: its own keys and keys/trusted_creators, under $FTE_CONFIG_HOME."""
    from agent.settings import config_home

    return DefinitionTrust(config_home())


def verify_template(name: str, document: dict[str, Any], trust: DefinitionTrust | None = None) -> str:
    """The creator of template `name` if its signature verifies with a trusted creator's key; else a
    TemplateError saying what is wrong and how to fix it. `document` is the template as published."""
    try:
        return (trust or trust_here()).verify("template", name, document)
    except DefinitionTrustError as exc:
        raise TemplateError(str(exc)) from None
    except ValueError as exc:  # a trusted_creators file that cannot be read
        raise TemplateError(f"cannot check template {name}: {exc}") from None


def _document(payload: bytes) -> dict[str, Any]:
    from pydantic_core import from_json

    data = from_json(payload)
    assert isinstance(data, dict)  # _parse_template accepted it as a Template
    return data


def check_template(name: str, payload: bytes, trust: DefinitionTrust | None = None) -> tuple[Template, str]:
    """A retained payload as a valid, verified template and its creator; else TemplateError."""
    t = _parse_template(name, payload)
    return t, verify_template(name, _document(payload), trust)


async def fetch_template(url: str, name: str) -> tuple[Template, str]:
    """Template `name` from the broker and its (verified) creator."""
    validate_template_name(name)
    async with FteClient(url) as c:
        found = await read_templates(c, name, settle=1.0)
        if name not in found:
            raise TemplateError(f"template {name} does not exist on the broker at {c.url}; list the templates "
                                f"with fte-list-templates")
        return check_template(name, found[name])


async def _publish(c: FteClient, name: str, payload: bytes) -> None:
    assert c.client is not None
    import aiomqtt

    try:
        await c.client.publish(c.topics.templates(name), payload, qos=1, retain=True)
    except aiomqtt.MqttError as exc:
        raise ClientError(f"lost the broker at {c.url}: {exc}") from None


def submission_line(spec: TransferSpec, label: str, creator: str | None = None) -> str:
    """What is about to be submitted, in one line (printed before it is): from where, to where, -sd."""
    first = spec.items[0]
    more = f" (+{len(spec.items) - 1} more)" if len(spec.items) > 1 else ""
    dests = {(i.destination, i.destination_type) for i in spec.items}
    dest = f"{first.destination} ({first.destination_type})" if len(dests) == 1 else "several destinations"
    who = f" by {creator} (signature verified)" if creator else ""
    return (f"{label}{who}: {spec.source_agent}:{first.source}{more} -> {destinations_text(spec)}:{dest}; "
            f"-sd {spec.disposition}, -de {spec.exist}")


def summary(t: Template, problem: str | None = None) -> list[str]:
    """`fte-list-templates -v`: agents, files, destination, -rt and the rest that is set."""
    s = t.spec
    sources = [i.source for i in s.items if i.source is not None]
    dests = sorted({(i.destination, i.destination_type) for i in s.items if i.destination is not None})
    if not dests:
        dest = "(not set: give -df or -dd)"
    elif len(dests) == 1:
        dest = f"{dests[0][0]} ({dests[0][1]})"
    else:
        dest = "; ".join(f"{i.source} -> {i.destination} ({i.destination_type})" for i in s.items)
    lines = [t.name,
             f"  agents:       {s.source_agent or '(not set: give -sa)'} -> "
             f"{destinations_text(s) if s.destination_agent else '(not set: give -da)'}",
             f"  files:        {', '.join(sources) if sources else '(not set: give them when submitting)'}",
             f"  destination:  {dest}",
             f"  recovery timeout (-rt): {s.recovery_timeout if s.recovery_timeout is not None else 'agent default'}"]
    options = []
    for flag, value in (("-de", s.exist), ("-sd", s.disposition), ("-cs", s.checksum), ("-jn", s.job_name),
                        ("-t", s.mode), ("-sce", s.source_encoding), ("-dce", s.destination_encoding),
                        ("-dle", s.destination_line_ending), ("-pr", s.priority), ("--bandwidth", s.bandwidth),
                        ("-tr", s.trigger)):
        if value is not None:
            options.append(f"{flag} {value}")
    if any(i.recursive for i in s.items):
        options.append("-r")
    if s.metadata:
        options.append("-md " + ",".join(f"{k}={v}" for k, v in s.metadata.items()))
    if options:
        lines.append(f"  options:      {' '.join(options)}")
    lines.append(f"  created:      {t.created}" + (f" by {t.created_by}" if t.created_by else "")
                 + (" (claimed)" if problem and t.created_by else ""))
    lines.append(f"  UNVERIFIED:   {problem}" if problem else f"  signature:    verified ({t.created_by})")
    return lines


# --------------------------------------------------------------------------- commands


def say(text: str) -> None:
    out.print(safe(text), markup=False, emoji=False, soft_wrap=True)


@command("create-template")
def create_template(
    sources: Optional[List[str]] = typer.Argument(None, help="Source file(s) or directories on the source "
                                                             "agent (may be left to the submitter)."),
    name: str = typer.Option(..., "-tn", "--template-name", help="Template name: 1-64 of A-Z a-z 0-9 . _ -"),
    source_agent: Optional[str] = typer.Option(None, "-sa", "--source-agent", help="Source agent."),
    destination_agent: Optional[str] = typer.Option(None, "-da", "--destination-agent", help=DESTINATION_AGENT_HELP),
    dest_file: Optional[str] = typer.Option(None, "-df", "--destination-file", help="Destination file."),
    dest_dir: Optional[str] = typer.Option(None, "-dd", "--destination-directory",
                                           help="Destination directory."),
    exist: Optional[str] = typer.Option(None, "-de", "--destination-exists", help="error | overwrite"),
    disposition: Optional[str] = typer.Option(None, "-sd", "--source-disposition",
                                              help="leave | delete (only on success)"),
    checksum: Optional[str] = typer.Option(None, "-cs", "--checksum", help="sha256 | md5 | none"),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Recurse into source directories."),
    recovery_timeout: Optional[int] = typer.Option(
        None, "-rt", "--recovery-timeout",
        help="Seconds to keep recovering a stalled transfer: -1 forever, 0 fail at once."),
    job_name: Optional[str] = typer.Option(None, "-jn", "--job-name", help="Job name, carried in the log."),
    metadata: List[str] = typer.Option([], "-md", "--metadata", help="key=value[,key=value] metadata."),
    force: bool = typer.Option(False, "-f", "--force", help="Replace an existing template of that name."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    mode: Optional[str] = MODE_OPTION,
    source_encoding: Optional[str] = SOURCE_ENCODING_OPTION,
    destination_encoding: Optional[str] = DESTINATION_ENCODING_OPTION,
    destination_line_ending: Optional[str] = LINE_ENDING_OPTION,
    priority: Optional[int] = typer.Option(None, "-pr", "--priority", help=PRIORITY_HELP),
    bandwidth: Optional[str] = typer.Option(None, "--bandwidth", metavar="RATE", help=BANDWIDTH_HELP),
    trigger: Optional[str] = typer.Option(None, "-tr", "--trigger",
                                          help="Trigger condition, as fte-create-transfer -tr."),
) -> None:
    """Store a transfer template on the broker (MFT's fteCreateTemplate); submit it with
    fte-create-transfer -tn NAME."""
    validate_template_name(name)
    check_flags(exist, disposition, checksum, recovery_timeout)
    text = text_fields(mode, source_encoding, destination_encoding, destination_line_ending)
    pr, rate = priority_and_bandwidth(priority, bandwidth)
    check_trigger(trigger)
    first, fanout = destination_agents(destination_agent, source_agent) if destination_agent else (None, None)
    spec = template_spec(Overrides(
        source_agent=source_agent, destination_agent=first, destination_agents=fanout, dest_file=dest_file,
        dest_dir=dest_dir, exist=exist, disposition=disposition, checksum=checksum,
        recursive=recursive or None, recovery_timeout=recovery_timeout, job_name=job_name,
        metadata=parse_metadata(metadata), sources=list(sources or []), text=text, priority=pr, bandwidth=rate,
        trigger=trigger))
    from agent.auth import keys_dir, load_private, requester_name
    from agent.definitions import sign_definition
    from agent.settings import config_home

    creator = requester_name()
    try:
        key = load_private(config_home(), creator)
    except ValueError as exc:
        fail(str(exc))
    if key is None:
        fail(f"no signing key for {creator} in {keys_dir(config_home())}: a template is signed by its "
             f"creator; create your key with: fte key generate")
    unsigned = Template(name=name, created=utc_now(), created_by=creator, spec=spec)
    document = sign_definition("template", name, json.loads(unsigned.model_dump_json(exclude_none=True)),
                               creator, key)

    async def go() -> tuple[bool, str]:
        async with FteClient(broker_url(broker, source_agent)) as c:
            existing = await read_templates(c, name, settle=1.0)
            if name in existing and not force:
                raise TemplateError(f"template {name} already exists on the broker at {c.url}; use --force "
                                    f"to replace it")
            await _publish(c, name, json.dumps(document, ensure_ascii=False).encode())
            return name in existing, c.url

    replaced, url = run(go())
    files = sum(1 for i in spec.items if i.source is not None)
    say(f"{'Replaced' if replaced else 'Created'} template {name} "
        f"({spec.source_agent or '?'} -> {destinations_text(spec) if spec.destination_agent else '?'}, "
        f"{files} source(s)) "
        f"on the broker at {url}. Submit it with: fte-create-transfer -tn {name}")

@command("list-templates")
def list_templates(
    names: Optional[List[str]] = typer.Argument(None, help="Only these templates."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="A summary of each: agents, files, "
                                                               "destination, -rt."),
    as_json: bool = typer.Option(False, "--json", help="Each template's full JSON, one per line."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
) -> None:
    """List the transfer templates on the broker (MFT's fteListTemplates)."""
    wanted = list(names or [])
    for n in wanted:
        validate_template_name(n)

    async def go() -> tuple[dict[str, bytes], str]:
        async with FteClient(broker_url(broker)) as c:
            return await read_templates(c), c.url

    found, url = run(go())
    shown = sorted(found) if not wanted else [n for n in wanted if n in found]
    missing = [n for n in wanted if n not in found]
    printed = 0
    trust = trust_here()
    for n in shown:
        try:
            t = _parse_template(n, found[n])
        except TemplateError as exc:
            err.print(f"warning: {safe(exc)}", soft_wrap=True, markup=False, emoji=False)
            continue
        # shown all the same, marked: the owner must see that theirs was replaced, and how to mend it
        problem: str | None = None
        document = _document(found[n])
        try:
            verify_template(n, document, trust)
        except TemplateError as exc:
            problem = str(exc)
        printed += 1
        if as_json:
            verdict: dict[str, Any] = {"verified": problem is None}
            if problem:
                verdict["problem"] = problem
            say(json.dumps({**document, **verdict}))  # JSON escapes, never raw controls
        elif verbose:
            for line in summary(t, problem):
                say(line)
        else:
            say(f"{n}  UNVERIFIED: {problem}" if problem else n)
    if missing:
        fail(f"no template {', '.join(missing)} on the broker at {url}")
    if not printed and not wanted and not as_json:
        say(f"No templates on the broker at {url}. Create one with: fte-create-template -tn NAME "
            f"-sa A1 -da A2 -dd /in SOURCE")

@command("delete-templates")
def delete_templates(
    names: List[str] = typer.Argument(..., help="The templates to delete."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
) -> None:
    """Delete transfer templates from the broker (MFT's fteDeleteTemplates)."""
    bad = [n for n in names if not TEMPLATE_NAME_RE.match(n)]

    async def go() -> tuple[list[str], list[str], str]:
        async with FteClient(broker_url(broker)) as c:
            found = await read_templates(c)
            deleted, missing = [], []
            for n in dict.fromkeys(names):
                if n in bad:
                    continue
                if n not in found:
                    missing.append(n)
                    continue
                await _publish(c, n, b"")
                deleted.append(n)
            return deleted, missing, c.url

    deleted, missing, url = run(go())
    for n in deleted:
        say(f"Deleted template {n}.")
    problems = []
    if missing:
        problems.append(f"no template {', '.join(missing)} on the broker at {url}")
    if bad:
        problems.append(f"not a template name: {', '.join(repr(b) for b in bad)}")
    if problems:
        fail("; ".join(problems) + (" (the others were deleted)" if deleted else ""))
