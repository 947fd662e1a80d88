"""The status of one file at the destination, as an explicit table (in the style of h11's ``_state.py``).

A file is `ready` while its bytes arrive in its part file, `renaming` once its part file is complete, durable
and verified (a restart finishes the rename), then `done`; or `failed`, from either, with the reason in its
supplement. A text transfer's file (-t text) is `converting` between `ready` and `renaming`: verified, its part
file being converted into a second temporary file (a restart converts it again), which is what is renamed. `done` and `failed` are final: a late chunk or a second result for such a file is the session's
to drop before it gets here, so reaching this table with one is a bug, and says so.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import FteError
from .statuses import FileStatus


class FileEvent(StrEnum):
    VERIFIED = "verified"  # the part file is complete, durable and its digest matches: rename it
    RENAMED = "renamed"  # the part file is in place (and its directory durable)
    FAILED = "failed"  # refused, not writable, digest mismatch, rename failed
    ABANDONED = "abandoned"  # the transfer ended before the file was finished
    VERIFIED_TEXT = "verified_text"  # as VERIFIED, of a text transfer: convert it first
    CONVERTED = "converted"  # the converted file is complete and durable: rename it


F = FileStatus
E = FileEvent

FILE_TRANSITIONS: dict[tuple[FileStatus, FileEvent], FileStatus] = {
    (F.READY, E.VERIFIED): F.RENAMING,
    (F.READY, E.FAILED): F.FAILED,
    (F.READY, E.ABANDONED): F.FAILED,
    (F.RENAMING, E.RENAMED): F.DONE,
    (F.RENAMING, E.FAILED): F.FAILED,
    (F.READY, E.VERIFIED_TEXT): F.CONVERTING,
    (F.CONVERTING, E.CONVERTED): F.RENAMING,
    (F.CONVERTING, E.FAILED): F.FAILED,
}

FINAL_FILE_STATUSES: frozenset[FileStatus] = frozenset({F.DONE, F.FAILED})


class FileStatusError(FteError):
    """An event that the file status table does not allow in the file's current status."""

    def __init__(self, status: FileStatus, event: FileEvent) -> None:
        self.status = status
        self.event = event
        super().__init__(f"cannot handle file event {event.value!r} in file status {status.value!r}")


def next_file_status(status: FileStatus | str, event: FileEvent) -> FileStatus:
    status, event = FileStatus(status), FileEvent(event)
    try:
        return FILE_TRANSITIONS[(status, event)]
    except KeyError:
        raise FileStatusError(status, event) from None
