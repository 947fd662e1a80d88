"""Program calls (MFT's -presrc, -postsrc, -predst, -postdst and monitor command tasks): the rules, no IO.

The syntax is the reference's, `[type:]command[(arg1,arg2,...)][,[retrycount][,[retrywait][,successrc]]]`:
only the type `executable` (or none) is supported; inside the arguments, `(`, `)`, `,` and `\\` are escaped
with a backslash. `successrc` is `[>|<|!]N` terms joined by `&` (and, binding tighter) and `|` (or):
`>2&<7&!5|0|14` succeeds for 0, 3, 4, 6 and 14. The default is 0.

Which file a command name may run is decided here too (`command_candidates`): only a bare name, looked up
in the agent's commandPath, or an absolute path whose directory is one of commandPath's. The shell
(agent/programs.py) runs what these rules allow, as an argv list, never through a shell.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import FteError

# the program-call flags and the field of ProgramCalls each sets (also the `when` of an outcome)
FLAGS = {"-presrc": "pre_source", "-postsrc": "post_source", "-predst": "pre_destination",
         "-postdst": "post_destination"}
FLAG_OF = {v: k for k, v in FLAGS.items()}
UNSUPPORTED_TYPES = ("antscript", "jcl")
MAX_ARGS = 64
MAX_ARG_CHARS = 4096
MAX_NAME_CHARS = 255
MAX_RETRIES = 100
MAX_RETRY_WAIT = 3600
OUTPUT_TAIL_BYTES = 2048  # of a program's output (stdout and stderr together), kept for the log event

_TERM = re.compile(r"^([<>!]?)(-?\d{1,10})$")


class ProgramCallError(FteError, ValueError):
    """A program call that cannot be understood or may not run; the message says why and what to do."""


@dataclass(frozen=True)
class Call:
    """One program call as parsed: what the wire's ProgramCall carries."""

    name: str
    args: tuple[str, ...] = ()
    retry_count: int = 0
    retry_wait: int = 0
    success_rc: str = "0"
    type: str = "executable"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "args": list(self.args), "retry_count": self.retry_count,
                "retry_wait": self.retry_wait, "success_rc": self.success_rc}


def _chars(text: str, flag: str) -> list[tuple[str, bool]]:
    """(character, escaped by a backslash) of `text`."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            if i + 1 >= len(text):
                raise ProgramCallError(f"{flag}: the program call ends with a lone backslash; escape it as \\\\")
            out.append((text[i + 1], True))
            i += 2
        else:
            out.append((text[i], False))
            i += 1
    return out


def _split_top(text: str, sep: str, flag: str) -> list[str]:
    """`text` split at `sep` outside parentheses; escapes kept (the arguments are split by _split_args)."""
    parts, cur, depth = [], [], 0
    for c, escaped in _chars(text, flag):
        if not escaped and c in "()":
            depth += 1 if c == "(" else -1
        if not escaped and c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append("\\" + c if escaped else c)
    parts.append("".join(cur))
    return parts


def _split_args(text: str, flag: str) -> tuple[str, ...]:
    """The arguments between the parentheses: split at unescaped commas, escapes removed."""
    args, cur = [], []
    for c, escaped in _chars(text, flag):
        if not escaped and c in "()":
            raise ProgramCallError(f"{flag}: an unescaped {c!r} in the arguments; write it as \\{c}")
        if not escaped and c == ",":
            args.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    args.append("".join(cur))
    return tuple(args)


def parse(text: str, flag: str = "program call") -> Call:
    """The program call `text` (a flag's value) as a Call; ProgramCallError naming `flag` if it is wrong."""
    if not text or not text.strip():
        raise ProgramCallError(f"{flag}: empty program call; give NAME or NAME(arg1,arg2)")
    head, *rest = _split_top(text, ",", flag)
    if len(rest) > 3:
        raise ProgramCallError(f"{flag} {text!r}: too many fields; the form is "
                               "[executable:]NAME[(arg1,arg2)][,retrycount[,retrywait[,successrc]]]")
    kind = "executable"
    m = re.match(r"^([A-Za-z]+):(.*)$", head, re.S)
    if m and "(" not in m.group(1):
        kind, head = m.group(1).lower(), m.group(2)
        if kind in UNSUPPORTED_TYPES:
            raise ProgramCallError(f"{flag}: program type {kind!r} is not supported (only executable); see "
                                   "docs/migrating-from-mft.md, Program calls")
        if kind != "executable":
            raise ProgramCallError(f"{flag}: unknown program type {kind!r}; the type is executable (or none)")
    args: tuple[str, ...] = ()
    if "(" in head:
        name, _, tail = head.partition("(")
        if not tail.endswith(")") or tail.endswith("\\)"):
            raise ProgramCallError(f"{flag} {text!r}: the arguments must end with ')'; escape a ')' inside them "
                                   "as \\)")
        args = _split_args(tail[:-1], flag) if tail[:-1] else ()
    else:
        name = head
        if ")" in name:
            raise ProgramCallError(f"{flag} {text!r}: ')' without '('")
    check_name(name, flag)
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_CHARS for a in args):
        raise ProgramCallError(f"{flag}: at most {MAX_ARGS} arguments of {MAX_ARG_CHARS} characters each")
    fields = rest + [""] * (3 - len(rest))
    retry_count = _whole(fields[0], f"{flag} retrycount", MAX_RETRIES)
    retry_wait = _whole(fields[1], f"{flag} retrywait", MAX_RETRY_WAIT)
    success_rc = fields[2].strip() or "0"
    check_success_rc(success_rc, flag)
    return Call(name, args, retry_count, retry_wait, success_rc, kind)


def _whole(text: str, what: str, most: int) -> int:
    text = text.strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) > most:
        raise ProgramCallError(f"{what} {text!r} is not a whole number from 0 to {most}")
    return int(text)


def check_name(name: str, flag: str = "program call") -> None:
    """The command's name as written (not yet looked up): no NUL, not empty, not too long."""
    if not name or not name.strip():
        raise ProgramCallError(f"{flag}: no program name; give NAME or NAME(arg1,arg2)")
    if "\x00" in name or len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
        raise ProgramCallError(f"{flag}: the program name {name[:60]!r} is not a file name")


def check_success_rc(expr: str, flag: str = "program call") -> None:
    for group in expr.split("|"):
        for term in group.split("&"):
            if not _TERM.match(term.strip()):
                raise ProgramCallError(f"{flag} successrc {expr!r}: {term!r} is not [>|<|!]NUMBER (e.g. 0|>2&<7)")


def succeeded(expr: str, rc: int) -> bool:
    """Does return code `rc` satisfy successrc `expr`? `&` binds tighter than `|` (the reference's example)."""
    def term(t: str) -> bool:
        m = _TERM.match(t.strip())
        assert m is not None, t
        op, value = m.group(1), int(m.group(2))
        return {">": rc > value, "<": rc < value, "!": rc != value, "": rc == value}[op]
    return any(all(term(t) for t in group.split("&")) for group in expr.split("|"))


# ---------------------------------------------------------------------------------- where a command lives


def split_command_path(value: str | None) -> list[str]:
    """commandPath's directories (separated by ':'); each must be absolute. Empty: no program may run."""
    dirs = [d for d in (value or "").split(":") if d.strip()]
    for d in dirs:
        if not posixpath.isabs(d):
            raise ProgramCallError(f"commandPath lists {d!r}, which is not an absolute directory")
    return [posixpath.normpath(d) for d in dirs]


def command_candidates(name: str, command_path: Iterable[str]) -> list[str]:
    """The files `name` may be, in commandPath's order; ProgramCallError if it may not run at all.

    A bare name is looked up in each commandPath directory. An absolute path is taken only if its directory
    is one of commandPath's. Anything else (a relative path, `..`, `.`) is refused: the program that runs is
    always one the agent's administrator put in commandPath."""
    dirs = list(command_path)
    if not dirs:
        raise ProgramCallError(f"program {name!r} refused: this agent runs no programs (commandPath is empty; "
                               "set commandPath in agent.properties, docs/configuration.md)")
    if name in (".", "..") or "\x00" in name:
        raise ProgramCallError(f"program {name!r} refused: not a program name")
    if "/" in name:
        if not posixpath.isabs(name) or posixpath.normpath(name) != name or ".." in name.split("/"):
            raise ProgramCallError(f"program {name!r} refused: give a name found in commandPath, not a path")
        parent, base = posixpath.split(name)
        if parent not in dirs:
            raise ProgramCallError(f"program {name!r} refused: it is not in one of commandPath's directories "
                                   f"({':'.join(dirs)})")
        return [name]
    return [posixpath.join(d, name) for d in dirs]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def command_path_overlap(command_dirs: Iterable[str], write_dirs: Iterable[str],
                         excluded: Iterable[str] = ()) -> tuple[str, str] | None:
    """(commandPath directory, sandbox directory) of the first overlap, or None. Paths are already real
    (the shell resolves links). A commandPath directory inside an excluded part of the sandbox is outside it;
    a sandbox directory inside a commandPath directory overlaps it (files could arrive in it)."""
    excluded = list(excluded)
    for c in command_dirs:
        for w in write_dirs:
            if _inside(w, c):
                return c, w
            if _inside(c, w) and not any(_inside(c, x) for x in excluded):
                return c, w
    return None


# ---------------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """What became of one program call (the `programs` items of the `completed` event)."""

    when: str
    name: str
    outcome: str  # success | failure | refused | timed_out
    return_code: int | None = None
    attempts: int = 0
    output: str = ""
    message: str = ""
    args: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    def to_json(self) -> dict[str, Any]:
        return {"when": self.when, "name": self.name, "args": list(self.args), "outcome": self.outcome,
                "return_code": self.return_code, "attempts": self.attempts, "output": self.output,
                "message": self.message}


def describe_failure(o: Outcome) -> str:
    """One line for a failed call (the transfer's message)."""
    flag = FLAG_OF.get(o.when, o.when)
    if o.outcome == "refused":
        return f"{flag} {o.name}: {o.message}"
    if o.outcome == "timed_out":
        return f"{flag} {o.name} did not end within the commandTimeout and was killed ({o.attempts} attempt(s))"
    return f"{flag} {o.name} failed: return code {o.return_code} ({o.attempts} attempt(s)){': ' + o.message if o.message else ''}"


def tail(data: bytes, limit: int = OUTPUT_TAIL_BYTES) -> str:
    """The last `limit` bytes of a program's output as text (bad UTF-8 replaced)."""
    return data[-limit:].decode("utf-8", "replace")


def result_after_post(result_code: int, outcomes: Iterable[Outcome], failed_code: int) -> int:
    """The transfer's result once its post- programs ran: a failed one makes a success `failed_code`."""
    if any(not o.ok for o in outcomes) and result_code == 0:
        return failed_code
    return result_code


def program_environment(transfer_id: str, source_agent: str, destination_agent: str, job_name: str | None,
                        destinations: Iterable[str], when: str, base: Mapping[str, str],
                        destination_agents: Iterable[str] = ()) -> dict[str, str]:
    """The environment of a program call (docs/configuration.md, Program calls): `base` (PATH, HOME, LANG
    of the agent) and the transfer's facts. Destination paths are separated by newlines. A fan-out
    transfer's source calls also get FTE_DESTINATION_AGENTS, every destination agent, comma-separated
    (FTE_DESTINATION_AGENT is the first)."""
    env = {k: v for k, v in base.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")}
    env.update(FTE_TRANSFER_ID=transfer_id, FTE_SOURCE_AGENT=source_agent, FTE_DESTINATION_AGENT=destination_agent,
               FTE_JOB_NAME=job_name or "", FTE_PROGRAM_CALL=when,
               FTE_DESTINATION_FILES="\n".join(destinations))
    agents = list(destination_agents)
    if agents:
        env["FTE_DESTINATION_AGENTS"] = ",".join(agents)
    return env
