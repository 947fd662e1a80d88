"""The wire protocol: topic names, JSON message models and the binary chunk frame.

Every message that arrives from the broker is untrusted. It is parsed here, by a strict pydantic
model with size limits, before anything acts on it; `parse_*` raise `ProtocolError` with a reason
that the agent logs before dropping the message.

The protocol is designed for resumption from the first byte: chunks carry absolute offsets,
acknowledgements carry the contiguous bytes written (a checkpoint), and negotiation *is* resync
(`Resync` asks the destination what it holds for each file; the first one creates the transfer).
"""

from __future__ import annotations

import re
import secrets
import struct
import zlib
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError,
                      model_validator)

from ..core.errors import FteError
from ..core.lifecycle import TERMINAL_STATE_VALUES
from ..core.text_convert import check_encoding, check_line_ending
from ..core.transfer_trigger import MAX_TRIGGER_CHARS, TRIGGER_PATTERN, check_trigger_text
from ..names import NAME_PATTERN
from .programs import ProgramCalls, ProgramDone, ProgramRun

PROTOCOL_VERSION = 1

# Size limits for untrusted input. A control message for a 10,000 file transfer set is ~2 MB.
MAX_CONTROL_BYTES = 8 * 1024 * 1024
MAX_COMMAND_BYTES = 8 * 1024 * 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024
MAX_FILES_PER_TRANSFER = 100_000
MAX_PATH_CHARS = 4096
MAX_BUNDLE_FILES = 4096
MAX_FANOUT = 16  # destination agents of one fan-out transfer (TransferSpec.destination_agents)

TRANSFER_ID_RE = re.compile(r"^[0-9a-f]{48}$")
CLIENT_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# Integers that reach the state store (sqlite INTEGER: 64-bit signed) or the chunk header (epoch: 32-bit).
# A larger value in a message is refused by the model, rather than raising OverflowError (sqlite) or
# struct.error (encode_chunk) later, inside a handler, where it is no longer "dropped with a reason".
MAX_INT64 = 2**63 - 1
MAX_EPOCH = 2**32 - 1


class ProtocolError(FteError, ValueError):
    """An inbound message that is malformed, too large or of an unknown kind."""


def new_transfer_id() -> str:
    """48 hex characters, like the reference system's transfer ids."""
    return secrets.token_hex(24)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- topics


class Topics:
    """Topic names under one prefix (default SYSTEM.FTE): built by the methods below, read back by `parse`."""

    # the first level (after the prefix) of the topics an agent receives: what `parse` names in Address.kind
    AGENTS = "Agents"
    COMMANDS = "Commands"
    DATA = "Data"
    CONTROL = "Control"
    FANOUT = "Fanout"  # <prefix>/Fanout/<source agent>/<transfer id>: a fan-out transfer's shared stream
    # first levels the clients read back (cli/): compared with these, never with a string written again
    TRANSFERS = "Transfers"
    TEMPLATES = "Templates"

    class Address:
        """What an arriving topic addresses: `kind` (Topics.AGENTS, COMMANDS, DATA or CONTROL), the agent it
        names, and the transfer of a DATA or CONTROL topic (None for the others)."""

        __slots__ = ("kind", "agent", "transfer_id")

        def __init__(self, kind: str, agent: str, transfer_id: str | None = None) -> None:
            self.kind = kind
            self.agent = agent
            self.transfer_id = transfer_id

        def __repr__(self) -> str:
            return f"Topics.Address({self.kind!r}, {self.agent!r}, {self.transfer_id!r})"

    def __init__(self, prefix: str = "SYSTEM.FTE") -> None:
        self.prefix = prefix
        self._head = prefix + "/"

    def parse(self, topic: str) -> "Topics.Address | None":
        """The address of an agent's status (<prefix>/Agents/<agent>), commands (<prefix>/Commands/<agent>),
        or a transfer's data or control message (<prefix>/Data|Control/<agent>/<transfer id>); None for any
        other topic (another prefix, a probe, a log event...). Run once for every arriving message, data
        chunks included: one split, no regular expression."""
        if not topic.startswith(self._head):
            return None
        levels = topic[len(self._head):].split("/")
        if len(levels) == 2:
            kind = levels[0]
            if kind == self.AGENTS or kind == self.COMMANDS:
                return Topics.Address(kind, levels[1])
        elif len(levels) == 3:
            kind = levels[0]
            if kind == self.DATA or kind == self.CONTROL or kind == self.FANOUT:
                return Topics.Address(kind, levels[1], levels[2])  # FANOUT: the agent is the source
        return None

    def agent_status(self, agent: str) -> str:
        return f"{self.prefix}/{self.AGENTS}/{agent}"

    def all_agent_status(self) -> str:
        return f"{self.prefix}/{self.AGENTS}/+"

    def heard(self, agent: str | None = None) -> str:
        """The agent's retained heartbeat (when it was last heard from, signed); without an agent, the filter."""
        return f"{self.prefix}/{self.AGENTS}/{agent or '+'}/heard"

    def probe(self, agent: str, token: str) -> str:
        """A broker probe message of the agent (agent.broker_probe); token "+" gives the filter for all."""
        return f"{self.prefix}/{self.AGENTS}/{agent}/probe/{token}"

    def commands(self, agent: str) -> str:
        return f"{self.prefix}/{self.COMMANDS}/{agent}"

    def replies(self, client_id: str) -> str:
        return f"{self.prefix}/Replies/{client_id}"

    def data(self, agent: str, transfer_id: str) -> str:
        return f"{self.prefix}/{self.DATA}/{agent}/{transfer_id}"

    def data_filter(self, agent: str) -> str:
        """The data messages of every transfer to `agent` (its subscription)."""
        return f"{self.prefix}/{self.DATA}/{agent}/+"

    def fanout(self, source: str, transfer_id: str) -> str:
        """The shared stream of a fan-out transfer: every destination of it subscribes (docs/protocol.md#fan-out)."""
        return f"{self.prefix}/{self.FANOUT}/{source}/{transfer_id}"

    def control(self, agent: str, transfer_id: str) -> str:
        return f"{self.prefix}/{self.CONTROL}/{agent}/{transfer_id}"

    def control_filter(self, agent: str) -> str:
        """The control messages of every transfer to `agent` (its subscription)."""
        return f"{self.prefix}/{self.CONTROL}/{agent}/+"

    def progress(self, agent: str, transfer_id: str) -> str:
        return f"{self.prefix}/{self.TRANSFERS}/{agent}/{transfer_id}"

    def progress_filter(self) -> str:
        """The progress of every transfer of every agent."""
        return f"{self.prefix}/{self.TRANSFERS}/+/+"

    def log(self, agent: str, transfer_id: str) -> str:
        return f"{self.prefix}/Log/{agent}/{transfer_id}"

    def log_filter(self, agent: str | None = None, transfer_id: str | None = None) -> str:
        return f"{self.prefix}/Log/{agent or '+'}/{transfer_id or '+'}"

    def monitor_log(self, agent: str, monitor: str) -> str:
        """The events of one resource monitor of `agent` (in the log, beside its transfers' events)."""
        return f"{self.prefix}/Log/{agent}/Monitors/{monitor}"

    def every_event(self, agent: str | None = None) -> str:
        """The filter for every event of `agent` (every agent without one): transfers' and monitors'."""
        return f"{self.prefix}/Log/{agent or '+'}/#"

    def templates(self, name: str | None = None) -> str:
        """A transfer template's retained definition; without a name, the filter for every template."""
        return f"{self.prefix}/{self.TEMPLATES}/{name or '+'}"

    def template_name(self, topic: str) -> str | None:
        """The name in a template's topic (<prefix>/Templates/<name>), or None for any other topic."""
        head = f"{self.prefix}/{self.TEMPLATES}/"
        if topic.startswith(head) and "/" not in topic[len(head):] and len(topic) > len(head):
            return topic[len(head):]
        return None

    def keeper_epoch(self) -> str:
        """The template keepers' retained marker that the broker kept its retained state (agent.template_keeper)."""
        return f"{self.prefix}/Keeper/epoch"

    def monitors(self, agent: str | None = None, name: str | None = None) -> str:
        """A resource monitor's retained view on `agent`; a missing part is a wildcard (a filter)."""
        return f"{self.prefix}/Monitors/{agent or '+'}/{name or '+'}"

    def schedules(self, agent: str | None = None) -> str:
        """The retained listing of `agent`'s schedules; without an agent, the filter for every agent's."""
        return f"{self.prefix}/Scheduler/{agent or '+'}"

    def split(self, topic: str) -> list[str]:
        """The levels of `topic` after the prefix, or [] if it is not ours."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return []
        return topic[len(head):].split("/")


# --------------------------------------------------------------------------- models


class Strict(BaseModel):
    # allow_inf_nan=False: NaN / Infinity are not JSON, and dump() writes them as null, which parses back
    # as an error (a FileOffer.mtime of NaN made a Resync that could not round-trip).
    # defer_build: a model's validator is built when it first validates, not at import (every console script
    # imports this module and reads two or three of its messages; docs/development.md, "Start-up cost")
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=MAX_PATH_CHARS, allow_inf_nan=False,
                              defer_build=True)


class Sealed(Strict):
    """A control message of a transfer. Once the two agents share a transfer key (agent.wire.binding),
    every such message carries `mac`; the negotiation messages carry `kx` and `signature` instead."""

    mac: Annotated[str, Field(max_length=64)] | None = None


AgentName = Annotated[str, Field(pattern=NAME_PATTERN)]
TransferId = Annotated[str, Field(pattern=r"^[0-9a-f]{48}$")]
ClientId = Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
RequestId = Annotated[str, Field(min_length=1, max_length=64)]
Path_ = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)]
Metadata = Annotated[dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=4096)]],
                     Field(max_length=64)]
Checksum = Literal["sha256", "md5", "none"]
Epoch = Annotated[int, Field(ge=0, le=MAX_EPOCH)]
ByteCount = Annotated[int, Field(ge=0, le=MAX_INT64)]
ResultCode = Annotated[int, Field(ge=-MAX_INT64 - 1, le=MAX_INT64)]


TriggerText = Annotated[str, Field(max_length=MAX_TRIGGER_CHARS, pattern=TRIGGER_PATTERN),
                        AfterValidator(check_trigger_text)]


class TransferItem(Strict):
    """One source specification and where it goes (as the user wrote them)."""

    source: Path_
    destination: Path_
    destination_type: Literal["file", "directory"]
    recursive: bool = False


# -t text: an encoding is a Python text codec's name (checked again here: a command is untrusted input), kept
# as its canonical name; a line ending LF or CRLF (agent.core.text_convert)
# (the encodings given with a binary transfer are not used; the CLI refuses them)
EncodingName = Annotated[str, Field(max_length=64, examples=["utf-8", "iso8859-1", "cp1252", "ascii"]),
                         AfterValidator(lambda v: check_encoding(v, "encoding"))]
LineEnding = Annotated[str, Field(max_length=8, examples=["LF", "CRLF"]),
                       AfterValidator(lambda v: check_line_ending(v, "line ending"))]


class TextConversion(Strict):
    """A text transfer's conversion, told to the destination in the Resync (absent: binary)."""

    source_encoding: EncodingName
    destination_encoding: EncodingName | None = None  # None: the destination agent's platform encoding
    line_ending: LineEnding | None = None  # None: the destination platform's (LF)


class TransferSpec(Strict):
    """What a user asks for: the body of a create_transfer command (and of a template)."""

    source_agent: AgentName
    destination_agent: AgentName
    items: Annotated[list[TransferItem], Field(min_length=1, max_length=10_000)]
    exist: Literal["error", "overwrite"] = "error"
    disposition: Literal["leave", "delete"] = "leave"
    checksum: Checksum = "sha256"
    recovery_timeout: Annotated[int, Field(ge=-1, le=MAX_INT64)] | None = None
    job_name: Annotated[str, Field(max_length=256)] | None = None
    metadata: Metadata = Field(default_factory=dict)
    # -t, -sce, -dce, -dle (text transfers: the destination converts; None: the agents' platform's)
    mode: Literal["binary", "text"] = "binary"
    source_encoding: EncodingName | None = None
    destination_encoding: EncodingName | None = None
    destination_line_ending: LineEnding | None = None
    programs: ProgramCalls | None = None  # -presrc, -postsrc, -predst, -postdst (agent.wire.programs)
    # -pr: queued transfers start by priority (agent.core.start_order; None: 0, and left off the wire, so that
    # an agent of an older fte takes a request without -pr); --bandwidth: bytes a second (None: only the
    # agent's agentMaxBandwidth)
    priority: Annotated[int, Field(ge=0, le=9)] | None = None
    bandwidth: Annotated[int, Field(ge=1, le=MAX_INT64)] | None = None
    # -tr: the source agent runs the transfer only if this condition holds (agent.core.transfer_trigger)
    trigger: TriggerText | None = None
    # -da A2,A3,...: a fan-out, one transfer to every agent listed, in this order (agent.core.fanout_outcome);
    # the first is destination_agent (so an older reader still sees one destination). None: an ordinary
    # transfer, left off the wire as priority is.
    destination_agents: Annotated[list[AgentName], Field(min_length=2, max_length=MAX_FANOUT)] | None = None

    @model_validator(mode="after")
    def _fanout_destinations(self) -> "TransferSpec":
        agents = self.destination_agents
        if agents is None:
            return self
        problem = fanout_problem(self.source_agent, agents)
        if problem is None and agents[0] != self.destination_agent:
            problem = (f"the first of destination_agents ({agents[0]}) must be destination_agent "
                       f"({self.destination_agent})")
        if problem is not None:
            raise ValueError(problem)
        return self


def fanout_problem(source_agent: str, agents: list[str]) -> str | None:
    """What is wrong with a fan-out's list of destinations (None: nothing): 2 .. MAX_FANOUT distinct agents,
    the source agent not among them. The model checks it, and the CLI says it before it sends anything."""
    if len(agents) < 2:
        return f"a fan-out needs at least 2 destination agents, not {len(agents)}"
    if len(agents) > MAX_FANOUT:
        return f"a fan-out has at most {MAX_FANOUT} destination agents, not {len(agents)}"
    seen: set[str] = set()
    for agent in agents:
        if agent in seen:
            return f"destination agent {agent} is listed more than once"
        seen.add(agent)
    if source_agent in seen:
        return f"the source agent {source_agent} cannot also be a destination agent"
    return None


class CommandBase(Strict):
    request_id: RequestId
    reply_to: ClientId | None = None
    sent_at: Annotated[str, Field(max_length=64)] | None = None
    # authority (agent.auth): who sent it, to which agent, a one-time nonce, and an Ed25519 signature over the rest
    requester: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")] | None = None
    target: AgentName | None = None
    nonce: Annotated[str, Field(min_length=16, max_length=64)] | None = None
    signature: Annotated[str, Field(max_length=256)] | None = None


class CreateTransfer(CommandBase):
    kind: Literal["create_transfer"]
    transfer_id: TransferId | None = None
    spec: TransferSpec


class CancelTransfer(CommandBase):
    kind: Literal["cancel_transfer"]
    transfer_id: TransferId


class Ping(CommandBase):
    kind: Literal["ping"]


class QueryTransfer(CommandBase):
    kind: Literal["query_transfer"]
    transfer_id: TransferId


class ListTransfers(CommandBase):
    kind: Literal["list_transfers"]


class StopAgent(CommandBase):
    kind: Literal["stop_agent"]
    immediate: bool = False


Command = Annotated[
    Union[CreateTransfer, CancelTransfer, Ping, QueryTransfer, ListTransfers, StopAgent],
    Field(discriminator="kind"),
]


class Reply(Strict):
    request_id: RequestId
    ok: bool
    result_code: ResultCode = 0
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    # the replying agent's identity signature (agent.wire.provenance), which the client checks
    signature: Annotated[str, Field(max_length=128)] | None = None


# ---- control messages between the two agents of a transfer


class FileOffer(Strict):
    """One file of a transfer as the source resolved it."""

    index: Annotated[int, Field(ge=0, lt=MAX_FILES_PER_TRANSFER)]
    source: Path_
    destination: Path_
    size: ByteCount
    mtime: float = 0.0


class FanoutOffer(Strict):
    """The shared stream of a fan-out transfer, offered to a destination (docs/protocol.md#fan-out): the group
    key G (base64 of 32 bytes) and every destination of the transfer. Only in an offer encrypted to the
    destination's offer key."""

    key: Annotated[str, Field(min_length=44, max_length=44)]
    destinations: Annotated[list[AgentName], Field(min_length=2, max_length=16)]


class Resync(Sealed):
    """Source → destination. The first one negotiates the transfer; later ones resynchronise.

    The destination answers with a ResyncReply saying, per file, how many contiguous bytes it holds.
    `epoch` increases at every resync, so that chunks and acks of an older epoch are ignored.
    """

    kind: Literal["resync"]
    transfer_id: TransferId
    epoch: Epoch
    source_agent: AgentName
    destination_agent: AgentName
    exist: Literal["error", "overwrite"]
    checksum: Checksum
    chunk_size: Annotated[int, Field(ge=1, le=MAX_CHUNK_BYTES)]
    job_name: str | None = None
    metadata: Metadata = Field(default_factory=dict)
    files: Annotated[list[FileOffer], Field(max_length=MAX_FILES_PER_TRANSFER)]
    # the source's X25519 public key for this transfer, and its identity signature (agent.wire.binding)
    kx: Annotated[str, Field(max_length=64)] | None = None
    signature: Annotated[str, Field(max_length=256)] | None = None
    text: TextConversion | None = None  # -t text (absent: binary, the bytes are written as they came)
    # the empty directories of a -r transfer, created by the destination when it accepts it (absent: none)
    directories: Annotated[list[Path_], Field(max_length=MAX_FILES_PER_TRANSFER)] | None = None
    # a fan-out transfer's shared stream (absent: unicast only; docs/protocol.md#fan-out)
    fanout: FanoutOffer | None = None
    # set by the receiver (agent.router), never by the message: it arrived encrypted to this agent's offer key
    _encrypted: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _distinct_indexes(self) -> "Resync":
        # Each file once: a repeated index used to pass the model and then fail the destination's state store
        # (sqlite IntegrityError on the files primary key) after the transfer row was already written.
        seen: set[int] = set()
        for f in self.files:
            if f.index in seen:
                raise ValueError(f"file index {f.index} appears more than once")
            seen.add(f.index)
        return self


class FileHolding(Strict):
    index: Annotated[int, Field(ge=0, lt=MAX_FILES_PER_TRANSFER)]
    held: ByteCount
    # ready: send from `held`; done: written, verified and renamed; failed: refused or broken
    status: Literal["ready", "done", "failed"]  # agent.core.statuses.FileStatus, as sent
    result_code: ResultCode = 0
    supplement: str | None = None
    destination: str | None = None
    digest: str | None = None
    written_digest: Annotated[str, Field(max_length=128)] | None = None  # -t text: of the converted file


class ResyncReply(Sealed):
    kind: Literal["resync_reply"]
    transfer_id: TransferId
    epoch: Epoch
    files: Annotated[list[FileHolding], Field(max_length=MAX_FILES_PER_TRANSFER)]
    kx: Annotated[str, Field(max_length=64)] | None = None
    # what this destination understands beyond the base protocol (destination.FEATURES: "bundle", "sparse_ack",
    # "mac_no_crc", "gmac"; docs/protocol.md#resync_reply)
    features: Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=16)] = []
    signature: Annotated[str, Field(max_length=256)] | None = None
    # true: subscribed to the fan-out transfer's shared topic (docs/protocol.md#fan-out; absent: unicast only)
    fanout: bool | None = None


class Ack(Sealed):
    """Destination → source: `offset` contiguous bytes of file `index` are written (a checkpoint)."""

    kind: Literal["ack"]
    transfer_id: TransferId
    epoch: Epoch
    index: Annotated[int, Field(ge=0, lt=MAX_FILES_PER_TRANSFER)]
    offset: ByteCount
    # True when the destination saw a gap (a lost chunk): resend from `offset` (go-back-N)
    rewind: bool = False


class FileEnd(Sealed):
    """Source → destination: the whole file was sent; its size and digest."""

    kind: Literal["file_end"]
    transfer_id: TransferId
    epoch: Epoch
    index: Annotated[int, Field(ge=0, lt=MAX_FILES_PER_TRANSFER)]
    size: ByteCount
    digest: Annotated[str, Field(max_length=128)] | None = None


class FileResult(Sealed):
    """Destination → source: the file is in place (result 0) or failed (1), with a supplement."""

    kind: Literal["file_result"]
    transfer_id: TransferId
    index: Annotated[int, Field(ge=0, lt=MAX_FILES_PER_TRANSFER)]
    result_code: ResultCode
    supplement: str | None = None
    destination: str | None = None
    digest: str | None = None
    written_digest: Annotated[str, Field(max_length=128)] | None = None  # -t text: of the converted file


class FileOutcome(Strict):
    index: Annotated[int, Field(ge=0, lt=MAX_FILES_PER_TRANSFER)]
    result_code: ResultCode
    supplement: str | None = None
    destination: str | None = None
    digest: str | None = None
    written_digest: Annotated[str, Field(max_length=128)] | None = None  # -t text: of the converted file


class FileResults(Sealed):
    """Destination → source: the results of the files of one bundle, in one message."""

    kind: Literal["file_results"]
    transfer_id: TransferId
    results: Annotated[list[FileOutcome], Field(min_length=1, max_length=MAX_BUNDLE_FILES)]


# The terminal states as a type, made from the one set (a new terminal state is a valid outcome with no edit here).
TerminalStateValue = Literal[tuple(sorted(TERMINAL_STATE_VALUES))]  # type: ignore[valid-type]


class Complete(Sealed):
    """Source → destination: the transfer's outcome. The destination removes the part files of a
    transfer that did not complete, forgets it, and confirms with CompleteAck."""

    kind: Literal["complete"]
    transfer_id: TransferId
    source_agent: AgentName
    state: TerminalStateValue  # an outcome is a terminal state: anything else is dropped as malformed
    result_code: ResultCode


class CompleteAck(Sealed):
    kind: Literal["complete_ack"]
    transfer_id: TransferId
    removed_part_files: ByteCount = 0


class RequestRecovery(Sealed):
    """Destination → source: data stopped arriving, or the destination came back and wants to know."""

    kind: Literal["request_recovery"]
    transfer_id: TransferId
    reason: Annotated[str, Field(max_length=512)]
    # True: a cancel received by the destination agent, passed on to the source (which owns the outcome)
    cancel: bool = False


ControlMessage = Annotated[
    Union[Resync, ResyncReply, Ack, FileEnd, FileResult, FileResults, Complete, CompleteAck, RequestRecovery,
          ProgramRun, ProgramDone],
    Field(discriminator="kind"),
]

# built on first use, like the models (Strict): a command line that sends one kind of message does not pay
# for the schemas of all the others at start-up
_DEFERRED = ConfigDict(defer_build=True)
_command_adapter: TypeAdapter[Any] = TypeAdapter(Command, config=_DEFERRED)
_control_adapter: TypeAdapter[Any] = TypeAdapter(ControlMessage, config=_DEFERRED)
_reply_adapter: TypeAdapter[Any] = TypeAdapter(Reply)


def _load(payload: bytes, limit: int) -> bytes:
    """The size check, made before any parsing."""
    if len(payload) > limit:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the limit of {limit}")
    return payload


def _validate(adapter: TypeAdapter[Any], payload: bytes, what: str) -> Any:
    # validate_json rather than json.loads + validate_python: json.loads raised RecursionError on deeply
    # nested arrays and ValueError on integers of more than 4300 digits (neither a ProtocolError), where
    # pydantic's parser bounds both. strict=True refuses wrongly typed values ("3" or 3.0 for an int,
    # "yes" or 1 for a bool) instead of coercing them, as the "strict model" of DESIGN.md §Security says.
    try:
        return adapter.validate_json(payload, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            raise ProtocolError(f"not JSON: {first.get('msg')}") from None
        where = ".".join(str(p) for p in first.get("loc", ())) or what
        raise ProtocolError(f"invalid {what}: {where}: {first.get('msg')}") from None


def parse_command(payload: bytes) -> Any:
    return _validate(_command_adapter, _load(payload, MAX_COMMAND_BYTES), "command")


def parse_control(payload: bytes) -> Any:
    return _validate(_control_adapter, _load(payload, MAX_CONTROL_BYTES), "control message")


def parse_reply(payload: bytes) -> Reply:
    return _validate(_reply_adapter, _load(payload, MAX_CONTROL_BYTES), "reply")


def dump(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()


# --------------------------------------------------------------------------- chunks

# magic, version, flags, reserved, epoch, file index, offset, length, crc32 of the header fields and the payload
CHUNK_HEADER = struct.Struct(">4sBBHIIQII")
# The CRC covers the 28 header bytes before it, not only the payload: with a payload-only CRC, a flipped bit
# in the epoch, file index or offset decoded as a valid chunk for another place (or file) of the transfer.
_CRC_COVERED = CHUNK_HEADER.size - 4
CHUNK_MAGIC = b"FTEC"
FLAG_LAST = 0x01
# A bundle: whole small files in one frame (the header's index field holds the number of entries, offset 0).
# Per file, a round trip (chunk, file end, result) costs far more than its bytes; a bundle of N files costs
# one message each way. Each entry: file index, size, digest length, the raw digest, the file's bytes.
FLAG_BUNDLE = 0x02
BUNDLE_ENTRY = struct.Struct(">IIB")
# Sparse acknowledgements (feature "sparse_ack"): the source needs no ack of this chunk on its own; a later
# chunk of the file asks for one, which covers this one too (acks are cumulative offsets). The source asks at
# least every quarter window, at the end of a file, and whenever it must stop and wait: an ack per chunk was a
# sealed message and two MQTT packets each way for every 256 KiB.
FLAG_NO_ACK = 0x04
# No CRC (feature "mac_no_crc"): the CRC field is 0 and the frame's MAC (HMAC-SHA256 of the whole frame, key of
# the transfer) is its only check, which a CRC adds nothing to. Only on a bound transfer: a frame with this flag
# and no MAC is refused.
FLAG_NO_CRC = 0x08
# AES-GMAC trailer (feature "gmac"): the frame's MAC is a 12-byte random nonce and a 16-byte AES-GMAC tag instead
# of 16 bytes of HMAC-SHA256 (agent.wire.binding). Only on a bound transfer.
FLAG_GMAC = 0x10
# AES-GCM encrypted (agent.wire.encryption): past the magic, version and flags, the header and the data are
# ciphertext, and a nonce and tag follow the flags' place. Only on an encrypted transfer.
FLAG_AEAD = 0x20
CHUNK_FLAGS_AT = 5  # offset of the flags byte in the header (read before the MAC is checked, to pick the MAC)


class BundleEntry:
    __slots__ = ("index", "digest", "data")

    def __init__(self, index: int, digest: str | None, data: bytes | memoryview):
        self.index = index
        self.digest = digest  # hex, as in FileEnd; None when the transfer uses no checksum
        self.data = data


class Bundle:
    __slots__ = ("epoch", "entries")

    def __init__(self, epoch: int, entries: list[BundleEntry]):
        self.epoch = epoch
        self.entries = entries


class Chunk:
    __slots__ = ("epoch", "index", "offset", "data", "last", "ack")

    def __init__(self, epoch: int, index: int, offset: int, data: bytes | memoryview, last: bool = False,
                 ack: bool = True):
        self.epoch = epoch
        self.index = index
        self.offset = offset
        self.data = data
        self.last = last
        self.ack = ack  # False: FLAG_NO_ACK, a later chunk asks for the ack


def finish_chunk(frame: bytearray | memoryview, epoch: int, index: int, offset: int, length: int, *,
                 last: bool = False, ack: bool = True, crc: bool = True, mac_flag: int = 0) -> None:
    """Write the header of a chunk frame whose payload is already in place at frame[CHUNK_HEADER.size:]
    (`length` bytes; anything after them, e.g. room for a MAC, is left alone). The source reads a file
    straight into the frame, so the payload is never copied. `mac_flag`: FLAG_GMAC or 0."""
    flags = (FLAG_LAST if last else 0) | (0 if ack else FLAG_NO_ACK) | (0 if crc else FLAG_NO_CRC) | mac_flag
    CHUNK_HEADER.pack_into(frame, 0, CHUNK_MAGIC, PROTOCOL_VERSION, flags, 0, epoch, index, offset, length, 0)
    if crc:
        view = memoryview(frame)
        value = zlib.crc32(view[CHUNK_HEADER.size:CHUNK_HEADER.size + length], zlib.crc32(view[:_CRC_COVERED]))
        struct.pack_into(">I", frame, _CRC_COVERED, value)


def encode_chunk(epoch: int, index: int, offset: int, data: bytes | memoryview, last: bool = False,
                 ack: bool = True, crc: bool = True) -> bytes:
    frame = bytearray(CHUNK_HEADER.size + len(data))
    frame[CHUNK_HEADER.size:] = data
    finish_chunk(frame, epoch, index, offset, len(data), last=last, ack=ack, crc=crc)
    return bytes(frame)


def encode_bundle(epoch: int, entries: list[tuple[int, str | None, bytes]], mac_flag: int = 0) -> bytes:
    """A FLAG_BUNDLE frame of whole files: (index, hex digest or None, content) each. `mac_flag`: FLAG_GMAC
    or 0 (the MAC trailer is the caller's)."""
    if not 0 < len(entries) <= MAX_BUNDLE_FILES:
        raise ValueError(f"a bundle holds 1 to {MAX_BUNDLE_FILES} files, not {len(entries)}")
    parts = []
    for index, digest, data in entries:
        raw = bytes.fromhex(digest) if digest else b""
        parts += [BUNDLE_ENTRY.pack(index, len(data), len(raw)), raw, data]
    body = b"".join(parts)
    header = bytearray(CHUNK_HEADER.pack(CHUNK_MAGIC, PROTOCOL_VERSION, FLAG_BUNDLE | mac_flag, 0, epoch,
                                         len(entries), 0, len(body), 0))
    struct.pack_into(">I", header, _CRC_COVERED, zlib.crc32(body, zlib.crc32(header[:_CRC_COVERED])))
    return bytes(header) + body


def _bundle(epoch: int, count: int, body: memoryview) -> Bundle:
    if not 0 < count <= MAX_BUNDLE_FILES:
        raise ProtocolError(f"bundle of {count} files (1 to {MAX_BUNDLE_FILES} allowed)")
    entries: list[BundleEntry] = []
    pos = 0
    seen: set[int] = set()
    for _ in range(count):
        if pos + BUNDLE_ENTRY.size > len(body):
            raise ProtocolError(f"bundle truncated in the header of entry {len(entries)}")
        index, size, dlen = BUNDLE_ENTRY.unpack_from(body, pos)
        pos += BUNDLE_ENTRY.size
        if index >= MAX_FILES_PER_TRANSFER or index in seen:
            raise ProtocolError(f"bundle entry {len(entries)}: file index {index} out of range or repeated")
        if dlen > 64 or pos + dlen + size > len(body):
            raise ProtocolError(f"bundle entry {len(entries)} (file {index}) runs past the end of the frame")
        digest = bytes(body[pos:pos + dlen]).hex() if dlen else None
        pos += dlen
        entries.append(BundleEntry(index, digest, body[pos:pos + size]))
        seen.add(index)
        pos += size
    if pos != len(body):
        raise ProtocolError(f"bundle has {len(body) - pos} bytes after its last entry")
    return Bundle(epoch, entries)


def decode_chunk(payload: bytes | memoryview, authenticated: bool = False) -> Chunk | Bundle:
    """A data frame. `authenticated`: its MAC was checked, which makes the CRC redundant (not checked)."""
    if len(payload) < CHUNK_HEADER.size:
        raise ProtocolError(f"chunk of {len(payload)} bytes is shorter than its header")
    if len(payload) > CHUNK_HEADER.size + MAX_CHUNK_BYTES:
        raise ProtocolError(f"chunk of {len(payload)} bytes exceeds the limit")
    magic, version, flags, _, epoch, index, offset, length, crc = CHUNK_HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise ProtocolError("chunk has a bad magic number")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"chunk protocol version {version} is not supported")
    data = memoryview(payload)[CHUNK_HEADER.size:]
    if len(data) != length:
        raise ProtocolError(f"chunk says {length} bytes but carries {len(data)} (truncated?)")
    if index >= MAX_FILES_PER_TRANSFER and not flags & FLAG_BUNDLE:
        raise ProtocolError(f"chunk file index {index} out of range")
    if not authenticated:
        if flags & FLAG_NO_CRC:
            raise ProtocolError(f"chunk at file {index} offset {offset} has neither a CRC nor a MAC")
        if flags & FLAG_GMAC:
            raise ProtocolError(f"chunk at file {index} offset {offset} says it has a GMAC, on a transfer without one")
        if flags & FLAG_AEAD:
            raise ProtocolError("an encrypted chunk, on a transfer without a key")
        if zlib.crc32(data, zlib.crc32(memoryview(payload)[:_CRC_COVERED])) != crc:
            raise ProtocolError(f"chunk CRC mismatch at file {index} offset {offset}")
    if flags & FLAG_BUNDLE:
        return _bundle(epoch, index, data)
    return Chunk(epoch, index, offset, data, bool(flags & FLAG_LAST), not flags & FLAG_NO_ACK)


# --------------------------------------------------------------------------- agent status


# The wire forms of agent.core.statuses (tests/unit/test_vocabulary.py holds the two to the same words).
AgentStatusValue = Literal["STARTING", "READY", "ACTIVE", "STOPPING", "STOPPED", "UNREACHABLE"]


class AgentStatus(BaseModel):
    """Retained on <prefix>/Agents/<agent>. Lenient on read (extra fields allowed, for newer agents)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    agent: AgentName
    status: AgentStatusValue
    time: str
    version: str | None = None
    host: str | None = None
    pid: int | None = None
    started_at: str | None = None
    source_transfers: dict[str, str] = Field(default_factory=dict)
    destination_transfers: dict[str, str] = Field(default_factory=dict)
    max_source_transfers: int | None = None
    max_destination_transfers: int | None = None
    max_queued_transfers: int | None = None
    # the broker probe (agent.broker_probe): the chunk size of this broker connection, and what was found
    chunk_size: int | None = None
    broker_check: str | None = None
    # the broker (a node of brokerUrl's list) the agent is connected to: its URL, never credentials; absent in
    # the statuses of older agents and in the last will (agent.core.brokers)
    broker: str | None = Field(None, max_length=300)
    # the agent's X25519 offer key (agent.wire.encryption), to which sources encrypt their Resync; absent in the
    # statuses of agents without end-to-end encryption
    offer_key: str | None = Field(None, max_length=64)
    # the agent's identity signature (agent.wire.provenance); whether a reader checked it is `verified`
    signature: str | None = None
    _verified: bool = PrivateAttr(default=False)

    @property
    def verified(self) -> bool:
        """Signed by the agent's key as the reader trusts it (set by the reader, never by the message)."""
        return self._verified


def parse_agent_status(payload: bytes) -> AgentStatus:
    return _validate(TypeAdapter(AgentStatus), _load(payload, 1024 * 1024), "agent status")
