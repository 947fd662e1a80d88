"""Strings from the broker never reach the terminal raw: no control character, no rich markup.

A file name, a job name or a status field may hold terminal escape sequences (ESC [2J clears the screen,
ESC ] 0;... BEL retitles the window, C1 controls, bidi overrides that reorder what is shown). Real agents
over Mosquitto transfer a file with such a name; every command that shows it (or a status field with an
ESC) runs as a process, and its stdout must hold no control character but the newline, and must show the
escape visibly (`\\x1b`), so that the operator sees what is there instead of having it executed.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
import unicodedata
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.agents import FteEnv, Result, running_agents, sandbox_dir, stop_command, wait_until
from tests.support.brokers import MosquittoProcess, split_url

pytestmark = pytest.mark.timeout(180)

# a screen clear, a window title (OSC ... BEL), a colour, rich markup, a right-to-left override, a C1 CSI,
# DEL, a carriage return and a backspace
EVIL = "evil\x1b[2J\x1b]0;title\x07\x1b[31m[bold]red[blink]\u202egnp.exe\x9b\x7f\r\x08.txt"
EVIL_JOB = "job\x1b[5m\x1b]0;job-title\x07"
FAKE_AGENT = "EVIL9"
EVIL_HOST = "host\x1b[2J\x1b]0;owned\x07[blink]x[/]"
BIDI = {"\u061c", "\u200e", "\u200f", "\u2028", "\u2029", *(chr(c) for c in range(0x202A, 0x202F)),
        *(chr(c) for c in range(0x2066, 0x206A))}


def unsafe_characters(text: str) -> list[str]:
    """Every character in `text` a terminal would act on rather than show (the newline excepted)."""
    return [repr(ch) for ch in text if ch != "\n" and (unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
                                                       or ch in BIDI)]


def assert_safe(r: Result, *visible: str) -> None:
    assert r.returncode == 0, str(r)
    assert "\x1b" not in r.stdout, f"raw ESC on stdout of {' '.join(r.args[:2])}:\n{r.stdout!r}"
    bad = unsafe_characters(r.stdout)
    assert not bad, f"control characters {bad} on stdout of {' '.join(r.args[:2])}:\n{r.stdout!r}"
    for v in visible:
        assert v in r.stdout, f"{v!r} not shown by {' '.join(r.args[:2])}:\n{r.stdout}"


@pytest.fixture
def env(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[tuple[FteEnv, Path]]:
    data = sandbox_dir(tmp_path, "in", "out")
    url = mosquitto.ensure_running().url
    try:
        with running_agents(tmp_path / "home", url, data, transferAckTimeout=2000) as e:
            yield e, data
    finally:
        _publish(url, f"SYSTEM.FTE/Agents/{FAKE_AGENT}", b"")


def _publish(url: str, topic: str, payload: bytes) -> None:
    import asyncio

    import aiomqtt

    host, port = split_url(url)

    async def go() -> None:
        async with aiomqtt.Client(host, port, identifier=f"evil-{secrets.token_hex(4)}") as c:
            await c.publish(topic, payload, qos=1, retain=True)

    asyncio.run(asyncio.wait_for(go(), 20))


class TextFollower:
    """`fte-logs --follow` (text, as a person reads it) left running; its stdout kept whole."""

    def __init__(self, e: FteEnv) -> None:
        self.proc = e.popen("logs", "--follow", "-a", "A1")
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.text: list[str] = []

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.put(line)

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return False
            self.text.append(line)
            if needle in line:
                return True
        return False

    def close(self) -> str:
        stop_command(self.proc)
        self.thread.join(5)
        while not self.lines.empty():
            self.text.append(self.lines.get_nowait())
        return "".join(self.text)


def test_file_names_job_names_and_status_fields_are_escaped(env: tuple[FteEnv, Path]) -> None:
    e, data = env
    evil = data / "in" / EVIL
    evil.write_text("payload")
    (data / "in" / "plain.txt").write_text("plain")

    follower = TextFollower(e)
    try:
        # the follower's subscription is live once a real transfer of ours shows up in it (bounded)
        def followed() -> bool:
            r = e.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), "-de", "overwrite",
                      "-w", "30", "--json", str(data / "in" / "plain.txt"))
            assert r.returncode == 0, str(r)
            # a line that comes later is read by the next attempt's wait (which looks for its own transfer)
            return follower.wait_for(r.json()["transfer_id"][:12], 2)

        wait_until(followed, 60, "fte-logs --follow never showed a transfer")

        r = e.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), "-jn", EVIL_JOB,
                  "-w", "30", "--json", str(evil))
        assert r.returncode == 0, str(r)
        tid = r.json()["transfer_id"]
        assert (data / "out" / EVIL).read_text() == "payload"
        # sent again without -de overwrite: it fails, and the failure names the file
        again = e.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), "-w", "30", str(evil))
        assert again.returncode == 40, str(again)
        assert "\x1b" not in again.stdout + again.stderr and "\\x1b[2J" in again.stdout, str(again)
        assert follower.wait_for("BFGIO0006E", 30), "fte-logs --follow did not show the refused file"
    finally:
        followed_text = follower.close()
    assert_safe(Result(["fte-logs", "--follow"], 0, followed_text, ""), "\\x1b[2J", "\\x1b]0;title\\x07",
                "\\u202e", "\\x9b", "[bold]red[blink]")

    shown = e.run("show-transfer", tid, "-a", "A1")
    assert_safe(shown, "\\x1b[2J", "\\x1b]0;title\\x07", "[bold]red[blink]", "\\u202e", "\\x9b", "\\x7f",
                "\\x0d", "\\x08", "job\\x1b[5m")
    shown_dst = e.run("show-transfer", tid, "-a", "A2")
    assert_safe(shown_dst, "\\x1b[2J")
    # --json stays JSON that decodes to the very name, with every control character escaped
    as_json = e.run("show-transfer", tid, "-a", "A1", "--json")
    assert_safe(as_json)
    assert json.loads(as_json.stdout)[0]["files"][0]["source"] == str(evil)
    assert_safe(e.run("list-transfers"))
    assert_safe(e.run("list-transfers", "--json"))
    assert_safe(e.run("logs"))
    # the agents' own logs (what tail -f shows an operator) hold no control character either
    for agent in e.agents.values():
        logged = agent.log.read_text(errors="replace")
        controls = sorted({c for c in logged if (ord(c) < 32 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f})
        assert not controls, f"agent {agent.name}'s log holds {controls!r}:\n{agent.log_tail()}"

    # a monitor on a directory, a template and a schedule that carry the name: their listings
    mon_dir = data / f"mon\x1b[2J{EVIL}"
    mon_dir.mkdir()
    r = e.run("create-monitor", "-ma", "A1", "-mn", "m1", "-md", str(mon_dir), "-tr", "match,*.never",
              "-pi", "1", "-pu", "hours", "-da", "A2", "-dd", str(data / "out"), "-jn", EVIL_JOB)
    assert r.returncode == 0, str(r)
    for args in (("-v",), ("--json",)):
        listed = wait_until(lambda: (x := e.run("list-monitors", "-ma", "A1", *args)).stdout.count("m1") and x,
                            30, "the monitor is not listed")
        assert_safe(listed, *(("\\x1b[2J",) if args == ("-v",) else ()))
    r = e.run("create-template", "-tn", "evil", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"),
              "-jn", EVIL_JOB, str(evil))
    assert r.returncode == 0, str(r)
    assert_safe(wait_until(lambda: (x := e.run("list-templates", "-v")).stdout.count("x1b") and x, 30,
                           "the template is not listed"), "\\x1b[2J")
    assert_safe(e.run("list-templates", "--json"))
    r = e.run("create-transfer", "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), "-ss", "2099-01-01T00:00",
              str(evil))
    assert r.returncode == 0, str(r)
    assert_safe(wait_until(lambda: (x := e.run("list-scheduled-transfers")).stdout.count("x1b") and x, 30,
                           "the schedule is not listed"), "\\x1b[2J")
    assert_safe(e.run("list-scheduled-transfers", "--json"))

    # a status field with ESC (anyone on the broker can retain one for a name nobody runs); STOPPED, so that
    # the commands that ask the running agents (fte top) do not wait 5 s for an answer from nobody
    status = {"agent": FAKE_AGENT, "status": "STOPPED", "time": "2026-01-01T00:00:00Z", "host": EVIL_HOST,
              "version": "1\x1b[2J", "broker_check": "ok\x1b]0;t\x07", "source_transfers": {}}
    _publish(e.broker_url, f"SYSTEM.FTE/Agents/{FAKE_AGENT}", json.dumps(status).encode())
    assert_safe(e.run("show-agent-details", FAKE_AGENT), "host\\x1b[2J", "[blink]x[/]")
    assert_safe(e.run("show-agent-details", FAKE_AGENT, "--json"))
    assert_safe(e.run("list-agents", FAKE_AGENT), "host\\x1b[2J")
    assert_safe(e.run("list-agents"), "host\\x1b[2J", "A1")
    assert_safe(e.run("list-agents", "--json"))
    assert_safe(e.run("top", "--once"), "host\\x1b[2J")
