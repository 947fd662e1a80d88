"""The command line end to end, as the core issue's user contract states it.

Console scripts in subprocesses against real brokers over TCP: the quick start (create-agent,
start-agent in the background, a transfer, stop-agent) on both brokers, in both command forms
(`fte-<verb>` and `fte <verb>`); agent status commands; a SIGKILLed agent's last will; every kind of
bad input (one clear line on stderr, a non-zero exit, nothing left behind); fte-logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.agents import FteEnv, Result, pid_gone, run_fte, running_agents, sandbox_dir, script, wait_until
from tests.support.brokers import AmqttProcess, free_port

pytestmark = pytest.mark.timeout(120)

AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3}
WAIT = 30.0


# --------------------------------------------------------------------------- fixtures and helpers


def _env(tmp_path: Path, url: str) -> Iterator[FteEnv]:
    with running_agents(tmp_path / "fte_home", url, sandbox_dir(tmp_path), **AGENT_PROPERTIES) as env:
        yield env


@pytest.fixture
def fte1(tmp_path: Path, amqtt_broker: AmqttProcess) -> Iterator[FteEnv]:
    """Agents A1 and A2 (sandbox tmp_path/data) started on the amqtt session broker; stopped at teardown."""
    yield from _env(tmp_path, amqtt_broker.ensure_running().url)


@pytest.fixture
def url1(amqtt_broker: AmqttProcess) -> str:
    return amqtt_broker.ensure_running().url


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    return d


@dataclass
class Background:
    """Agents started in the background by the test (fte-start-agent without -F): killed at teardown."""

    env: FteEnv
    pids: list[int] = field(default_factory=list)

    def pid_of(self, name: str) -> int:
        pid = int((self.env.agent_dir(name) / "agent.pid").read_text().strip())
        self.pids.append(pid)
        return pid

    def cleanup(self) -> None:
        # also agents this test started whose pid it did not get to record (a failed assertion in between)
        for pid_file in self.env.home.glob("agents/*/agent.pid"):
            try:
                self.pids.append(int(pid_file.read_text().strip()))
            except (OSError, ValueError):
                pass
        for pid in self.pids:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGTERM)
        for pid in self.pids:
            try:
                wait_until(lambda: pid_gone(pid), 10, f"agent pid {pid} did not exit on SIGTERM")
            except AssertionError:
                if not pid_gone(pid):
                    os.kill(pid, signal.SIGKILL)


    def log_tail(self, name: str, lines: int = 25) -> str:
        try:
            text = (self.env.agent_dir(name) / "logs" / "output0.log").read_text(errors="replace")
        except OSError:
            return f"(no log for {name})"
        return f"--- {name} log ---\n" + "\n".join(text.splitlines()[-lines:])

    def wait_status(self, name: str, wanted: set[str], pid: int, timeout: float = 5) -> None:
        try:
            self.env.wait_status(name, wanted, timeout=timeout, pid=pid)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail(name)}") from None


@pytest.fixture
def background(tmp_path: Path, broker_url: str) -> Iterator[Background]:
    bg = Background(FteEnv(tmp_path / "fte_home", broker_url))
    try:
        yield bg
    finally:
        bg.cleanup()


def read_properties(path: Path) -> dict[str, str]:
    """A plain reading of key=value lines, as an MFT user (or Java) sees the file."""
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s[0] in "#!":
            continue
        key, sep, value = s.partition("=")
        assert sep, f"{path}: line {line!r} is not key=value"
        props[key.strip()] = value.strip()
    return props


def make_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def assert_same(src: Path, dst: Path) -> None:
    assert dst.is_file(), f"{dst} was not written"
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest(), f"{dst} differs"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stderr_lines(r: Result) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip()]


def assert_one_error_line(r: Result, *needles: str) -> str:
    """A failed command: non-zero exit, exactly one non-empty line on stderr containing every needle."""
    assert r.returncode != 0, str(r)
    lines = stderr_lines(r)
    assert len(lines) == 1, f"expected one line on stderr:\n{r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in the error line:\n{r}"
    assert "Traceback" not in r.stderr
    return lines[0]


def unknown_name() -> str:
    return f"NOSUCH_{secrets.token_hex(4)}"


def agent_rows(out: str) -> dict[str, str]:
    """{agent: status} from the fte-list-agents table (one row per agent)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) >= 2 and cells[1] in {"STARTING", "READY", "ACTIVE", "STOPPING", "STOPPED", "UNREACHABLE"}:
            rows[cells[0]] = cells[1]
    return rows


def no_transfers_known(env: FteEnv, agent: str) -> None:
    r = env.run("logs", "-a", agent, "--json")
    assert r.returncode == 0, str(r)
    assert [line for line in r.stdout.splitlines() if line.startswith("{")] == [], f"transfers were created:\n{r}"


# --------------------------------------------------------------------------- quick start (both brokers)


def test_quick_start(background: Background, broker_url: str, data: Path) -> None:
    """The README's quick start, in both command forms: create, start (background), transfer, stop."""
    env = background.env

    r = env.run("create-agent", "-agentName", "A1", "--broker", broker_url, "--sandbox", str(data))
    assert r.returncode == 0, str(r)
    props_path = env.home / "agents" / "A1" / "agent.properties"
    assert str(props_path) in r.stdout, str(r)
    props = read_properties(props_path)
    assert props["agentName"] == "A1" and props["brokerUrl"] == broker_url, props
    # without --broker the URL comes from FTE_BROKER_URL; the `fte <verb>` form
    r = run_fte(env, "create-agent", "-agentName", "A2", "--sandbox", str(data))
    assert r.returncode == 0, str(r)
    props = read_properties(env.home / "agents" / "A2" / "agent.properties")
    assert props["agentName"] == "A2" and props["brokerUrl"] == broker_url, props

    # background start: the command returns, and the agent is READY by then
    r = env.run("start-agent", "A1", timeout=60)
    assert r.returncode == 0, str(r)
    pid1 = background.pid_of("A1")
    background.wait_status("A1", {"READY"}, pid1)  # READY already (a poll may need a retry)
    r = run_fte(env, "start-agent", "A2", timeout=60)
    assert r.returncode == 0, str(r)
    pid2 = background.pid_of("A2")
    background.wait_status("A2", {"READY"}, pid2)
    # (before any transfer: an agent is ACTIVE for up to a second after one)
    r = run_fte(env, "list-agents")
    assert r.returncode == 0, str(r)
    rows = agent_rows(r.stdout)
    assert rows.get("A1") == "READY" and rows.get("A2") == "READY", r.stdout

    # the README's transfer (destination flag first, -w, then the source), in both forms
    src = make_file(data / "out" / "file.bin", 2 * 1024 * 1024 + 11)
    r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "in" / "file.bin"), "-w", str(src))
    assert r.returncode == 0, str(r)
    assert_same(src, data / "in" / "file.bin")
    r = run_fte(env, "create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "in" / "file2.bin"), "-w",
                str(src))
    assert r.returncode == 0, str(r)
    assert_same(src, data / "in" / "file2.bin")
    assert list(data.rglob("*.part")) == []

    # stop, in both forms: STOPPED, the process ends, its pid file goes
    r = env.run("stop-agent", "A1", timeout=60)
    assert r.returncode == 0, str(r)
    r = run_fte(env, "stop-agent", "A2", timeout=60)
    assert r.returncode == 0, str(r)
    for name, pid in (("A1", pid1), ("A2", pid2)):
        background.wait_status(name, {"STOPPED"}, pid)
        wait_until(lambda: pid_gone(pid), 15,
                   f"agent {name} (pid {pid}) still runs after fte-stop-agent\n{background.log_tail(name)}")
        wait_until(lambda: not (env.agent_dir(name) / "agent.pid").exists(), 5, f"{name}'s agent.pid was left")


# --------------------------------------------------------------------------- agent status


def test_agent_status_commands(fte1: FteEnv) -> None:
    r = fte1.run("list-agents")
    assert r.returncode == 0, str(r)
    rows = agent_rows(r.stdout)
    assert rows.get("A1") == "READY" and rows.get("A2") == "READY", r.stdout

    r = fte1.run("list-agents", "--json")
    assert r.returncode == 0, str(r)
    statuses = json.loads(r.stdout)
    for name in ("A1", "A2"):
        assert statuses[name]["status"] == "READY" and statuses[name]["pid"] == fte1.agents[name].pid, statuses

    r = fte1.run("show-agent-details", "A1", "--json")
    assert r.returncode == 0, str(r)
    details = json.loads(r.stdout)
    assert details["agent"] == "A1" and details["status"] == "READY" and details["pid"] == fte1.agents["A1"].pid
    r = run_fte(fte1, "show-agent-details", "A2")
    assert r.returncode == 0, str(r)
    assert re.search(r"^status\s+READY$", r.stdout, re.M), r.stdout

    r = fte1.run("ping-agent", "A1")
    assert r.returncode == 0 and "A1 answered" in r.stdout, str(r)
    r = run_fte(fte1, "ping-agent", "A2", "-w", "5")
    assert r.returncode == 0 and "A2 answered" in r.stdout, str(r)

    name = unknown_name()
    r = fte1.run("show-agent-details", name)
    assert_one_error_line(r, name, "not known")

    # named agents: each read on its own status topic (what works on RabbitMQ 3.x too)
    r = fte1.run("list-agents", "A2", "A1", "--json")
    assert r.returncode == 0, str(r)
    assert {n: s["status"] for n, s in json.loads(r.stdout).items()} == {"A1": "READY", "A2": "READY"}, r.stdout
    r = fte1.run("list-agents", "A1", name)
    assert agent_rows(r.stdout) == {"A1": "READY"}, r.stdout  # what was found, and one error line
    assert_one_error_line(r, name, "no status", f"/Agents/{name}", "FTE_TOPIC_PREFIX")
    r = fte1.run("list-agents", "A/1")
    assert_one_error_line(r, "invalid agent name")


def test_list_agents_says_why_it_may_find_none(tmp_path: Path, url1: str) -> None:
    """An empty list: a note on stderr says what to check, and how to list agents where a wildcard
    subscription gets no retained status (RabbitMQ 3.x)."""
    env = {**FteEnv(tmp_path / "fte_home", url1).env,
           "FTE_TOPIC_PREFIX": f"EMPTY_{secrets.token_hex(4)}"}  # no agent publishes there
    p = subprocess.run([script("list-agents")], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p
    assert "No agents are known" in p.stdout, p
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("note: no agent status arrived on EMPTY_"), p.stderr
    for needle in ("FTE_TOPIC_PREFIX", "RabbitMQ", "fte-list-agents A1 A2", "fte-show-agent-details NAME"):
        assert needle in lines[0], p.stderr


def test_ping_without_answer_exits_2_within_the_wait(fte1: FteEnv) -> None:
    """ping-agent on an unknown agent and on a stopped one: exit 2 once -w runs out, not later."""
    fte1.agents["A2"].terminate()
    fte1.wait_status("A2", {"STOPPED"}, timeout=15)
    for name in (unknown_name(), "A2"):
        t0 = time.monotonic()
        r = fte1.run("ping-agent", name, "-w", "1", timeout=30)
        elapsed = time.monotonic() - t0
        assert r.returncode == 2, str(r)
        assert 1.0 <= elapsed < 10, f"ping-agent {name} -w 1 took {elapsed:.1f} s"
        assert_one_error_line(r, name, "did not answer within 1 s")


def test_stop_agent_without_answer_says_what_the_broker_knows(fte1: FteEnv) -> None:
    """stop-agent on a stopped agent, and on an unknown one: it waits for an answer (a replayed STOPPED must not
    cut a real stop short), then says what the client knows, the agent's last verified status and its time, or
    that the agent has none, instead of advising to start what is to be stopped. Exit 2: no answer in time."""
    fte1.agents["A2"].terminate()
    st = fte1.wait_status("A2", {"STOPPED"}, timeout=15)
    r = fte1.run("stop-agent", "A2", "--timeout", "1", timeout=30)
    assert r.returncode == 2, str(r)
    line = assert_one_error_line(r, "agent A2 did not answer within 1 s", "its last status (verified) is STOPPED",
                                 f"published {st['time']}", "nothing to stop")
    assert "fte-start-agent" not in line, line
    name = unknown_name()
    r = fte1.run("stop-agent", name, "--timeout", "1", timeout=30)
    assert r.returncode == 2, str(r)
    line = assert_one_error_line(r, f"agent {name} did not answer within 1 s", f"SYSTEM.FTE/Agents/{name}",
                                 "unknown agent", "fte-list-agents")
    assert "fte-start-agent" not in line, line


def test_sigkill_makes_status_unreachable(fte1: FteEnv) -> None:
    """An agent that dies without a goodbye: the broker publishes its last will, status UNREACHABLE."""
    pid = fte1.agents["A2"].pid
    fte1.agents["A2"].kill()
    st = fte1.wait_status("A2", {"UNREACHABLE"}, timeout=20)
    assert st["pid"] == pid, st
    r = fte1.run("list-agents")
    rows = agent_rows(r.stdout)
    assert rows.get("A2") == "UNREACHABLE" and rows.get("A1") == "READY", r.stdout
    r = fte1.run("ping-agent", "A2", "-w", "1")
    assert r.returncode == 2, str(r)


# --------------------------------------------------------------------------- bad input


def _bad_transfer_cases(data: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    src, src2 = str(data / "src.bin"), str(data / "src2.bin")
    return {
        "unknown-source-agent": (["-sa", "@UNKNOWN", "-da", "A2", "-df", str(data / "o"), "-w", src],
                                 ("@UNKNOWN", "not known")),
        "unknown-destination-agent": (["-sa", "A1", "-da", "@UNKNOWN", "-df", str(data / "o"), "-w", src],
                                      ("@UNKNOWN", "not known")),
        "missing-source": (["-sa", "A1", "-da", "A2", "-df", str(data / "o"), "-w", str(data / "missing.bin")],
                           (str(data / "missing.bin"), "does not exist")),
        # '[v2]' looks like rich markup: the error line must show the name as it is
        "missing-source-with-brackets": (["-sa", "A1", "-da", "A2", "-df", str(data / "o"), "-w",
                                          str(data / "report[v2].csv")], (str(data / "report[v2].csv"),)),
        "both-df-and-dd": (["-sa", "A1", "-da", "A2", "-df", str(data / "o"), "-dd", str(data / "d"), "-w", src],
                           ("-df", "-dd")),
        "neither-df-nor-dd": (["-sa", "A1", "-da", "A2", "-w", src], ("-df", "-dd")),
        "df-with-several-sources": (["-sa", "A1", "-da", "A2", "-df", str(data / "o"), "-w", src, src2],
                                    ("-df", "-dd")),
        "bad-de-value": (["-sa", "A1", "-da", "A2", "-df", str(data / "o"), "-de", "sometimes", "-w", src],
                         ("-de", "sometimes")),
        "bad-sd-value": (["-sa", "A1", "-da", "A2", "-df", str(data / "o"), "-sd", "shred", "-w", src],
                         ("-sd", "shred")),
        "source-outside-sandbox": (["-sa", "A1", "-da", "A2", "-df", str(data / "o"), "-w", "/etc/hostname"],
                                   ("/etc/hostname", "sandbox")),
    }


BAD_TRANSFERS = list(_bad_transfer_cases(Path("/x")))


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory, amqtt_broker: AmqttProcess) -> Iterator[tuple[FteEnv, Path]]:
    """One pair of agents for every refused request (none of them may change anything: that is the test)."""
    tmp = tmp_path_factory.mktemp("refusing")
    gen = _env(tmp, amqtt_broker.ensure_running().url)
    env = next(gen)
    data = tmp / "data"
    make_file(data / "src.bin", 10_000)
    make_file(data / "src2.bin", 10_000)
    try:
        yield env, data
    finally:
        gen.close()


@pytest.mark.parametrize("case", BAD_TRANSFERS)
def test_bad_transfer_request(refusing: tuple[FteEnv, Path], case: str) -> None:
    """One clear line on stderr, a non-zero exit, no file written, no transfer created."""
    env, data = refusing
    args, needles = _bad_transfer_cases(data)[case]
    name = unknown_name()
    args = [name if a == "@UNKNOWN" else a for a in args]
    needles = tuple(name if n == "@UNKNOWN" else n for n in needles)
    before = snapshot(data)
    r = env.run("create-transfer", *args, timeout=60)
    assert_one_error_line(r, *needles)
    assert r.stdout.strip() == "", str(r)
    assert snapshot(data) == before, "a refused transfer changed the data directory"
    no_transfers_known(env, "A1")


def test_broker_down(tmp_path: Path, data: Path) -> None:
    """FTE_BROKER_URL names a closed port: every command says so in one line and exits non-zero, at once."""
    url = f"mqtt://127.0.0.1:{free_port()}"
    env = FteEnv(tmp_path / "fte_home", url)
    r = env.run("create-agent", "-agentName", "A1", "--sandbox", str(data))  # needs no broker
    assert r.returncode == 0, str(r)
    src = make_file(data / "src.bin", 1000)
    before = snapshot(data)
    for verb, args in (("create-transfer", ("-sa", "A1", "-da", "A2", "-df", str(data / "o"), "-w", str(src))),
                       ("list-agents", ()), ("show-agent-details", ("A1",)), ("ping-agent", ("A1",)),
                       ("logs", ()), ("logs", ("--follow",)), ("stop-agent", ("A1",)),
                       ("cancel-transfer", ("-a", "A1", "0" * 48))):
        t0 = time.monotonic()
        r = env.run(verb, *args, timeout=60)
        elapsed = time.monotonic() - t0
        assert_one_error_line(r, "cannot connect to the broker", url)
        assert elapsed < 15, f"{verb} took {elapsed:.1f} s to notice the broker is down"
    assert snapshot(data) == before


RT_ERROR = "-rt -5 is invalid: use -1 (recover forever), 0 (fail as soon as recovery starts) or a number of seconds"
# usage errors the command line catches before it talks to a broker: verb, arguments, words the line must contain
USAGE_ERRORS = {
    "missing-sa": ("create-transfer", ["-da", "A2", "-df", "/tmp/o", "/tmp/i"], ("-sa",)),
    "missing-source": ("create-transfer", ["-sa", "A1", "-da", "A2", "-df", "/tmp/o"], ("sources",)),
    "bad-rt": ("create-transfer", ["-sa", "A1", "-da", "A2", "-df", "/tmp/o", "-rt", "-5", "/tmp/i"], (RT_ERROR,)),
    # the same -rt check, and words, for templates and monitors (issue 14: one check, not four)
    "template-bad-rt": ("create-template", ["-tn", "t1", "-rt", "-5"], (RT_ERROR,)),
    "monitor-bad-rt": ("create-monitor", ["-ma", "A1", "-mn", "m1", "-md", "/tmp", "-tr", "match,*", "-da", "A2",
                                          "-dd", "/in", "-rt", "-5"], (RT_ERROR,)),
    "monitor-bad-de": ("create-monitor", ["-ma", "A1", "-mn", "m1", "-md", "/tmp", "-tr", "match,*", "-da", "A2",
                                          "-dd", "/in", "-de", "bogus"], ("-de 'bogus' is not one of: error, overwrite",)),
    "bad-cs": ("create-transfer", ["-sa", "A1", "-da", "A2", "-df", "/tmp/o", "-cs", "crc32", "/tmp/i"],
               ("-cs", "crc32")),
    "bad-md": ("create-transfer", ["-sa", "A1", "-da", "A2", "-df", "/tmp/o", "-md", "novalue", "/tmp/i"],
               ("-md", "novalue")),
    "bad-agent-name": ("create-transfer", ["-sa", "bad/name", "-da", "A2", "-df", "/tmp/o", "/tmp/i"],
                       ("bad/name",)),
    "create-agent-bad-name": ("create-agent", ["-agentName", "bad/name"], ("bad/name",)),
    "create-agent-no-name": ("create-agent", [], ("-agentName",)),
    "show-transfer-not-hex": ("show-transfer", ["nope-nope"], ("nope-nope", "first 8")),
    "show-transfer-too-short": ("show-transfer", ["abc123"], ("abc123", "first 8")),
    "cancel-transfer-too-long": ("cancel-transfer", ["-a", "A1", "a" * 49], ("a" * 49, "48 hex")),
    "logs-bad-transfer": ("logs", ["-t", "12345678x"], ("12345678x", "first 8")),
}
USAGE_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=USAGE_BUGS[c])) if c in USAGE_BUGS else c
    for c in USAGE_ERRORS])
def test_usage_error(tmp_path: Path, case: str) -> None:
    """A command line mistake: exit 1, one line on stderr that names the culprit, nothing created."""
    verb, args, needles = USAGE_ERRORS[case]
    env = FteEnv(tmp_path / "fte_home", f"mqtt://127.0.0.1:{free_port()}")  # no broker: never reached
    r = env.run(verb, *args, timeout=60)
    assert r.returncode == 1, str(r)
    assert_one_error_line(r, *needles)
    assert not (env.home / "agents").exists() or list((env.home / "agents").iterdir()) == []


def test_create_agent_twice(tmp_path: Path, data: Path) -> None:
    env = FteEnv(tmp_path / "fte_home", f"mqtt://127.0.0.1:{free_port()}")
    path = env.create_agent("A1", sandbox=data)
    before = path.read_bytes()
    r = env.run("create-agent", "-agentName", "A1", "--sandbox", str(data / "other"))
    assert_one_error_line(r, "A1", "already exists")
    assert path.read_bytes() == before


# a bad line, the property the message must name
MALFORMED = {
    "not-a-number": ("transferAckTimeout=abc", "transferAckTimeout"),
    "out-of-range": ("agentChunkSize=12", "agentChunkSize"),
    "negative-recovery-timeout": ("transferRecoveryTimeout=-2", "transferRecoveryTimeout"),
    "unknown-property": ("transferAckTimout=100", "transferAckTimout"),
    "bad-unicode-escape": ("topicPrefix=SYSTEM\\uZZZZ", "topicPrefix"),
}
MALFORMED_CASES = list(MALFORMED)


@pytest.mark.parametrize("case", MALFORMED_CASES)
def test_malformed_agent_properties(tmp_path: Path, url1: str, data: Path, case: str) -> None:
    """start-agent names the file, the line and the property; it exits 1 and starts nothing."""
    bad, prop = MALFORMED[case]
    env = FteEnv(tmp_path / "fte_home", url1)
    name = f"Bad_{secrets.token_hex(4)}"
    path = env.create_agent(name, sandbox=data)
    lines = path.read_text().splitlines()
    # put the bad line in the middle of the file, where the default of another property was
    index = next(i for i, line in enumerate(lines) if line.startswith("#maxQueuedTransfers="))
    lines[index] = bad
    path.write_text("\n".join(lines) + "\n")
    before = sorted(os.listdir(env.agent_dir(name)))

    for args in ((name,), (name, "-F")):
        r = env.run("start-agent", *args, timeout=60)
        assert r.returncode == 1, str(r)
        assert_one_error_line(r, str(path), f":{index + 1}:", prop)
    assert sorted(os.listdir(env.agent_dir(name))) == before, "start-agent left something behind"
    assert env.status(name) is None, "the agent reached the broker"


def test_start_agent_that_does_not_exist(tmp_path: Path, url1: str) -> None:
    env = FteEnv(tmp_path / "fte_home", url1)
    r = env.run("start-agent", "A9")
    assert_one_error_line(r, "A9", "fte-create-agent")
    assert not (env.home / "agents" / "A9").exists()


# --------------------------------------------------------------------------- fte-logs


def test_logs_lists_known_transfers(fte1: FteEnv, data: Path) -> None:
    r = fte1.run("logs")
    assert r.returncode == 0 and "No transfers" in r.stdout, str(r)

    src = make_file(data / "src.bin", 300_000)
    ok = fte1.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "o.bin"), "--json", "-w", str(src))
    assert ok.returncode == 0, str(ok)
    bad = fte1.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "o.bin"), "--json", "-w", str(src))
    assert bad.returncode == 40, str(bad)
    ok_id, bad_id = ok.json()["transfer_id"], bad.json()["transfer_id"]

    r = fte1.run("logs")
    assert r.returncode == 0, str(r)
    lines = r.stdout.splitlines()
    for tid, state, code in ((ok_id, "complete", 0), (bad_id, "failed", 40)):
        mine = [line for line in lines if line.startswith(tid)]
        assert {line.split()[1] for line in mine} == {"source", "destination"}, r.stdout
        assert all(state in line and f"result {code}" in line for line in mine), r.stdout

    r = fte1.run("logs", "--json")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    by_id = {(t["transfer_id"], t["role"]): t for t in records}
    assert by_id[(ok_id, "source")]["state"] == "complete" and by_id[(ok_id, "source")]["result_code"] == 0
    assert by_id[(bad_id, "source")]["state"] == "failed" and by_id[(bad_id, "source")]["result_code"] == 40

    r = fte1.run("logs", "-t", ok_id, "--json")
    assert {json.loads(line)["transfer_id"] for line in r.stdout.splitlines()} == {ok_id}, r.stdout
    r = fte1.run("logs", "-a", "A2", "--json")
    assert {json.loads(line)["role"] for line in r.stdout.splitlines()} == {"destination"}, r.stdout


# --------------------------------------------------------------------------- bugs


def test_list_agents_shows_long_agent_names_whole(tmp_path: Path, url1: str, data: Path) -> None:
    env = FteEnv(tmp_path / "fte_home", url1)
    name = "Payments_Gateway_Agent_EU_01"  # 28 characters, the longest name allowed
    try:
        env.create_agent(name, sandbox=data)
        env.start_agent(name)
        r = env.run("list-agents")
        assert r.returncode == 0, str(r)
        assert agent_rows(r.stdout).get(name) == "READY", r.stdout
    finally:
        env.stop_all()


def test_transfer_from_stopped_agent_fails_at_once(fte1: FteEnv, data: Path) -> None:
    src = make_file(data / "src.bin", 1000)
    fte1.agents["A1"].terminate()
    fte1.wait_status("A1", {"STOPPED"}, timeout=15)
    t0 = time.monotonic()
    r = fte1.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "o"), "--timeout", "40", "-w",
                 str(src), timeout=90)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, str(r)
    assert_one_error_line(r, "A1", "STOPPED")
    # at once: from the retained status, not after the reply's timeout (a wide margin: a loaded machine took
    # 3 s to start the command and read the status)
    assert elapsed < 20, f"took {elapsed:.1f} s: it waited for a reply instead of reading the status"
