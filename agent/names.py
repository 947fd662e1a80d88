"""The agent-name rule, written once: 1-28 characters of A-Z a-z 0-9 . _ (like MFT), case preserved, not
starting with '.'. A name is a directory (<config_home>/agents/NAME) and an MQTT topic level, so '/', '+',
'#' and hidden-file names are excluded. The wire model (agent.wire.protocol.AgentName), the settings, the
daemon's peer checks and the trust file all use these (tests/unit/test_vocabulary.py)."""

from __future__ import annotations

import re

MAX_AGENT_NAME_CHARS = 28
AGENT_NAME_CHARS = "A-Za-z0-9._"  # the body of a regex character class
_NAME = rf"[A-Za-z0-9_][{AGENT_NAME_CHARS}]{{0,{MAX_AGENT_NAME_CHARS - 1}}}"
# For pydantic's Field(pattern=...), whose regex engine has no \Z; in Python, ^...$ is safe with fullmatch only.
NAME_PATTERN = rf"^{_NAME}$"
# \A...\Z rather than ^...$ so that .match() is as safe as .fullmatch() ($ accepts a trailing newline).
AGENT_NAME_RE = re.compile(rf"\A{_NAME}\Z")
AGENT_NAME_RULE = f"use 1-{MAX_AGENT_NAME_CHARS} characters of A-Z a-z 0-9 . _, not starting with '.'"


def agent_name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as an agent name, or None."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if AGENT_NAME_RE.match(name):
        return None
    if len(name) > MAX_AGENT_NAME_CHARS:
        return f"it is {len(name)} characters long, the limit is {MAX_AGENT_NAME_CHARS}"
    if name.startswith("."):
        return "it starts with '.'"
    bad = sorted({c for c in name if not re.fullmatch(f"[{AGENT_NAME_CHARS}]", c)})
    return f"it contains {' '.join(repr(c) for c in bad)}"


def validate_agent_name(name: str) -> str:
    """Return ``name`` if it is a valid agent name, else raise ValueError saying what is wrong.

    1-28 characters of A-Z a-z 0-9 . _ (like MFT), case preserved, not starting with '.': the name is
    a directory and an MQTT topic level, so '/', '+', '#' and hidden-file names are excluded.
    """
    problem = agent_name_problem(name)
    if problem is not None:
        raise ValueError(f"invalid agent name {name!r}: {problem}; {AGENT_NAME_RULE}")
    return name
