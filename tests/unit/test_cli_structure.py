"""The shape of the command line (issue 14): no import cycle in cli/, one registry of commands that the
console scripts and `fte <verb>` share, and the app module importing no command module."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
import typer.main

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "cli"


def _cli_imports(path: Path) -> set[str]:
    """The cli modules `path` imports (at any depth: a lazy import inside a function is an edge too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(a.name for a in node.names)
            elif node.level == 0 and (node.module or "").startswith("cli."):
                found.add(node.module.split(".")[1])
            elif node.level == 0 and node.module == "cli":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cli."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in CLI.glob("*.py")}
    return {p.stem: _cli_imports(p) & modules - {p.stem} for p in sorted(CLI.glob("*.py"))}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path (a, b, ..., a), or None when it is acyclic."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, path + [node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    # the check below can fail: a graph with a cycle is reported as one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_imports_in_cli_are_acyclic() -> None:
    graph = _graph()
    assert {"app", "main", "scripts", "transfers", "agents"} <= set(graph)  # the parse found the modules
    assert "app" in graph["transfers"] and "app" in graph["monitors"]
    assert _cycle(graph) is None, f"import cycle in cli/: {' -> '.join(_cycle(graph) or [])}"


def test_the_app_module_imports_no_command_module() -> None:
    graph = _graph()
    assert graph["app"] <= {"safe_text", "unknown_options"}, graph["app"]
    importers = {m for m, deps in graph.items() if "main" in deps}
    assert importers <= {"scripts"}, f"only the console scripts may import cli.main: {sorted(importers)}"


def _scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def test_every_console_script_runs_a_registered_command() -> None:
    import cli.scripts
    from cli.app import COMMANDS

    scripts = _scripts()
    assert scripts.pop("fte") == "cli.main:main"
    assert len(scripts) >= 26
    for script, target in scripts.items():
        module, _, attr = target.partition(":")
        assert module == "cli.scripts", f"{script} = {target!r}: the scripts resolve through cli.scripts"
        runner = getattr(cli.scripts, attr)  # how the installed script gets it
        verb = script.removeprefix("fte-")
        assert verb in COMMANDS and runner.args == (verb,), (script, target)
    # and the other way round: every registered verb is installed as its script
    assert set(scripts) == {c.script for c in COMMANDS.values()}


def test_an_unregistered_script_name_does_not_resolve() -> None:
    import cli.scripts

    with pytest.raises(AttributeError, match="no console script 'fte_no_such_verb'"):
        getattr(cli.scripts, "fte_no_such_verb")


def test_the_registry_is_the_apps_command_list() -> None:
    from cli.app import COMMANDS
    from cli.main import app

    assert set(COMMANDS) == set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_a_verb_registered_twice_is_refused() -> None:
    from cli.app import command

    with pytest.raises(ValueError, match="registered twice"):
        command("create-transfer")(lambda: None)


def test_the_verb_table_names_the_module_of_every_command() -> None:
    # a console script imports only VERBS[verb] (cli/commands.py): a wrong or missing entry would be a
    # script without its command
    from cli.app import COMMANDS, app, key_app
    from cli.commands import VERBS, load_all

    load_all()
    assert list(VERBS) == list(COMMANDS)
    for info in app.registered_commands:
        assert VERBS[info.name] == (info.callback.__module__.removeprefix("cli."),), info.name
    assert {info.callback.__module__.removeprefix("cli.") for info in key_app.registered_commands} == set(VERBS["key"])
    assert set(m for ms in VERBS.values() for m in ms) <= set(_graph()["commands"])  # load_all imports them all
