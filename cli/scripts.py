"""The console scripts: `fte-<verb>` is `fte <verb>`, for every verb registered in cli/app.py.

pyproject.toml's entry points name `cli.scripts:fte_<verb>` (fte-create-transfer = "cli.scripts:
fte_create_transfer"); an entry point is resolved with getattr, so this module's `__getattr__` answers
every verb of cli/commands.py and nothing else, and imports only the command module of that verb (not
the whole app: docs/development.md, "Start-up cost"). No script has code of its own: a new command needs
only its verb in cli/commands.py and its line in pyproject.toml (tests/unit/test_cli_structure.py checks
that they agree).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from .app import COMMANDS, Command, run_verb
from .commands import VERBS, load, load_all


def entry_points() -> dict[str, str]:
    """Script name -> the attribute of this module that runs it: {"fte-create-transfer": "fte_create_transfer"}
    (every command registered)."""
    load_all()
    return {c.script: c.entry_point for c in COMMANDS.values()}


def __getattr__(name: str) -> Callable[[], Any]:
    for verb in VERBS:
        if Command(verb).entry_point == name:
            load(verb)
            return functools.partial(run_verb, verb)
    raise AttributeError(f"module {__name__!r} has no console script {name!r} (registered: "
                         f"{', '.join(sorted(Command(v).entry_point for v in VERBS))})")


__all__ = ["entry_points"]


if __name__ == "__main__":
    # `python -m cli.scripts VERB ARGS...`: the script fte-VERB, where no script is installed (fte-start-agent
    # starts the agent's own process so); an unknown verb goes to the whole app, which says so
    if len(sys.argv) > 1 and sys.argv[1] in VERBS:
        load(sys.argv[1])
    else:
        load_all()
    from .app import invoke

    invoke(sys.argv[1:])
