"""What the destination does on its file system: names near NAME_MAX, and durability before the report.

* A destination name of 255 bytes (NAME_MAX) arrives: its part file has a shortened name
  (agent/destination.py part_name), by bundle and by chunks.
* Durable before done: run under strace, the destination agent fsyncs the part file, renames it, fsyncs
  the directory, and only then publishes the file's result (docs/configuration.md, agentFsync).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import FteEnv, running_agents, sandbox_dir, wait_until
from tests.support.ci import unavailable

pytestmark = pytest.mark.timeout(180)

PROPS = {"agentChunkSize": 65536, "transferAckTimeout": 5000, "transferAckTimeoutRetries": 3}


@pytest.fixture
def fte(tmp_path: Path, broker_url: str) -> Iterator[FteEnv]:
    with running_agents(tmp_path / "fte_home", broker_url, sandbox_dir(tmp_path), **PROPS) as env:
        yield env


@pytest.mark.parametrize("size", [1000, 300_000], ids=["bundle", "chunks"])
def test_a_destination_name_of_255_bytes_arrives(fte: FteEnv, tmp_path: Path, size: int) -> None:
    src = tmp_path / "data" / "src.bin"
    content = os.urandom(size)
    src.write_bytes(content)
    name = "é" * 120 + "n" * 15  # 255 bytes, 135 characters
    assert len(os.fsencode(name)) == 255
    dst = tmp_path / "data" / "out" / name
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "60", str(src))
    assert r.returncode == 0, r
    assert dst.read_bytes() == content
    assert not list((tmp_path / "data").rglob("*.part"))


def _strace_usable() -> str | None:
    strace = shutil.which("strace") or ("/usr/bin/strace" if os.path.exists("/usr/bin/strace") else None)
    if strace is None:
        return "strace is not installed"
    p = subprocess.run([strace, "-f", "-o", os.devnull, "true"], capture_output=True, text=True)
    if p.returncode != 0:
        return f"strace cannot trace here (ptrace not permitted?): {p.stderr.strip()[-200:]}"
    return None


def _completed_at(lines: list[str], rx: str) -> int:
    """The line where the first system call matching `rx` returned: with -f, a call that another thread's
    interrupts is split into `name(args <unfinished ...>` and, later, `PID <... name resumed>) = 0`."""
    for i, line in enumerate(lines):
        if re.search(rx, line):
            if "<unfinished ...>" not in line:
                return i
            pid = line.split()[0]
            return next((j for j in range(i + 1, len(lines))
                         if lines[j].startswith(pid + " ") and "resumed>" in lines[j]), -1)
    return -1


@pytest.mark.parametrize("files,size", [(1, 1000), (1, 300_000), (8, 1000)],
                         ids=["bundle", "chunks", "bundle of 8"])
def test_the_file_is_durable_before_it_is_reported_done(tmp_path: Path, broker_url: str, files: int,
                                                        size: int) -> None:
    """Each file: fsync of its part file (returned), its rename, the fsync of its directory, then the report.
    With 8 files in one bundle their fsyncs run concurrently (agent/durability.py): the order holds for each."""
    why = _strace_usable()
    if why:
        unavailable(why)
    data = tmp_path / "data"
    (data / "out").mkdir(parents=True)
    env = FteEnv(tmp_path / "fte_home", broker_url)
    trace = tmp_path / "a2.strace"
    try:
        for name in ("A1", "A2"):
            # the report is found in the trace by its text: encrypted (the default) it has none to find
            env.create_agent(name, sandbox=data, agentEncryption="false", **PROPS)
        env.start_agent("A1")
        # -y: descriptors with their paths; sendto/write: the MQTT publish of the result, found by its text
        env.start_agent("A2", timeout=60, wrapper=[
            shutil.which("strace") or "/usr/bin/strace", "-f", "-qq", "-y", "-s", "4096", "-o", str(trace),
            "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,sendto,sendmsg,write"])
        if files == 1:
            src = data / "src.bin"
            src.write_bytes(os.urandom(size))
            out, names = data / "out", ["file.bin"]
            args = ["-df", str(out / "file.bin"), str(src)]
        else:
            src = data / "set"
            src.mkdir()
            names = [f"f{i}.bin" for i in range(files)]
            for n in names:
                (src / n).write_bytes(os.urandom(size))
            out = data / "out" / "set"
            args = ["-dd", str(data / "out"), "-r", str(src)]
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", *args, "-w", "60")
        assert r.returncode == 0, r
        assert sorted(p.name for p in out.iterdir()) == sorted(names)
        d = re.escape(str(out))
        report = r"\b(?:sendto|sendmsg|write)\(\d+<(?:TCP|socket).*file_result"
        wanted = {n: [("fsync(part)", rf"\bf(?:data)?sync\(\d+<{d}/{re.escape(n)}\.part>[) ]"),
                      ("rename", rf"\brename(?:at2?)?\(.*{re.escape(n)}\.part.*{re.escape(n)}"),
                      ("fsync(dir)", rf"\bf(?:data)?sync\(\d+<{d}>[) ]"),
                      ("report", report)] for n in names}

        def order() -> dict[str, list[int]] | None:
            lines = trace.read_text(errors="replace").splitlines() if trace.exists() else []
            at = {n: [_completed_at(lines, rx) for _, rx in w] for n, w in wanted.items()}
            return at if min(min(a) for a in at.values()) >= 0 else None

        at = wait_until(order, 20, f"the strace of A2 shows {[w for w, _ in wanted[names[0]]]} for each file")
        for n, a in at.items():
            assert a == sorted(a), f"order in the trace for {n}: {dict(zip((w for w, _ in wanted[n]), a))}"
    finally:
        # the agent under strace first (its own pid is in its status): strace, given -o and a command, blocks
        # SIGTERM and ends when the agent does; stop_all's SIGTERM to strace alone waited out its 15 s for nothing
        status = env.status("A2")
        if status and status.get("pid"):
            try:
                os.kill(int(status["pid"]), signal.SIGTERM)
            except OSError:
                pass
        env.stop_all()
