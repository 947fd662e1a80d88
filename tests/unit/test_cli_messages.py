"""Messages the commands build once and share (issue 14)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cli.client import ClientError, FteClient


def _client(tmp_path: Path) -> FteClient:
    c = FteClient("mqtt://127.0.0.1:9", env={"FTE_CONFIG_HOME": str(tmp_path)})  # never connected

    async def no_status(agent: str, settle: Any = None) -> None:
        return None

    c.agent_status = no_status  # type: ignore[method-assign]
    return c


def test_the_invalid_status_message_is_the_same_for_require_agent_and_stop_agent(tmp_path: Path) -> None:
    from cli.agents import _no_stop_answer

    c = _client(tmp_path)
    assert c.invalid_status_text("A1") is None
    c._invalid_statuses[c.topics.agent_status("A1")] = "not JSON"
    text = c.invalid_status_text("A1")
    assert text is not None
    assert text.startswith("the status on SYSTEM.FTE/Agents/A1 is not a valid agent status (not JSON): ignored")
    with pytest.raises(ClientError) as exc:
        asyncio.run(c.require_agent("A1"))
    assert str(exc.value) == text
    assert asyncio.run(_no_stop_answer(c, "A1", 1.0)) == f"agent A1 did not answer within 1 s; {text}"
