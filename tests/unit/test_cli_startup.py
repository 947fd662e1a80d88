"""A console script imports what its own command needs, not the whole command line (docs/development.md,
"Start-up cost"): the integration tests start thousands of them. Checked by what is imported, in a fresh
interpreter, never by time. And the commands are listed in one order, whichever module was imported first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# what no command but its own needs: the other command groups, the agent daemon, the web console
# (aiohttp), the history database, the embedded broker, the progress bar (only -w on a terminal draws it)
HEAVY = ("agent.daemon", "agent.monitor", "agent.scheduler", "aiohttp", "amqtt", "ops", "sqlite3", "rich.progress",
         "cli.main", "cli.templates", "cli.monitors", "cli.schedules", "cli.observe", "cli.logger", "cli.web",
         "cli.keys", "cli.definitions", "cli.brokers", "cli.demo")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code` (as an installed script does)."""
    p = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return set(json.loads(p.stdout.splitlines()[-1]))


def _heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(m for m in modules for h in HEAVY
                  if (m == h or m.startswith(h + ".")) and not m.startswith(allowed))


def test_the_check_sees_a_heavy_import() -> None:
    # the checks below can fail: the whole app imports every command group
    modules = _modules_after("import cli.main")
    assert {"cli.templates", "cli.web", "cli.monitors"} <= set(_heavy(modules))


@pytest.mark.parametrize("entry_point, own", [
    ("fte_list_agents", ("cli.agents",)),
    ("fte_ping_agent", ("cli.agents",)),
    ("fte_create_transfer", ("cli.transfers",)),  # (its templates and schedules come when a flag asks)
    ("fte_cancel_transfer", ("cli.transfers",)),
])
def test_a_console_script_imports_its_own_command_only(entry_point: str, own: tuple[str, ...]) -> None:
    modules = _modules_after(f"from cli.scripts import {entry_point}")
    assert set(own) <= modules  # the script did register its command
    assert _heavy(modules) == [], f"{entry_point} imports what its command does not need"


# what a command that shows no transfer event does not need: the event models and their rendering (cli.render;
# the frame and the agent commands print with cli.safe_text), nor the agent settings (pydantic-settings)
NOT_FOR_AGENT_COMMANDS = ("cli.render", "agent.wire.events", "agent.settings", "pydantic_settings")


@pytest.mark.parametrize("entry_point, own", [
    *((e, "cli.agents") for e in ("fte_list_agents", "fte_ping_agent", "fte_show_agent_details", "fte_create_agent",
                                  "fte_start_agent", "fte_stop_agent")),
    ("fte_create_transfer", "cli.transfers"),  # (cli.render comes when -w waits for the outcome)
    ("fte_cancel_transfer", "cli.transfers"),
])
def test_a_command_that_shows_no_event_imports_no_event_rendering(entry_point: str, own: str) -> None:
    modules = _modules_after(f"from cli.scripts import {entry_point}")
    assert own in modules and "cli.safe_text" in modules
    assert not set(NOT_FOR_AGENT_COMMANDS) & modules, entry_point


def test_the_agent_command_imports_no_other_command_group() -> None:
    # the background agent is `python -m cli.scripts start-agent NAME -F` (cli/agent_process.py)
    modules = _modules_after("from cli.scripts import fte_start_agent")
    assert "cli.agents" in modules
    assert _heavy(modules) == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, own", [(["list-agents", "A1"], ()), (["ping-agent", "A1"], ()),
                                       (["show-agent-details", "A1"], ()), (["list-transfers", "-a", "A1"], ("cli.observe",))])
def test_a_broker_command_runs_without_the_agent_settings(argv: list[str], own: tuple[str, ...]) -> None:
    # run, not only imported: the command checks its names and opens its client (the agent name rule and
    # the config home, agent.names / agent.home) without pydantic-settings; nothing listens on the port,
    # so it ends there, at "cannot connect", and exits 1
    port = _free_port()
    code = ("import os, runpy, sys\n"
            f"os.environ['FTE_BROKER_URL'] = 'mqtt://127.0.0.1:{port}'\n"
            f"sys.argv = ['cli.scripts', *{argv!r}]\n"
            "try:\n    runpy.run_module('cli.scripts', run_name='__main__')\n"
            "except SystemExit as e:\n    print('exit', e.code, file=sys.stderr)")
    modules = _modules_after(code)
    assert "aiomqtt" in modules  # it did get as far as the broker
    assert not {"agent.settings", "pydantic_settings"} & modules, argv
    if argv[0] != "list-transfers":
        assert not set(NOT_FOR_AGENT_COMMANDS) & modules, argv
    assert _heavy(modules, own) == [], argv


def _listed(first: str) -> list[str]:
    code = (f"import {first}\nimport typer.main\nfrom cli.main import app\n"
            "group = typer.main.get_command(app)\n"
            "print(__import__('json').dumps([*group.commands, *group.commands['key'].commands]))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout.splitlines()[-1]))


def test_the_commands_are_listed_in_one_order_whichever_module_came_first() -> None:
    from cli.commands import VERBS

    usual = _listed("cli.main")
    # templates registers before transfers and monitors here, definitions before keys, logger before observe
    for first in ("cli.templates", "cli.definitions", "cli.logger"):
        assert _listed(first) == usual, first
    verbs = [v for v in usual if v in VERBS]
    assert verbs == [v for v in VERBS if v != "key"] + ["key"]  # typer lists the group after the commands


def test_every_deferred_wire_schema_builds() -> None:
    # the wire models build their validators on first use (defer_build: a command pays only for the
    # messages it reads), so a model that cannot be built would show only when one arrives: build them all
    import inspect

    import pydantic

    from agent.wire import events, programs, protocol

    built = 0
    for module in (protocol, events, programs):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, pydantic.BaseModel) and obj.__module__ == module.__name__:
                obj.model_rebuild(force=True)
                assert obj.__pydantic_complete__, name
                built += 1
            elif isinstance(obj, pydantic.TypeAdapter):
                obj.rebuild(force=True)
                assert obj.validator is not None, name
                built += 1
    assert built > 50
