"""One vocabulary: the words the agent and the CLI share are defined once and imported (issue 14).

A copy that drifts is a bug that shows late: a terminal state missing from cli.render's set makes
`fte transfer -w` wait for ever. These tests hold every user of a word to the one definition.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

import agent.peers
import agent.transfers
import agent.watchdog
import cli.observe
import cli.render
from agent.core.destination_session import DestinationSession
from agent.core.lifecycle import TERMINAL_STATE_VALUES, TransferState
from agent.destination import DestinationTransfer

ROOT = Path(__file__).resolve().parents[2]
TERMINAL_USERS = {"agent.transfers": agent.transfers, "agent.watchdog": agent.watchdog, "cli.render": cli.render,
                  "cli.observe": cli.observe}


def test_the_terminal_values_come_from_the_state_table() -> None:
    assert TERMINAL_STATE_VALUES == {s.value for s in TransferState if s.is_terminal}


@pytest.mark.parametrize("module", sorted(TERMINAL_USERS))
def test_every_terminal_set_is_the_lifecycle_one(module: str) -> None:
    # The same object, not an equal copy: a copy would pass today and drift with the next state.
    assert TERMINAL_USERS[module].TERMINAL is TERMINAL_STATE_VALUES


@pytest.mark.parametrize("state", list(TransferState))
def test_every_place_agrees_with_the_lifecycle_on_each_state(state: TransferState) -> None:
    for name, module in TERMINAL_USERS.items():
        assert (state.value in module.TERMINAL) is state.is_terminal, name
    # A destination transfer with a file still to receive is active exactly while it is not terminal.
    # (the rule is the session's; the agent's DestinationTransfer answers with it)
    session = DestinationSession([SimpleNamespace(index=0, status="ready")], agent="A2", peer="A1", state=state)
    assert session.active is (not state.is_terminal)
    driver = SimpleNamespace(session=session)
    assert DestinationTransfer.active.fget(driver) is session.active  # type: ignore[attr-defined]


def _string_collections(tree: ast.AST) -> list[tuple[int, set[str]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
            words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            found.append((node.lineno, words))
    return found


def test_no_module_spells_the_terminal_set_again() -> None:
    """Two or more terminal states written out together outside the state table is a copy of the set."""
    copies = []
    for path in sorted([*(ROOT / "agent").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        if path == ROOT / "agent" / "core" / "lifecycle.py":
            continue
        for line, words in _string_collections(ast.parse(path.read_text(), str(path))):
            if len(words & TERMINAL_STATE_VALUES) >= 2:
                copies.append(f"{path.relative_to(ROOT)}:{line}")
    assert copies == []


# --- the agent-name rule -------------------------------------------------------------------------------

NAMES = ["A1", "a", "_x", "A.B_c9", "x" * 28, "x" * 29, "", ".hidden", "a/b", "a+b", "a#", "a-b", "a b", "A1\n",
         "\nA1", "é", "a\x00"]


def test_every_agent_name_check_is_the_one_rule() -> None:
    import agent.names
    import agent.wire.protocol
    import agent.settings
    import cli.trusted_agents

    assert agent.wire.protocol.NAME_PATTERN is agent.names.NAME_PATTERN
    assert agent.settings.AGENT_NAME_RE is agent.names.AGENT_NAME_RE
    assert agent.peers.AGENT_NAME_RE is agent.names.AGENT_NAME_RE  # the peers watched: agent names only
    assert cli.trusted_agents._NAME is agent.names.AGENT_NAME_RE


@pytest.mark.parametrize("name", NAMES)
def test_the_wire_model_and_the_settings_agree_on_each_name(name: str) -> None:
    from pydantic import TypeAdapter, ValidationError

    from agent.names import AGENT_NAME_RE
    from agent.wire.protocol import AgentName
    from agent.settings import validate_agent_name

    def wire(n: str) -> bool:
        try:
            TypeAdapter(AgentName).validate_python(n)
            return True
        except ValidationError:
            return False

    def settings(n: str) -> bool:
        try:
            validate_agent_name(n)
            return True
        except ValueError:
            return False

    expected = bool(AGENT_NAME_RE.match(name))
    assert (wire(name), settings(name), bool(AGENT_NAME_RE.fullmatch(name))) == (expected,) * 3
    assert expected is (name in {"A1", "a", "_x", "A.B_c9", "x" * 28})


def test_no_module_writes_the_agent_name_rule_again() -> None:
    copies = []
    for path in sorted([*(ROOT / "agent").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        if path == ROOT / "agent" / "names.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "[A-Za-z0-9._]" in line or "{1,28}" in line or "{0,27}" in line:
                copies.append(f"{path.relative_to(ROOT)}:{n}")
    assert copies == []


def test_the_watchers_recovery_states_are_the_lifecycle_ones() -> None:
    from agent.core.lifecycle import RECOVERY_STATE_VALUES

    assert RECOVERY_STATE_VALUES == {s.value for s in TransferState if s.is_recovery}
    assert cli.observe.RECOVERY is RECOVERY_STATE_VALUES
    copies = [f"{p.relative_to(ROOT)}:{line}" for p in sorted((ROOT / "cli").rglob("*.py"))
              for line, words in _string_collections(ast.parse(p.read_text(), str(p)))
              if len(words & RECOVERY_STATE_VALUES) >= 2]
    assert copies == []


def test_agent_and_file_statuses_on_the_wire_are_the_core_words() -> None:
    import typing

    from agent.core.statuses import AgentState, FileStatus
    from agent.wire.protocol import AgentStatusValue, FileHolding

    assert set(typing.get_args(AgentStatusValue)) == {s.value for s in AgentState}
    sent = set(typing.get_args(FileHolding.model_fields["status"].annotation))
    assert sent == {s.value for s in FileStatus} - {FileStatus.RENAMING, FileStatus.CONVERTING}  # the store's own


def test_no_agent_status_word_is_spelled_out_of_its_enum() -> None:
    from agent.core.statuses import AgentState

    words = {s.value for s in AgentState}
    allowed = {ROOT / "agent" / "core" / "statuses.py", ROOT / "agent" / "wire" / "protocol.py"}
    found = []
    for path in sorted((ROOT / "agent").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in words:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "use agent.core.statuses.AgentState: " + ", ".join(found)


def test_every_error_class_has_the_one_root() -> None:
    import importlib
    import inspect

    from agent.core.errors import FteError

    strays = []
    for path in sorted((ROOT / "agent").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py")):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__ \
                    and not issubclass(value, FteError):
                strays.append(f"{module.__name__}.{name}")
    assert not strays, "derive from agent.core.errors.FteError: " + ", ".join(strays)


@pytest.mark.parametrize("raised", ["CommandRefused", "TriggerError"])
def test_an_error_has_its_area_code_unless_raised_with_one(raised: str) -> None:
    from agent.core.triggers import TriggerError
    from agent.commands import CommandRefused

    cls = {"CommandRefused": CommandRefused, "TriggerError": TriggerError}[raised]
    assert cls("why").code == cls.code and cls("why", 77).code == 77 and str(cls("why", 77)) == "why"


def test_an_outcome_on_the_wire_is_a_terminal_state() -> None:
    import typing

    from pydantic import ValidationError

    from agent.wire.protocol import Complete, TerminalStateValue

    assert set(typing.get_args(TerminalStateValue)) == TERMINAL_STATE_VALUES
    outcome = {"kind": "complete", "transfer_id": "a" * 48, "source_agent": "A1", "result_code": 0}
    for state in TransferState:
        if state.is_terminal:
            assert Complete.model_validate({**outcome, "state": state.value}).state == state.value
        else:  # a destination would otherwise act on an outcome that is none (agent.core.destination_session)
            with pytest.raises(ValidationError):
                Complete.model_validate({**outcome, "state": state.value})
