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


@pytest.mark.parametrize("size", [1000, 300_000], ids=["bundle", "chunks"])
def test_the_file_is_durable_before_it_is_reported_done(tmp_path: Path, broker_url: str, size: int) -> None:
    why = _strace_usable()
    if why:
        unavailable(why)
    data = tmp_path / "data"
    (data / "out").mkdir(parents=True)
    env = FteEnv(tmp_path / "fte_home", broker_url)
    trace = tmp_path / "a2.strace"
    try:
        for name in ("A1", "A2"):
            env.create_agent(name, sandbox=data, **PROPS)
        env.start_agent("A1")
        # -y: descriptors with their paths; sendto/write: the MQTT publish of the result, found by its text
        env.start_agent("A2", timeout=60, wrapper=[
            shutil.which("strace") or "/usr/bin/strace", "-f", "-qq", "-y", "-s", "4096", "-o", str(trace),
            "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,sendto,sendmsg,write"])
        src = data / "src.bin"
        src.write_bytes(os.urandom(size))
        dst = data / "out" / "file.bin"
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dst), "-w", "60", str(src))
        assert r.returncode == 0, r
        out = re.escape(str(data / "out"))
        wanted = [("fsync(part)", rf"\bf(?:data)?sync\(\d+<{out}/file\.bin\.part>\)"),
                  ("rename", r"\brename(?:at2?)?\(.*file\.bin\.part.*file\.bin"),
                  ("fsync(dir)", rf"\bf(?:data)?sync\(\d+<{out}>\)"),
                  ("report", r"\b(?:sendto|sendmsg|write)\(\d+<(?:TCP|socket).*file_result")]

        def order() -> list[int] | None:
            lines = trace.read_text(errors="replace").splitlines() if trace.exists() else []
            at = [next((i for i, line in enumerate(lines) if re.search(rx, line)), -1) for _, rx in wanted]
            return at if min(at) >= 0 else None

        at = wait_until(order, 20, f"the strace of A2 shows {[w for w, _ in wanted]}")
        assert at == sorted(at), f"order in the trace: {dict(zip((w for w, _ in wanted), at))}"
    finally:
        status = env.status("A2")
        env.stop_all()
        if status and status.get("pid"):  # the agent under strace: stop it too, not only strace
            try:
                os.kill(int(status["pid"]), 15)
            except OSError:
                pass
