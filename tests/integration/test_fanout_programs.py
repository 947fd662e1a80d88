"""Program calls of a fan-out transfer through the console scripts (docs/configuration.md#program-calls): the
source's -presrc / -postsrc run ONCE for the transfer, each destination runs its own -predst / -postdst, and
the completed event's `programs` names the agent of each call. Real Mosquitto, agents as processes."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_fanout import create_fanout_agents
from tests.support.agents import FteEnv

pytestmark = pytest.mark.timeout(240)

DESTS = ("A2", "A3")
REL = "out/prog.bin"


def _program(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fan(tmp_path: Path, mosquitto) -> Iterator[tuple[FteEnv, dict[str, Path], Path]]:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"  # outside every sandbox (tmp_path/data)
    # each run appends one line: which call, on which agent, and the fan-out's destination agents
    _program(bin_dir / "note.sh", f'echo "$FTE_PROGRAM_CALL $1 $FTE_DESTINATION_AGENT $FTE_DESTINATION_AGENTS" '
                                  f'>> "{calls}"\n')
    _program(bin_dir / "fail.sh", f'echo "$FTE_PROGRAM_CALL fail" >> "{calls}"\nexit 3\n')
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    try:
        roots = create_fanout_agents(env, tmp_path / "data", DESTS, commandPath=str(bin_dir), commandTimeout=20)
        for name in ("A1", *DESTS):
            env.start_agent(name)
        yield env, roots, calls
    finally:
        env.stop_all()


def _fanout(env: FteEnv, roots: dict[str, Path], *flags: str) -> tuple[int, dict]:
    src = roots["A1"] / "prog.bin"
    src.write_bytes(b"fan-out program calls\n" * 20_000)
    r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTS), "-df", REL, "-w", "120", "--json",
                *flags, str(src), timeout=180)
    assert r.stdout.strip(), str(r)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def test_source_calls_run_once_and_each_destination_runs_its_own(fan) -> None:
    env, roots, calls = fan
    code, done = _fanout(env, roots, "-presrc", "note.sh(pre)", "-predst", "note.sh(predst)",
                         "-postdst", "note.sh(postdst)", "-postsrc", "note.sh(post)")
    assert code == 0 and done["result_code"] == 0, json.dumps(done)
    for name in DESTS:
        assert (roots[name] / REL).exists(), name
    lines = calls.read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("pre_source")] == ["pre_source pre A2 A2,A3"], lines
    assert [ln for ln in lines if ln.startswith("post_source")] == ["post_source post A2 A2,A3"], lines
    assert sorted(ln.split()[2] for ln in lines if ln.startswith("pre_destination")) == ["A2", "A3"], lines
    assert sorted(ln.split()[2] for ln in lines if ln.startswith("post_destination")) == ["A2", "A3"], lines
    assert lines[0].startswith("pre_source") and lines[-1].startswith("post_source"), lines
    ran = [(p["when"], p["agent"]) for p in done["programs"]]
    assert ran == [("pre_source", "A1"), ("pre_destination", "A2"), ("post_destination", "A2"),
                   ("pre_destination", "A3"), ("post_destination", "A3"), ("post_source", "A1")], ran
    assert all(p["outcome"] == "success" for p in done["programs"]), done["programs"]


def test_a_failing_presrc_fails_every_destination_before_any_byte_moves(fan) -> None:
    env, roots, calls = fan
    code, done = _fanout(env, roots, "-presrc", "fail.sh", "-predst", "note.sh(predst)")
    assert code == 40 and done["result_code"] == 40, done
    assert calls.read_text().splitlines() == ["pre_source fail"]  # once; no destination ran its -predst
    assert [(e["agent"], e["result_code"]) for e in done["destinations"]] == [("A2", 40), ("A3", 40)], done
    for name in DESTS:
        assert not (roots[name] / REL).exists() and list((roots[name] / "out").iterdir()) == [], name
    [call] = done["programs"]
    assert (call["when"], call["agent"], call["return_code"]) == ("pre_source", "A1", 3), call
    assert "-presrc fail.sh failed: return code 3" in done["message"], done


def test_a_source_that_cannot_be_deleted_is_a_warning_in_the_completed_files(fan, tmp_path: Path) -> None:
    # -sd delete once every destination has the file; each destination's -postdst puts a directory where the
    # source file was first (the unlink fails): the completed event's file says so (2), as an ordinary one does
    env, roots, calls = fan
    src = roots["A1"] / "prog.bin"
    _program(tmp_path / "bin" / "swap.sh", '[ -d "$1" ] || { rm -f "$1"; mkdir -p "$1/kept"; }\nexit 0\n')
    code, done = _fanout(env, roots, "-sd", "delete", "-postdst", f"swap.sh({src})")
    assert code == 0 and done["result_code"] == 0, json.dumps(done)
    assert src.is_dir()
    [f] = done["files"]
    assert f["result_code"] == 2 and "the source was not deleted" in (f["supplement"] or ""), f
