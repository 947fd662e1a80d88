"""The broker dies mid-transfer (SIGKILL) and comes back: the transfer recovers, never dies.

Both agents reach the broker through TCP proxies of their own: when the broker is killed their
connections drop exactly as without a proxy, and the proxies keep them from reconnecting until the
test's log watcher has resubscribed to the restarted broker, so no log event is published while
nobody listens (the broker keeps no session: it was SIGKILLed).
"""

from __future__ import annotations

import time

import pytest

from tests.support.brokers import BrokerProcess

from .conftest import Dirs
from .helpers import (MiB, FaultEnv, finish, make_file, part_files, restart_broker_behind_proxies, sha256,
                      tid_from_json_stdout, ts, wait_part)

pytestmark = pytest.mark.timeout(120)

CHUNK = 256 * 1024
WINDOW_CHUNKS = 16


def test_broker_sigkill_and_restart_mid_transfer(env_on: FaultEnv, fresh_broker: BrokerProcess,
                                                 dirs: Dirs) -> None:
    env = env_on
    env.add_agent("A1", dirs.src, proxy=True, agentChunkSize=CHUNK, agentWindowSize=WINDOW_CHUNKS)
    env.add_agent("A2", dirs.dst, proxy=True)
    env.start_agent("A1")
    env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    digest = make_file(src, 96 * MiB)

    # the waiting client connects to the broker directly: it must ride out the restart on its own
    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-sd", "delete", "-w",
                       "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 16 * MiB, 30, env)
    held_at_kill = dst.with_name(dst.name + ".part").stat().st_size

    restart_broker_behind_proxies(fresh_broker, env, watcher, down=2.0)

    r = finish(client, 60, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert tid_from_json_stdout(r.stdout)["transfer_id"] == tid
    assert sha256(dst) == digest
    assert part_files(dirs.dst) == []
    assert not src.exists(), "-sd delete applies once the transfer completed"

    completed = watcher.wait(tid, "completed", 10)
    assert completed["result_code"] == 0 and completed["state"] == "complete"
    stats = completed["statistics"]
    assert stats["recoveries"] >= 1
    window = WINDOW_CHUNKS * CHUNK
    # re-sent data is at most about one window (what was in flight when the broker died)
    assert stats["bytes_resent"] <= window + CHUNK, stats

    recovering = watcher.wait(tid, "recovering", 5)
    assert recovering["message_id"] == "BFGTR0081I"
    assert recovering["trigger"] == "broker_connection", recovering
    assert recovering["reason"] and recovering["source_agent_time"]
    assert recovering["recovery_timeout"] == -1
    resumed = watcher.wait(tid, "resumed", 5)
    assert resumed["message_id"] == "BFGTR0082I"
    assert resumed["bytes_held_by_destination"] >= held_at_kill - window
    # one transfer log, in order, in time order
    actions = [e["action"] for e in watcher.of(tid)]
    assert actions.index("started") < actions.index("recovering") < actions.index("resumed") \
        < actions.index("completed"), actions
    times = [ts(e["time"]) for e in watcher.of(tid) if e.get("agent") == "A1"]
    assert times == sorted(times)


def test_broker_down_twice_each_outage_shorter_than_rt_but_longer_together(
        env: FaultEnv, fresh_mosquitto: BrokerProcess, dirs: Dirs) -> None:
    """The counter resets on resume (seed 003): two outages that add up to more than -rt do not fail it."""
    # Each outage of 5.5 s costs 5.5-8 s of recovery (the agents retry at most every 2 s, more on a busy
    # machine): each stays under -rt 10 with a margin, the two together (11 s or more) do not.
    rt = 10
    down = 5.5
    env.add_agent("A1", dirs.src, proxy=True)
    env.add_agent("A2", dirs.dst, proxy=True)
    env.start_agent("A1")
    env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    digest = make_file(src, 128 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", str(rt), "-w",
                       "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    restart_broker_behind_proxies(fresh_mosquitto, env, watcher, down=down)
    watcher.wait(tid, "resumed", 20, context=env.logs)
    held = wait_part(dst, dst.with_name(dst.name + ".part").stat().st_size + 8 * MiB, 30, env)
    assert held < 128 * MiB - 16 * MiB, "the file must still be in flight for the second outage"
    restart_broker_behind_proxies(fresh_mosquitto, env, watcher, down=down)

    r = finish(client, 60, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert sha256(dst) == digest
    assert part_files(dirs.dst) == []
    recovering = watcher.of(tid, "recovering")
    resumed = watcher.of(tid, "resumed")
    assert len(recovering) == 2 and len(resumed) == 2, [e["action"] for e in watcher.of(tid)]
    spans = [ts(b["time"]) - ts(a["time"]) for a, b in zip(recovering, resumed)]
    # each recovery was shorter than -rt, both together longer: only the reset let the transfer live
    assert all(s < rt for s in spans), spans
    assert sum(spans) > rt, spans
    assert all(e["recovery_timeout"] == rt for e in recovering)
    assert watcher.wait(tid, "completed", 5)["statistics"]["recoveries"] == 2


def test_waiting_client_reports_69_when_the_broker_outage_outlasts_rt(
        env: FaultEnv, fresh_mosquitto: BrokerProcess, dirs: Dirs) -> None:
    """The transfer times out while the broker is down: `fte-create-transfer -w` reconnects and still
    exits 69; the outcome (logged while the broker was away) is published when it is back; the
    destination removes its part file; -sd delete leaves the source alone."""
    env.add_agent("A1", dirs.src, proxy=True)
    env.add_agent("A2", dirs.dst, proxy=True)
    env.start_agent("A1")
    env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "2", "-sd", "delete",
                       "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    killed_at = time.time()
    restart_broker_behind_proxies(fresh_mosquitto, env, watcher, down=4.0)
    back_at = time.time()

    r = finish(client, 60, env)
    assert r.returncode == 69, f"{r}\n{env.logs()}"
    out = tid_from_json_stdout(r.stdout)
    assert out["result_code"] == 69 and out["transfer_id"] == tid
    completed = watcher.wait(tid, "completed", 10)
    assert completed["result_code"] == 69 and completed["message_id"] == "BFGSS0081E"
    assert completed["state"] == "recovery_timed_out"
    # kept while the broker was down, published when it was back, with the time it happened
    for ev in (watcher.wait(tid, "recovering", 5), completed):
        assert killed_at - 0.5 < ts(ev["time"]) < killed_at + 4.0 <= back_at <= watcher.arrival(ev), ev
    watcher.wait(tid, "cleaned_up", 15, context=env.logs)
    assert part_files(dirs.dst) == [] and not dst.exists()
    assert src.exists(), "-sd delete must not delete the source of a transfer that did not complete"
    # the waiting client reports the transfer's own outcome: per-file results and the BFGSS0081E message
    assert out["files"] and "BFGSS0081E" in (out["message"] or ""), out


def test_transfer_set_survives_a_broker_restart(env: FaultEnv, fresh_mosquitto: BrokerProcess, dirs: Dirs) -> None:
    """Several files, some done and one in flight when the broker dies: every file arrives, once."""
    env.add_agent("A1", dirs.src, proxy=True)
    env.add_agent("A2", dirs.dst, proxy=True)
    env.start_agent("A1")
    env.start_agent("A2")
    watcher = env.watch()
    (dirs.src / "set").mkdir()
    digests = {f"f{i}.bin": make_file(dirs.src / "set" / f"f{i}.bin", 16 * MiB) for i in range(4)}

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(dirs.dst), "-w", "--json",
                       str(dirs.src / "set"))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dirs.dst / "set" / "f1.bin", 4 * MiB, 30, env)
    restart_broker_behind_proxies(fresh_mosquitto, env, watcher, down=1.0)

    r = finish(client, 60, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert {p.name: sha256(p) for p in (dirs.dst / "set").iterdir()} == digests
    assert part_files(dirs.dst) == []
    stats = watcher.wait(tid, "completed", 10)["statistics"]
    assert stats["files_succeeded"] == 4 and stats["recoveries"] == 1, stats


def test_frozen_broker_recovery_times_out_on_time_and_cleans_up_after(
        env: FaultEnv, fresh_mosquitto: BrokerProcess, dirs: Dirs) -> None:
    """The broker hangs (SIGSTOP: sockets open, nothing answers). No connection drops, so only the ack
    timeout notices (2 s); -rt 3 then runs out on time although every publish hangs. When the broker
    is back the outcome is published and the destination removes its part file."""
    env.add_agent("A1", dirs.src)
    env.add_agent("A2", dirs.dst)
    env.start_agent("A1")
    env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "3", "-w", "--json",
                       str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    fresh_mosquitto.pause()
    paused_at = time.time()
    time.sleep(6.0)
    fresh_mosquitto.resume()

    r = finish(client, 60, env)
    assert r.returncode == 69, f"{r}\n{env.logs()}"
    recovering = watcher.wait(tid, "recovering", 15)
    completed = watcher.wait(tid, "completed", 15)
    assert recovering["trigger"] == "ack_timeout"
    assert ts(recovering["time"]) - paused_at < 4.0  # the ack timeout (2 s), not the keepalive
    assert 2.9 <= ts(completed["time"]) - ts(recovering["time"]) <= 4.0  # -rt 3, on time
    watcher.wait(tid, "cleaned_up", 20, context=env.logs)
    assert part_files(dirs.dst) == []
    # a dropped connection is reported as such, not with hints about TLS listeners
    assert "TLS listener" not in env.logs()
