"""Which command module defines which verb, and the one order of the verbs: so that a console script imports
only the module of its own command, and the commands are listed in the same order however they were imported.

A console script `fte-<verb>` (cli/scripts.py) imports only `VERBS[verb]` (start-up is what integration
tests and scripted use pay thousands of times: docs/development.md, "Start-up cost"); `fte` and
docs/gen_commands.py import them all (cli/main.py). Either way `put_in_order()` sorts what is registered into
this table's order, so `fte --help` and docs/commands.md do not depend on which module was imported first
(transfers imports templates, monitors imports templates, observe imports logger).

A new command: its verb here (tests/unit/test_cli_structure.py checks that this table names the module each
command is registered in), and its line in pyproject.toml.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .app import COMMANDS, Command, app, key_app

# verb -> the modules that register it (`fte key`'s subcommands come from two), in the order `fte --help`
# lists the verbs (typer lists the groups, `key`, after the commands)
VERBS: dict[str, tuple[str, ...]] = {
    "key": ("keys", "definitions"),
    "create-agent": ("agents",),
    "start-agent": ("agents",),
    "stop-agent": ("agents",),
    "list-agents": ("agents",),
    "show-agent-details": ("agents",),
    "ping-agent": ("agents",),
    "clean-agent": ("agents",),
    "create-transfer": ("transfers",),
    "cancel-transfer": ("transfers",),
    "logs": ("transfers",),
    "broker": ("brokers",),
    "demo": ("brokers",),
    "create-monitor": ("monitors",),
    "delete-monitor": ("monitors",),
    "stop-monitor": ("monitors",),
    "start-monitor": ("monitors",),
    "list-monitors": ("monitors",),
    "create-template": ("templates",),
    "list-templates": ("templates",),
    "delete-templates": ("templates",),
    "list-scheduled-transfers": ("schedules",),
    "delete-scheduled-transfer": ("schedules",),
    "list-transfers": ("observe",),
    "show-transfer": ("observe",),
    "top": ("observe",),
    "logger": ("logger",),
    "web": ("web",),
}


def load(verb: str) -> None:
    """Register `verb` (and whatever else its modules register), in the table's order. An unknown verb
    loads nothing."""
    for module in VERBS.get(verb, ()):
        importlib.import_module(f"{__package__}.{module}")
    put_in_order()


def load_all() -> tuple[ModuleType, ...]:
    """Register every command (`fte`, `fte --help`, docs/gen_commands.py), in the table's order; the
    command modules."""
    from . import agents, keys, transfers, brokers, monitors, templates, definitions, schedules, observe, logger, web

    put_in_order()
    return agents, keys, transfers, brokers, monitors, templates, definitions, schedules, observe, logger, web


def _module_of(info: Any) -> str:
    return str(getattr(info.callback, "__module__", "")).rpartition(".")[2]


def put_in_order() -> None:
    """Sort the registered commands into VERBS' order (and `fte key`'s subcommands by their module's place
    in VERBS["key"]; within a module, in the order the module declares them)."""
    position = {verb: i for i, verb in enumerate(VERBS)}
    app.registered_commands.sort(key=lambda info: position.get(info.name or "", len(position)))
    modules = VERBS["key"]
    key_app.registered_commands.sort(
        key=lambda info: modules.index(_module_of(info)) if _module_of(info) in modules else len(modules))
    ordered: list[Command] = sorted(COMMANDS.values(), key=lambda c: position.get(c.verb, len(position)))
    COMMANDS.clear()
    COMMANDS.update((c.verb, c) for c in ordered)
