"""The shape of the code, held by tests (issue 14): the rules that keep the design readable.

- agent/core is the pure core: it imports no IO module, so every rule in it is tested in microseconds
  with the time passed in.
- No class in agent/ or cli/ grows past about 400 lines or 30 methods: a class that does that holds
  several concepts, and the next reader cannot tell them apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"asyncio", "os", "time", "pathlib", "socket", "sqlite3", "shutil", "subprocess", "threading",
              "aiomqtt", "paho", "select", "selectors", "io", "tempfile"}
# "about 400 lines or 30 methods" (issue 14): the margin of "about" is written down, so that it cannot creep
MAX_CLASS_LINES = 430
MAX_CLASS_METHODS = 32


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", _sources("agent/core"), ids=lambda p: p.name)
def test_the_core_imports_no_io_module(path: Path) -> None:
    io = _imported(ast.parse(path.read_text())) & IO_MODULES
    assert not io, f"{path.relative_to(ROOT)} imports {sorted(io)}: agent/core does no IO (pass the time in)"


def test_the_core_imports_nothing_from_the_shell() -> None:
    for path in _sources("agent/core"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                outside = (node.level == 0 and (node.module or "").startswith(("agent", "cli"))
                           and not (node.module or "").startswith("agent.core")) or node.level > 1
                assert not outside, f"{path.relative_to(ROOT)}:{node.lineno} imports from the shell"


def _classes() -> list[tuple[str, int, int]]:
    found = []
    for path in _sources("agent", "cli"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in node.body)
                found.append((f"{path.relative_to(ROOT)}:{node.name}", node.end_lineno - node.lineno + 1, methods))
    return found


def test_no_class_is_too_big_to_read() -> None:
    big = [f"{name} ({lines} lines, {methods} methods)" for name, lines, methods in _classes()
           if lines > MAX_CLASS_LINES or methods > MAX_CLASS_METHODS]
    assert not big, "split these classes by concept: " + ", ".join(big)
