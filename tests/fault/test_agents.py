"""An agent dies mid-transfer (SIGKILL) or is missing: checkpoints, cleanup, cancel, unknown peers."""

from __future__ import annotations

import time

import pytest

from .conftest import Dirs
from .helpers import (MiB, FaultEnv, finish, make_file, part_files, part_of, part_size, sha256,
                      tid_from_json_stdout, ts, wait_part)

pytestmark = pytest.mark.timeout(120)


def test_source_agent_sigkill_and_restart_resumes_from_checkpoint(env: FaultEnv, dirs: Dirs) -> None:
    env.add_agent("A1", dirs.src)
    env.add_agent("A2", dirs.dst)
    a1 = env.start_agent("A1")
    env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    digest = make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 16 * MiB, 30, env)
    a1.kill()
    held_at_kill = part_size(dst)
    env.wait_status("A1", {"UNREACHABLE"}, timeout=10)
    env.start_agent("A1")

    r = finish(client, 60, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert sha256(dst) == digest
    assert part_files(dirs.dst) == []
    recovering = watcher.wait(tid, "recovering", 5)
    assert recovering["trigger"] == "agent_restart" and recovering["message_id"] == "BFGTR0081I"
    resumed = watcher.wait(tid, "resumed", 5)
    # resumed from the destination's checkpoint, not from the start
    assert resumed["bytes_held_by_destination"] >= held_at_kill > 0, (resumed, held_at_kill)
    assert watcher.wait(tid, "completed", 5)["result_code"] == 0


def test_destination_agent_sigkill_and_restart_completes(env: FaultEnv, dirs: Dirs) -> None:
    env.add_agent("A1", dirs.src)
    env.add_agent("A2", dirs.dst)
    env.start_agent("A1")
    a2 = env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    digest = make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 16 * MiB, 30, env)
    a2.kill()
    held_at_kill = part_size(dst)
    recovering = watcher.wait(tid, "recovering", 10, context=env.logs)
    assert recovering["trigger"] in ("peer_unreachable", "ack_timeout"), recovering
    assert recovering["peer"] == "A2"
    env.start_agent("A2")

    r = finish(client, 60, env)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert sha256(dst) == digest
    assert part_files(dirs.dst) == []
    resumed = watcher.wait(tid, "resumed", 5)
    assert resumed["bytes_held_by_destination"] >= held_at_kill > 0
    assert watcher.wait(tid, "completed", 5)["statistics"]["recoveries"] >= 1


def test_part_files_removed_when_the_destination_returns_after_recovery_timeout(env: FaultEnv, dirs: Dirs) -> None:
    """The destination is down when the transfer times out (69): it learns the outcome when it comes
    back and removes its part file; the source (-sd delete) is kept; a re-issued -de overwrite succeeds."""
    env.add_agent("A1", dirs.src)
    env.add_agent("A2", dirs.dst)
    env.start_agent("A1")
    a2 = env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    digest = make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", "1", "-sd", "delete",
                       "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    a2.kill()
    r = finish(client, 30, env)
    assert r.returncode == 69, f"{r}\n{env.logs()}"
    completed = watcher.wait(tid, "completed", 5)
    assert completed["message_id"] == "BFGSS0081E" and completed["result_code"] == 69
    assert part_of(dst).exists(), "nobody could have removed it yet: the destination is down"
    assert src.exists()

    env.start_agent("A2")
    cleaned = watcher.wait(tid, "cleaned_up", 20, context=env.logs)
    assert cleaned["agent"] == "A2" and cleaned["result_code"] == 69
    assert part_files(dirs.dst) == [] and not dst.exists()
    assert src.exists(), "-sd delete must not delete the source of a transfer that did not complete"

    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-de", "overwrite", "-w", "--json",
                str(src), timeout=60)
    assert r.returncode == 0, f"{r}\n{env.logs()}"
    assert sha256(dst) == digest


def test_cancel_while_recovering(env: FaultEnv, dirs: Dirs) -> None:
    env.add_agent("A1", dirs.src)
    env.add_agent("A2", dirs.dst)
    env.start_agent("A1")
    a2 = env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-sd", "delete", "-w",
                       "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    a2.kill()
    watcher.wait(tid, "recovering", 10, context=env.logs)

    r = env.run("cancel-transfer", "-a", "A1", tid)
    assert r.returncode == 0, str(r)
    r = finish(client, 20, env)
    assert r.returncode == 41, f"{r}\n{env.logs()}"
    assert tid_from_json_stdout(r.stdout)["state"] == "cancelled"
    assert src.exists()

    env.start_agent("A2")
    watcher.wait(tid, "cleaned_up", 20, context=env.logs)
    assert part_files(dirs.dst) == [] and not dst.exists()


def test_unknown_destination_agent_fails_fast_without_recovering(env: FaultEnv, dirs: Dirs) -> None:
    env.add_agent("A1", dirs.src)
    env.start_agent("A1")
    watcher = env.watch()
    src = dirs.src / "small.bin"
    make_file(src, 1 * MiB)

    t0 = time.monotonic()
    r = env.run("create-transfer", "-sa", "A1", "-da", "NOSUCHAGENT", "-df", str(dirs.dst / "x.bin"), "-w",
                str(src), timeout=30)
    took = time.monotonic() - t0
    assert r.returncode == 40, str(r)  # failed, at once: no transfer was started
    assert "NOSUCHAGENT" in r.stderr and "not known" in r.stderr, str(r)
    assert took < 10, f"took {took:.1f} s"
    # nothing is left recovering on the source agent
    status = env.status("A1")
    assert status is not None and status["source_transfers"] == {}, status
    assert not [e for e in watcher.events if e.get("action") == "recovering"]
    assert src.exists()


def test_source_restart_while_recovering_does_not_restart_the_counter(env: FaultEnv, dirs: Dirs) -> None:
    """The counter starts when the transfer enters recovering; killing and restarting the source agent
    does not buy it a fresh -rt: past the deadline it times out as soon as it is back."""
    rt = 3
    env.add_agent("A1", dirs.src)
    env.add_agent("A2", dirs.dst)
    a1 = env.start_agent("A1")
    a2 = env.start_agent("A2")
    watcher = env.watch()
    src, dst = dirs.src / "big.bin", dirs.dst / "big.bin"
    make_file(src, 64 * MiB)

    client = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-rt", str(rt),
                       "-sd", "delete", "-w", "--json", str(src))
    tid = watcher.wait_any("started", 20)["transfer_id"]
    wait_part(dst, 8 * MiB, 30, env)
    a2.kill()
    recovering = watcher.wait(tid, "recovering", 10, context=env.logs)
    a1.kill()
    time.sleep(rt + 1.0)  # the deadline passes while the source agent is down
    env.start_agent("A1")
    restarted_at = time.time()

    r = finish(client, 30, env)
    assert r.returncode == 69, f"{r}\n{env.logs()}"
    completed = watcher.wait(tid, "completed", 10)
    assert completed["message_id"] == "BFGSS0081E"
    assert ts(completed["time"]) - restarted_at < 2.0, "timed out at once, not after a fresh -rt"
    # one outage, one 'recovering' (the event may arrive twice: the agent was killed between publishing it
    # and deleting it from its outbox, and the outbox is at-least-once; a fresh one would carry a later time)
    assert {e["time"] for e in watcher.of(tid, "recovering")} == {recovering["time"]}
    assert recovering["recovery_timeout"] == rt
    assert src.exists()
    env.start_agent("A2")
    watcher.wait(tid, "cleaned_up", 20, context=env.logs)
    assert part_files(dirs.dst) == []
