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
