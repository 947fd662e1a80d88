"""The trigger condition of one transfer (`fte-create-transfer -tr`), without IO: parsed from the reference's
syntax, and evaluated on the facts of the files it names (what the source agent found at each path).

    file=exist,PATH[,PATH...]     met if at least one PATH exists (a file or a directory)
    file!=exist,PATH[,PATH...]    met if at least one PATH does not exist (`file=noexist` is the same)
    filesize>=SIZE,PATH[,...]     met if at least one PATH is a file of at least SIZE bytes

SIZE is as in the monitors' fileSize trigger (agent.core.triggers.size_bytes: B, KB, MB, GB, powers of
1024). PATHs are names, not patterns. A symbolic link is never followed: it is neither a file that exists
nor a name that is free. The source agent gathers the facts (agent.admission, inside its sandbox) and a
condition not met ends the transfer with result 42 before any file is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import FteError
from .results import TRIGGER_FAILED
from .triggers import size_bytes

Condition = Literal["exist", "noexist", "filesize"]
PathKind = Literal["missing", "file", "directory", "link", "other"]

MAX_TRIGGER_PATHS = 64
MAX_TRIGGER_CHARS = 16_384  # the whole -tr text, as it travels in a TransferSpec
# What TRIGGER_PATTERN admits is what `parse` takes (the wire model checks both; the fuzz tests generate from it)
TRIGGER_PATTERN = (r"^(?i:[ \t]*(?:file[ \t]*(?:=[ \t]*(?:no)?exist|!=[ \t]*exist)|filesize[ \t]*>=[ \t]*[0-9]+"
                   r"[ \t]*[kmgt]?b?)[ \t]*)(?:,[^,\x00]*[^,\x00 \t][^,\x00]*){1,64}$")
_HEADS: dict[str, Condition] = {"file=exist": "exist", "file!=exist": "noexist", "file=noexist": "noexist"}
_WRITTEN = {"exist": "file=exist", "noexist": "file!=exist"}


class TransferTriggerError(FteError, ValueError):
    """A -tr text that is no trigger condition (a usage error on the command line, a malformed request
    on the agent)."""


@dataclass(frozen=True)
class PathFact:
    """What is at one named path, without following a link; `size` only for a file."""

    kind: PathKind
    size: int = 0


@dataclass(frozen=True)
class Verdict:
    met: bool
    reason: str  # why (met or not), for the log: names the path that decided


@dataclass(frozen=True)
class TransferTrigger:
    condition: Condition
    paths: tuple[str, ...]
    size: int = 0  # filesize: at least this many bytes

    @classmethod
    def parse(cls, text: str) -> "TransferTrigger":
        if len(text) > MAX_TRIGGER_CHARS:
            raise TransferTriggerError(f"-tr is too long: at most {MAX_TRIGGER_CHARS} characters")
        head, sep, rest = text.partition(",")
        paths = tuple(p.strip(" \t") for p in rest.split(",")) if sep else ()
        if not paths or any(not p for p in paths):
            raise TransferTriggerError(f"-tr {text!r} is not CONDITION,PATH[,PATH...] (e.g. -tr file=exist,/in/ready)")
        if len(paths) > MAX_TRIGGER_PATHS:
            raise TransferTriggerError(f"-tr names {len(paths)} paths: at most {MAX_TRIGGER_PATHS}")
        if any("\x00" in p for p in paths):
            raise TransferTriggerError("-tr: a path contains a NUL character")
        key = head.lower().replace(" ", "").replace("\t", "")
        if key in _HEADS:
            return cls(_HEADS[key], paths)
        if key.startswith("filesize>="):
            size = size_bytes(key[len("filesize>="):])
            if size is not None:
                return cls("filesize", paths, size)
            raise TransferTriggerError(f"-tr {head.strip()!r}: the size is digits with an optional B, KB, MB or GB "
                                       "(e.g. filesize>=10MB)")
        raise TransferTriggerError(f"-tr condition {head.strip()!r} is unknown: use file=exist, file!=exist "
                                   "(or file=noexist) or filesize>=SIZE")

    def text(self) -> str:
        head = f"filesize>={self.size}" if self.condition == "filesize" else _WRITTEN[self.condition]
        return ",".join((head,) + self.paths)

    def evaluate(self, facts: Mapping[str, PathFact]) -> Verdict:
        """Met if at least one path satisfies the condition (the reference's rule for a list of names). A path
        without a fact counts as missing."""
        seen = [(p, facts.get(p, PathFact("missing"))) for p in self.paths]
        for p, fact in seen:
            if self.condition == "exist" and fact.kind in ("file", "directory"):
                return Verdict(True, f"{p} exists")
            if self.condition == "noexist" and fact.kind == "missing":
                return Verdict(True, f"{p} does not exist")
            if self.condition == "filesize" and fact.kind == "file" and fact.size >= self.size:
                return Verdict(True, f"{p} is {fact.size} bytes, at least {self.size}")
        return Verdict(False, "trigger condition not met: " + "; ".join(self._why_not(p, f) for p, f in seen))

    def _why_not(self, path: str, fact: PathFact) -> str:
        if fact.kind == "link":
            return f"{path} is a symbolic link (not followed)"
        if fact.kind == "other":
            return f"{path} is neither a file nor a directory"
        if self.condition == "exist":
            return f"{path} does not exist"
        if self.condition == "noexist":
            return f"{path} exists"
        if fact.kind == "file":
            return f"{path} is {fact.size} bytes, less than {self.size}"
        return f"{path} is not a file" if fact.kind != "missing" else f"{path} does not exist"


RESULT_CODE = TRIGGER_FAILED  # the transfer's result when the condition is not met (the reference's 42)


def check_trigger_text(text: str) -> str:
    """For the wire model: the text if it parses (TransferTriggerError otherwise)."""
    TransferTrigger.parse(text)
    return text
