"""Program calls end to end (issue 17): fte-create-transfer -presrc/-predst/-postdst/-postsrc through the
console scripts, agents as real processes on a real broker. A failing pre- call fails the transfer before any
byte moves; a post- call's return code and output tail are in the completed event; a name outside commandPath,
with '/' or '..' is refused and never runs (a marker file proves it); commandPath inside the sandbox stops the
agent from starting."""

from __future__ import annotations

import json
import os
import queue
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import FteEnv, running_agents, sandbox_dir
from tests.support.brokers import AmqttProcess
from tests.support.subscription import Subscription

pytestmark = pytest.mark.timeout(180)

AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3, "commandTimeout": 20}


def _program(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """The agents' commandPath, outside their sandbox (tmp_path/data)."""
    d = tmp_path / "bin"
    _program(d / "fail.sh", 'echo "pre call ran on $FTE_SOURCE_AGENT for $FTE_TRANSFER_ID"\nexit 3\n')
    _program(d / "post.sh", 'echo "args: $*"\necho "call: $FTE_PROGRAM_CALL job: $FTE_JOB_NAME"\n'
                            'echo "files: $FTE_DESTINATION_FILES"\n'
                            'i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done\n'
                            'echo "tail end" >&2\nexit 0\n')
    _program(d / "rc5.sh", "exit 5\n")
    return d


@pytest.fixture
def env(tmp_path: Path, amqtt_broker: AmqttProcess, bin_dir: Path) -> Iterator[FteEnv]:
    with running_agents(tmp_path / "fte_home", amqtt_broker.ensure_running().url, sandbox_dir(tmp_path, "out", "in"),
                        commandPath=str(bin_dir), **AGENT_PROPERTIES) as e:
        yield e


def _transfer(env: FteEnv, data: Path, *flags: str, name: str = "f.bin") -> tuple[int, dict]:
    src = data / "out" / name
    src.write_bytes(os.urandom(200_000))
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "in" / name), "-jn", "job7",
                "-w", "60", "--json", *flags, str(src))
    assert r.stdout.strip(), str(r)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def _nothing_arrived(data: Path, name: str = "f.bin") -> None:
    assert sorted(p.name for p in (data / "in").iterdir()) == [], "a byte moved"


@pytest.mark.parametrize("flag", ["-presrc", "-predst"])
def test_a_failing_pre_call_fails_the_transfer_before_any_byte_moves(env: FteEnv, tmp_path: Path, flag: str) -> None:
    data = tmp_path / "data"
    code, done = _transfer(env, data, flag, "fail.sh")
    assert code == 40 and done["result_code"] == 40, done
    _nothing_arrived(data)
    [call] = done["programs"]
    assert call["when"] == {"-presrc": "pre_source", "-predst": "pre_destination"}[flag]
    assert call["outcome"] == "failure" and call["return_code"] == 3 and call["attempts"] == 1
    assert call["output"].startswith(f"pre call ran on A1 for {done['transfer_id']}")
    assert f"{flag} fail.sh failed: return code 3" in done["message"]


def test_a_post_destination_call_runs_after_the_files_with_its_output_tail_in_the_completed_event(
        env: FteEnv, tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, done = _transfer(env, data, "-postdst", r"post.sh(a b,c\,d)", "-postsrc", "post.sh")
    assert code == 0 and done["result_code"] == 0, done
    assert (data / "in" / "f.bin").read_bytes() == (data / "out" / "f.bin").read_bytes()
    post_dst, post_src = done["programs"]
    assert post_dst["when"] == "post_destination" and post_src["when"] == "post_source"
    assert post_dst["args"] == ["a b", "c,d"] and post_dst["return_code"] == 0 and post_dst["outcome"] == "success"
    out = post_dst["output"]
    assert out.endswith("line 1999\ntail end\n") and len(out.encode()) <= 2048  # a bounded tail, stderr too
    assert "args:" not in out  # the head was cut


def test_post_call_sees_the_transfer_in_its_environment(env: FteEnv, tmp_path: Path, bin_dir: Path) -> None:
    data = tmp_path / "data"
    _program(bin_dir / "env.sh", 'echo "$FTE_PROGRAM_CALL|$FTE_JOB_NAME|$FTE_SOURCE_AGENT|$FTE_DESTINATION_AGENT|'
                                 '$FTE_DESTINATION_FILES|$FTE_BROKER_PASSWORD"\n')
    code, done = _transfer(env, data, "-postdst", "env.sh")
    assert code == 0, done
    assert done["programs"][0]["output"] == f"post_destination|job7|A1|A2|{data / 'in' / 'f.bin'}|\n"


def test_a_failing_post_call_makes_the_result_40_and_the_files_stay(env: FteEnv, tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, done = _transfer(env, data, "-postdst", "rc5.sh,1,0", "-postsrc", "rc5.sh,,,5|6")
    assert code == 40 and done["result_code"] == 40, done
    assert (data / "in" / "f.bin").exists()
    post_dst, post_src = done["programs"]
    assert (post_dst["outcome"], post_dst["return_code"], post_dst["attempts"]) == ("failure", 5, 2)  # 1 retry
    assert (post_src["outcome"], post_src["return_code"]) == ("success", 5)  # successrc 5|6
    assert "-postdst rc5.sh failed: return code 5 (2 attempt(s))" in done["message"]


@pytest.mark.parametrize("where", ["outside", "relative", "dotdot"])
def test_a_program_not_in_command_path_is_refused_and_never_runs(env: FteEnv, tmp_path: Path, where: str) -> None:
    data = tmp_path / "data"
    marker = tmp_path / "ran"
    evil = _program(tmp_path / "elsewhere" / "evil.sh", f'touch "{marker}"\n')
    _program(tmp_path / "bin" / "sub" / "evil.sh", f'touch "{marker}"\n')  # below commandPath, not in it
    name = {"outside": str(evil), "relative": "sub/evil.sh", "dotdot": "../elsewhere/evil.sh"}[where]
    for flag in ("-presrc", "-predst"):
        code, done = _transfer(env, data, flag, name)
        assert code == 40, done
        [call] = done["programs"]
        assert call["outcome"] == "refused" and call["return_code"] is None and call["attempts"] == 0, call
        assert "refused" in done["message"]
        _nothing_arrived(data)
    assert not marker.exists(), "a program outside commandPath ran"


def test_an_unsupported_program_type_is_refused_by_the_command(env: FteEnv, tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "in" / "x"),
                "-presrc", "antscript:build(target=all)", str(data / "out" / "x"))
    assert r.returncode == 1 and "docs/migrating-from-mft.md" in r.stderr and "antscript" in r.stderr, str(r)
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_agent_whose_command_path_overlaps_its_sandbox_refuses_to_start(tmp_path: Path,
                                                                           amqtt_broker: AmqttProcess) -> None:
    data = sandbox_dir(tmp_path, "bin")
    env = FteEnv(tmp_path / "fte_home", amqtt_broker.ensure_running().url)
    env.create_agent("A3", sandbox=data, commandPath=str(data / "bin"))
    r = env.run("start-agent", "A3", "-F", timeout=60)
    assert r.returncode != 0, str(r)
    assert f"commandPath directory {data / 'bin'} overlaps sandboxRoot directory {data}" in r.stderr, str(r)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_monitor_command_task_runs_the_program_with_the_monitor_variables(env: FteEnv, tmp_path: Path,
                                                                            bin_dir: Path) -> None:
    watched = tmp_path / "data" / "watch"
    watched.mkdir()
    record, marker = tmp_path / "record.txt", tmp_path / "ran"
    _program(bin_dir / "record.sh", f'printf "%s|" "$@" >> "{record}"\n'
                                    f'echo "$FTE_PROGRAM_CALL $FTE_DESTINATION_FILES" >> "{record}"\necho recorded\n')
    _program(tmp_path / "elsewhere" / "evil.sh", f'touch "{marker}"\n')
    events: "queue.Queue[dict]" = queue.Queue()
    sub = Subscription(env.broker_url, "SYSTEM.FTE/Log/A1/Monitors/#", lambda t, p: events.put(json.loads(p)))
    try:
        for name, call in (("cmd", "record.sh(${FileName},x\\,${FilePath})"), ("evil", "../elsewhere/evil.sh")):
            r = env.run("create-monitor", "-ma", "A1", "-mn", name, "-md", str(watched), "-tr", "match,*.csv",
                        "-pi", "1", "-pu", "seconds", "-mc", call)
            assert r.returncode == 0, str(r)
        path = watched / "a b.csv"
        path.write_text("x")
        ran: dict[str, dict] = {}
        deadline = time.monotonic() + 30
        while len(ran) < 2 and time.monotonic() < deadline:
            try:
                ev = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if ev.get("action") == "command_ran":
                ran[ev["monitor"]] = ev
        assert set(ran) == {"cmd", "evil"}, ran
    finally:
        sub.close()
    assert record.read_text() == f"a b.csv|x,{path}|monitor {path}\n"  # one argv entry each, no shell
    ok = ran["cmd"]
    assert ok["result_code"] == 0 and ok["files"] == [str(path)]
    assert (ok["program"]["outcome"], ok["program"]["output"], ok["program"]["when"]) == ("success", "recorded\n",
                                                                                           "monitor")
    bad = ran["evil"]
    assert bad["result_code"] == 108 and bad["program"]["outcome"] == "refused", bad
    assert not marker.exists(), "a monitor ran a program outside commandPath"


def _publish(url: str, topic: str, payload: bytes) -> None:
    import asyncio

    import aiomqtt

    from tests.support.brokers import split_url

    host, port = split_url(url)

    async def once() -> None:
        async with aiomqtt.Client(host, port, timeout=10) as c:
            await c.publish(topic, payload, qos=1)

    asyncio.run(asyncio.wait_for(once(), 20))


def test_a_program_run_replayed_after_the_destination_restarts_never_runs_the_program_again(
        tmp_path: Path, amqtt_broker: AmqttProcess, bin_dir: Path) -> None:
    """The signed program_run of a -predst call, captured on the broker and sent again after A2 was killed and
    started again: A2 answers it from its state store (program_done on A1's control topic) and the program
    does not run a second time (program_run is signed, not encrypted: docs/security.md)."""
    marker = tmp_path / "runs.txt"
    _program(bin_dir / "count.sh", f'echo ran >> "{marker}"\n')
    runs: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
    with running_agents(tmp_path / "fte_home", amqtt_broker.ensure_running().url, sandbox_dir(tmp_path, "out", "in"),
                        commandPath=str(bin_dir), **AGENT_PROPERTIES) as env:
        with Subscription(env.broker_url, "SYSTEM.FTE/Control/A2/#",
                          lambda t, p: runs.put((t, p)) if b'"program_run"' in p else None):
            code, done = _transfer(env, tmp_path / "data", "-predst", "count.sh")
        assert code == 0 and done["programs"][0]["outcome"] == "success", done
        assert marker.read_text() == "ran\n"
        topic, payload = runs.get(timeout=5)
        assert topic == f"SYSTEM.FTE/Control/A2/{done['transfer_id']}"

        env.agents["A2"].kill()  # SIGKILL: what it remembered only in memory is gone
        env.start_agent("A2")
        answers: "queue.Queue[bytes]" = queue.Queue()
        with Subscription(env.broker_url, f"SYSTEM.FTE/Control/A1/{done['transfer_id']}",
                          lambda t, p: answers.put(p)):
            _publish(env.broker_url, topic, payload)  # the replay
            answer = json.loads(answers.get(timeout=30))
        assert answer["kind"] == "program_done" and answer["outcome"]["outcome"] == "success", answer
        assert marker.read_text() == "ran\n", "the replayed program_run ran the program again"
        assert "answered from the record" in env.agents["A2"].log_tail(200)
