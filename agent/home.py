"""Where all agent configuration lives, ``$FTE_CONFIG_HOME`` or ``~/.fte``: apart from agent.settings (which
re-exports it) so that a command that only needs the directory does not import pydantic-settings
(docs/development.md, "Start-up cost")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def config_home(env: Mapping[str, str] = os.environ) -> Path:
    """Root of all agent configuration: ``$FTE_CONFIG_HOME``, else ``~/.fte``."""
    value = env.get("FTE_CONFIG_HOME")
    return Path(value).expanduser() if value else Path.home() / ".fte"
