"""Result codes and message ids.

The numbers are the reference system's (IBM MQ MFT) wherever the meaning matches, so that scripts
written against ``fteCreateTransfer -w`` keep working: ``fte-create-transfer -w`` exits with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

# --- transfer / command result codes -------------------------------------------------------------
SUCCESS: Final = 0
COMMAND_FAILED: Final = 1
COMMAND_TIMED_OUT: Final = 2
PARTIAL: Final = 20
FAILED: Final = 40
CANCELLED: Final = 41
TRIGGER_FAILED: Final = 42
NOT_AUTHORIZED: Final = 53
RECOVERY_TIMED_OUT: Final = 69

DESCRIPTIONS: Final[dict[int, str]] = {
    SUCCESS: "success",
    COMMAND_FAILED: "command failed",
    COMMAND_TIMED_OUT: "command timed out waiting for a reply",
    PARTIAL: "partial success: some files were transferred, some were not",
    FAILED: "transfer failed",
    CANCELLED: "transfer cancelled",
    TRIGGER_FAILED: "trigger condition not met or failed",
    NOT_AUTHORIZED: "requester not authorized",
    RECOVERY_TIMED_OUT: "transfer recovery timed out",
}

# --- per-file result codes (one per item of a transfer set) ---------------------------------------
FILE_SUCCESS: Final = 0
FILE_FAILED: Final = 1
FILE_WARNING: Final = 2  # arrived, but with a warning (e.g. source delete disposition failed)

FILE_DESCRIPTIONS: Final[dict[int, str]] = {
    FILE_SUCCESS: "file transferred",
    FILE_FAILED: "file failed",
    FILE_WARNING: "file transferred with a warning",
}

# --- message ids (kept from the reference system so operators can grep for them) ------------------
BFGTR0081I: Final = "BFGTR0081I"  # transfer entered recovery
BFGTR0082I: Final = "BFGTR0082I"  # transfer resumed after recovery
BFGSS0081E: Final = "BFGSS0081E"  # transfer failed: recovery timed out
# this project's own (the reference has no message with these meanings): per-file supplements (agent.fileio)
FTEIO0001E: Final = "FTEIO0001E"  # the destination could not write its part file (ENOSPC, EDQUOT, EIO...)
FTEIO0002E: Final = "FTEIO0002E"  # the source could not read the source file
FTEIO0003E: Final = "FTEIO0003E"  # the source file changed while it was being sent
FTEIO0004E: Final = "FTEIO0004E"  # -t text: the destination could not convert the file (its encodings)

# The texts after "ID: " (agent.core.source_session.message); {timeout} of BFGTR0081I says what the recovery
# timeout does ("recovers until successful (recovery timeout -1)", "recovery timeout 600 s, until TIME", ...).
MESSAGES: Final[dict[str, str]] = {
    BFGTR0081I: "transfer {transfer_id} entered recovery: {reason}; {timeout}",
    BFGTR0082I: "transfer {transfer_id} resumed after recovery",
    BFGSS0081E: "transfer {transfer_id} failed: recovery timed out after {timeout} s",
}


def describe(code: int) -> str:
    """Human text for a transfer/command result code (unknown codes are still printable)."""
    return DESCRIPTIONS.get(code, f"result code {code}")


def transfer_result(file_results: Iterable[int]) -> int:
    """Overall result of a transfer set from its per-file codes.

    A warning still means the file arrived, so it counts as a success. A set that did not fully
    arrive is never reported as complete: some arrived → PARTIAL (20), none → FAILED (40).
    An empty set moved nothing, which a user asked for no reason: FAILED, not a silent success.
    """
    codes = list(file_results)
    unknown = [c for c in codes if c not in FILE_DESCRIPTIONS]
    if unknown:
        # A wrong code here is a bug in the caller; guessing would misreport a transfer.
        raise ValueError(f"unknown per-file result code(s) {unknown}: expected 0, 1 or 2")
    ok = sum(1 for c in codes if c in (FILE_SUCCESS, FILE_WARNING))
    if not codes or ok == 0:
        return FAILED
    if ok == len(codes):
        return SUCCESS
    return PARTIAL
