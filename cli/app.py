"""The command line's frame: the `fte` app, its one registry of commands, the shared helpers, the runner.

Every command module (agents, keys, transfers, brokers, monitors, templates, definitions, schedules,
observe) imports this module and registers its commands with `@command("verb")`; this module imports
none of them. cli/main.py imports them all (which registers them) and runs the app; the console scripts
(`fte-<verb>`, cli/scripts.py) run the same registered commands.

Errors: a command raises (or lets through) an `FteError`, or calls `fail()`, which raises one; the
wrapper that `command()` puts around every command is the one place that prints it, as one line on
stderr (`error: ...`), and exits with its `.code`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Optional

import typer
from rich.console import Console

from agent.core.errors import FteError

from .safe_text import safe, safe_markup
from .unknown_options import typed_flag, unknown_option_text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mqtt-fte: managed file transfer over MQTT.")
# `fte key ...`: requester keys (cli/keys.py) and template creators (cli/definitions.py) both add to it
key_app = typer.Typer(help="Requester keys: who may command an agent (authorityChecking=true).", no_args_is_help=True)

# emoji off: ":thumbs_up:" in a file name is shown as typed, not as a picture
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
out = Console(highlight=False, soft_wrap=True, emoji=False)

BROKER_HELP = "Broker URL (mqtt://HOST:PORT or mqtts://...), or a comma-separated list tried in order; default $FTE_BROKER_URL"
VERBOSE_HELP = "Say (on stderr) which messages were ignored because no trusted agent key signed them."


# --------------------------------------------------------------------------- the registry


ArgvFix = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Command:
    """A top-level verb of `fte`, which is also the console script `fte-<verb>`."""

    verb: str
    # rewrites the verb's arguments before typer parses them (create-transfer's bare -w)
    argv_fix: Optional[ArgvFix] = None

    @property
    def script(self) -> str:
        """The console script's name, as in pyproject.toml: fte-create-transfer."""
        return f"fte-{self.verb}"

    @property
    def entry_point(self) -> str:
        """The attribute of cli.scripts that pyproject.toml's entry point names: fte_create_transfer."""
        return self.script.replace("-", "_")


COMMANDS: dict[str, Command] = {}  # verb -> Command, in the order they were registered


def _register(verb: str, argv_fix: Optional[ArgvFix]) -> None:
    if verb in COMMANDS:
        raise ValueError(f"command {verb!r} is registered twice")
    COMMANDS[verb] = Command(verb, argv_fix)


def command(verb: str, *, group: Optional[typer.Typer] = None,
            argv_fix: Optional[ArgvFix] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command: `fte <verb>` and the script `fte-<verb>` (or, with `group`, a subcommand of it,
    which has no script of its own). The command's FteErrors are reported by `report`."""
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)  # typer reads the signature and the help through __wrapped__
        def reported(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except FteError as exc:
                report(exc)

        if group is None:
            _register(verb, argv_fix)
            app.command(verb)(reported)
        else:
            group.command(verb)(reported)
        return func

    return decorate


def add_group(verb: str, group: typer.Typer) -> None:
    """Register a group of subcommands (`fte key ...`, also `fte-key ...`)."""
    _register(verb, None)
    app.add_typer(group, name=verb)


add_group("key", key_app)


# --------------------------------------------------------------------------- errors and output


class CommandFailed(FteError):
    """What `fail()` raises: the command cannot go on; the message says what was wrong and what to do."""


def fail(message: str, code: int = 1) -> NoReturn:
    raise CommandFailed(message, code)


def report(exc: FteError) -> NoReturn:
    """The one place an error becomes output: one line on stderr, and the error's code as exit code."""
    # messages carry file names and agent replies: never rich markup, never a control character
    err.print(f"[bold red]error:[/] {safe_markup(str(exc))}", soft_wrap=True)
    raise typer.Exit(exc.code)


def note(message: str) -> None:
    """A line on stderr that is not an error (what was found, what to check)."""
    err.print(f"note: {safe(message)}", markup=False, soft_wrap=True)


def note_ignored(verbose: bool) -> Any:
    """The FteClient's on_ignored for a command's -v: one note line per ignored message."""
    if not verbose:
        return None
    return lambda message: err.print(f"note: {message}", markup=False, soft_wrap=True)


def print_listing(rows: list[dict[str, Any]], as_json: bool, none: str, line: Callable[[dict[str, Any]], str]) -> None:
    """A listing's output: with --json the rows as one JSON array; else `line(row)` for each, or `none`."""
    if as_json:
        out.print(json.dumps(rows), markup=False)
        return
    if not rows:
        out.print(none)
    for row in rows:
        out.print(safe(line(row)), markup=False)


def run(coro: Any) -> Any:
    """Run a command's coroutine; its FteErrors go to the command's `report`."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130)


# --------------------------------------------------------------------------- running a verb


# typer checks a typed flag with pydantic; its words ("Input should be a valid integer, unable to parse
# string as an integer") name neither the flag's value nor what to give instead
_VALUE_PROBLEM = {"int_parsing": "is not a whole number", "int_from_float": "is not a whole number",
                  "float_parsing": "is not a number", "bool_parsing": "is not true or false"}


def _bad_value_text(exc: Exception, argv: list[str]) -> str | None:
    """'-rt 'abc' is not a whole number' for a flag value typer could not convert; None for other errors."""
    cause = exc.__cause__
    param = getattr(exc, "param", None)
    errors = getattr(cause, "errors", None)
    if param is None or not callable(errors):
        return None
    try:
        first = errors()[0]
    except (IndexError, TypeError):
        return None
    opts = list(getattr(param, "opts", None) or [])
    flag = next((o for o in opts if o in argv), opts[0] if opts else str(getattr(param, "name", "value")))
    problem = _VALUE_PROBLEM.get(first.get("type"), f"is invalid: {first.get('msg')}")
    shown = first.get("input")
    return f"{flag} {str(shown)!r} {problem}"


def _unknown_option_text(exc: Exception, argv: list[str]) -> str:
    """'no such option -pr', or that an MFT flag is not supported (cli/unknown_options.py)."""
    command = getattr(getattr(exc, "ctx", None), "command", None)
    known = [o for p in getattr(command, "params", []) for o in (*p.opts, *p.secondary_opts)] + ["--help"]
    flag = typed_flag(str(getattr(exc, "option_name", "")), argv[1:], known)
    return unknown_option_text(flag, known)


def invoke(argv: list[str]) -> NoReturn:
    """Run the app on `argv` (verb first); a usage error is one line and exit 1 (2 means 'timed out' for
    these commands)."""
    verb = argv[0] if argv else None
    fix = COMMANDS[verb].argv_fix if verb in COMMANDS else None
    if fix is not None:
        argv = [argv[0]] + fix(argv[1:])
    try:
        code = app(args=argv, prog_name="fte", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # click's UsageError (typer vendors click in recent versions: match it by name)
        kinds = {c.__name__ for c in type(exc).__mro__}
        if "Abort" in kinds:
            sys.exit(130)
        if "UsageError" not in kinds:
            raise
        message = _unknown_option_text(exc, argv) if "NoSuchOption" in kinds else None
        message = message or _bad_value_text(exc, argv) or exc.format_message()  # type: ignore[attr-defined]
        if not message:  # no arguments at all: the help was shown
            sys.exit(0)
        where = f"fte {argv[0]} --help" if argv and argv[0] in COMMANDS else "fte --help"
        err.print(f"[bold red]error:[/] {safe_markup(message)} (see: {where})")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def run_verb(verb: str) -> NoReturn:
    """The console script fte-<verb>: `fte <verb>` with the script's arguments."""
    invoke([verb] + sys.argv[1:])
