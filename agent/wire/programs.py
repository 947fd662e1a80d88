"""Program calls on the wire: the calls a transfer asks for (TransferSpec.programs) and the two control
messages by which the source agent has its destination run one (ProgramRun) and hears what became of it
(ProgramDone). The syntax and the rules are agent.core.program_call's."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..core import program_call as pc

# patterns rather than validators: the fuzz tests (tests/unit/test_protocol_fuzz.py) draw valid values from them
Name = Annotated[str, Field(min_length=1, max_length=pc.MAX_NAME_CHARS, pattern=r"^[^\x00-\x1f]+$")]
SuccessRc = Annotated[str, Field(max_length=256, pattern=r"^[<>!]?-?[0-9]{1,10}([&|][<>!]?-?[0-9]{1,10}){0,15}$")]
Arg = Annotated[str, Field(max_length=pc.MAX_ARG_CHARS)]
When = Literal["pre_source", "post_source", "pre_destination", "post_destination", "monitor"]
AtDestination = Literal["pre_destination", "post_destination"]
MAX_OUTPUT_CHARS = pc.OUTPUT_TAIL_BYTES * 2  # a tail of 2048 bytes, decoded with replacement characters


class _Strict(BaseModel):
    # as agent.wire.protocol.Strict (not imported: protocol imports this module)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


class ProgramCall(_Strict):
    """One call: `NAME(arg1,arg2),retrycount,retrywait,successrc` as parsed (agent.core.program_call)."""

    type: Literal["executable"] = "executable"
    name: Name
    args: Annotated[list[Arg], Field(max_length=pc.MAX_ARGS)] = Field(default_factory=list)
    retry_count: Annotated[int, Field(ge=0, le=pc.MAX_RETRIES)] = 0
    retry_wait: Annotated[int, Field(ge=0, le=pc.MAX_RETRY_WAIT)] = 0
    success_rc: SuccessRc = "0"

    @classmethod
    def parse(cls, text: str, flag: str) -> "ProgramCall":
        """From a flag's value; ProgramCallError naming the flag."""
        return cls(**pc.parse(text, flag).to_json())

    def call(self) -> pc.Call:
        return pc.Call(self.name, tuple(self.args), self.retry_count, self.retry_wait, self.success_rc, self.type)


class ProgramCalls(_Strict):
    """The program calls of a transfer (fte-create-transfer -presrc, -postsrc, -predst, -postdst)."""

    pre_source: ProgramCall | None = None
    post_source: ProgramCall | None = None
    pre_destination: ProgramCall | None = None
    post_destination: ProgramCall | None = None


class ProgramOutcome(_Strict):
    """What became of one call (agent.core.program_call.Outcome); an item of the completed event's `programs`."""

    when: When
    name: Name
    args: Annotated[list[Arg], Field(max_length=pc.MAX_ARGS)] = Field(default_factory=list)
    outcome: Literal["success", "failure", "refused", "timed_out"]
    return_code: int | None = None
    attempts: Annotated[int, Field(ge=0, le=pc.MAX_RETRIES + 1)] = 0
    output: Annotated[str, Field(max_length=MAX_OUTPUT_CHARS)] = ""
    message: Annotated[str, Field(max_length=1024)] = ""

    def outcome_of(self) -> pc.Outcome:
        return pc.Outcome(**self.model_dump())


class ProgramRun(_Strict):
    """Source → destination (signed by the source): run this call of the transfer now, before it starts
    (pre_destination) or after all its files (post_destination)."""

    kind: Literal["program_run"]
    transfer_id: Annotated[str, Field(pattern=r"^[0-9a-f]{48}$")]
    source_agent: Annotated[str, Field(max_length=64)]
    destination_agent: Annotated[str, Field(max_length=64)]
    when: AtDestination
    call: ProgramCall
    job_name: Annotated[str, Field(max_length=256)] | None = None
    destinations: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=10_000)] = \
        Field(default_factory=list)
    mac: Annotated[str, Field(max_length=64)] | None = None
    signature: Annotated[str, Field(max_length=256)] | None = None


class ProgramDone(_Strict):
    """Destination → source (signed by the destination): the outcome of a ProgramRun."""

    kind: Literal["program_done"]
    transfer_id: Annotated[str, Field(pattern=r"^[0-9a-f]{48}$")]
    when: AtDestination
    outcome: ProgramOutcome
    # the answering agent (a fan-out's source gives the answer to that destination's leg); absent from older agents
    destination_agent: Annotated[str, Field(max_length=64)] | None = None
    mac: Annotated[str, Field(max_length=64)] | None = None
    signature: Annotated[str, Field(max_length=256)] | None = None
