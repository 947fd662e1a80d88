"""Transfers end to end, as a user runs them: `fte-create-transfer` against two agent processes over TCP.

Every test starts its own agents A1 and A2 (`fte-start-agent NAME -F`, sandbox = tmp_path/data) on a
session broker and checks what a user sees: exit codes, stdout/stderr, the files on disk (identical
content, no `.part` left over) and the transfer log events.

The representative transfer set runs on both brokers (amqtt and Mosquitto); the rest runs on amqtt,
which needs nothing installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import FteEnv, LogFollower, Result, running_agents, sandbox_dir, wait_until
from tests.support.brokers import AmqttProcess

pytestmark = pytest.mark.timeout(120)

# Small chunks and a small window, so that a file of a few MB needs many windows and acknowledgements;
# a short ack timeout so that nothing a test provokes waits a minute.
AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3}
WAIT = 30.0  # bound for any transfer of a few MB on a slow 2-core machine
TID_RE = re.compile(r"^[0-9a-f]{48}$")


# --------------------------------------------------------------------------- fixtures


def _env(tmp_path: Path, url: str) -> Iterator[FteEnv]:
    with running_agents(tmp_path / "fte_home", url, sandbox_dir(tmp_path), **AGENT_PROPERTIES) as env:
        yield env


@pytest.fixture
def fte(tmp_path: Path, broker_url: str) -> Iterator[FteEnv]:
    """Agents A1 and A2 started on each broker in turn (amqtt, mosquitto)."""
    yield from _env(tmp_path, broker_url)


@pytest.fixture
def fte1(tmp_path: Path, amqtt_broker: AmqttProcess) -> Iterator[FteEnv]:
    """Agents A1 and A2 started on the amqtt session broker only."""
    yield from _env(tmp_path, amqtt_broker.ensure_running().url)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


# --------------------------------------------------------------------------- helpers


def make_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def transfer(env: FteEnv, *args: str, timeout: float = 90) -> Result:
    return env.run("create-transfer", *args, timeout=timeout)


def assert_same(src: Path | bytes, dst: Path) -> None:
    expected = src if isinstance(src, bytes) else src.read_bytes()
    assert dst.is_file(), f"{dst} was not written"
    actual = dst.read_bytes()
    assert len(actual) == len(expected), f"{dst}: {len(actual)} bytes, expected {len(expected)}"
    assert hashlib.sha256(actual).digest() == hashlib.sha256(expected).digest(), f"{dst}: content differs"


def part_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.part"))


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def started_tid(r: Result) -> str:
    m = re.search(r"Transfer ([0-9a-f]{48}) (started|submitted)", r.stdout)
    assert m, f"no transfer id in the output:\n{r}"
    return m.group(1)


def transfer_records(env: FteEnv, tid: str) -> list[dict]:
    r = env.run("logs", "-t", tid, "--json")
    assert r.returncode == 0, str(r)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


# --------------------------------------------------------------------------- transfer sets


def test_transfer_set_to_directory(fte: FteEnv, data: Path) -> None:
    """Several sources of awkward sizes to -dd: every file identical, exit 0, no part files (both brokers)."""
    sizes = {"big.bin": 3 * 1024 * 1024 + 17, "one_chunk.bin": 65536, "odd.bin": 1000, "tiny.bin": 1}
    sources = [make_file(data / "src" / name, size) for name, size in sizes.items()]
    r = transfer(fte, "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-w", *map(str, sources))
    assert r.returncode == 0, str(r)
    assert "complete (result 0)" in r.stdout and f"{len(sources)}/{len(sources)} file(s)" in r.stdout, str(r)
    for s in sources:
        assert_same(s, data / "in" / s.name)
    assert files_under(data / "in") == set(sizes)
    assert part_files(data) == []


def test_recursive_directory_tree(fte1: FteEnv, data: Path) -> None:
    """A directory source with -r reproduces the tree under -dd; without -r only its top-level files go."""
    tree = data / "tree"
    layout = {"top.bin": 200_000, "sub/a.bin": 70_000, "sub/deep/b.bin": 5, "sub/deep/empty.bin": 0,
              "other/c.bin": 131_072}
    for rel, size in layout.items():
        make_file(tree / rel, size)

    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-dd", str(data / "copy"), "-r", "-w", str(tree))
    assert r.returncode == 0, str(r)
    assert files_under(data / "copy") == {f"tree/{rel}" for rel in layout}
    for rel in layout:
        assert_same(tree / rel, data / "copy" / "tree" / rel)

    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-dd", str(data / "flat"), "-w", str(tree))
    assert r.returncode == 0, str(r)
    assert files_under(data / "flat") == {"tree/top.bin"}
    assert part_files(data) == []


def test_existing_destination_with_de_error(fte1: FteEnv, data: Path) -> None:
    """-de error (the default): the transfer fails with 40, the existing file is untouched, no part file."""
    src = make_file(data / "src.bin", 1_000_000)
    dst = data / "out.bin"
    dst.write_bytes(b"precious contents")
    before = dst.stat()

    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", str(src))
    assert r.returncode == 40, str(r)
    assert "already exists" in r.stdout + r.stderr, str(r)
    assert dst.read_bytes() == b"precious contents"
    assert dst.stat().st_mtime_ns == before.st_mtime_ns and dst.stat().st_ino == before.st_ino
    assert part_files(data) == []

    # the same with -de error spelled out, in a set where every file exists: failed (40), not partial
    other = make_file(data / "src2.bin", 5000)
    (data / "dir").mkdir()
    (data / "dir" / "src.bin").write_bytes(b"old 1")
    (data / "dir" / "src2.bin").write_bytes(b"old 2")
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-dd", str(data / "dir"), "-de", "error", "-w", str(src), str(other))
    assert r.returncode == 40, str(r)
    assert (data / "dir" / "src.bin").read_bytes() == b"old 1"
    assert (data / "dir" / "src2.bin").read_bytes() == b"old 2"
    assert part_files(data) == []


def test_an_existing_destination_at_the_longest_path_fails_with_its_reason(fte1: FteEnv, data: Path) -> None:
    """A destination path near its 4095-byte maximum that exists: the refusal quoting it is longer than a string
    may be on the wire. The transfer fails (40) with the reason, shortened around an ellipsis, rather than its answer being
    refused by the source (the answer carries every file's reason)."""
    deep = data
    while len(str(deep)) < 4090 - 12 - 255:  # directories of 200 bytes, then one to make 4,090 bytes in all
        deep = deep / ("d" * 200)
    deep = deep / ("e" * (4090 - 12 - len(str(deep))))
    dst = deep / "exists.bin"
    dst.parent.mkdir(parents=True)
    assert 4080 < len(os.fsencode(str(dst))) <= 4095, len(str(dst))
    dst.write_bytes(b"precious contents")
    src = make_file(data / "src.bin", 1000)
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "60", "--json", str(src))
    assert r.returncode == 40, str(r)[:2000]
    [f] = json.loads(r.stdout.strip().splitlines()[-1])["files"]
    why = f["supplement"]
    assert why.startswith('BFGIO0006E: File "') and "..." in why and why.endswith('exists.bin" already exists.'), why
    assert dst.read_bytes() == b"precious contents" and part_files(data) == []


def test_partial_transfer_set(fte1: FteEnv, data: Path) -> None:
    """One of two destinations exists: result 20 (partial), the other file arrives, the existing one stays."""
    a = make_file(data / "src" / "a.bin", 300_000)
    b = make_file(data / "src" / "b.bin", 300_000)
    (data / "in").mkdir()
    (data / "in" / "a.bin").write_bytes(b"keep me")
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-w", str(a), str(b))
    assert r.returncode == 20, str(r)
    assert "partial" in r.stdout, str(r)
    assert (data / "in" / "a.bin").read_bytes() == b"keep me"
    assert_same(b, data / "in" / "b.bin")
    assert part_files(data) == []


def test_overwrite_replaces_existing_destination(fte1: FteEnv, data: Path) -> None:
    src = make_file(data / "src.bin", 2 * 1024 * 1024 + 3)
    dst = data / "out.bin"
    dst.write_bytes(b"x" * 10_000_000)  # longer than the new contents: nothing of it may survive
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(dst), "-de", "overwrite", "-w", str(src))
    assert r.returncode == 0, str(r)
    assert_same(src, dst)
    assert part_files(data) == []


def test_source_delete_only_after_success(fte1: FteEnv, data: Path) -> None:
    """-sd delete removes the source after a successful transfer, never after a failed one."""
    src = make_file(data / "src.bin", 1_500_000)
    content = src.read_bytes()
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "out.bin"), "-sd", "delete", "-w", str(src))
    assert r.returncode == 0, str(r)
    assert_same(content, data / "out.bin")
    assert not src.exists(), "the source should have been deleted after the successful transfer"

    # failed transfer (destination exists, -de error): the source stays
    src2 = make_file(data / "src2.bin", 100_000)
    content2 = src2.read_bytes()
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "out.bin"), "-sd", "delete", "-w", str(src2))
    assert r.returncode == 40, str(r)
    assert src2.read_bytes() == content2, "a failed transfer deleted (or changed) its source"
    assert_same(content, data / "out.bin")

    # partial transfer set: the file that failed keeps its source
    s3 = make_file(data / "set" / "s3.bin", 1000)
    s4 = make_file(data / "set" / "s4.bin", 1000)
    (data / "in").mkdir()
    (data / "in" / "s3.bin").write_bytes(b"exists")
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-sd", "delete", "-w", str(s3), str(s4))
    assert r.returncode == 20, str(r)
    assert s3.exists(), "the source of a file that failed was deleted"
    assert part_files(data) == []


def test_checksum_methods(fte1: FteEnv, data: Path) -> None:
    """-cs md5, none and sha256 (the default): the file arrives; the reported digest is the file's."""
    src = make_file(data / "src.bin", 1_234_567)
    for algorithm in ("md5", "none", "sha256", None):
        out = data / f"out_{algorithm}.bin"
        cs = ["-cs", algorithm] if algorithm else []
        r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(out), *cs, "--json", "-w", str(src))
        assert r.returncode == 0, str(r)
        assert_same(src, out)
        [f] = r.json()["files"]
        assert f["checksum_method"] == (algorithm or "sha256"), f
        if algorithm == "none":
            assert f["digest"] is None, f
        else:
            assert f["digest"] == hashlib.new(algorithm or "sha256", src.read_bytes()).hexdigest(), f
    assert part_files(data) == []


def test_empty_file(fte1: FteEnv, data: Path) -> None:
    src = data / "empty.bin"
    src.write_bytes(b"")
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "sub" / "empty.out"), "-w", str(src))
    assert r.returncode == 0, str(r)
    out = data / "sub" / "empty.out"
    assert out.is_file() and out.stat().st_size == 0
    assert part_files(data) == []


# --------------------------------------------------------------------------- --json, -w, the log


def test_json_output(fte1: FteEnv, data: Path) -> None:
    """--json prints exactly one JSON object: transfer_id; with -w also result_code and state."""
    src = make_file(data / "src.bin", 500_000)
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "a.out"), "--json", str(src))
    assert r.returncode == 0, str(r)
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print one line of JSON:\n{r}"
    obj = json.loads(lines[0])
    assert TID_RE.match(obj["transfer_id"]), obj
    # without -w the command returns at once; the transfer still happens
    wait_until(lambda: (data / "a.out").is_file(), WAIT, "the submitted transfer did not arrive")
    assert_same(src, data / "a.out")
    wait_until(lambda: any(t["state"] == "complete" and t["result_code"] == 0
                           for t in transfer_records(fte1, obj["transfer_id"])), WAIT,
               "fte-logs does not report the submitted transfer complete")

    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "b.out"), "--json", "-w", str(src))
    assert r.returncode == 0, str(r)
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json -w must print one line of JSON:\n{r}"
    obj = json.loads(lines[0])
    assert TID_RE.match(obj["transfer_id"]) and obj["result_code"] == 0 and obj["state"] == "complete", obj
    assert_same(src, data / "b.out")

    # a failed one: the JSON says so, and the exit code is the result code
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "b.out"), "--json", "-w", str(src))
    assert r.returncode == 40, str(r)
    obj = json.loads(r.stdout.strip())
    assert obj["result_code"] == 40 and obj["state"] == "failed", obj

    # file names that look like rich markup come out as they are
    src = make_file(data / "report[final].csv", 1000)
    dst = data / "in" / "report[final].csv"
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(dst), "--json", "-w", str(src))
    assert r.returncode == 0, str(r)
    assert_same(src, dst)
    [f] = r.json()["files"]
    assert f["source"] == str(src) and f["destination"] == str(dst), f


def test_job_name_and_metadata_in_log_events(fte1: FteEnv, data: Path) -> None:
    """-jn and -md travel with every log event of the transfer (read with fte-logs --follow --json)."""
    src = make_file(data / "src.bin", 700_000)
    with LogFollower(fte1, "-a", "A1") as follower:
        follower.wait_subscribed()
        r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "out.bin"), "-jn", "NIGHTLY_BATCH",
                     "-md", "owner=finance,ticket=CHG-42", "-md", "note=hello world", "-md", "tag=[urgent]",
                     "-md", "path=a[/x]b", "--json", "-w", str(src))
        assert r.returncode == 0, str(r)
        tid = r.json()["transfer_id"]
        events = [ev for ev in follower.events_until(
            lambda ev: ev.get("transfer_id") == tid and ev.get("action") == "completed", WAIT)
            if ev.get("transfer_id") == tid]
    actions = [ev["action"] for ev in events]
    assert actions[0] == "started" and actions[-1] == "completed" and "progress" in actions, actions
    for ev in events:
        assert ev["job_name"] == "NIGHTLY_BATCH", ev
        # '[urgent]' and '[/x]' look like rich markup: they must come out as they are (and not crash fte-logs)
        assert ev["metadata"] == {"owner": "finance", "ticket": "CHG-42", "note": "hello world",
                                  "tag": "[urgent]", "path": "a[/x]b"}, ev
        assert ev["source_agent"] == "A1" and ev["destination_agent"] == "A2", ev
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$", ev["time"]), ev["time"]
    completed = events[-1]
    assert completed["result_code"] == 0 and completed["state"] == "complete", completed
    [f] = completed["files"]
    assert f["size"] == 700_000 and f["result_code"] == 0
    assert f["digest"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_wait_exit_codes(fte1: FteEnv, data: Path) -> None:
    """-w: 0 on success, 40 when the transfer failed, 2 when the wait runs out (and the transfer goes on)."""
    src = make_file(data / "big.bin", 4 * 1024 * 1024)
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "ok.bin"), "-w", str(src))
    assert r.returncode == 0, str(r)
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "ok.bin"), "-w", str(src))
    assert r.returncode == 40, str(r)

    # The destination agent is frozen, so the 4 MiB transfer cannot finish within -w 0.5 whatever the
    # machine's speed; once it thaws the transfer completes on its own.
    fte1.agents["A2"].pause()
    try:
        t0 = time.monotonic()
        r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "later.bin"), "-w", "0.5", str(src))
        elapsed = time.monotonic() - t0
        rj = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "later2.bin"), "-w", "0.5", "--json",
                      str(src))
    finally:
        fte1.agents["A2"].resume()
    assert r.returncode == 2, str(r)
    assert elapsed < 10, f"-w 0.5 took {elapsed:.1f} s"
    assert "has not finished within 0.5 s" in r.stderr, str(r)
    assert rj.returncode == 2, str(rj)
    obj = rj.json()
    assert obj["result_code"] == 2 and TID_RE.match(obj["transfer_id"]), obj
    for tid, out in ((started_tid(r), data / "later.bin"), (obj["transfer_id"], data / "later2.bin")):
        wait_until(out.is_file, WAIT, "the transfer did not go on after the wait ran out")
        assert_same(src, out)
        wait_until(lambda: any(t["role"] == "source" and t["state"] == "complete" and t["result_code"] == 0
                               for t in transfer_records(fte1, tid)), WAIT, "the transfer is not reported complete")
    assert part_files(data) == []


def test_destination_outside_sandbox(fte1: FteEnv, tmp_path: Path, data: Path) -> None:
    """A destination outside the destination agent's sandbox: the transfer fails, nothing is written."""
    src = make_file(data / "src.bin", 100_000)
    outside = tmp_path / "outside"
    for dest_flag, dest in (("-df", outside / "out.bin"), ("-dd", outside / "dir")):
        r = transfer(fte1, "-sa", "A1", "-da", "A2", dest_flag, str(dest), "-w", str(src))
        assert r.returncode == 40, str(r)
        assert "outside the agent's sandbox" in r.stdout + r.stderr, str(r)
        assert not outside.exists(), f"something was written outside the sandbox: {list(outside.rglob('*'))}"
    # and through a symbolic link inside the sandbox that leads out
    outside.mkdir()
    (data / "escape").symlink_to(outside, target_is_directory=True)
    r = transfer(fte1, "-sa", "A1", "-da", "A2", "-df", str(data / "escape" / "out.bin"), "-w", str(src))
    assert r.returncode == 40, str(r)
    assert list(outside.iterdir()) == []
    assert part_files(tmp_path) == []


# --------------------------------------------------------------------------- bugs


def test_two_transfers_to_one_destination(fte1: FteEnv, data: Path) -> None:
    """Two jobs deliver different files to the same -df at once (-de error): one wins, the other is refused."""
    x = make_file(data / "x.bin", 4 * 1024 * 1024)
    y = make_file(data / "y.bin", 4 * 1024 * 1024)
    dst = data / "shared.bin"

    last: list[Result] = []

    def sources_negotiating() -> bool:
        r = fte1.run("logs", "-a", "A1", "--json")
        last[:] = [r]
        states = [json.loads(line)["state"] for line in r.stdout.splitlines() if line.startswith("{")]
        # on a loaded machine the first may already have given up waiting for the paused A2 (ack timeout:
        # recovering) by the time the second starts; both are waiting for A2 either way
        return sum(st in ("negotiating", "recovering", "resynchronising") for st in states) == 2

    # both requests reach the destination agent before it handles either, so they run side by side
    fte1.agents["A2"].pause()
    procs = []
    try:
        procs = [fte1.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", str(s)) for s in (x, y)]
        try:
            wait_until(sources_negotiating, WAIT, "the two transfers did not start")
        except AssertionError as exc:
            ended = [p.communicate(timeout=5) if p.poll() is not None else ("(running)", "") for p in procs]
            raise AssertionError(f"{exc}\ncommands: {ended}\nlast fte-logs: {last}\nA1:\n{fte1.agents['A1'].log_tail()}") from None
    finally:
        fte1.agents["A2"].resume()
    outcomes = {}
    for s, p in zip((x, y), procs):
        out, err = p.communicate(timeout=90)
        outcomes[s] = (p.returncode, out + err)
    codes = sorted(code for code, _ in outcomes.values())
    assert codes == [0, 40], outcomes
    [winner] = [s for s, (code, _) in outcomes.items() if code == 0]
    [loser_output] = [text for code, text in outcomes.values() if code == 40]
    assert "already exists" in loser_output, outcomes
    assert_same(winner, dst)
    assert part_files(data) == []
