"""The transfer-request flags, checked once: -de, -sd, -cs, -rt, -md, -pr and --bandwidth, and a TransferSpec built from them
with an error that names the flag. fte-create-transfer, fte-create-template and fte-create-monitor (its
task) take the same flags and use these, so a value is refused with the same words by all three.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from agent.core.recovery import check_recovery_timeout
from agent.core.start_order import check_priority
from agent.core.units import parse_rate
from agent.wire.protocol import TransferItem, TransferSpec

from .client import ClientError

# the values the flags take, as the commands' help says them
EXIST = ("error", "overwrite")
DISPOSITION = ("leave", "delete")
CHECKSUM = ("sha256", "md5", "none")

PRIORITY_HELP = ("Priority 0 (lowest, the default) to 9 (highest): queued transfers start by priority, then in "
                 "the order they came.")
BANDWIDTH_HELP = ("Bytes a second this transfer sends at most: digits with an optional K, M or G (powers of "
                  "1000), e.g. 20M; the source agent's agentMaxBandwidth applies too (the lower wins).")

FLAG_OF_FIELD = {"source_agent": "-sa", "destination_agent": "-da", "job_name": "-jn", "metadata": "-md",
                 "recovery_timeout": "-rt", "priority": "-pr", "bandwidth": "--bandwidth", "items": "the sources or -df/-dd", "source": "source"}


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
                  metadata: Optional[List[str]] = None, priority: Optional[int] = None,
                  bandwidth: Optional[str] = None) -> TransferSpec:
    """The transfer the flags describe, every flag checked; TransferRequestError naming the flag if not."""
    check_flags(exist, disposition, checksum, recovery_timeout)
    md = parse_metadata(metadata)
    pr, rate = priority_and_bandwidth(priority, bandwidth)
    try:
        items = [TransferItem(source=s, destination=dest_file or dest_dir or "",
                              destination_type="file" if dest_file else "directory", recursive=recursive)
                 for s in sources]
        return TransferSpec(source_agent=source_agent, destination_agent=destination_agent, items=items,
                            exist=exist, disposition=disposition, checksum=checksum.lower(),
                            recovery_timeout=recovery_timeout, job_name=job_name, metadata=md,
                            priority=pr, bandwidth=rate)
    except ValueError as exc:
        raise TransferRequestError(f"invalid transfer request: {validation_text(exc)}") from None
