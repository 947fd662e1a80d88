"""A fan-out's rows in its source's state store across a restart (agent/store.py prune, agent/transfers.py load),
through real agents on a real Mosquitto.

A leg that finished (its destination confirmed it) while another leg is still recovering is kept as long as the
transfer runs, however old: the source rebuilds the running transfer from every leg row when it restarts, and
the restart forgets finished transfers older than a week.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.integration.test_encryption import _contents
from tests.integration.test_fanout import REL, Tap, create_fanout_agents
from tests.integration.test_fanout_progress import Snapshots, _figures
from tests.support.agents import FteEnv, wait_until
from tests.support.subscription import Subscription

pytestmark = pytest.mark.timeout(240)

DESTS = ("A2", "A3")
WEEKS_AGO = 8 * 86400.0  # older than agent.transfers.HISTORY_DAYS (7)


def _rows(env: FteEnv, tid: str) -> dict[str, tuple[str, int]]:
    db = sqlite3.connect(str(env.agent_dir("A1") / "state" / "state.db"))
    try:
        return {t: (s, c) for t, s, c in db.execute(
            "SELECT transfer_id, state, peer_confirmed FROM transfers WHERE role='source' AND transfer_id LIKE ?",
            (f"{tid}%",))}
    finally:
        db.close()


def _age(env: FteEnv, transfer_id: str, seconds: float) -> None:
    db = sqlite3.connect(str(env.agent_dir("A1") / "state" / "state.db"))
    try:
        with db:
            db.execute("UPDATE transfers SET updated = updated - ? WHERE transfer_id = ? AND role = 'source'",
                       (seconds, transfer_id))
    finally:
        db.close()


def _logs(env: FteEnv) -> str:
    return "\n".join(f"--- {n} ---\n{a.log_tail(40)}" for n, a in env.agents.items())


def test_a_leg_finished_long_ago_is_kept_and_the_restarted_source_completes_the_fanout(tmp_path: Path,
                                                                                      mosquitto) -> None:
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    try:
        roots = create_fanout_agents(env, tmp_path / "data", DESTS)
        for name in ("A1", *DESTS):
            env.start_agent(name)
        src = roots["A1"] / "old.bin"
        src.write_bytes(_contents() * 6)  # about 7 MB
        size = src.stat().st_size
        tap, snapshots = Tap(), Snapshots()
        with Subscription(env.broker_url, "SYSTEM.FTE/Log/#", tap.handle), \
                Subscription(env.broker_url, "SYSTEM.FTE/Transfers/A1/#", snapshots.handle):
            r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTS), "-df", REL, "--bandwidth", "3M",
                        "--json", str(src), timeout=60)
            assert r.returncode == 0, str(r)
            tid = r.json()["transfer_id"]
            wait_until(lambda: snapshots.last_where(tid, lambda s: _figures(s)["A3"].bytes_done > 0), 30,
                       f"A3 under way\n{_logs(env)}")
            env.agents["A3"].kill()  # A3's leg recovers (for ever: no -rt) while A2's completes
            leg2, leg3 = f"{tid}/A2", f"{tid}/A3"
            wait_until(lambda: _rows(env, tid).get(leg2) == ("complete", 1), 60,
                       f"A2's leg complete and confirmed\n{_logs(env)}")
            env.agents["A1"].kill()
            _age(env, leg2, WEEKS_AGO)  # as if A3 had been away for over a week
            assert _rows(env, tid)[leg3][0] != "complete"

            env.start_agent("A1")  # its start forgets what finished over a week ago, but not a running transfer's leg
            assert _rows(env, tid).get(leg2) == ("complete", 1), _rows(env, tid)
            env.start_agent("A3")
            completed = wait_until(lambda: tap.event(tid, "completed"), 120, f"the completed event\n{_logs(env)}")
        assert completed["result_code"] == 0, completed
        assert [(d["agent"], d["result_code"], d["bytes_done"]) for d in completed["destinations"]] == [
            ("A2", 0, size), ("A3", 0, size)], completed["destinations"]
        for name in DESTS:
            assert (roots[name] / REL).read_bytes() == src.read_bytes(), name
    finally:
        env.stop_all()


def _delete(env: FteEnv, transfer_id: str) -> None:
    db = sqlite3.connect(str(env.agent_dir("A1") / "state" / "state.db"))
    try:
        with db:
            db.execute("DELETE FROM transfers WHERE transfer_id = ? AND role = 'source'", (transfer_id,))
            db.execute("DELETE FROM files WHERE transfer_id = ? AND role = 'source'", (transfer_id,))
    finally:
        db.close()


def test_a_running_fanout_whose_leg_row_is_missing_fails_and_the_source_starts(tmp_path: Path, mosquitto) -> None:
    """A store without one of a running fan-out's leg rows (written by an earlier version, or cut by a crash
    between the parent's row and its legs'): the agent starts, and the transfer ends failed, saying why."""
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    try:
        roots = create_fanout_agents(env, tmp_path / "data", DESTS)
        for name in ("A1", *DESTS):
            env.start_agent(name)
        src = roots["A1"] / "lost.bin"
        src.write_bytes(_contents() * 6)
        snapshots = Snapshots()
        with Subscription(env.broker_url, "SYSTEM.FTE/Transfers/A1/#", snapshots.handle):
            r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTS), "-df", REL, "--bandwidth", "2M",
                        "--json", str(src), timeout=60)
            assert r.returncode == 0, str(r)
            tid = r.json()["transfer_id"]
            wait_until(lambda: snapshots.last_where(tid, lambda s: _figures(s)["A3"].bytes_done > 0), 30,
                       f"the fan-out under way\n{_logs(env)}")
        env.agents["A1"].kill()
        _delete(env, f"{tid}/A3")

        env.start_agent("A1")  # READY, or the test fails here with the agent's log
        shown = env.run("show-transfer", "-a", "A1", "--json", tid)
        assert shown.returncode == 0, str(shown)
        [t] = [v for v in json.loads(shown.stdout) if v.get("role") == "source"]
        assert t["state"] == "failed" and t["result_code"] == 40, t
        assert "A3" in (t.get("last_stall") or ""), t
        assert _rows(env, tid)[f"{tid}/A2"][0] == "failed", _rows(env, tid)
    finally:
        env.stop_all()
