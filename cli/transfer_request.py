"""The transfer-request flags, checked once: -da (one agent or a fan-out's list), -de, -sd, -cs, -rt, -md,
-t/-sce/-dce/-dle, -pr, --bandwidth and -tr, and a TransferSpec built from them with an error that names the
flag. fte-create-transfer, fte-create-template and fte-create-monitor (its task) take the same flags and use these, so a value is refused with the same words by all three.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional

import typer

from agent.core.program_call import ProgramCallError
from agent.core.recovery import check_recovery_timeout
from agent.core.text_convert import LINE_ENDINGS, MODES, check_encoding, check_line_ending
from agent.wire.programs import ProgramCall, ProgramCalls
from agent.core.start_order import check_priority
from agent.core.units import parse_rate
from agent.core.transfer_trigger import TransferTrigger, TransferTriggerError
from agent.wire.protocol import MAX_FANOUT, TransferItem, TransferSpec, fanout_problem

from .client import ClientError

# the values the flags take, as the commands' help says them
EXIST = ("error", "overwrite")
DISPOSITION = ("leave", "delete")
CHECKSUM = ("sha256", "md5", "none")
TEXT_HELP = {  # -t, -sce, -dce, -dle, as every command that takes them says them
    "-t": "binary | text: text converts encodings and line endings at the destination (default binary).",
    "-sce": "Text: the source files' encoding, a Python codec name (default: the agent's platform encoding, "
            "UTF-8).",
    "-dce": "Text: the encoding written at the destination (default: the agent's platform encoding, UTF-8).",
    "-dle": f"Text: the line endings written at the destination, {' | '.join(LINE_ENDINGS)} (default LF).",
}
# the options of fte-create-transfer and fte-create-template (fte-create-monitor's say "Task:")
MODE_OPTION = typer.Option(None, "-t", "--transfer-mode", help=TEXT_HELP["-t"])
SOURCE_ENCODING_OPTION = typer.Option(None, "-sce", "--source-encoding", help=TEXT_HELP["-sce"])
DESTINATION_ENCODING_OPTION = typer.Option(None, "-dce", "--destination-encoding", help=TEXT_HELP["-dce"])
LINE_ENDING_OPTION = typer.Option(None, "-dle", "--destination-line-ending", help=TEXT_HELP["-dle"])

PRIORITY_HELP = ("Priority 0 (lowest, the default) to 9 (highest): queued transfers start by priority, then in "
                 "the order they came.")
BANDWIDTH_HELP = ("Bytes a second this transfer sends at most: digits with an optional K, M or G (powers of "
                  "1000), e.g. 20M; the source agent's agentMaxBandwidth applies too (the lower wins).")

FLAG_OF_FIELD = {"source_agent": "-sa", "destination_agent": "-da", "destination_agents": "-da", "job_name": "-jn", "metadata": "-md",
                 "recovery_timeout": "-rt", "priority": "-pr", "bandwidth": "--bandwidth", "items": "the sources or -df/-dd",
                 "source": "source", "programs": "-presrc/-postsrc/-predst/-postdst", "trigger": "-tr"}

_CALL_FORM = "[executable:]NAME[(arg1,arg2)][,retrycount[,retrywait[,successrc]]]; NAME is looked up in the " \
             "agent's commandPath"
PROGRAM_HELP = {
    "-presrc": f"Program to run on the source agent before the transfer starts (failure: the transfer fails, "
               f"nothing sent): {_CALL_FORM}.",
    "-postsrc": "Program to run on the source agent after all files (failure: result 40).",
    "-predst": "Program to run on the destination agent before any file is written (failure: the transfer "
               "fails, nothing sent).",
    "-postdst": "Program to run on the destination agent after all files (failure: result 40).",
}


class TransferRequestError(ClientError):
    """A transfer-request flag has a value that cannot be used; the message names the flag and the value."""


def check_flags(exist: Optional[str], disposition: Optional[str], checksum: Optional[str],
                recovery_timeout: Optional[int]) -> None:
    """-de, -sd, -cs and -rt (None: not given); TransferRequestError for the first that is wrong."""
    for flag, value, allowed in (("-de", exist, EXIST), ("-sd", disposition, DISPOSITION),
                                 ("-cs", checksum.lower() if checksum else None, CHECKSUM)):
        if value is not None and value not in allowed:
            raise TransferRequestError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")
    if recovery_timeout is not None:
        try:
            check_recovery_timeout(recovery_timeout, "-rt")  # the agent's rule and words, not a copy
        except (TypeError, ValueError) as exc:
            raise TransferRequestError(str(exc)) from None


def text_fields(mode: Optional[str], source_encoding: Optional[str], destination_encoding: Optional[str],
                line_ending: Optional[str]) -> dict[str, Any]:
    """-t, -sce, -dce and -dle (None: not given) as the TransferSpec fields they set, the encodings' names as
    Python knows them; TransferRequestError naming the flag for the first that is wrong."""
    fields: dict[str, Any] = {}
    try:
        if mode is not None:
            if mode.lower() not in MODES:
                raise ValueError(f"-t {mode!r} is not one of: {', '.join(MODES)}")
            fields["mode"] = mode.lower()
        for flag, name, value in (("-sce", "source_encoding", source_encoding),
                                  ("-dce", "destination_encoding", destination_encoding)):
            if value is not None:
                fields[name] = check_encoding(value, flag)
        if line_ending is not None:
            fields["destination_line_ending"] = check_line_ending(line_ending, "-dle")
    except ValueError as exc:
        raise TransferRequestError(str(exc)) from None
    return fields


def text_flags_without_text_mode(spec: Any) -> Optional[str]:
    """Why -sce/-dce/-dle cannot be used as given (without -t text), or None."""
    given = [flag for flag, value in (("-sce", spec.source_encoding), ("-dce", spec.destination_encoding),
                                      ("-dle", spec.destination_line_ending)) if value is not None]
    if given and spec.mode != "text":
        return f"{', '.join(given)} only apply to text transfers: add -t text (they convert text files)"
    return None


def priority_and_bandwidth(priority: Optional[int], bandwidth: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """-pr (0..9) and --bandwidth RATE (20M: bytes a second) as the TransferSpec takes them (None: not given;
    --bandwidth 0 is no cap of its own); TransferRequestError naming the flag."""
    try:
        if priority is not None:
            check_priority(priority, "-pr")
    except ValueError as exc:
        raise TransferRequestError(str(exc)) from None
    try:
        rate = parse_rate(bandwidth) if bandwidth is not None else None
    except ValueError as exc:
        raise TransferRequestError(f"--bandwidth {exc}") from None
    return priority, rate or None


def check_trigger(trigger: Optional[str]) -> None:
    """-tr (None: not given), in the agent's words (agent.core.transfer_trigger)."""
    if trigger is not None:
        try:
            TransferTrigger.parse(trigger)
        except TransferTriggerError as exc:
            raise TransferRequestError(str(exc)) from None


DESTINATION_AGENT_HELP = (f"Destination agent; or a comma list (A2,A3,A4: 2 to {MAX_FANOUT} distinct agents, not the "
                          "source agent) for a fan-out, one transfer delivered to each of them.")


def destination_agents(value: str, source_agent: Optional[str] = None) -> tuple[str, Optional[list[str]]]:
    """-da A2 (one destination: (A2, None)) or -da A2,A3,A4 (a fan-out: (A2, [A2, A3, A4])); the list checked
    here, in the words of TransferSpec's own check, so that nothing wrong is sent: TransferRequestError naming
    the flag and what is wrong (an empty name, a name twice, more than 16, the source agent among them)."""
    if "," not in value:
        return value, None
    names = [n.strip() for n in value.split(",")]
    if any(not n for n in names):
        raise TransferRequestError(f"-da {value!r}: an agent name is empty (write the list as -da A2,A3,A4)")
    problem = fanout_problem(source_agent or "", names)
    if problem is not None:
        raise TransferRequestError(f"-da {value!r}: {problem}")
    return names[0], names


def destinations_text(spec: Any) -> str:
    """A spec's destination agents as shown: A2, or A2,A3,A4 for a fan-out."""
    return ",".join(spec.destination_agents or [spec.destination_agent])


def parse_metadata(values: Optional[List[str]]) -> dict[str, str]:
    """-md key=value[,key=value], repeatable, as a dict (a key given twice keeps its last value)."""
    md: dict[str, str] = {}
    for v in values or []:
        for pair in v.split(","):
            if "=" not in pair:
                raise TransferRequestError(f"-md {pair!r} is not key=value (e.g. -md ticket=42)")
            k, _, val = pair.partition("=")
            md[k.strip()] = val.strip()
    return md


def validation_text(exc: Exception) -> str:
    """A pydantic error of a TransferSpec as one line naming the flag and the value."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    first = errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    flag = FLAG_OF_FIELD.get(loc[0], loc[0]) if loc else "request"
    if loc == ["destination"]:
        flag = "-df" if "-df" in sys.argv or "--destination-file" in sys.argv else "-dd"
    value = first.get("input")
    shown = f" {value!r}" if isinstance(value, (str, int)) else ""
    if isinstance(value, str) and len(value) > 60:  # a path of 5,000 characters is not repeated in full
        shown = f" {value[:40]!r}... ({len(value)} characters)"
    limit = (first.get("ctx") or {}).get("max_length")
    if first.get("type") == "string_too_long" and limit:
        return f"{flag}{shown} is too long: at most {limit} characters are allowed"
    return f"{flag}{shown}: {first.get('msg')}"


def transfer_spec(source_agent: str, destination_agent: str, sources: List[str], dest_file: Optional[str],
                  dest_dir: Optional[str], exist: str, disposition: str, checksum: str, recursive: bool = False,
                  recovery_timeout: Optional[int] = None, job_name: Optional[str] = None,
                  metadata: Optional[List[str]] = None, mode: Optional[str] = None,
                  source_encoding: Optional[str] = None, destination_encoding: Optional[str] = None,
                  destination_line_ending: Optional[str] = None, priority: Optional[int] = None,
                  bandwidth: Optional[str] = None, *, trigger: Optional[str] = None) -> TransferSpec:
    """The transfer the flags describe, every flag checked; TransferRequestError naming the flag if not."""
    check_flags(exist, disposition, checksum, recovery_timeout)
    check_trigger(trigger)
    md = parse_metadata(metadata)
    text = text_fields(mode, source_encoding, destination_encoding, destination_line_ending)
    pr, rate = priority_and_bandwidth(priority, bandwidth)
    destination_agent, fanout = destination_agents(destination_agent, source_agent)
    try:
        items = [TransferItem(source=s, destination=dest_file or dest_dir or "",
                              destination_type="file" if dest_file else "directory", recursive=recursive)
                 for s in sources]
        spec = TransferSpec(source_agent=source_agent, destination_agent=destination_agent, items=items,
                            exist=exist, disposition=disposition, checksum=checksum.lower(),
                            recovery_timeout=recovery_timeout, job_name=job_name, metadata=md, **text,
                            priority=pr, bandwidth=rate, trigger=trigger, destination_agents=fanout)
    except ValueError as exc:
        raise TransferRequestError(f"invalid transfer request: {validation_text(exc)}") from None
    problem = text_flags_without_text_mode(spec)
    if problem:
        raise TransferRequestError(problem)
    return spec


def program_calls(presrc: Optional[str] = None, postsrc: Optional[str] = None, predst: Optional[str] = None,
                  postdst: Optional[str] = None) -> Optional[ProgramCalls]:
    """-presrc, -postsrc, -predst and -postdst (None: not given) as ProgramCalls, or None if none is given;
    TransferRequestError naming the flag (agent.core.program_call's words)."""
    given = {"pre_source": ("-presrc", presrc), "post_source": ("-postsrc", postsrc),
             "pre_destination": ("-predst", predst), "post_destination": ("-postdst", postdst)}
    try:
        calls = {field: ProgramCall.parse(value, flag) for field, (flag, value) in given.items() if value is not None}
    except ProgramCallError as exc:
        raise TransferRequestError(str(exc)) from None
    return ProgramCalls(**calls) if calls else None


def with_programs(spec: TransferSpec, calls: Optional[ProgramCalls]) -> TransferSpec:
    """`spec` with the program calls given on the command line replacing its own (a template's, a file's)."""
    if calls is None:
        return spec
    merged = {**(spec.programs.model_dump(exclude_none=True) if spec.programs else {}),
              **calls.model_dump(exclude_none=True)}
    return spec.model_copy(update={"programs": ProgramCalls(**merged)})
