"""Helpers of the fault tests: two agents as real processes, optional TCP proxies, a log watcher.

* :class:`FaultEnv` is an :class:`FteEnv` whose agents may each reach the broker through a URL of their
  own (a :class:`ThreadedTcpProxy` in front of the broker), so that a test can cut one agent off.
  (FteEnv exports FTE_BROKER_URL to its agents, and that variable overrides brokerUrl in
  agent.properties; so each agent is started with FTE_BROKER_URL set to *its* URL.)
* :class:`LogWatcher` subscribes to ``<prefix>/Log/#`` in-process (paho, fast reconnect) and keeps
  every event with its arrival time; tests wait on it instead of sleeping.
* :class:`PartWatcher` helpers: wait until a destination ``.part`` file has grown past N bytes.

Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho

from tests.support.agents import AgentProcess, FteEnv, Result, script
from tests.support.brokers import BrokerProcess, ThreadedTcpProxy, split_url, wait_for

MiB = 1024 * 1024
PREFIX = "SYSTEM.FTE"

# Short timers: stalls are detected within ~2 s, the link notices a dead broker within a few seconds.
FAST = dict(transferAckTimeout=1000, transferAckTimeoutRetries=2, brokerKeepalive=5)


# -------------------------------------------------------------------------------------------- files


def make_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path` (once per test); return its sha256."""
    h = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            fh.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def ts(iso: str) -> float:
    """An event's ISO 8601 time (``...Z``) as a Unix timestamp."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def part_size(dest: Path) -> int:
    try:
        return part_of(dest).stat().st_size
    except OSError:
        return 0


def part_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.part"))


# -------------------------------------------------------------------------------------------- watcher


class LogWatcher:
    """All transfer log events on the broker, as a user subscribed to ``<prefix>/Log/#`` sees them.

    Runs paho's network loop in a thread; reconnects every 0.1 s after a broker outage and
    resubscribes. `connects` counts successful subscriptions, so a test can wait until the watcher is
    back before it lets the agents reconnect (then no event can slip past while it is away).
    """

    def __init__(self, url: str, topic: str = f"{PREFIX}/Log/#") -> None:
        self.host, self.port = split_url(url)
        self.topic = topic
        self.events: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # wall time of arrival of each event
        self.connects = 0
        self._cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fte-test-watch-{uuid.uuid4().hex[:8]}",
                                  clean_session=True)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10) -> "LogWatcher":
        self.client.connect_async(self.host, self.port, keepalive=5)
        self.client.loop_start()
        self.wait_connected(1, timeout)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *args: Any) -> None:
        with self._cond:
            self.connects += 1
            self._cond.notify_all()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            ev = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(ev, dict):
            return
        ev["_topic"] = msg.topic
        with self._cond:
            self.events.append(ev)
            self.arrivals.append(time.time())
            self._cond.notify_all()

    def arrival(self, ev: dict[str, Any]) -> float:
        """Wall time at which event `ev` (one of `events`) reached the watcher."""
        with self._cond:
            return next(t for e, t in zip(self.events, self.arrivals) if e is ev)

    def wait_connected(self, count: int, timeout: float = 15) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.connects >= count, timeout):
                raise AssertionError(f"log watcher: not (re)subscribed {count} time(s) within {timeout} s")

    def of(self, tid: str, action: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("transfer_id") == tid and (action is None or e.get("action") == action)]

    def wait(self, tid: str, action: str, timeout: float, where: Callable[[dict[str, Any]], bool] = lambda e: True,
             context: Callable[[], str] = lambda: "") -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("transfer_id") == tid and e.get("action") == action
                         and where(e)), None)

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        if not found:
            seen = [(e.get("action"), e.get("state"), e.get("message")) for e in self.of(tid)]
            raise AssertionError(f"no {action!r} event for transfer {tid[:12]} within {timeout} s; "
                                 f"events seen: {seen}\n{context()}")
        return found

    def wait_any(self, action: str, timeout: float) -> dict[str, Any]:
        with self._cond:
            found = self._cond.wait_for(lambda: next((e for e in self.events if e.get("action") == action), None),
                                        timeout)
        if not found:
            raise AssertionError(f"no {action!r} event within {timeout} s")
        return found


# -------------------------------------------------------------------------------------------- agents


@dataclass
class FaultEnv(FteEnv):
    """FteEnv whose agents may each use a broker URL of their own (e.g. a proxy in front of the broker)."""

    agent_urls: dict[str, str] = field(default_factory=dict)
    proxies: dict[str, ThreadedTcpProxy] = field(default_factory=dict)
    watchers: list[LogWatcher] = field(default_factory=list)
    popens: list[subprocess.Popen[str]] = field(default_factory=list)

    def add_agent(self, name: str, sandbox: Path, proxy: bool = False, **properties: Any) -> Path:
        """Create agent `name` (FAST timers unless overridden); with `proxy`, it connects through its own proxy."""
        props = {**FAST, **properties}
        path = self.create_agent(name, sandbox=sandbox, **props)
        if proxy:
            p = ThreadedTcpProxy(*split_url(self.broker_url)).start()
            self.proxies[name] = p
            self.agent_urls[name] = p.url
            text = path.read_text()
            path.write_text("\n".join(f"brokerUrl={p.url}" if line.startswith("brokerUrl=") else line
                                      for line in text.splitlines()) + "\n")
        return path

    def agent_env(self, name: str) -> dict[str, str]:
        env = self.env
        env["FTE_BROKER_URL"] = self.agent_urls.get(name, self.broker_url)
        return env

    def start_agent(self, name: str, wait_ready: bool = True, timeout: float = 20,
                    fsize: int | None = None) -> AgentProcess:
        """`fsize`: the agent may write no file beyond this many bytes (RLIMIT_FSIZE: a write past it fails with
        EFBIG, as a full disk or a quota fails one; Python ignores SIGXFSZ)."""
        log = self.agent_dir(name) / "test-agent.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            fh.write(f"=== start at {time.strftime('%H:%M:%S')} ===\n".encode())
            fh.flush()
            limit = None if fsize is None else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize)))
            proc = subprocess.Popen([script("start-agent"), name, "-F"], env=self.agent_env(name), stdout=fh,
                                    stderr=fh, stdin=subprocess.DEVNULL, preexec_fn=limit)
        agent = AgentProcess(name, proc, log)
        self.agents[name] = agent
        if wait_ready:
            self.wait_status(name, {"READY", "ACTIVE"}, timeout=timeout, pid=proc.pid, process=agent)
        return agent

    def popen(self, verb: str, *args: str) -> subprocess.Popen[str]:
        p = super().popen(verb, *args)
        self.popens.append(p)
        return p

    def watch(self) -> LogWatcher:
        w = LogWatcher(self.broker_url).start()
        self.watchers.append(w)
        return w

    def submit(self, *args: str, expect: int = 0) -> str:
        """`fte-create-transfer ... --json` without waiting; returns the transfer id."""
        r = self.run("create-transfer", *args, "--json", timeout=60)
        assert r.returncode == expect, str(r)
        return str(r.json()["transfer_id"])

    def logs(self) -> str:
        return "\n".join(f"--- agent {n} ---\n{a.log_tail(60)}" for n, a in self.agents.items())

    def close(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=5)
            except Exception:
                pass
        for a in self.agents.values():
            if a.alive():
                a.resume()
                a.kill()
        for w in self.watchers:
            try:
                w.stop()
            except Exception:
                pass
        for p in self.proxies.values():
            p.stop()


def finish(proc: subprocess.Popen[str], timeout: float, env: FaultEnv | None = None) -> Result:
    """Wait (bounded) for a command left running; its exit code, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
        raise AssertionError(f"{proc.args} still running after {timeout} s\nstdout: {out}\nstderr: {err}\n"
                             + (env.logs() if env else ""))
    return Result(list(proc.args), proc.returncode, out, err)  # type: ignore[arg-type]


def tid_from_json_stdout(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def wait_part(dest: Path, at_least: int, timeout: float, env: FaultEnv | None = None) -> int:
    """Until the destination's part file holds at least `at_least` bytes (the transfer is in flight)."""
    return wait_for(lambda: part_size(dest) >= at_least and part_size(dest), timeout, interval=0.01,
                    message=lambda: f"{part_of(dest)} did not reach {at_least} bytes (has {part_size(dest)})\n"
                                    + (env.logs() if env else ""))


def restart_broker_behind_proxies(broker: BrokerProcess, env: FaultEnv, watcher: LogWatcher, down: float) -> None:
    """Kill the broker, keep it down `down` seconds, restart it; the agents (behind their proxies) get back
    only after the watcher has resubscribed, so that no log event is published while nobody listens."""
    before = watcher.connects
    t0 = time.monotonic()
    broker.kill()  # the agents see their connections drop (the proxies pass the broker's end on) ...
    for p in env.proxies.values():
        p.cut()  # ... and cannot reconnect until the watcher is back
    time.sleep(max(0.0, down - (time.monotonic() - t0)))
    broker.restart()
    watcher.wait_connected(before + 1)
    for p in env.proxies.values():
        p.restore()


class FollowLogs:
    """`fte-logs --follow --json` left running, its JSON lines collected by a reader thread.

    `ready()` publishes probe events on a Log topic until the command prints one, so the test knows
    it is subscribed (no sleeping and hoping)."""

    def __init__(self, env: FaultEnv, *args: str) -> None:
        self.env = env
        self.proc = env.popen("logs", "--follow", "--json", *args)
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def ready(self, agent: str = "PROBE", timeout: float = 20) -> None:
        """`agent`: publish the probes as this agent's (when the command filters with -a AGENT)."""
        from tests.support.agents import signed_probe

        probe = f"probe-{uuid.uuid4().hex[:8]}"
        topic = f"{PREFIX}/Log/{agent}/{probe}"
        payload = signed_probe(self.env, agent, topic, json.dumps({"transfer_id": probe, "action": "probe"}).encode())
        c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        c.connect(*split_url(self.env.broker_url))
        c.loop_start()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                c.publish(topic, payload, qos=1)
                with self._cond:
                    if self._cond.wait_for(lambda: any(e.get("transfer_id") == probe for e in self.events), 0.3):
                        return
                if self.proc.poll() is not None:
                    raise AssertionError(f"fte-logs --follow exited: {self.proc.communicate()}")
            raise AssertionError(f"fte-logs --follow printed nothing within {timeout} s")
        finally:
            c.loop_stop()
            c.disconnect()

    def of(self, tid: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("transfer_id") == tid]

    def wait(self, tid: str, action: str, timeout: float) -> dict[str, Any]:
        with self._cond:
            found = self._cond.wait_for(lambda: next((e for e in self.events if e.get("transfer_id") == tid
                                                      and e.get("action") == action), None), timeout)
        if not found:
            raise AssertionError(f"fte-logs --follow: no {action!r} event for {tid[:12]} within {timeout} s; "
                                 f"saw {[e.get('action') for e in self.of(tid)]}")
        return found
