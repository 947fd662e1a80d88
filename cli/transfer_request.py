"""The transfer-request flags, checked once: -de, -sd, -cs, -rt, -md and -tr, and a TransferSpec built from them
with an error that names the flag. fte-create-transfer, fte-create-template and fte-create-monitor (its
task) take the same flags and use these, so a value is refused with the same words by all three.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from agent.core.recovery import check_recovery_timeout
from agent.core.transfer_trigger import TransferTrigger, TransferTriggerError
from agent.wire.protocol import TransferItem, TransferSpec

from .client import ClientError

# the values the flags take, as the commands' help says them
EXIST = ("error", "overwrite")
DISPOSITION = ("leave", "delete")
CHECKSUM = ("sha256", "md5", "none")

FLAG_OF_FIELD = {"source_agent": "-sa", "destination_agent": "-da", "job_name": "-jn", "metadata": "-md",
                 "recovery_timeout": "-rt", "items": "the sources or -df/-dd", "source": "source", "trigger": "-tr"}


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


def check_trigger(trigger: Optional[str]) -> None:
    """-tr (None: not given), in the agent's words (agent.core.transfer_trigger)."""
    if trigger is not None:
        try:
            TransferTrigger.parse(trigger)
        except TransferTriggerError as exc:
            raise TransferRequestError(str(exc)) from None


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
                  metadata: Optional[List[str]] = None, *, trigger: Optional[str] = None) -> TransferSpec:
    """The transfer the flags describe, every flag checked; TransferRequestError naming the flag if not."""
    check_flags(exist, disposition, checksum, recovery_timeout)
    check_trigger(trigger)
    md = parse_metadata(metadata)
    try:
        items = [TransferItem(source=s, destination=dest_file or dest_dir or "",
                              destination_type="file" if dest_file else "directory", recursive=recursive)
                 for s in sources]
        return TransferSpec(source_agent=source_agent, destination_agent=destination_agent, items=items,
                            exist=exist, disposition=disposition, checksum=checksum.lower(),
                            recovery_timeout=recovery_timeout, job_name=job_name, metadata=md, trigger=trigger)
    except ValueError as exc:
        raise TransferRequestError(f"invalid transfer request: {validation_text(exc)}") from None
