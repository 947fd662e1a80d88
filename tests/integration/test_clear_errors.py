"""Mistakes found on the way (issue 13), each one clear line and a non-zero exit, and `fte-create-agent`
run many times at once in one FTE_CONFIG_HOME losing no trust entry.

The commands run as processes; the ones that need agents use real agents over Mosquitto.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agents import FteEnv, Result, running_agents, sandbox_dir, script
from tests.support.brokers import MosquittoProcess, free_port

pytestmark = pytest.mark.timeout(180)


def one_line(r: Result, *needles: str) -> str:
    """A refused command: non-zero exit, exactly one line on stderr, naming every needle, no traceback."""
    assert r.returncode != 0, str(r)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr:\n{r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in the error line:\n{r}"
    for raw in ("Traceback", "validation error", "pydantic", "Input should be", "[Errno", "type="):
        assert raw not in r.stderr, f"raw text {raw!r} on stderr:\n{r}"
    return lines[0]


def offline(tmp_path: Path) -> FteEnv:
    return FteEnv(tmp_path / "home", f"mqtt://127.0.0.1:{free_port()}")  # nothing listens: never reached


# --------------------------------------------------------------------------- sandboxRoot


@pytest.mark.parametrize("prop", ["sandboxRoot", "transferRoot"])
def test_agent_refuses_to_start_on_a_directory_that_does_not_exist(tmp_path: Path, prop: str) -> None:
    env = offline(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    missing = tmp_path / "no-such-dir"
    if prop == "sandboxRoot":
        env.create_agent("A1", sandbox=f"{data}:{missing}")
    else:
        env.create_agent("A1", sandbox=data, transferRoot=missing)
    for args in (("A1", "-F"), ("A1",)):
        r = env.run("start-agent", *args, timeout=60)
        line = one_line(r, prop, str(missing), "does not exist")
        assert "agent.properties" in line, line
    assert not (env.agent_dir("A1") / "agent.pid").exists()


def test_create_agent_warns_of_a_sandbox_directory_that_does_not_exist(tmp_path: Path) -> None:
    """Creating the configuration before the directory is no mistake (exit 0), but the user hears at once what
    fte-start-agent will refuse; before, the agent was created without a word and refused to start later."""
    env = offline(tmp_path)
    missing = tmp_path / "no-such-dir"
    r = env.run("create-agent", "-agentName", "A1", "--broker", env.broker_url, "--sandbox", str(missing))
    assert r.returncode == 0, str(r)
    warning = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: "), str(r)
    for needle in ("sandboxRoot", str(missing), "does not exist", "fte-start-agent"):
        assert needle in warning[0], str(r)
    assert (env.agent_dir("A1") / "agent.properties").exists()
    present = tmp_path / "data"
    present.mkdir()
    r = env.run("create-agent", "-agentName", "A2", "--broker", env.broker_url, "--sandbox", str(present))
    assert r.returncode == 0 and not r.stderr.strip(), str(r)


def test_a_sandbox_entry_that_is_a_file_is_refused(tmp_path: Path) -> None:
    env = offline(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    env.create_agent("A1", sandbox=afile)
    one_line(env.run("start-agent", "A1", "-F", timeout=60), "sandboxRoot", str(afile), "not a directory")


def test_an_excluded_sandbox_entry_need_not_exist(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    """`!DIR` entries only narrow the sandbox: one that does not exist (yet) is no mistake."""
    data = tmp_path / "data"
    data.mkdir()
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    env.create_agent("A1", sandbox=f"{data}:!{data / 'private'}")
    try:
        env.start_agent("A1")
    finally:
        env.stop_all()


# --------------------------------------------------------------------------- fte-create-transfer


@pytest.mark.parametrize("flag", ["-rt", "-oc", "-of"])
def test_a_number_flag_that_is_not_a_number(tmp_path: Path, flag: str) -> None:
    args = ["-sa", "A1", "-da", "A2", "-df", "/tmp/o", flag, "abc", "/tmp/i"]
    line = one_line(offline(tmp_path).run("create-transfer", *args, timeout=60), flag, "'abc'", "whole number")
    assert line.startswith("error:"), line


@pytest.mark.parametrize("where", ["source", "-df", "-dd"])
def test_a_path_over_4096_characters(tmp_path: Path, where: str) -> None:
    long = "/tmp/" + "a" * 5000
    dest = ["-df", long] if where == "-df" else ["-dd", long] if where == "-dd" else ["-df", "/tmp/o"]
    source = long if where == "source" else "/tmp/i"
    r = offline(tmp_path).run("create-transfer", "-sa", "A1", "-da", "A2", *dest, source, timeout=60)
    line = one_line(r, "4096", "5005 characters")
    assert len(line) < 400, line  # the path is not repeated in full
    assert (where if where != "source" else "source") in line, line


@pytest.fixture
def pair(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[tuple[FteEnv, Path]]:
    data = sandbox_dir(tmp_path, "in", "out")
    with running_agents(tmp_path / "home", mosquitto.ensure_running().url, data, transferAckTimeout=2000) as env:
        yield env, data


def test_dd_naming_an_existing_file(pair: tuple[FteEnv, Path]) -> None:
    env, data = pair
    (data / "in" / "a.txt").write_text("alpha")
    (data / "out" / "plain").write_text("I am a file")
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out" / "plain"), "-w", "30",
                str(data / "in" / "a.txt"))
    assert r.returncode == 40, str(r)
    assert "[Errno" not in r.stdout + r.stderr, str(r)
    assert f'"{data / "out" / "plain"}" is a file, not a directory' in r.stdout, str(r)
    assert (data / "out" / "plain").read_text() == "I am a file"
    # what fte-show-transfer shows as the file's supplement is the same clear message
    tid = r.stdout.split()[1]
    shown = env.run("show-transfer", tid, "-a", "A1")
    assert "is a file, not a directory" in shown.stdout and "[Errno" not in shown.stdout, str(shown)


def test_list_transfers_refuses_an_unknown_state(pair: tuple[FteEnv, Path]) -> None:
    env, _ = pair
    line = one_line(env.run("list-transfers", "--state", "bogus"), "'bogus'", "recovering", "complete",
                    "in_progress")
    assert line.startswith("error:"), line
    ok = env.run("list-transfers", "--state", "complete")
    assert ok.returncode == 0, str(ok)


# --------------------------------------------------------------------------- fte-create-agent in parallel


def test_agents_created_at_once_trust_each_other(tmp_path: Path) -> None:
    """20 fte-create-agent processes started together in one FTE_CONFIG_HOME: every agent's trust file names
    every other agent's identity key and the requester's key (no run rewrote another's entries)."""
    from agent.auth import TRUST_FILE, parse_trust_file, public_text
    from agent.wire.binding import agent_requester, load_or_create_agent_key

    env = offline(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    names = [f"P{i:02d}" for i in range(20)]
    procs = [subprocess.Popen([script("create-agent"), "-agentName", n, "--sandbox", str(data)], env=env.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for n in names]
    for n, p in zip(names, procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"fte-create-agent {n}: {p.returncode}\n{out}\n{err}"
    keys = {n: public_text(load_or_create_agent_key(env.agent_dir(n)).public_key()) for n in names}
    requester_keys = list((env.home / "keys").glob("*.pub"))
    assert len(requester_keys) == 1, requester_keys
    requester, requester_key = requester_keys[0].stem, requester_keys[0].read_text().strip()
    missing = []
    for n in names:
        path = env.agent_dir(n) / TRUST_FILE
        trusted = parse_trust_file(path.read_text(), path)
        if requester not in trusted or public_text(trusted[requester].key) != requester_key:
            missing.append(f"{n} lacks the requester {requester}")
        for other in names:
            entry = trusted.get(agent_requester(other))
            if other != n and (entry is None or public_text(entry.key) != keys[other]):
                missing.append(f"{n} lacks {other}")
    assert not missing, f"{len(missing)} trust entries lost: {missing[:10]}"
    leftovers = [p.name for p in env.home.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers


def test_a_source_the_agent_cannot_stat_is_named_in_words(pair: tuple[FteEnv, Path]) -> None:
    """An OSError while the source agent lists the sources reached the user as the raw "[Errno 36] File name
    too long: '...'" with the whole path. Root gets this one too: a link to a deep directory makes a short source
    path resolve to more than PATH_MAX, which stat() refuses."""
    env, data = pair
    deep = data / "in" / "deep"
    for _ in range(15):
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    (data / "in" / "l").symlink_to(deep)
    source = str(data / "in" / "l" / "/".join(["e" * 200] * 6) / "f.txt")
    assert len(source) < 4000 < len(str(deep)) + 1200
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), source, timeout=60)
    line = one_line(r, "cannot read the sources on agent A1", "File name too long (ENAMETOOLONG)")
    assert len(line) < 600, line  # the path is shortened, not shown whole
