"""fte-list-transfers --history and fte-show-transfer's fallback to the history, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ops.history import History
from tests.support import history_events as ev
from tests.support.agents import FteEnv, script


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, fte_home: Path) -> str:
    url = f"sqlite://{fte_home}/logger/history.db" if request.param == "sqlite" else \
        str(request.getfixturevalue("postgres_url"))
    with History.open(url) as h:
        h.record(ev.started(time="2025-03-14T09:00:00.000Z"), verified=True)
        text = ev.completed()  # a text transfer (-t text): its file has the digest of the converted file too
        text["files"][0]["written_digest"] = "cd" * 32
        h.record(text, verified=True)
        h.record(ev.started(tid=ev.TID2, job_name="other", time="2025-03-15T09:00:00.000Z"), verified=True)
    return url


def run(env: FteEnv, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script(args[0]), *args[1:]], env={**env.env, "FTE_LOGGER_DB": db}, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_list_history_filters(db_url: str, fte_home: Path) -> None:
    env = FteEnv(fte_home, "mqtt://127.0.0.1:1")  # no broker is asked

    def listed(*args: str) -> list[str]:
        r = env.run("list-transfers", "--history", "--db", db_url, "--json", *args)
        assert r.returncode == 0, str(r)
        rows = json.loads(r.stdout)
        for key in ("transfer_id", "state", "result_code", "source_agent", "destination_agent", "started_at",
                    "ended_at", "job_name"):
            assert all(key in t for t in rows), key
        return [t["transfer_id"] for t in rows]

    assert listed() == [ev.TID2, ev.TID]
    assert listed("--state", "complete") == [ev.TID]
    assert listed("-jn", "other") == [ev.TID2]
    assert listed("--since", "2025-03-15") == [ev.TID2]
    assert listed("-a", "A1") == [ev.TID2, ev.TID] and listed("-a", "B9") == []
    text = env.run("list-transfers", "--history", "--db", db_url)
    assert ev.TID in text.stdout and "job nightly" in text.stdout and "result 0" in text.stdout
    bad = env.run("list-transfers", "--history", "--db", db_url, "--since", "yesterday")
    assert bad.returncode != 0 and "is not a time" in bad.stderr


def test_show_transfer_falls_back_to_the_history(db_url: str, fte_home: Path, mosquitto) -> None:  # type: ignore[no-untyped-def]
    env = FteEnv(fte_home, mosquitto.ensure_running().url)
    r = run(env, db_url, "show-transfer", ev.TID)
    assert r.returncode == 0, r.stderr
    assert "from the history at" in r.stdout and "complete" in r.stdout and "nightly" in r.stdout
    assert f"digest {'ab' * 32} written {'cd' * 32}" in r.stdout, r.stdout
    j = run(env, db_url, "show-transfer", ev.TID, "--json")
    [view] = json.loads(j.stdout)
    assert view["state"] == "complete" and [e["action"] for e in view["events"]] == ["started", "completed"]
    assert view["files"][0]["written_digest"] == "cd" * 32
    unknown = run(env, db_url, "show-transfer", "ab" * 24)
    assert unknown.returncode != 0 and "no running agent knows transfer" in unknown.stderr


def test_show_transfer_of_a_fan_out_from_the_history_names_every_destination(fte_home: Path, mosquitto) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite://{fte_home}/logger/fanout.db"
    with History.open(url) as h:
        h.record(ev.fanout_started(), verified=True)
        h.record(ev.fanout_completed(), verified=True)
    env = FteEnv(fte_home, mosquitto.ensure_running().url)
    r = run(env, url, "show-transfer", ev.TID3)
    assert r.returncode == 0, r.stderr
    assert "destinations         A1->A2,A3" in r.stdout, r.stdout
    assert "A3: failed (result 40)" in r.stdout and "BFGIO0006E: exists" in r.stdout, r.stdout
    listed = env.run("list-transfers", "--history", "--db", url)
    assert f"{ev.TID3} complete" in listed.stdout and "A1->A2,A3" in listed.stdout, listed.stdout
    by_a3 = env.run("list-transfers", "--history", "--db", url, "-a", "A3")  # the second destination finds it
    assert ev.TID3 in by_a3.stdout, by_a3.stdout
