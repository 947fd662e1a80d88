"""The console scripts: `fte-<verb>` is `fte <verb>`, for every verb registered in cli/app.py.

pyproject.toml's entry points name `cli.scripts:fte_<verb>` (fte-create-transfer = "cli.scripts:
fte_create_transfer"); an entry point is resolved with getattr, so this module's `__getattr__` answers
every registered verb and nothing else. No script has code of its own: a new command needs only its
line in pyproject.toml (tests/unit/test_cli_structure.py checks that the two agree).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from . import main  # registers every command
from .app import COMMANDS, run_verb


def entry_points() -> dict[str, str]:
    """Script name -> the attribute of this module that runs it: {"fte-create-transfer": "fte_create_transfer"}."""
    return {c.script: c.entry_point for c in COMMANDS.values()}


def __getattr__(name: str) -> Callable[[], Any]:
    for c in COMMANDS.values():
        if c.entry_point == name:
            return functools.partial(run_verb, c.verb)
    raise AttributeError(f"module {__name__!r} has no console script {name!r} (registered: "
                         f"{', '.join(sorted(entry_points().values()))})")


__all__ = ["entry_points", "main"]
