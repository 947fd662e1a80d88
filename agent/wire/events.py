"""Log events as models: the schema of every message an agent publishes on <prefix>/Log/<agent>/...

Four families share the log topics (docs/log-events.md):
- transfer events, on Log/<agent>/<transfer id>: one envelope (`TransferEventBase`) and one model per action;
- the refusal of a command (`not_authorized`), on Log/<agent>/<transfer id> or Log/<agent>/Security;
- monitor events, on Log/<agent>/Monitors/<monitor>, told by their `monitor` member;
- schedule events, on Log/<agent>/<schedule id>, told by their `schedule_id` member.
A model is found by (family, action) in `MODELS`, so `created` of a monitor and of a schedule stay apart.

Writing is strict (`build_event`): an unknown action, a missing or wrongly typed field ("3" for 3, 1 for
true) and a field the model does not declare are errors, so a mistake in the code that emits an event fails
that code's own tests instead of reaching the log. Reading is lenient where a newer agent may differ
(`parse_event`, `read_event`): fields this version does not know are kept (`model_extra`), an action it does not
know is an `UnknownEvent`. What is no event at all (not JSON, not an object, no action, a known action with a
missing or wrongly typed field, more than `MAX_EVENT_BYTES`) is an `EventError` that says what is wrong.

These models are the schema; docs/log-event.schema.json is their JSON Schema for other programs
(tests/unit/test_events.py holds the two, the docs and the emitting code together). The words they use
(states, result codes, message ids) come from their own modules, not typed again here; the recovery triggers
are listed here and held to agent.source's by the tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Union

import pydantic_core
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..core import results
from ..core.errors import FteError
from ..core.lifecycle import LIVE_STATES, RESULT_CODES, TERMINAL_STATES
from ..core.lifecycle import TransferState as S
from .protocol import AgentName, Checksum, Metadata, RequestId, TransferId, utc_now

# The largest MQTT message (its "remaining length" field holds at most 268,435,455 bytes): an agent publishes
# nothing bigger, and a `completed` event listing 100,000 files may well be tens of MiB, so a reader that must
# not miss an outcome (fte-create-transfer -w) cannot refuse less. A reader that may (a logger with a budget)
# passes its own `limit`.
MAX_EVENT_BYTES = 268_435_455


class EventError(FteError, ValueError):
    """A log event that is not one: malformed, too large, or (when written) not what its model says."""


def _one_of(values: Iterable[str]) -> Any:
    """A Literal of these words, taken from the vocabulary where they are defined."""
    return Literal[tuple(sorted(values))]  # type: ignore[misc]


def _code_of(values: Iterable[int]) -> Any:
    """An integer that is one of `values`. Not a Literal: pydantic takes false for Literal[0], even strictly."""
    allowed = frozenset(values)

    def check(v: int) -> int:
        if v not in allowed:
            raise ValueError(f"{v} is not one of {sorted(allowed)}")
        return v

    return Annotated[int, AfterValidator(check)]


EventId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
# utc_now(): UTC with milliseconds and a Z
Timestamp = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")]
Signature = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{86}==$")]
Count = Annotated[int, Field(ge=0)]
# A monitor's name and a schedule's id: levels of their topics, and the keys they are stored under
MonitorName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
ScheduleId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]

AnyState = _one_of(s.value for s in S)
TerminalState = _one_of(s.value for s in TERMINAL_STATES)
# a progress event is about files that got a result: the transfer has left the queue and not ended
ProgressState = _one_of(s.value for s in LIVE_STATES - {S.QUEUED})
TransferResultCode = _code_of(RESULT_CODES.values())
FileResultCode = _code_of((results.FILE_SUCCESS, results.FILE_FAILED, results.FILE_WARNING))
# what made a transfer enter recovery (agent.source's _stall calls; docs/concepts.md#what-starts-it)
RecoveryTrigger = Literal["broker_connection", "ack_timeout", "peer_unreachable", "destination_request",
                          "agent_restart"]
RecoveryTimeout = Annotated[int, Field(ge=-1)]
# the `kind` of a refused command: any command an agent parses (agent.monitor.parse_any_command)
CommandKind = Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]


def new_event_id() -> str:
    return uuid.uuid4().hex


class EventModel(BaseModel):
    """Lenient on read: members this version does not know are kept, in `model_extra` (see build_event)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False, defer_build=True)

    def wire(self) -> dict[str, Any]:
        """The event as its JSON object: the members it was made or read with (none added, none dropped)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> bytes:
        # json.dumps rather than model_dump_json: the bytes the agents have always published (", " and ": ")
        return json.dumps(self.wire()).encode()


# --------------------------------------------------------------------------- file items


class PlannedFile(EventModel):
    """A file as the source agent resolved it (`started`)."""

    index: Count
    source: str
    destination: str
    size: Count


class SkippedSource(EventModel):
    """Something a walk of the sources found and did not send (`started`): a symbolic link, a FIFO..."""

    source: str
    reason: str


class FileReport(PlannedFile):
    """A file with its outcome (`progress`, `completed`). `digest` and `supplement` are null when there is none."""

    checksum_method: Checksum
    digest: str | None
    result_code: FileResultCode
    supplement: str | None
    written_digest: str | None = None  # -t text: the digest of the converted file (absent for a binary file)


class ProgramReport(EventModel):
    """What became of one program call (-presrc, -predst, -postdst, -postsrc: agent.core.program_call)."""

    when: Literal["pre_source", "post_source", "pre_destination", "post_destination", "monitor"]
    name: str
    args: list[str]
    outcome: Literal["success", "failure", "refused", "timed_out"]
    return_code: int | None
    attempts: Count
    output: str
    message: str
    agent: AgentName | None = None  # only of a fan-out transfer: the agent that ran it


class Statistics(EventModel):
    files: Count
    files_succeeded: Count
    files_failed: Count
    bytes: Count
    seconds: Annotated[float, Field(ge=0)]
    recoveries: Count
    bytes_resent: Count


class DestinationOutcome(EventModel):
    """One destination of a fan-out transfer (-da A2,A3,...) in `completed`'s `destinations`, in the order the
    request listed them (agent.core.fanout_outcome makes it; DESTINATION_FIELDS are these members)."""

    agent: AgentName
    state: TerminalState
    result_code: TransferResultCode
    files_done: Count
    files_failed: Count
    bytes_done: Count
    recoveries: Count
    supplement: str | None


# --------------------------------------------------------------------------- transfer events


# how the transfer's data and control messages travelled between the agents (agent.wire.encryption)
Encryption = Literal["aes-256-gcm", "none"]


class TransferEventBase(EventModel):
    """The envelope of every transfer event (TransferLog.emit fills it from the transfer's record)."""

    event_id: EventId
    transfer_id: TransferId
    action: str
    state: AnyState
    time: Timestamp
    agent: AgentName
    agent_role: Literal["source", "destination"]
    source_agent: AgentName
    destination_agent: AgentName
    job_name: str | None
    metadata: Metadata
    # added by the publisher as the last member (agent.wire.provenance), never by the code that emits
    signature: Signature | None = None


class Started(TransferEventBase):
    action: Literal["started"]
    state: _one_of((S.QUEUED.value,))
    agent_role: Literal["source"]
    recovery_timeout: RecoveryTimeout
    originator: str | None = None  # absent when not known (an unsigned command)
    files: list[PlannedFile]
    files_omitted: Annotated[int, Field(ge=1)] | None = None  # published without its file list (too big)
    message: str
    # what the walk of the sources left out (links, FIFOs...: at most 1000 listed, all counted), and the empty
    # directories of a -r transfer that the destination creates; absent when there are none
    skipped: list[SkippedSource] | None = None
    skipped_count: Annotated[int, Field(ge=1)] | None = None
    directories: list[str] | None = None
    encryption: Encryption | None = None  # absent in the events of older agents
    destination_agents: list[AgentName] | None = None  # only of a fan-out: every destination, the first first


class Progress(TransferEventBase):
    action: Literal["progress"]
    state: ProgressState
    agent_role: Literal["source"]
    files: list[FileReport]
    files_omitted: Annotated[int, Field(ge=1)] | None = None


class Recovering(TransferEventBase):
    action: Literal["recovering"]
    # recovery_timed_out: with recovery timeout 0 the transfer fails on entering recovery
    state: _one_of((S.RECOVERING.value, S.RECOVERY_TIMED_OUT.value))
    agent_role: Literal["source"]
    message_id: _one_of((results.BFGTR0081I,))
    message: str
    reason: str
    trigger: RecoveryTrigger
    peer: AgentName
    recovery_timeout: RecoveryTimeout
    recovery_deadline: Timestamp | None = None  # absent with timeout -1 or 0
    source_agent_time: Timestamp
    recoveries: Annotated[int, Field(ge=1)]


class Resumed(TransferEventBase):
    action: Literal["resumed"]
    state: _one_of((S.IN_PROGRESS.value,))
    agent_role: Literal["source"]
    message_id: _one_of((results.BFGTR0082I,))
    message: str
    bytes_held_by_destination: Count
    recovering_since: Timestamp | None = None


class Completed(TransferEventBase):
    action: Literal["completed"]
    state: TerminalState
    agent_role: Literal["source"]
    result_code: TransferResultCode
    result: str
    message_id: _one_of((results.BFGSS0081E,)) | None = None  # only when the recovery timeout ran out
    message: str | None = None
    files: list[FileReport]
    files_omitted: Annotated[int, Field(ge=1)] | None = None
    statistics: Statistics
    programs: list[ProgramReport] | None = None  # only when the transfer has program calls
    encryption: Encryption | None = None
    destinations: Annotated[list[DestinationOutcome], Field(min_length=2)] | None = None  # only of a fan-out


class TriggerNotMet(TransferEventBase):
    """The transfer's trigger condition (-tr) did not hold when its source agent received it: it ends at once
    with result 42 and no file is read (the reference's "Trigger failed")."""

    action: Literal["trigger_not_met"]
    state: _one_of((S.FAILED.value,))
    agent_role: Literal["source"]
    result_code: _code_of((results.TRIGGER_FAILED,))
    trigger: str
    message: str


class CleanedUp(TransferEventBase):
    action: Literal["cleaned_up"]
    state: TerminalState
    agent_role: Literal["destination"]
    result_code: int
    message: str
    part_files_removed: Annotated[list[str], Field(min_length=1)]


# --------------------------------------------------------------------------- a refused command


class NotAuthorized(EventModel):
    """A command refused by authority checking. Not a transfer event: no envelope, no event_id."""

    action: Literal["not_authorized"]
    time: Timestamp
    agent: AgentName
    command: CommandKind
    request_id: RequestId
    requester: str | None
    transfer_id: TransferId | None
    result_code: _code_of((results.NOT_AUTHORIZED,))
    message: str
    suppressed: Count = 0  # refused beyond the bound since the previous such event (agent.command_lane)
    dropped: Count = 0  # dropped unread since the previous such event
    signature: Signature | None = None


# --------------------------------------------------------------------------- monitor events


class MonitorEventBase(EventModel):
    monitor: MonitorName
    agent: AgentName
    action: str
    time: Timestamp
    message: str
    signature: Signature | None = None


class MonitorCreated(MonitorEventBase):
    action: Literal["created"]


class MonitorDeleted(MonitorEventBase):
    action: Literal["deleted"]


class MonitorFired(MonitorEventBase):
    """The trigger fired and the monitor's transfer was started (`files`: those that fired it, none for noMatch)."""

    action: Literal["fired"]
    result_code: _code_of((results.SUCCESS,))
    files: list[str]
    transfer_id: TransferId


class MonitorCommandRan(MonitorEventBase):
    """The trigger fired and the monitor's command task ran (once per file; `files`: that file, none for
    noMatch); `result_code` 0, or 108 when the program failed or was refused (`program` says how)."""

    action: Literal["command_ran"]
    result_code: _code_of((results.SUCCESS, 108))
    files: list[str]
    program: ProgramReport


class MonitorFailed(MonitorEventBase):
    """A poll failed, or the transfer could not be started (the files fire again at the next poll)."""

    action: Literal["failed"]
    result_code: int
    files: list[str] | None = None


# --------------------------------------------------------------------------- schedule events


class ScheduleEventBase(EventModel):
    schedule_id: ScheduleId
    agent: AgentName
    action: str
    time: Timestamp
    message: str
    signature: Signature | None = None


class ScheduleCreated(ScheduleEventBase):
    action: Literal["created"]
    next_run: str  # ISO 8601 with the schedule's offset


class ScheduleDeleted(ScheduleEventBase):
    action: Literal["deleted"]


class ScheduleRun(ScheduleEventBase):
    action: Literal["run"]
    transfer_id: TransferId
    occurrence: Count
    missed: Count  # occurrences missed while the agent was down (not repeated)
    scheduled_for: str


class ScheduleFailed(ScheduleEventBase):
    action: Literal["failed"]
    occurrence: Count
    missed: Count
    result_code: int


class ScheduleExpired(ScheduleEventBase):
    action: Literal["expired"]


# --------------------------------------------------------------------------- the table


class UnknownEvent(EventModel):
    """An event of an action this version does not know (a newer agent's): shown by its action and message."""

    action: str
    time: str | None = None
    agent: str | None = None
    transfer_id: str | None = None
    message: str | None = None
    signature: str | None = None


TransferEvent = Union[Started, Progress, Recovering, Resumed, Completed, CleanedUp, TriggerNotMet]
MonitorEvent = Union[MonitorCreated, MonitorDeleted, MonitorFired, MonitorFailed, MonitorCommandRan]
ScheduleEvent = Union[ScheduleCreated, ScheduleDeleted, ScheduleRun, ScheduleFailed, ScheduleExpired]
Event = Union[TransferEvent, NotAuthorized, MonitorEvent, ScheduleEvent, UnknownEvent]

Family = Literal["transfer", "monitor", "schedule"]
_FAMILIES: dict[Family, tuple[type[EventModel], ...]] = {
    "transfer": (Started, Progress, Recovering, Resumed, Completed, CleanedUp, NotAuthorized, TriggerNotMet),
    "monitor": (MonitorCreated, MonitorDeleted, MonitorFired, MonitorFailed, MonitorCommandRan),
    "schedule": (ScheduleCreated, ScheduleDeleted, ScheduleRun, ScheduleFailed, ScheduleExpired),
}


def _action_of(model: type[EventModel]) -> str:
    (action,) = model.model_fields["action"].annotation.__args__  # type: ignore[union-attr]
    return str(action)


# (family, action) -> model: every event an agent emits has one (tests/unit/test_events.py)
MODELS: dict[tuple[Family, str], type[EventModel]] = {
    (family, _action_of(m)): m for family, members in _FAMILIES.items() for m in members}


def family_of(data: Mapping[str, Any]) -> Family:
    """Which family an event's JSON object belongs to: monitor and schedule events name their owner."""
    return "monitor" if "monitor" in data else "schedule" if "schedule_id" in data else "transfer"


def model_for(data: Mapping[str, Any]) -> type[EventModel] | None:
    action = data.get("action")
    return MODELS.get((family_of(data), action)) if isinstance(action, str) else None


def _validate(model: type[EventModel], data: Mapping[str, Any], what: str, extra: str | None = None) -> Any:
    # strict: "3" is no integer and 1 no boolean, on write as on read (agent.wire.protocol does the same);
    # extra="forbid" (pydantic >= 2.12) overrides the models' "allow" for the writer, nested models included
    try:
        return model.model_validate(data, strict=True, extra=extra)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "event"
        raise EventError(f"invalid {what}: {where}: {first.get('msg')}") from None


def _what(data: Mapping[str, Any]) -> str:
    return f"{family_of(data)} event {data.get('action')!r}"


def _decode(payload: bytes, limit: int, what: str) -> Any:
    """The JSON value in `payload`, checked for its size before it is parsed."""
    if len(payload) > limit:
        raise EventError(f"{what} of {len(payload)} bytes exceeds the limit of {limit}")
    try:
        # pydantic's parser bounds nesting and number sizes, where json.loads raises RecursionError
        return pydantic_core.from_json(payload)
    except ValueError as exc:
        raise EventError(f"not JSON: {exc}") from None


def read_event(data: Any) -> Event:
    """The event in a decoded JSON value; EventError when it is none (lenient: see the module's text)."""
    if not isinstance(data, dict):
        raise EventError(f"an event is a JSON object, not {type(data).__name__}")
    if not isinstance(data.get("action"), str):
        raise EventError("not an event: it has no action")
    model = model_for(data) or UnknownEvent
    return _validate(model, data, _what(data))  # type: ignore[no-any-return]


def parse_event(payload: bytes, limit: int = MAX_EVENT_BYTES) -> Event:
    """The event in a message read off a log topic (checked for its size before it is parsed)."""
    return read_event(_decode(payload, limit, "event"))


def build_event(data: Mapping[str, Any]) -> Event:
    """An event the agent is about to publish, validated strictly: EventError for an action without a model, a
    missing or wrongly typed field, or a member its model does not declare, at any depth (add it to the model,
    the schema and docs/log-events.md first)."""
    model = model_for(data)
    if model is None:
        family = family_of(data)
        known = sorted(a for f, a in MODELS if f == family)
        raise EventError(f"no {family} event {data.get('action')!r} in agent/wire/events.py (known: {', '.join(known)})")
    return _validate(model, data, _what(data), extra="forbid")  # type: ignore[no-any-return]


def new_event(head: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """A monitor's or a schedule's event (`head`: its owner, agent and action), made now with `fields` (those
    whose value is None left out), checked as its model: the JSON object to publish."""
    made = {**head, "time": utc_now(), **{k: v for k, v in fields.items() if v is not None}}
    build_event(made)
    return made


def refusal(agent: str, time: str, command: str, request_id: str, requester: str | None, transfer_id: str | None,
            reason: str, suppressed: int, dropped: int) -> NotAuthorized:
    """The `not_authorized` event of a refused command (published on Log/<agent>/<transfer id or Security>)."""
    return build_event({"action": "not_authorized", "time": time, "agent": agent, "command": command,
                        "request_id": request_id, "requester": requester, "transfer_id": transfer_id,
                        "result_code": results.NOT_AUTHORIZED, "message": f"command {command} refused: {reason}",
                        "suppressed": suppressed, "dropped": dropped})  # type: ignore[return-value]


# --------------------------------------------------------------------------- live progress (not a log event)


class DestinationProgress(EventModel):
    """One destination of a fan-out transfer in its live progress (`destinations`): its leg's own figures."""

    agent: AgentName
    state: AnyState
    bytes_done: Count
    files_done: Count
    recoveries: Count
    bytes_resent: Count


class TransferProgress(EventModel):
    """The snapshot on <prefix>/Transfers/<source agent>/<transfer id> (docs/log-events.md#live-progress):
    what a progress bar is drawn from. Read leniently like the events; the agent builds it strictly
    (build_progress)."""

    transfer_id: TransferId
    role: Literal["source"]
    state: AnyState
    source_agent: AgentName
    destination_agent: AgentName
    bytes_total: Count
    bytes_done: Count
    files_total: Count
    files_done: Count
    recoveries: Count
    last_stall: str | None
    recovery_timeout: RecoveryTimeout
    result_code: int | None
    time: Timestamp
    rate_bytes_per_second: Count
    current_file: str | None
    recovering_since: Timestamp | None = None
    recovery_deadline: Timestamp | None = None
    created: Timestamp | None = None
    updated: Timestamp | None = None
    seconds: Annotated[float, Field(ge=0)] | None = None
    bytes_resent: Count | None = None
    job_name: str | None = None
    # only of a fan-out: each destination's leg, in the order of its destination_agents (absent otherwise)
    destinations: Annotated[list[DestinationProgress], Field(min_length=2)] | None = None
    signature: Signature | None = None


def build_progress(data: Mapping[str, Any]) -> TransferProgress:
    """A progress snapshot the agent is about to publish, validated strictly (as build_event: a missing or
    wrongly typed field, or a member the model does not declare, at any depth, is an EventError)."""
    return _validate(TransferProgress, data, "progress message", extra="forbid")  # type: ignore[no-any-return]


def parse_progress(payload: bytes, limit: int = 1024 * 1024) -> TransferProgress:
    """The progress snapshot in a message on a Transfers/ topic (a few hundred bytes; 1 MiB is generous)."""
    data = _decode(payload, limit, "progress message")
    if not isinstance(data, dict):
        raise EventError(f"a progress message is a JSON object, not {type(data).__name__}")
    return _validate(TransferProgress, data, "progress message")  # type: ignore[no-any-return]
