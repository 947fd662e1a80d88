"""A flood of forged commands does not starve the agent: real agents, a real broker, a real flood.

A test client publishes forged-signature commands on A2's command topic as fast as it can for a few seconds
(requesters A2 does not trust, unsigned commands, garbage signatures). Meanwhile a trusted requester pings A2
and a transfer A1 -> A2 runs. The pings are answered, the transfer completes with identical content, and
A2's answers to the forgeries (replies and `not_authorized` events, counted on the broker) stay within the
refusal bound, with the log saying how many were dropped (docs/authority.md, "Floods of commands").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import aiomqtt
import pytest

from agent.command_lane import REFUSAL_BURST, REFUSAL_RATE
from tests.support.agents import FteEnv, running_agents, sandbox_dir
from tests.support.brokers import MosquittoProcess, split_url
from tests.support.subscription import Subscription

pytestmark = pytest.mark.timeout(240)

PREFIX = "SYSTEM.FTE"
FLOOD_SECONDS = 6.0


@pytest.fixture
def pair(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[tuple[FteEnv, Path]]:
    data = sandbox_dir(tmp_path, "in", "out")
    # as fte-create-agent makes them: authority checking on, the test's user trusted
    with running_agents(tmp_path / "home", mosquitto.ensure_running().url, data, transferAckTimeout=5000) as env:
        yield env, data


def forgeries(n: int) -> list[bytes]:
    """Commands that look signed but are not by anyone A2 trusts (and some that are not signed at all)."""
    out = []
    for i in range(n):
        cmd: dict[str, Any] = {"kind": "ping" if i % 3 else "cancel_transfer", "request_id": f"forged{i}",
                               "reply_to": "attacker"}
        if cmd["kind"] == "cancel_transfer":
            cmd["transfer_id"] = secrets.token_hex(24)
        if i % 5:
            cmd.update(requester="mallory" if i % 2 else f"nobody{i % 97}", nonce=secrets.token_hex(16),
                       sent_at="2030-01-01T00:00:00+00:00",
                       signature=base64.b64encode(secrets.token_bytes(64)).decode())
        out.append(json.dumps(cmd).encode())
    return out


class Flood:
    """Publishes `payloads` (cycling) on `topic` as fast as one client can, on a thread: for `seconds`, and
    until it sent `at_least` and `until()` holds (on a loaded machine one client may take longer than
    `seconds` for them, and a transfer longer to start), but for `seconds` + 60 at most."""

    def __init__(self, url: str, topic: str, payloads: list[bytes], seconds: float, at_least: int = 0,
                 until: Callable[[], bool] = lambda: True) -> None:
        self.url, self.topic, self.payloads, self.seconds = url, topic, payloads, seconds
        self.at_least, self.until = at_least, until
        self.sent = 0
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Flood":
        self._thread.start()
        assert self.started.wait(20), f"the flood did not start: {self.error}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(self.seconds + 120)
        assert not self._thread.is_alive(), "the flood did not end"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
            self.started.set()

    async def _main(self) -> None:
        host, port = split_url(self.url)
        async with aiomqtt.Client(host, port, identifier=f"attacker-{os.getpid()}", timeout=30,
                                  max_inflight_messages=1000) as c:
            c.pending_calls_threshold = 1 << 20
            end, cap = time.monotonic() + self.seconds, time.monotonic() + self.seconds + 60
            i = 0
            while time.monotonic() < end or ((i < self.at_least or not self.until()) and time.monotonic() < cap):
                batch = [self.payloads[(i + k) % len(self.payloads)] for k in range(200)]
                await asyncio.gather(*(c.publish(self.topic, p, qos=1) for p in batch))
                i += len(batch)
                self.sent = i
                self.started.set()


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_forged_command_flood_leaves_pings_and_transfers_working(pair: tuple[FteEnv, Path]) -> None:
    env, data = pair
    a2 = env.agents["A2"]
    src = data / "in" / "during_flood.bin"
    src.write_bytes(os.urandom(48 * 1024 * 1024))
    replies: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_reply(topic: str, payload: bytes) -> None:
        with lock:
            replies.append(json.loads(payload))

    started: list[bool] = []  # for the transfer's started event: was the flood still running?
    flood: Flood | None = None

    def on_event(topic: str, payload: bytes) -> None:
        doc = json.loads(payload)
        if doc.get("action") == "not_authorized":
            with lock:
                events.append(doc)

    def on_transfer(topic: str, payload: bytes) -> None:
        if json.loads(payload).get("action") == "started":
            started.append(flood is not None and flood.running())

    with Subscription(env.broker_url, f"{PREFIX}/Replies/attacker", on_reply), \
            Subscription(env.broker_url, f"{PREFIX}/Log/A2/+", on_event), \
            Subscription(env.broker_url, f"{PREFIX}/Log/A1/+", on_transfer):
        t0 = time.monotonic()
        with Flood(env.broker_url, f"{PREFIX}/Commands/A2", forgeries(3000), FLOOD_SECONDS,
                   at_least=3000, until=lambda: bool(started)) as flood:
            assert flood is not None
            transfer = env.popen("create-transfer", "-sa", "A1", "-da", "A2", "-df",
                                 str(data / "out" / "during_flood.bin"), "-w", "120", "--json", str(src))
            pings = []
            while flood.running():
                pings.append(env.run("ping-agent", "A2", "-w", "5", timeout=60))
            sent_by_then = flood.sent
        out, err = transfer.communicate(timeout=180)
        # the agent's refusals of what was already delivered to it: its bound covers the whole time since the
        # flood began, until a ping sent now (behind every forgery, on the same topic) is answered
        assert env.run("ping-agent", "A2", "-w", "30", timeout=60).returncode == 0, a2.log_tail()
        elapsed = time.monotonic() - t0
    assert flood.sent >= 3000, flood.sent

    # (a) a trusted requester's pings were answered while the flood ran
    assert pings, "the flood ended before the first ping"
    for p in pings:
        assert p.returncode == 0, f"{p}\n(sent {sent_by_then} forgeries by then)\n--- A2 log:\n{a2.log_tail()}"
    # (b) the transfer that started during the flood completed, with identical content
    assert started == [True], started
    assert transfer.returncode == 0, f"{out}{err}\n--- A2 log:\n{a2.log_tail()}"
    assert json.loads(out.strip().splitlines()[-1])["result_code"] == 0
    assert sha(data / "out" / "during_flood.bin") == sha(src)
    # (c) answers to the forgeries within the bound: no amplification
    bound = REFUSAL_BURST + REFUSAL_RATE * elapsed + 1
    with lock:
        n_replies, n_events = len(replies), list(events)
    assert all(r["ok"] is False for r in replies)
    assert 0 < n_replies <= bound, f"{n_replies} replies to {flood.sent} forgeries in {elapsed:.1f} s"
    assert 0 < len(n_events) <= bound, f"{len(n_events)} events for {flood.sent} forgeries in {elapsed:.1f} s"
    # ... and what was not answered is counted: in the events and in the log
    assert sum(e["suppressed"] + e["dropped"] for e in n_events) > 0, n_events[-3:]
    log = a2.log.read_text(errors="replace")
    dropped = [int(n) for n in re.findall(r"command flood: [^,]*, (\d+) command\(s\) dropped unread", log)]
    assert dropped and sum(dropped) > 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    print(f"{flood.sent} forgeries in {FLOOD_SECONDS:g} s; {n_replies} replies, {len(n_events)} events; "
          f"{sum(dropped)} dropped unread (logged)")
