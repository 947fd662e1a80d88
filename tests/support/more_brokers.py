"""More real MQTT brokers for tests: NATS with its MQTT gateway, and RabbitMQ with its MQTT plugin.

Both follow :class:`tests.support.brokers.BrokerProcess` (``start``/``kill``/``stop``/``pause``/``restart``
on the same port, ``url``, ``log_tail``, context manager), so a test can use them exactly like
``MosquittoProcess`` and ``AmqttProcess``:

* :class:`NatsMqttProcess` runs ``nats-server`` with a generated configuration: a NATS client port and an
  MQTT port of its own (both chosen with :func:`free_port`), JetStream on with its store in the work
  directory (NATS keeps MQTT sessions and retained messages in JetStream streams, so they survive a
  ``kill()`` + ``restart()``), and the ``server_name`` the MQTT gateway requires.
* :class:`RabbitMqttProcess` runs a private RabbitMQ node (node name ``fte-test-<mqtt port>@localhost``)
  with only the ``rabbitmq_mqtt`` plugin, its own AMQP, Erlang distribution and epmd ports, its own
  Erlang cookie (``HOME`` is a directory of the work directory) and its Mnesia/log directories in the
  work directory. It never touches the machine's RabbitMQ (5672/25672) nor the system epmd (4369).

Neither ever uses the machine's own brokers (1883, 4222, 5672). :func:`find_nats_server` and
:func:`find_rabbitmq_server` return None when the broker is not installed; tests skip then.

What each broker supports, and the agent settings it needs, is in docs/brokers.md.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.brokers import BrokerProcess, BrokerStartError, free_port

__all__ = [
    "NatsMqttProcess",
    "RabbitMqttProcess",
    "find_epmd",
    "find_nats_server",
    "find_rabbitmq_server",
    "nats_version",
    "rabbitmq_version",
]


# ---------------------------------------------------------------------------------------------------
# finding the binaries
# ---------------------------------------------------------------------------------------------------


def find_nats_server() -> str | None:
    """Path of ``nats-server`` (``$FTE_NATS_SERVER``, PATH, then the usual sbin/bin places), or None."""
    override = os.environ.get("FTE_NATS_SERVER")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/local/sbin/nats-server",
                      "/opt/homebrew/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nats_version(binary: str | None = None) -> str | None:
    """``2.9.10`` for nats-server v2.9.10 (None if it cannot be run)."""
    binary = binary or find_nats_server()
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"v?(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else None


def _version_key(path: str) -> tuple[int, ...]:
    m = re.search(r"rabbitmq_server-(\d+(?:\.\d+)*)", path)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def find_rabbitmq_server() -> str | None:
    """Path of RabbitMQ's own ``rabbitmq-server`` script, or None.

    Not Debian's ``/usr/sbin/rabbitmq-server``: that wrapper switches to the ``rabbitmq`` user (``su``) and
    to /var/lib/rabbitmq, which would mix a private node with the system one. ``$FTE_RABBITMQ_SERVER``
    overrides the search.
    """
    override = os.environ.get("FTE_RABBITMQ_SERVER")
    if override:
        return override if os.access(override, os.X_OK) else None
    candidates = sorted(
        glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server")
        + glob.glob("/usr/local/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"),
        key=_version_key,
    )
    for candidate in reversed(candidates):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmq-server")
    for candidate in [found] if found else []:
        real = os.path.realpath(candidate)
        try:
            text = Path(real).read_text(errors="replace")
        except OSError:
            continue
        if "su rabbitmq" not in text:  # a distribution wrapper that changes user is of no use here
            return real
    for candidate in ("/opt/homebrew/sbin/rabbitmq-server", "/usr/local/sbin/rabbitmq-server"):
        if os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    return None


def rabbitmq_version(script: str | None = None) -> str | None:
    """The RabbitMQ version of ``script`` (from its install path), or None."""
    script = script or find_rabbitmq_server()
    if not script:
        return None
    m = re.search(r"rabbitmq_server-(\d+(?:\.\d+)+)", os.path.realpath(script))
    return m.group(1) if m else None


def find_epmd() -> str | None:
    """The Erlang port mapper daemon (RabbitMQ's nodes register there), or None."""
    found = shutil.which("epmd")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd")
                        + glob.glob("/usr/local/lib/erlang/erts-*/bin/epmd"))
    return candidates[-1] if candidates else None


# ---------------------------------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------------------------------


class NatsMqttProcess(BrokerProcess):
    """``nats-server`` with JetStream and its MQTT gateway on a port of its own (``url`` is the MQTT one).

    * ``client_port``: the NATS client port (chosen free when not given); kept across restarts.
    * ``max_payload``: NATS ``max_payload`` in bytes (None: the server default, 1 MB). NATS 2.9 does not
      apply it to MQTT PUBLISH packets (measured: 17 MiB QoS 1 messages pass); see docs/brokers.md.
    * ``extra_config``: lines appended to the generated configuration (top level).

    The JetStream store is ``<workdir>/jetstream``: it survives ``kill()``/``restart()`` (retained
    messages, MQTT sessions), as a real deployment's would; ``close()`` removes it with the work directory.
    """

    kind = "nats"
    default_start_timeout = 20.0

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float | None = None,
        binary: str | None = None,
        client_port: int | None = None,
        max_payload: int | None = None,
        server_name: str | None = None,
        extra_config: list[str] | tuple[str, ...] = (),
    ) -> None:
        found = binary or find_nats_server()
        if not found:
            raise FileNotFoundError("nats-server not found; install it (apt install nats-server) "
                                    "or set FTE_NATS_SERVER")
        self.binary = found
        self.client_port = client_port or free_port(host)
        self.max_payload = max_payload
        self.extra_config = list(extra_config)
        super().__init__(port, host=host, workdir=workdir, start_timeout=start_timeout)
        # required by the MQTT gateway; unique per instance so that log lines say which one
        self.server_name = server_name or f"fte_test_{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "nats.conf"

    @property
    def store_dir(self) -> Path:
        return self.workdir / "jetstream"

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    def config_text(self) -> str:
        lines = [
            "# generated by tests/support/more_brokers.py",
            f"server_name: {self.server_name}",
            f'listen: "{self.host}:{self.client_port}"',
            "logtime: true",
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        lines += [
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
            "}",
            "mqtt {",
            f'  listen: "{self.host}:{self.port}"',
            "}",
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]


# ---------------------------------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------------------------------

_epmds: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_epmds() -> None:
    for proc in _epmds:
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(5)
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group (RabbitMQ's erl_child_setup, inet_gethost, ...)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class RabbitMqttProcess(BrokerProcess):
    """A private RabbitMQ node with the MQTT plugin; ``url`` is its MQTT listener.

    Everything is private and on free ports: the node ``fte-test-<mqtt port>@localhost``, its AMQP port
    (``amqp_port``), Erlang distribution port (``dist_port``, bound to loopback) and an ``epmd`` of its
    own (``epmd_port``, a child process stopped by ``close()``); ``HOME`` is ``<workdir>/home`` with its own
    ``.erlang.cookie``; Mnesia, the retained message store and logs are under the work directory, so
    they survive ``kill()``/``restart()``. The node runs with ``RUNNING_UNDER_SYSTEMD`` so the script execs
    the Erlang VM: ``kill()`` is a real SIGKILL of the broker (and of its process group).

    ``extra_config`` lines are appended to the generated rabbitmq.conf (new-style, sysctl format).
    """

    kind = "rabbitmq"
    default_start_timeout = 90.0  # the MQTT plugin waits ~3.6 s for a Raft election; a slow box takes longer

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float | None = None,
        script: str | None = None,
        extra_config: list[str] | tuple[str, ...] = (),
    ) -> None:
        found = script or find_rabbitmq_server()
        if not found:
            raise FileNotFoundError("RabbitMQ's rabbitmq-server script not found (apt install rabbitmq-server) "
                                    "or set FTE_RABBITMQ_SERVER")
        epmd = find_epmd()
        if not epmd:
            raise FileNotFoundError("epmd (Erlang) not found")
        self.script = found
        self.epmd_binary = epmd
        self.extra_config = list(extra_config)
        super().__init__(port, host=host, workdir=workdir, start_timeout=start_timeout)
        self.amqp_port = free_port(host)
        self.dist_port = free_port(host)
        self.epmd_port = free_port(host)
        self.nodename = f"fte-test-{self.port}@localhost"
        self._epmd: subprocess.Popen[bytes] | None = None

    # -- files -----------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "rabbitmq.conf"

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    @property
    def version(self) -> str | None:
        return rabbitmq_version(self.script)

    def config_text(self) -> str:
        lines = [
            "# generated by tests/support/more_brokers.py",
            f"listeners.tcp.default = {self.host}:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}",
            "mqtt.allow_anonymous = true",  # as the guest user, which may connect from loopback only
            "log.console = true",
            "log.console.level = info",
            "log.file = false",
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
            cookie.chmod(0o400)  # Erlang refuses a cookie file others can read
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("# empty: nothing from /etc/rabbitmq/rabbitmq-env.conf\n")
        (self.workdir / "advanced.config").write_text("[].\n")
        self.config_path.write_text(self.config_text())
        self._ensure_epmd()

    def _ensure_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        log = (self.workdir / "epmd.out").open("ab")
        try:
            self._epmd = subprocess.Popen(  # noqa: S603 - fixed command line
                [self.epmd_binary, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        _epmds.append(self._epmd)
        deadline = time.monotonic() + 10
        while not _port_open("127.0.0.1", self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise BrokerStartError(f"epmd did not start on port {self.epmd_port}: "
                                       f"{(self.workdir / 'epmd.out').read_text(errors='replace')}")
            time.sleep(0.02)

    def _command(self) -> list[str]:
        return [self.script]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_")) and k != "NOTIFY_SOCKET"}
        w = self.workdir
        env.update(
            HOME=str(self.home),
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.config_path),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(w / "log"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(w / "plugins-expand"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            # exec the VM instead of running it under a shell that traps signals: kill() must kill the broker
            RUNNING_UNDER_SYSTEMD="true",
        )
        return env

    # -- lifecycle: the whole process group --------------------------------------------------------

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
        super().kill()
        if proc is not None:
            _kill_group(proc.pid)

    def stop(self, timeout: float = 30.0) -> None:
        proc = self.proc
        super().stop(timeout)
        if proc is not None:
            _kill_group(proc.pid)

    def _reap(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
        super()._reap()

    def close(self) -> None:
        try:
            super().close()
        finally:
            epmd, self._epmd = self._epmd, None
            if epmd is not None and epmd.poll() is None:
                epmd.terminate()
                try:
                    epmd.wait(5)
                except subprocess.TimeoutExpired:
                    epmd.kill()
                    epmd.wait(5)
