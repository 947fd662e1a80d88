"""Live progress of a fan-out, per destination: through the console scripts, real agents on a real Mosquitto, a
subscriber on the progress topic (docs/log-events.md#live-progress, `destinations`).

The snapshots of `SYSTEM.FTE/Transfers/A1/<tid>` carry each destination's own figures, in `-da` order, which end
equal to the file's size; a destination killed mid-way shows `recovering` in them while the others advance, and
`fte top` shows each destination of the running fan-out on a line of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.wire.events import EventError, TransferProgress, parse_progress
from tests.integration.test_encryption import _contents
from tests.integration.test_fanout import DESTINATIONS, REL, agent_logs, running_fanout_agents
from tests.support.agents import FteEnv, run_fte, stop_command, wait_until
from tests.support.subscription import Subscription

pytestmark = pytest.mark.timeout(240)


class Snapshots:
    """Every live progress snapshot of A1's transfers, parsed as a client reads them, in order of arrival."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[TransferProgress] = []
        self.bad: list[str] = []

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            snapshot = parse_progress(payload)
        except EventError as exc:
            with self.lock:
                self.bad.append(f"{topic}: {exc}")
            return
        with self.lock:
            self.seen.append(snapshot)

    def of(self, tid: str) -> list[TransferProgress]:
        with self.lock:
            return [s for s in self.seen if s.transfer_id == tid]

    def last_where(self, tid: str, cond: Any) -> TransferProgress | None:
        return next((s for s in reversed(self.of(tid)) if cond(s)), None)


def _figures(snapshot: TransferProgress) -> dict[str, Any]:
    return {d.agent: d for d in snapshot.destinations or []}


@pytest.fixture
def fan(tmp_path: Path, mosquitto) -> Iterator[tuple[FteEnv, dict[str, Path]]]:
    with running_fanout_agents(tmp_path, mosquitto.ensure_running().url) as running:
        yield running


def _tid(env: FteEnv, snapshots: Snapshots) -> str:
    return wait_until(lambda: next((s.transfer_id for s in snapshots.seen), None), 30,
                      f"a progress snapshot of the transfer\n{agent_logs(env)}")


def test_the_live_progress_of_a_fanout_has_each_destinations_figures_ending_at_the_files_size(fan) -> None:
    env, roots = fan
    src = roots["A1"] / "fan.bin"
    src.write_bytes(_contents() * 3)  # about 3.5 MB: fourteen chunks
    size = src.stat().st_size
    snapshots = Snapshots()
    with Subscription(env.broker_url, "SYSTEM.FTE/Transfers/A1/#", snapshots.handle):
        r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL, "-w", "120",
                    "--json", str(src), timeout=180)
        assert r.returncode == 0, f"{r}\n{agent_logs(env)}"
        tid = r.json()["transfer_id"]
        final = wait_until(lambda: snapshots.last_where(tid, lambda s: s.state == "complete"), 30,
                           "the snapshot published after the completed event")
    assert not snapshots.bad, snapshots.bad
    seen = snapshots.of(tid)
    assert all([d.agent for d in s.destinations or []] == list(DESTINATIONS) for s in seen), \
        [s.destinations for s in seen]  # every snapshot of a fan-out has them, in -da order
    for s in seen:  # the summed fields stay the sums
        assert s.bytes_done == sum(d.bytes_done for d in s.destinations or [])
        assert s.files_done == sum(d.files_done for d in s.destinations or [])
        assert s.recoveries == sum(d.recoveries for d in s.destinations or [])
    assert final.bytes_total == size * len(DESTINATIONS) and final.result_code == 0
    for name, d in _figures(final).items():
        assert (d.state, d.bytes_done, d.files_done, d.recoveries) == ("complete", size, 1, 0), (name, d)
        for a, b in zip(seen, seen[1:]):
            assert _figures(a)[name].bytes_done <= _figures(b)[name].bytes_done, name  # never backwards


def test_a_killed_destination_shows_recovering_in_the_progress_while_the_others_advance(fan) -> None:
    env, roots = fan
    src = roots["A1"] / "big.bin"
    src.write_bytes(_contents() * 16)  # about 19 MB: 4 s at 5 MiB/s
    size = src.stat().st_size
    snapshots = Snapshots()
    with Subscription(env.broker_url, "SYSTEM.FTE/Transfers/A1/#", snapshots.handle):
        client = env.popen("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL,
                           "--bandwidth", "5M", "-w", "120", "--json", str(src))
        try:
            tid = _tid(env, snapshots)
            wait_until(lambda: snapshots.last_where(tid, lambda s: 0 < _figures(s)["A3"].bytes_done < size // 2),
                       30, f"A3 under way\n{agent_logs(env)}")
            env.agents["A3"].kill()  # its will (UNREACHABLE) tells A1's leg to A3 at once
            behind = wait_until(lambda: snapshots.last_where(tid, lambda s: _figures(s)["A3"].state == "recovering"),
                                30, f"A3's leg recovering in the live progress\n{agent_logs(env)}")
            assert behind.state == "in_progress", behind  # the transfer as one goes on
            ahead = wait_until(lambda: snapshots.last_where(tid, lambda s: _figures(s)["A3"].state == "recovering" and all(
                _figures(s)[n].bytes_done == size for n in ("A2", "A4"))), 60,
                f"A2 and A4 done while A3 recovers\n{agent_logs(env)}")
            for n in ("A2", "A4"):
                assert _figures(ahead)[n].bytes_done > _figures(behind)[n].bytes_done or \
                    _figures(behind)[n].bytes_done == size, (n, behind, ahead)
                assert _figures(ahead)[n].recoveries == 0, (n, ahead)
            assert _figures(ahead)["A3"].bytes_done < size and _figures(ahead)["A3"].recoveries >= 1, ahead

            # fte top, while A3 is down: a line per destination, A3's recovering
            top = run_fte(env, "top", "--once", timeout=60)
            assert top.returncode == 0, top
            lines = [ln for ln in top.stdout.splitlines() if "└" in ln]
            assert any("A3" in ln and "recovering" in ln for ln in lines), top.stdout
            assert any("A2" in ln and "complete" in ln for ln in lines), top.stdout

            env.start_agent("A3")
            out, err = client.communicate(timeout=120)
            assert client.returncode == 0, f"{out}\n{err}\n{agent_logs(env)}"
        finally:
            stop_command(client)
        final = wait_until(lambda: snapshots.last_where(tid, lambda s: s.state == "complete"), 30,
                           "the snapshot published after the completed event")
    assert not snapshots.bad, snapshots.bad
    assert [(d.agent, d.state, d.bytes_done) for d in final.destinations or []] == [
        (n, "complete", size) for n in DESTINATIONS], final.destinations
    assert _figures(final)["A3"].recoveries >= 1


def test_the_web_console_shows_each_destinations_progress_and_outcome(fan) -> None:
    from tests.integration.test_web import TOKEN, Web, call

    env, roots = fan
    web = Web(env, {"FTE_WEB_TOKEN": TOKEN})
    try:
        wait_until(lambda: {"A1", *DESTINATIONS} <= {a["name"] for a in call(web, "GET", "/api/v1/agents")[1]}, 30,
                   "fte web to see every agent")
        src = roots["A1"] / "web.bin"
        src.write_bytes(_contents() * 2)
        size = src.stat().st_size
        r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTINATIONS), "-df", REL, "-w", "120",
                    "--json", str(src), timeout=180)
        assert r.returncode == 0, f"{r}\n{agent_logs(env)}"
        tid = r.json()["transfer_id"]
        last: dict[str, Any] = {}

        def merged() -> bool:
            code, t = call(web, "GET", f"/api/v1/transfers/{tid}")
            last.update(t)
            ds = t.get("destinations") or []
            # the live progress's figures (bytes_resent is only there) and the completed event's outcome, in one
            return code == 200 and [d.get("agent") for d in ds] == list(DESTINATIONS) and all(
                d.get("result_code") == 0 and d.get("bytes_done") == size and d.get("bytes_resent") == 0
                and d.get("state") == "complete" for d in ds)

        try:
            wait_until(merged, 30, "each destination's progress and outcome in GET /api/v1/transfers/{id}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: the last answer {last}") from None
    finally:
        web.stop()
