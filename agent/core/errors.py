"""The one root of the errors mqtt-fte raises on purpose.

Every error a user can be shown derives from `FteError` and carries a `code`: the result code a refused
command replies with, or the exit code a CLI command ends with. Areas subclass it (a protocol error, a
sandbox refusal, a client that got no answer...); the one place that reports an error reads `code` and
`str(error)` and needs no ladder of `isinstance`.
"""

from __future__ import annotations


class FteError(Exception):
    """An error of mqtt-fte, with the code it is reported with (1 unless the area or the raiser says)."""

    code: int = 1

    def __init__(self, message: str = "", code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
