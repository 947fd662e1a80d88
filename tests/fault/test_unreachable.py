"""An agent killed with SIGKILL: its last will makes it UNREACHABLE, and the clients show when it was last heard
from (its signed heartbeat on <prefix>/Agents/<agent>/heard), not the time the will carries (when the agent
registered it at its connection), which fte-list-agents used to show as "status published"."""

from __future__ import annotations

import json

import pytest

from .conftest import Dirs
from .helpers import FaultEnv

pytestmark = pytest.mark.timeout(90)


def test_unreachable_agent_shows_when_it_was_last_heard(env: FaultEnv, dirs: Dirs) -> None:
    env.add_agent("A1", dirs.src)
    a1 = env.start_agent("A1")
    r = env.run("show-agent-details", "A1", "--json", timeout=30)
    assert r.returncode == 0, str(r)
    running = json.loads(r.stdout)
    assert "last_heard" not in running
    a1.kill()
    st = env.wait_status("A1", {"UNREACHABLE"}, timeout=30)

    r = env.run("show-agent-details", "A1", "--json", timeout=30)
    assert r.returncode == 0, str(r)
    gone = json.loads(r.stdout)
    assert gone["status"] == "UNREACHABLE" and gone["last_heard"], gone
    assert gone["last_heard"] >= running["started_at"], gone  # heard after it started, from its heartbeat
    assert gone["when"].startswith(f"last heard {gone['last_heard']}; unreachable since then"), gone

    r = env.run("list-agents", "A1", timeout=30)
    assert r.returncode == 0, str(r)
    flat = " ".join(r.stdout.split())
    assert "last heard" in flat and "unreachable since" in flat, r.stdout
    assert f"published {st['time']}" not in flat, r.stdout
