"""fte-create-transfer -tr (issue 17), and what -r does with empty directories and symbolic links: console
scripts in subprocesses, agents as processes, a real broker over TCP."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import FteEnv, LogFollower, running_agents, sandbox_dir
from tests.support.brokers import AmqttProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fte(tmp_path: Path, amqtt_broker: AmqttProcess) -> Iterator[FteEnv]:
    with running_agents(tmp_path / "fte_home", amqtt_broker.ensure_running().url, sandbox_dir(tmp_path, "out", "in"),
                        agentChunkSize=65536) as env:
        yield env


def transfer(env: FteEnv, data: Path, *flags: str) -> tuple[int, dict]:
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-de", "overwrite",
                "--json", *flags, str(data / "out" / "f.bin"), timeout=60)
    assert r.stdout.strip(), str(r)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def test_file_exist_trigger_met_and_not_met(fte: FteEnv, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "out" / "f.bin").write_bytes(os.urandom(1000))
    flag = data / "out" / "ready"
    # not met: result 42 from -w, the trigger_not_met event in the log, nothing at the destination
    with LogFollower(fte, "-a", "A1") as follower:
        follower.wait_subscribed()
        code, out = transfer(fte, data, "-w", "30", "-tr", f"file=exist,{flag}")
        assert code == 42, out
        assert out["result_code"] == 42 and out["state"] == "failed", out
        assert f"{flag} does not exist" in out["message"], out
        events = follower.events_until(lambda e: e.get("transfer_id") == out["transfer_id"]
                                       and e.get("action") == "trigger_not_met")
    ev = events[-1]
    assert ev["result_code"] == 42 and ev["trigger"] == f"file=exist,{flag}" and ev["agent_role"] == "source"
    assert not [e for e in events if e.get("transfer_id") == out["transfer_id"] and e["action"] == "started"]
    assert not (data / "in" / "f.bin").exists()
    shown = fte.run("show-transfer", out["transfer_id"], "--json")
    assert shown.returncode == 0 and '"result_code": 42' in shown.stdout, str(shown)

    # the person's view, without -w: submitted (exit 0), and said at once that it did not start
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-tr", f"file=exist,{flag}",
                str(data / "out" / "f.bin"), timeout=60)
    assert r.returncode == 0 and "not started (result 42)" in r.stdout and "does not exist" in r.stdout, str(r)
    # with -w, not --json: the event's line
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-w", "-tr",
                f"file=exist,{flag}", str(data / "out" / "f.bin"), timeout=60)
    assert r.returncode == 42 and "trigger_not_met" in r.stdout and "Traceback" not in r.stderr, str(r)

    # met: one of the names exists
    flag.write_text("go")
    code, out = transfer(fte, data, "-w", "30", "-tr", f"file=exist,{data / 'out' / 'nope'},{flag}")
    assert code == 0, out
    assert (data / "in" / "f.bin").read_bytes() == (data / "out" / "f.bin").read_bytes()
    # file!=exist: the flag is there now, so not met
    code, out = transfer(fte, data, "-w", "30", "-tr", f"file!=exist,{flag}")
    assert code == 42 and f"{flag} exists" in out["message"], out


def test_filesize_trigger_both_ways(fte: FteEnv, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "out" / "f.bin").write_bytes(os.urandom(2048))
    big = data / "out" / "f.bin"
    code, out = transfer(fte, data, "-w", "30", "-tr", f"filesize>=2KB,{big}")
    assert code == 0, out
    code, out = transfer(fte, data, "-w", "30", "-tr", f"filesize>=3kb,{big}")
    assert code == 42 and "2048 bytes, less than 3072" in out["message"], out


def test_trigger_refusals(fte: FteEnv, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "out" / "f.bin").write_bytes(b"x")
    # a path outside the sandbox is refused like a source would be: nothing is looked at
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-tr", "file=exist,/etc/passwd",
                str(data / "out" / "f.bin"), timeout=60)
    assert r.returncode != 0 and "trigger refused" in r.stderr and "outside the agent's sandbox" in r.stderr, str(r)
    # a link is not followed: it is no file that exists
    os.symlink(data / "out" / "f.bin", data / "out" / "link")
    code, out = transfer(fte, data, "-w", "30", "-tr", f"file=exist,{data / 'out' / 'link'}")
    assert code == 42 and "symbolic link" in out["message"], out
    # a malformed condition never leaves the command line
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-tr", "file=maybe,/x",
                str(data / "out" / "f.bin"), timeout=60)
    assert r.returncode == 1 and "-tr condition 'file=maybe' is unknown" in r.stderr, str(r)


# --------------------------------------------------------------------------- -r: empty directories, links


def test_recursive_creates_empty_directories_and_reports_links(fte: FteEnv, tmp_path: Path) -> None:
    data = tmp_path / "data"
    tree = data / "out" / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a")
    (tree / "empty" / "deeper").mkdir(parents=True)
    (tree / "only_link").mkdir()
    os.symlink(tree / "sub" / "a.txt", tree / "only_link" / "l.txt")
    os.symlink(tree / "sub", tree / "dirlink")
    with LogFollower(fte, "-a", "A1") as follower:
        follower.wait_subscribed()
        r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-r", "-w", "30", "--json",
                    str(tree), timeout=60)
        assert r.returncode == 0, str(r)
        tid = json.loads(r.stdout.strip().splitlines()[-1])["transfer_id"]
        started = follower.events_until(lambda e: e.get("transfer_id") == tid and e.get("action") == "started")[-1]
    copy = data / "in" / "tree"
    assert (copy / "sub" / "a.txt").read_text() == "a"
    # the empty directories are there (a directory holding only a link is empty once the link is left out)
    assert (copy / "empty" / "deeper").is_dir() and (copy / "only_link").is_dir()
    assert not (copy / "empty" / "deeper").is_symlink() and list((copy / "only_link").iterdir()) == []
    assert sorted(started["directories"]) == sorted(str(copy / d) for d in ("empty/deeper", "only_link"))
    # links are neither followed nor silently dropped: one entry each, with the reason
    assert {s["source"]: s["reason"] for s in started["skipped"]} == {
        str(tree / "only_link" / "l.txt"): "a symbolic link, not followed",
        str(tree / "dirlink"): "a symbolic link, not followed"}
    assert started["skipped_count"] == 2 and "left out 2" in started["message"], started
    assert not (copy / "dirlink").exists() and not (copy / "only_link" / "l.txt").exists()


def test_a_link_matched_by_a_wildcard_is_left_out_and_one_named_is_refused(fte: FteEnv, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "out" / "a.csv").write_text("a")
    os.symlink(data / "out" / "a.csv", data / "out" / "b.csv")
    with LogFollower(fte, "-a", "A1") as follower:
        follower.wait_subscribed()
        r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-w", "30",
                    str(data / "out" / "*.csv"), timeout=60)
        assert r.returncode == 0, str(r)
        # the person who ran the command is told what was left out, not only the log's subscribers
        first = r.stdout.strip().splitlines()[0]
        assert first.endswith(f"started: 1 file(s), 1 bytes; left out 1: {data / 'out' / 'b.csv'}: a symbolic link, "
                              "not followed."), str(r)
        tid = first.split()[1]
        started = follower.events_until(lambda e: e.get("transfer_id") == tid and e.get("action") == "started")[-1]
    assert [f["source"] for f in started["files"]] == [str(data / "out" / "a.csv")]
    assert started["skipped"] == [{"source": str(data / "out" / "b.csv"), "reason": "a symbolic link, not followed"}]
    assert (data / "in" / "a.csv").exists() and not (data / "in" / "b.csv").exists()
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-de", "overwrite",
                str(data / "out" / "b.csv"), timeout=60)
    assert r.returncode != 0 and "is a symbolic link, which is not followed" in r.stderr, str(r)


def test_unknown_and_unsupported_flags_through_the_console_script(tmp_path: Path) -> None:
    env = FteEnv(tmp_path / "fte_home", "mqtt://127.0.0.1:1")  # never reached
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", "/o", "-zq", "5", "/i", timeout=60)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: no such option -zq (see: fte create-transfer --help)"], str(r)
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-sqgi", "G", "-df", "/o", timeout=60)
    assert r.returncode == 1 and "-sqgi is an IBM MQ MFT flag that mqtt-fte does not support" in r.stderr \
        and "docs/migrating-from-mft.md" in r.stderr, str(r)
