"""A non-persistent Mosquitto is killed (SIGKILL) and restarted on the same port: the monitors and schedules
the agents own come back on the broker (the agents republish them at every connection), and the templates
come back from the agents' template keepers (agent.template_keeper), within 20 s of the broker's return; a
template deleted before the restart stays deleted."""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.brokers import BrokerProcess

from .conftest import Dirs
from .helpers import FaultEnv

pytestmark = pytest.mark.timeout(150)

BACK_WITHIN = 20.0  # the bound, from the broker's return


def _listing(env: FaultEnv, verb: str, *args: str) -> list[Any]:
    r = env.run(verb, *args, "--json", timeout=30)
    assert r.returncode == 0, str(r)
    return json.loads(r.stdout or "[]")


def _until(what: str, probe: Callable[[], bool], timeout: float, env: FaultEnv) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\n{env.logs()}")
        time.sleep(0.3)


def test_definitions_come_back_after_broker_restart(env: FaultEnv, fresh_mosquitto: BrokerProcess,
                                                    dirs: Dirs, tmp_path: Path) -> None:
    env.add_agent("A1", dirs.src)
    env.add_agent("A2", dirs.dst)
    env.start_agent("A1")
    env.start_agent("A2")
    keep, gone = f"keep-{secrets.token_hex(3)}", f"gone-{secrets.token_hex(3)}"
    for t in (keep, gone):
        r = env.run("create-template", "-tn", t, "-sa", "A1", "-da", "A2", "-dd", str(dirs.dst / "in"))
        assert r.returncode == 0, str(r)
    watch = dirs.src / "watch"
    watch.mkdir()
    r = env.run("create-monitor", "-ma", "A1", "-mn", "MON1", "-md", str(watch), "-tr", "match,*.go",
                "-pi", "1", "-pu", "seconds", "-da", "A2", "-dd", str(dirs.dst / "in"), "${FilePath}")
    assert r.returncode == 0, str(r)
    src = dirs.src / "payload.bin"
    src.write_bytes(b"x" * 1000)
    start = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%MZ")
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dirs.dst / "copy.bin"), str(src),
                "-ss", start, "-oi", "days", "--json")
    assert r.returncode == 0, str(r)
    sid = r.json()["schedule_id"]

    def templates() -> set[str]:  # --json: one template a line
        r = env.run("list-templates", "--json", timeout=30)
        assert r.returncode == 0, str(r)
        return {json.loads(line)["name"] for line in r.stdout.splitlines() if line.strip()}

    # both keepers have taken the templates before one is deleted (they read the same retained messages)
    _until("the keepers hold both templates", lambda: all(_kept(env, a) >= {keep, gone} for a in ("A1", "A2")),
           20, env)
    r = env.run("delete-templates", gone)
    assert r.returncode == 0, str(r)
    _until("the keepers forgot the deleted template", lambda: all(gone not in _kept(env, a) for a in ("A1", "A2")),
           20, env)
    assert templates() == {keep}

    _until("both keepers saw the epoch marker", lambda: all(_epoch(env, a) for a in ("A1", "A2")), 20, env)
    before = _epoch(env, "A1")
    fresh_mosquitto.kill()
    fresh_mosquitto.restart()
    back = time.monotonic()

    _until("the template is back", lambda: keep in templates(), BACK_WITHIN, env)
    _until("the monitor is back", lambda: any(m["name"] == "MON1" for m in _listing(env, "list-monitors")),
           BACK_WITHIN - (time.monotonic() - back), env)
    _until("the schedule is back", lambda: any(s["schedule_id"] == sid for s in
                                               _listing(env, "list-scheduled-transfers")),
           BACK_WITHIN - (time.monotonic() - back), env)
    assert time.monotonic() - back <= BACK_WITHIN
    # the deleted one stays deleted: every keeper has reconciled (the epoch marker is set again) and it is absent
    _until("both keepers reconciled", lambda: len({_epoch(env, a) for a in ("A1", "A2")} - {before, None}) == 1
           and _epoch(env, "A1") == _epoch(env, "A2"), BACK_WITHIN, env)
    assert gone not in templates()
    r = env.run("list-templates", "-v", keep)
    assert r.returncode == 0 and "problem" not in r.stdout.lower(), str(r)


def _state(env: FaultEnv, agent: str) -> dict[str, Any]:
    for p in env.home.rglob("templates.json"):
        if agent in p.parts:
            try:
                return json.loads(p.read_text())
            except ValueError:
                return {}
    return {}


def _kept(env: FaultEnv, agent: str) -> set[str]:
    return set(_state(env, agent).get("kept", {}))


def _epoch(env: FaultEnv, agent: str) -> str | None:
    return _state(env, agent).get("epoch")
