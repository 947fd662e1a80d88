"""Real MQTT brokers for tests, a fault-injecting TCP proxy, and bounded waits.

* :class:`MosquittoProcess` runs the ``mosquitto`` binary with a generated config on a port of its own;
  :class:`AmqttProcess` runs our embedded amqtt broker (``python -m agent.embedded_broker``) the same
  way. Both can be killed (SIGKILL), stopped (SIGTERM), frozen (SIGSTOP/SIGCONT) and restarted on the
  same port, so fault tests exercise real broker outages. Tests never touch the machine's own broker
  on 1883.
* :class:`TcpProxy` sits between a client and a broker and cuts or freezes the network path;
  :class:`ThreadedTcpProxy` is the same proxy on its own event loop thread, for synchronous tests.
* :func:`wait_for` / :func:`async_wait_for` poll a condition with a hard deadline.

Ports: :func:`free_port` picks ports *below* the kernel's ephemeral range, so an outgoing client
connection can never be given a broker's port while the broker is down between kill and restart.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import itertools
import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "AmqttProcess",
    "BrokerProcess",
    "BrokerStartError",
    "MosquittoProcess",
    "TcpProxy",
    "ThreadedTcpProxy",
    "async_wait_for",
    "find_mosquitto",
    "free_port",
    "mqtt_probe",
    "split_url",
    "wait_for",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------
# waiting
# ---------------------------------------------------------------------------------------------------

Message = str | Callable[[], str]


def _render(message: Message) -> str:
    return message() if callable(message) else message


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: Message = "condition not met",
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` seconds pass.

    Raises AssertionError with ``message`` (a string, or a callable evaluated only on failure, e.g.
    to attach a log tail) on timeout. The predicate is always evaluated at least once, and once more
    at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{_render(message)} (waited {timeout:.1f}s)")
        time.sleep(min(interval, remaining))


async def async_wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float,
    interval: float = 0.02,
    message: Message = "condition not met",
) -> T:
    """Async :func:`wait_for`; ``predicate`` may be a plain function or return an awaitable.

    Prefer awaiting a real event (``asyncio.wait_for(event.wait(), t)``) when there is one.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"{_render(message)} (waited {timeout:.1f}s)")
        await asyncio.sleep(min(interval, remaining))


# ---------------------------------------------------------------------------------------------------
# ports and probes
# ---------------------------------------------------------------------------------------------------

_handed_out: set[int] = set()
_port_lock = threading.Lock()
_rng = random.Random(int.from_bytes(os.urandom(8), "big"))


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux default


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # No SO_REUSEADDR: a port with lingering TIME_WAIT connections is refused too.
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on, outside the kernel's ephemeral range when possible.

    Ports are chosen at random (so parallel test processes rarely collide) and never handed out twice
    by this process.
    """
    lo, hi = _ephemeral_range()
    if lo - 1 >= 20000:
        candidates = range(15000, lo)
    elif hi + 1 <= 64000:
        candidates = range(hi + 1, 65535)
    else:
        candidates = range(0)
    with _port_lock:
        for _ in range(200 if candidates else 0):
            port = _rng.choice(candidates)
            if port not in _handed_out and _can_bind(host, port):
                _handed_out.add(port)
                return port
        for _ in range(50):  # fall back to the OS's choice
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free TCP port found")


_probe_ids = itertools.count(1)


def mqtt_probe(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if an MQTT broker answers a CONNECT on host:port with a successful CONNACK.

    Uses a raw MQTT 3.1.1 CONNECT (clean session, no will) and disconnects politely.
    """
    cid = f"fte-probe-{os.getpid()}-{next(_probe_ids)}".encode()
    rest = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid  # level 4, clean, keepalive 60
    packet = b"\x10" + bytes([len(rest)]) + rest
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(packet)
            data = b""
            while len(data) < 4:
                chunk = s.recv(4 - len(data))
                if not chunk:
                    return False
                data += chunk
            ok = data[0] == 0x20 and data[1] == 0x02 and data[3] == 0x00
            try:
                s.sendall(b"\xe0\x00")  # DISCONNECT
            except OSError:
                pass
            return ok
    except OSError:  # includes socket.timeout
        return False


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (PATH, then the Debian/Ubuntu /usr/sbin location), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------
# broker processes
# ---------------------------------------------------------------------------------------------------


class BrokerStartError(RuntimeError):
    """A broker process did not come up (exited, or did not answer MQTT in time)."""


_live: weakref.WeakSet[BrokerProcess] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_live):
        try:
            broker.kill()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class BrokerProcess:
    """A broker in a subprocess on a fixed port (base class; see MosquittoProcess, AmqttProcess).

    ``start()`` returns once the broker answers an MQTT CONNECT (bounded by ``start_timeout``);
    ``restart()`` brings it back on the same port. Use as a context manager, or call ``close()``.
    """

    kind = "broker"
    default_start_timeout = 10.0

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.port = port if port else free_port(host)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"fte-{self.kind}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout if start_timeout is not None else self.default_start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.paused = False
        self._output_offsets: dict[Path, int] = {}

    # -- info ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def is_running(self) -> bool:
        """True while the process exists (also when paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    @property
    def output_path(self) -> Path:
        """stdout+stderr of the process."""
        return self.workdir / f"{self.kind}.out"

    def log_files(self) -> list[Path]:
        return [self.output_path]

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in self.log_files():
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {path.name} ---\n{tail}")
        return "\n".join(parts) if parts else "(no log output)"

    def answers(self, timeout: float = 1.0) -> bool:
        """True if the broker currently completes an MQTT CONNECT."""
        return mqtt_probe(self.host, self.port, timeout)

    # -- subclass hooks --------------------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files etc. before each spawn."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _cwd(self) -> str | None:
        return str(self.workdir)

    # -- lifecycle -------------------------------------------------------------------------------

    def _new_output_since_spawn(self) -> str:
        chunks = []
        for path in self.log_files():
            try:
                with path.open("rb") as f:
                    f.seek(self._output_offsets.get(path, 0))
                    chunks.append(f.read().decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(chunks)

    def _spawn(self) -> None:
        self._prepare()
        for path in self.log_files():
            self._output_offsets[path] = path.stat().st_size if path.exists() else 0
        with self.output_path.open("ab") as out:
            out.write(f"=== start #{self.starts + 1} at {time.strftime('%H:%M:%S')} ===\n".encode())
            out.flush()
            self.proc = subprocess.Popen(  # noqa: S603 - fixed command lines
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._cwd(),
                env=self._env(),
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which cleans up
            )
        self.paused = False
        _live.add(self)

    def start(self, timeout: float | None = None) -> BrokerProcess:
        """Spawn the broker and wait until it answers MQTT (bounded). Retries briefly while the port is
        still held by a previous instance; raises BrokerStartError with the log tail on failure."""
        if self.is_running:
            raise RuntimeError(f"{self!r} is already running")
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            self._spawn()
            outcome = self._wait_ready(deadline)
            if outcome == "ready":
                self.starts += 1
                return self
            new_output = self._new_output_since_spawn().lower()
            port_busy = "address already in use" in new_output or "errno 98" in new_output
            if outcome == "exited" and port_busy and time.monotonic() < deadline:
                time.sleep(min(0.1 * attempt, 0.5, max(0.0, deadline - time.monotonic())))
                continue
            code = self.returncode
            self._reap()
            raise BrokerStartError(
                f"{self.kind} did not start on {self.host}:{self.port} "
                f"({outcome} after {timeout:.1f}s, attempt {attempt}, exit code {code}); "
                f"command: {' '.join(self._command())}\n{self.log_tail()}"
            )

    def _wait_ready(self, deadline: float) -> str:
        interval = 0.02
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                return "exited"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed out"
            if mqtt_probe(self.host, self.port, timeout=min(1.0, max(0.05, remaining))):
                # still ours? (a process that failed to bind exits right away)
                return "ready" if self.proc.poll() is None else "exited"
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, 0.1)

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.paused = False
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the broker (a crash) and wait for it to exit. No-op if it is not running."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.paused = False
        _live.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker (clean shutdown); SIGKILL if it has not exited after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            self.paused = False
            _live.discard(self)
            return
        self.proc.send_signal(signal.SIGTERM)
        if self.paused:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.paused = False
        _live.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the broker freezes, its sockets stay open (a hung broker / silent partition)."""
        if not self.is_running:
            raise RuntimeError(f"{self!r} is not running")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if not self.is_running:
            raise RuntimeError(f"{self!r} is not running")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self, timeout: float | None = None) -> BrokerProcess:
        """Start again on the same port; if the process is still alive it is killed first."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        return self.start(timeout)

    def ensure_running(self) -> BrokerProcess:
        """Make a shared broker usable again after a test paused, stopped or killed it."""
        if self.is_running:
            if self.paused:
                self.resume()
            return self
        return self.start()

    def close(self) -> None:
        """Stop the broker and remove its work directory (if this object created it).

        Set FTE_KEEP_BROKER_LOGS=1 to keep the directory for debugging.
        """
        self.stop()
        if self._own_workdir and not os.environ.get("FTE_KEEP_BROKER_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BrokerProcess:
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.proc is None:
            state = "not started"
        elif self.proc.poll() is not None:
            state = f"exited({self.proc.returncode})"
        else:
            state = f"pid {self.proc.pid}" + (" paused" if self.paused else "")
        return f"<{type(self).__name__} {self.url} {state}>"


class MosquittoProcess(BrokerProcess):
    """The ``mosquitto`` binary with a generated configuration (anonymous, no persistence, deep queues).

    ``extra_config`` lines are appended to the generated mosquitto.conf.
    """

    kind = "mosquitto"
    default_start_timeout = 10.0

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float | None = None,
        binary: str | None = None,
        extra_config: list[str] | tuple[str, ...] = (),
        max_inflight_messages: int = 0,
        max_queued_messages: int = 100000,
    ) -> None:
        found = binary or find_mosquitto()
        if not found:
            raise FileNotFoundError("mosquitto binary not found; install mosquitto (apt install mosquitto)")
        self.binary = found
        self.extra_config = list(extra_config)
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_messages = max_queued_messages
        super().__init__(port, host=host, workdir=workdir, start_timeout=start_timeout)

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def log_files(self) -> list[Path]:
        return [self.output_path, self.log_path]

    def config_text(self) -> str:
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            "# generated by tests/support/brokers.py",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            # QoS 1/2 messages in flight per client (0 = no maximum): throughput, no waiting on acks
            f"max_inflight_messages {self.max_inflight_messages}",
            "max_inflight_bytes 0",
            # queue for each client beyond the inflight window; messages past it would be dropped
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            "sys_interval 0",
            # when started as root, mosquitto would switch to user 'mosquitto' and could not write here
            f"user {user}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.config_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]


class AmqttProcess(BrokerProcess):
    """Our embedded amqtt broker as a real process: ``python -m agent.embedded_broker --port N``."""

    kind = "amqtt"
    default_start_timeout = 20.0  # a cold Python start importing amqtt on a slow CI box

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float | None = None,
        python: str | None = None,
        log_level: str = "WARNING",
    ) -> None:
        self.python = python or sys.executable
        self.log_level = log_level
        super().__init__(port, host=host, workdir=workdir, start_timeout=start_timeout)

    def _command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "agent.embedded_broker",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log-level",
            self.log_level,
        ]

    def _cwd(self) -> str | None:
        return str(PROJECT_ROOT)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env


# ---------------------------------------------------------------------------------------------------
# TCP proxy
# ---------------------------------------------------------------------------------------------------

_CHUNK = 65536


class _Link:
    """One proxied client connection."""

    __slots__ = ("client", "upstream", "task")

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[Any] | None) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = task

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None and writer.transport is not None:
                writer.transport.abort()


class TcpProxy:
    """An asyncio TCP proxy between clients and ``target_host:target_port``, for network faults.

    * :meth:`cut` resets every live connection at once (both sides see it) and refuses new ones until
      :meth:`restore`: by default the listening socket is closed, so clients get "connection refused"
      at once; ``cut(refuse_new=False)`` keeps listening and resets each new connection right after
      accepting it instead (note: aiomqtt then waits for its full timeout before failing the connect).
    * :meth:`pause` stops forwarding without closing anything (a silent partition: no data, no FIN;
      what was sent waits and is delivered after :meth:`resume`/:meth:`restore`). New connections are
      held unconnected while paused.

    The listening port stays the same across cut/restore (chosen with :func:`free_port`).
    Runs in the event loop that calls :meth:`start`; use :class:`ThreadedTcpProxy` from synchronous code.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        self._listen_port = listen_port
        self.connect_timeout = connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lsock: socket.socket | None = None  # None while cut (refusing) and after stop
        self._raw: set[socket.socket] = set()  # accepted, transport not made yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._started = False
        self._stopped = False
        self._cut = False
        self._refuse_new = True
        self._flowing: asyncio.Event | None = None
        self._changed: asyncio.Condition | None = None
        # counters
        self.bytes_up = 0  # client -> target
        self.bytes_down = 0  # target -> client
        self.connections_accepted = 0
        self.connections_refused = 0  # reset right after accept (only with cut(refuse_new=False))
        self.cuts = 0

    @classmethod
    def for_url(cls, url: str, **kwargs: Any) -> TcpProxy:
        """A proxy in front of ``mqtt://host:port``."""
        host, port = split_url(url)
        return cls(host, port, **kwargs)

    # -- info ------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._listen_port:
            raise RuntimeError("proxy not started")
        return self._listen_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def active(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._links)

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def is_paused(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    def set_target(self, host: str, port: int) -> None:
        """Send *new* connections to another target (live ones are untouched)."""
        self.target_host, self.target_port = host, port

    # -- control ---------------------------------------------------------------------------------

    async def start(self) -> TcpProxy:
        if self._started:
            return self
        self._loop = asyncio.get_running_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._changed = asyncio.Condition()
        if not self._listen_port:
            self._listen_port = free_port(self.host)
        self._listen()
        self._started = True
        return self

    # The proxy owns its listening socket and accepts synchronously, so a connection is tracked the
    # instant it exists: asyncio's Server.close() (3.11) can leak a connection accepted in the same
    # loop iteration - never served, never closed - which would hang a client across a cut().

    def _listen(self) -> None:
        assert self._loop is not None
        sock = self._listen_socket()
        self._loop.add_reader(sock.fileno(), self._on_readable, sock)
        self._lsock = sock

    def _unlisten(self) -> None:
        sock, self._lsock = self._lsock, None
        if sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(sock.fileno())
            sock.close()  # connections still in the kernel's backlog are reset

    def _on_readable(self, lsock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(64):
            try:
                conn, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            if self._cut or self._stopped:
                self.connections_refused += 1
                _reset(conn)
                continue
            self._raw.add(conn)
            task = self._loop.create_task(self._on_conn(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _on_conn(self, conn: socket.socket) -> None:
        try:
            try:
                reader, writer = await asyncio.open_connection(sock=conn)
            finally:
                self._raw.discard(conn)
        except (OSError, asyncio.CancelledError):
            conn.close()
            return
        await self._on_client(reader, writer)

    def _listen_socket(self) -> socket.socket:
        """Bound and listening right away (synchronously), so restore() takes effect immediately."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._listen_port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def cut(self, refuse_new: bool = True) -> None:
        """Reset every live connection now and refuse new ones until :meth:`restore`."""
        self._cut = True
        self._refuse_new = refuse_new
        self.cuts += 1
        if refuse_new:
            self._unlisten()  # new connects are refused from now on
        self._abort_all()

    def restore(self) -> None:
        """Undo :meth:`cut` and :meth:`pause`: new connections go through again at once."""
        self._cut = False
        if self._flowing is not None:
            self._flowing.set()
        if self._started and not self._stopped and self._lsock is None:
            self._listen()  # listening again, synchronously

    def pause(self) -> None:
        """Stop forwarding bytes in both directions; connections stay open."""
        if self._flowing is None:
            raise RuntimeError("proxy not started")
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again after :meth:`pause` (held data is delivered)."""
        if self._flowing is not None:
            self._flowing.set()

    async def stop(self) -> None:
        self._stopped = True
        self._cut = True
        if self._loop is None:
            return
        self._unlisten()
        self._abort_all()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    async def wait_active(self, count: int, timeout: float = 10.0) -> None:
        """Wait until exactly ``count`` client connections are open (event driven, bounded)."""
        assert self._changed is not None, "proxy not started"

        async def _wait() -> None:
            async with self._changed:  # type: ignore[union-attr]
                await self._changed.wait_for(lambda: len(self._links) == count)  # type: ignore[union-attr]

        try:
            await asyncio.wait_for(_wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"proxy: expected {count} active connections, have {len(self._links)} after {timeout:.1f}s"
            ) from None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "cut" if self._cut else ("paused" if self.is_paused else "open")
        where = f"{self.host}:{self._listen_port}"
        return f"<TcpProxy {where} -> {self.target_host}:{self.target_port} {state} active={self.active}>"

    # -- internals -------------------------------------------------------------------------------

    def _abort_all(self) -> None:
        for conn in list(self._raw):
            try:
                conn.shutdown(socket.SHUT_RDWR)  # its transport is being made: it will see EOF
            except OSError:
                pass
        for link in list(self._links):
            link.abort()
            if link.task is not None and link.task is not asyncio.current_task():
                link.task.cancel()

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut or self._stopped:
            self.connections_refused += 1
            writer.transport.abort()
            return
        link = _Link(writer, asyncio.current_task())
        self._links.add(link)
        self.connections_accepted += 1
        try:
            await self._notify()
            await self._serve(link, reader)
        except asyncio.CancelledError:
            pass  # cut()/stop(): the task ends quietly
        except OSError:
            pass
        finally:
            link.abort()
            self._links.discard(link)
            await self._notify_quietly()

    async def _notify_quietly(self) -> None:
        try:
            await self._notify()
        except (asyncio.CancelledError, RuntimeError):
            pass

    async def _serve(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        assert self._flowing is not None
        await self._flowing.wait()  # paused: hold the new connection
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(self.target_host, self.target_port), self.connect_timeout
        )
        link.upstream = up_writer
        if self._cut:
            return
        up = asyncio.ensure_future(self._pump(client_reader, up_writer, "up"))
        down = asyncio.ensure_future(self._pump(up_reader, link.client, "down"))
        try:
            await asyncio.gather(up, down)
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        assert self._flowing is not None
        try:
            while True:
                if not self._flowing.is_set():
                    await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:  # orderly EOF: pass the half-close on
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        try:
                            writer.write_eof()
                        except OSError:
                            pass
                    return
                if not self._flowing.is_set():  # paused while reading: hold it
                    await self._flowing.wait()
                if self._cut:
                    return
                writer.write(data)
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            # a reset on one side is passed on as a reset on the other
            if writer.transport is not None:
                writer.transport.abort()
            raise


def _reset(conn: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a middlebox dropping the connection would."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()


def split_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` -> ``(host, port)``."""
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


class ThreadedTcpProxy:
    """:class:`TcpProxy` on its own event loop thread, controlled synchronously.

    For tests that drive agents in subprocesses without an event loop of their own.
    """

    def __init__(self, target_host: str, target_port: int, **kwargs: Any) -> None:
        self._args = (target_host, target_port)
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.proxy: TcpProxy | None = None

    @classmethod
    def for_url(cls, url: str, **kwargs: Any) -> ThreadedTcpProxy:
        host, port = split_url(url)
        return cls(host, port, **kwargs)

    def _run(self, coro_factory: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
        if self._loop is None:
            raise RuntimeError("proxy not started")

        async def _call() -> T:
            return await coro_factory()

        return asyncio.run_coroutine_threadsafe(_call(), self._loop).result(timeout)

    def _call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        async def _sync() -> T:
            return fn()

        return self._run(_sync, timeout)

    def start(self, timeout: float = 10.0) -> ThreadedTcpProxy:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def _thread_main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=_thread_main, name="ThreadedTcpProxy", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("proxy thread did not start")
        self._loop = loop
        self.proxy = TcpProxy(*self._args, **self._kwargs)
        self._run(self.proxy.start, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            if self.proxy is not None:
                self._run(self.proxy.stop, timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout)
            if not loop.is_running():
                loop.close()
            self._loop = None
            self._thread = None

    def _proxy(self) -> TcpProxy:
        if self.proxy is None:
            raise RuntimeError("proxy not started")
        return self.proxy

    def cut(self, refuse_new: bool = True) -> None:
        self._call(lambda: self._proxy().cut(refuse_new))

    def restore(self) -> None:
        self._call(self._proxy().restore)

    def pause(self) -> None:
        self._call(self._proxy().pause)

    def resume(self) -> None:
        self._call(self._proxy().resume)

    def set_target(self, host: str, port: int) -> None:
        self._call(lambda: self._proxy().set_target(host, port))

    def wait_active(self, count: int, timeout: float = 10.0) -> None:
        self._run(lambda: self._proxy().wait_active(count, timeout), timeout + 5)

    @property
    def host(self) -> str:
        return self._proxy().host

    @property
    def port(self) -> int:
        return self._proxy().port

    @property
    def url(self) -> str:
        return self._proxy().url

    @property
    def active(self) -> int:
        return self._proxy().active

    @property
    def bytes_up(self) -> int:
        return self._proxy().bytes_up

    @property
    def bytes_down(self) -> int:
        return self._proxy().bytes_down

    @property
    def connections_accepted(self) -> int:
        return self._proxy().connections_accepted

    @property
    def connections_refused(self) -> int:
        return self._proxy().connections_refused

    def __enter__(self) -> ThreadedTcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ThreadedTcpProxy {self.proxy!r}>"

