"""The network between the source agent and the broker is cut (a TCP proxy we control).

The source agent reaches the broker through a proxy; the destination, the log watcher and the
commands connect directly, so they see what happens while the source is cut off, and what it
publishes when it is back.
"""

from __future__ import annotations

import time

import pytest

from tests.support.brokers import wait_for

from .conftest import Dirs
from .helpers import (MiB, FaultEnv, FollowLogs, finish, make_file, part_files, part_of, part_size, sha256,
                      tid_from_json_stdout, ts, wait_part)

pytestmark = pytest.mark.timeout(120)


def start_agents(env: FaultEnv, dirs: Dirs, **source_properties: object) -> None:
    env.add_agent("A1", dirs.src, proxy=True, **source_properties)
    env.add_agent("A2", dirs.dst)
    env.start_agent("A1")
    env.start_agent("A2")


def test_cut_shorter_than_rt_completes_and_rt_beats_the_property(env: FaultEnv, dirs: Dirs) -> None:
    """transferRecoveryTimeout=2 in agent.properties, -rt 60 on the transfer: a 4 s cut is survived."""
    start_agents(env, dirs, transferRecoveryTimeout=2)
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    digest = make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "60", "-sd", "delete",
                       "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    proxy = env.proxies["A1"]
    proxy.cut()
    time.sleep(4.0)  # the outage itself: longer than the property, shorter than -rt
    proxy.restore()

    r = finish(client, 60, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert sha256(dst) == digest
    assert part_files(dirs.dst) == []
    assert not src.exists()
    recovering = watcher.wait(tid, "recovering", 5)
    assert recovering["recovery_timeout"] == 60
    assert recovering["trigger"] == "broker_connection"
    resumed = watcher.wait(tid, "resumed", 5)
    assert ts(resumed["time"]) - ts(recovering["time"]) >= 3.5  # it really recovered across the cut


@pytest.mark.parametrize("property_rt,rt", [pytest.param(60, "2", id="rt-2-beats-property-60"),
                                            pytest.param(2, None, id="property-2-without-rt")])
def test_cut_longer_than_rt_times_out_69_and_destination_removes_part_file(
        env: FaultEnv, dirs: Dirs, property_rt: int, rt: str | None) -> None:
    start_agents(env, dirs, transferRecoveryTimeout=property_rt)
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), *(["-rt", rt] if rt else []),
                       "-sd", "delete", "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    proxy = env.proxies["A1"]
    proxy.cut()
    time.sleep(5.0)  # longer than the effective recovery timeout (2 s)
    assert part_of(dst).exists()
    proxy.restore()

    r = finish(client, 30, env)
    assert r.returncode == 69, f"{r}\n{env.logs()}"
    assert tid_from_json_stdout(r.stdout)["state"] == "recovery_timed_out"
    recovering = watcher.wait(tid, "recovering", 10)
    assert recovering["recovery_timeout"] == 2
    completed = watcher.wait(tid, "completed", 10)
    assert completed["result_code"] == 69 and completed["message_id"] == "BFGSS0081E"
    # the counter ran from entering recovery to the timeout: 2 s (seed 003: counter == timeout)
    assert 1.9 <= ts(completed["time"]) - ts(recovering["time"]) <= 3.5
    watcher.wait(tid, "cleaned_up", 15, context=env.logs)
    assert part_files(dirs.dst) == [] and not dst.exists()
    assert src.exists(), "-sd delete must not delete the source of a transfer that did not complete"
    assert not watcher.of(tid, "resumed")


def test_rt_0_fails_as_soon_as_recovery_starts(env: FaultEnv, dirs: Dirs) -> None:
    start_agents(env, dirs)
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "0", "-sd", "delete",
                       "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    proxy = env.proxies["A1"]
    proxy.cut()
    time.sleep(1.0)
    proxy.restore()

    r = finish(client, 30, env)
    assert r.returncode == 69, f"{r}\n{env.logs()}"
    recovering = watcher.wait(tid, "recovering", 10)
    assert recovering["recovery_timeout"] == 0
    completed = watcher.wait(tid, "completed", 10)
    assert completed["result_code"] == 69 and completed["message_id"] == "BFGSS0081E"
    assert ts(completed["time"]) - ts(recovering["time"]) < 0.5
    assert not watcher.of(tid, "resumed")
    watcher.wait(tid, "cleaned_up", 15, context=env.logs)
    assert part_files(dirs.dst) == []
    assert src.exists()


def test_log_events_produced_while_cut_off_are_published_later_in_order_with_original_times(
        env: FaultEnv, dirs: Dirs) -> None:
    """What `fte-logs --follow --json` shows: the source's events of the outage arrive after it, in
    the order they happened, stamped with the time they happened."""
    start_agents(env, dirs)
    follow = FollowLogs(env, "-a", "A1")
    follow.ready(agent="A1")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "1",
                       "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    proxy = env.proxies["A1"]
    proxy.cut()
    cut_at = time.time()
    time.sleep(3.0)  # recovering, then timed out (-rt 1): both logged while nobody can hear
    assert not [e for e in follow.of(tid) if e["action"] in ("recovering", "completed")]
    restored_at = time.time()
    proxy.restore()

    assert finish(client, 30, env).returncode == 69
    follow.wait(tid, "completed", 15)
    events = follow.of(tid)
    actions = [e["action"] for e in events]
    assert actions[0] == "started" and actions[-1] == "completed", actions
    assert actions.index("recovering") < actions.index("completed")
    times = [ts(e["time"]) for e in events]
    assert times == sorted(times), list(zip(actions, times))
    for e in events:
        if e["action"] in ("recovering", "completed"):
            assert cut_at - 0.5 <= ts(e["time"]) < restored_at, (e["action"], e["time"], cut_at, restored_at)


def test_silent_partition_is_detected_by_the_ack_timeout_and_times_out_on_time(env: FaultEnv, dirs: Dirs) -> None:
    """The path to the broker goes silent (no FIN, no RST: the proxy stops forwarding). The source must
    enter recovery after transferAckTimeout x transferAckTimeoutRetries (2 s here), not only when the
    MQTT keepalive finally declares the connection dead, and time out -rt seconds after that."""
    start_agents(env, dirs)
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "3",
                       "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    proxy = env.proxies["A1"]
    proxy.pause()
    paused_at = time.time()
    # the destination, connected directly, keeps publishing; A1 hears nothing and cannot publish
    time.sleep(6.0)
    proxy.restore()  # let the outcome out

    r = finish(client, 30, env)
    assert r.returncode == 69, f"{r}\n{env.logs()}"
    recovering = watcher.wait(tid, "recovering", 15)
    completed = watcher.wait(tid, "completed", 15)
    assert recovering["trigger"] == "ack_timeout", recovering
    assert ts(recovering["time"]) - paused_at < 2 + 2.0, (recovering["time"], paused_at, env.logs())
    assert 2.9 <= ts(completed["time"]) - ts(recovering["time"]) <= 4.0, (recovering["time"], completed["time"])
    watcher.wait(tid, "cleaned_up", 15, context=env.logs)
    assert part_files(dirs.dst) == []


def test_cut_when_all_data_has_arrived_does_not_leave_the_transfer_recovering(env: FaultEnv, dirs: Dirs) -> None:
    """Strike at the very end (the reference's IT05583: "stuck in Recovering though the file arrived"):
    the source is cut off when the destination holds every byte, so the file's result may be lost
    on the way; the transfer still ends complete, never recovering forever."""
    start_agents(env, dirs)
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    size = 48 * MiB
    digest = make_file(src, size)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_for(lambda: part_size(dst) >= size or dst.exists(), 30, interval=0.002,
             message=lambda: f"the destination never held {size} bytes\n{env.logs()}")
    proxy = env.proxies["A1"]
    proxy.cut()
    time.sleep(2.0)
    proxy.restore()

    r = finish(client, 30, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert sha256(dst) == digest
    assert part_files(dirs.dst) == []
    completed = watcher.wait(tid, "completed", 10)
    assert completed["result_code"] == 0
    assert len(watcher.of(tid, "recovering")) == len(watcher.of(tid, "resumed")) <= 1


def test_source_file_changed_while_recovering_fails_the_transfer_and_cleans_up(env: FaultEnv, dirs: Dirs) -> None:
    """The source file changes while the source agent is cut off: resuming would mix two versions, so the
    transfer fails (40) saying why, the destination removes its part file, -sd delete keeps the source."""
    start_agents(env, dirs)
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-sd", "delete",
                       "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    proxy = env.proxies["A1"]
    proxy.cut()
    with open(src, "ab") as fh:
        fh.write(b"appended while the transfer was recovering")
    time.sleep(1.0)
    proxy.restore()

    r = finish(client, 60, env)
    assert r.returncode == 40, f"{r}\n{env.logs()}"
    out = tid_from_json_stdout(r.stdout)
    assert "changed" in out["files"][0]["supplement"], out
    watcher.wait(tid, "cleaned_up", 15, context=env.logs)
    assert part_files(dirs.dst) == [] and not dst.exists()
    assert src.exists()


def test_cancel_at_the_destination_while_the_source_is_cut_off(env: FaultEnv, dirs: Dirs) -> None:
    """`fte-cancel-transfer -a A2 ID` (the destination agent) while the source agent cannot hear it: the
    destination accepts the cancel, so it must still reach the source when the source is back: the
    transfer ends cancelled (41), not complete, and the part file is removed."""
    start_agents(env, dirs)
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-sd", "delete",
                       "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    proxy = env.proxies["A1"]
    proxy.cut()
    r = env.run("cancel-transfer", "-a", "A2", tid)
    assert r.returncode == 0, str(r)
    time.sleep(1.0)
    proxy.restore()

    r = finish(client, 30, env)
    assert r.returncode == 41, f"{r}\n{env.logs()}"
    watcher.wait(tid, "cleaned_up", 15, context=env.logs)
    assert part_files(dirs.dst) == [] and not dst.exists()
    assert src.exists()


def test_events_kept_on_disk_survive_a_source_sigkill_while_cut_off(env: FaultEnv, dirs: Dirs) -> None:
    """The source logs 'recovering' while it cannot reach the broker, then is SIGKILLed: the event was kept
    on disk, so the restarted agent publishes it (original time), and the transfer still completes."""
    start_agents(env, dirs)
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    digest = make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    proxy = env.proxies["A1"]
    proxy.cut()
    cut_at = time.time()
    log = env.agents["A1"].log
    wait_for(lambda: "recovering" in log.read_text(), 10, message=env.logs)  # logged (to the outbox), not published
    env.agents["A1"].kill()
    proxy.restore()
    env.start_agent("A1")

    r = finish(client, 60, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert sha256(dst) == digest
    recovering = watcher.wait(tid, "recovering", 10)
    assert recovering["trigger"] == "broker_connection"
    assert cut_at - 0.5 < ts(recovering["time"]) < cut_at + 2
    actions = [e["action"] for e in watcher.of(tid)]
    assert actions.index("started") < actions.index("recovering") < actions.index("resumed") \
        < actions.index("completed"), actions
