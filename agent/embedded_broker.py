"""The embedded MQTT broker (amqtt, in-process) behind ``fte broker`` and ``fte demo``.

A new user needs nothing else installed: ``fte broker`` runs :func:`run_broker_forever`, and the demo
runs an :class:`EmbeddedBroker` in its own event loop::

    async with EmbeddedBroker(host="127.0.0.1", port=0) as broker:
        print(broker.url)          # mqtt://127.0.0.1:<port chosen by the OS>
        await broker.stop()        # simulated outage: every client connection is dropped
        await broker.start()       # back on the same port

The broker accepts anonymous clients, publishes no ``$SYS`` topics and checks no topics. It keeps
everything in memory; by default retained messages survive a :meth:`EmbeddedBroker.stop` /
:meth:`EmbeddedBroker.start` cycle (like a production broker with persistence), sessions do not.

Production uses a real broker (Mosquitto, EMQX, HiveMQ, ...), see docs/.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import sys
from typing import Any

__all__ = ["EmbeddedBroker", "quiet_amqtt_loggers", "run_broker_forever", "main"]

log = logging.getLogger(__name__)

#: Loggers of amqtt and its dependencies that chatter at INFO/DEBUG on every connection.
NOISY_LOGGERS = ("amqtt", "transitions", "websockets")

_LISTENER = "default"
_RESTART_BIND_TIMEOUT = 5.0  # seconds to retry binding the same port on restart
_SHUTDOWN_TIMEOUT = 10.0  # seconds for amqtt's graceful shutdown before connections are aborted


def quiet_amqtt_loggers(level: int = logging.WARNING) -> None:
    """Raise amqtt's (and its dependencies') loggers to ``level`` (default WARNING)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _format_url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # IPv6 literal
        host = f"[{host}]"
    return f"mqtt://{host}:{port}"


def _broker_config(host: str, port: int, max_connections: int) -> dict[str, Any]:
    """amqtt 0.12 configuration: the non-deprecated ``plugins`` mapping (dotted class path -> options).

    Only the anonymous auth plugin is loaded: no EventLogger/PacketLogger plugins (noise), no
    BrokerSysPlugin (no ``$SYS`` publishing), no topic checking plugin (every topic is allowed).
    """
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return {
        "listeners": {
            _LISTENER: {
                "type": "tcp",
                "bind": f"{bind_host}:{port}",
                "max_connections": max_connections,
            },
        },
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


def _new_broker_class() -> type:
    """Subclass amqtt's Broker to track every accepted TCP connection.

    amqtt's shutdown closes the writers of the sessions it knows, but not connections that have not
    completed CONNECT yet (and with Python >= 3.12 ``Server.wait_closed`` waits for *all* connections).
    Tracking the stream writers lets :meth:`EmbeddedBroker.stop` guarantee that every client sees its
    connection drop.
    """
    from amqtt.broker import Broker  # imported lazily: amqtt is heavy and only the broker needs it

    class _TrackingBroker(Broker):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.fte_writers: set[asyncio.StreamWriter] = set()
            self.fte_idle = asyncio.Event()
            self.fte_idle.set()
            self.fte_closing = False

        async def stream_connected(
            self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
        ) -> None:
            if self.fte_closing:
                # accepted by the OS/event loop just before the listener closed: drop it too
                writer.transport.abort()
                return
            self.fte_writers.add(writer)
            self.fte_idle.clear()
            try:
                await super().stream_connected(reader, writer, listener_name)
            finally:
                self.fte_writers.discard(writer)
                if not self.fte_writers:
                    self.fte_idle.set()

        def fte_abort_connections(self) -> int:
            n = 0
            for writer in list(self.fte_writers):
                transport = writer.transport
                if transport is not None and not transport.is_closing():
                    transport.abort()
                    n += 1
            return n

        def fte_close_listeners(self) -> None:
            for server in self._servers.values():
                instance = getattr(server, "instance", None)
                if instance is not None:
                    instance.close()

        def fte_bound_port(self) -> int:
            server = self._servers[_LISTENER]
            return int(server.instance.sockets[0].getsockname()[1])

    return _TrackingBroker


class EmbeddedBroker:
    """An amqtt broker running in the current event loop.

    ``port=0`` lets the OS choose a free port when the broker first starts; :attr:`port` then holds it
    and every later :meth:`start` binds that same port again.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_retained: bool = True,
        max_connections: int = 0,
        quiet: bool = True,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self._port = port
        self.keep_retained = keep_retained
        self.max_connections = max_connections
        self._broker: Any = None
        self._retained: dict[str, Any] = {}
        self._started_once = False
        self._lock = asyncio.Lock()
        if quiet:
            quiet_amqtt_loggers()

    # -- properties ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (the OS-chosen one once started with ``port=0``)."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        if self._port == 0:
            raise RuntimeError("the broker has no port yet: start it first")
        return _format_url(self.host, self._port)

    @property
    def running(self) -> bool:
        return self._broker is not None

    @property
    def connection_count(self) -> int:
        """Open client TCP connections (including ones that have not sent CONNECT yet)."""
        return len(self._broker.fte_writers) if self._broker is not None else 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening (no-op if already running). Raises OSError if the port stays taken."""
        async with self._lock:
            if self._broker is not None:
                return
            from amqtt.errors import BrokerError

            broker_cls = _new_broker_class()
            loop = asyncio.get_running_loop()
            # A restart may race the release of our own port: retry briefly. A first start fails fast.
            deadline = loop.time() + (_RESTART_BIND_TIMEOUT if self._started_once else 0.0)
            delay = 0.05
            while True:
                broker = broker_cls(_broker_config(self.host, self._port, self.max_connections))
                try:
                    await broker.start()
                    break
                except BrokerError as exc:
                    cause = exc.__cause__
                    in_use = isinstance(cause, OSError) and cause.errno in (errno.EADDRINUSE, errno.EACCES)
                    if not in_use or loop.time() >= deadline:
                        if isinstance(cause, OSError):
                            raise OSError(
                                cause.errno, f"embedded broker cannot listen on {self.host}:{self._port}: {cause}"
                            ) from exc
                        raise
                    # the same port was just released (restart): retry briefly
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            if self._port == 0:
                self._port = broker.fte_bound_port()
            if self.keep_retained and self._retained:
                broker.retained_messages.update(self._retained)
            self._retained = {}
            self._broker = broker
            self._started_once = True
            log.info("embedded MQTT broker listening on %s", self.url)

    async def stop(self) -> None:
        """Stop the broker: stop listening and drop every client connection (no-op if stopped).

        Clients see their connection close (as in a broker outage); will messages are not
        delivered (nobody is left connected to receive them).
        """
        async with self._lock:
            broker, self._broker = self._broker, None
            if broker is None:
                return
            if self.keep_retained:
                self._retained = dict(broker.retained_messages)
            # Like a crash or outage: stop listening, then drop every connection at once (clients see
            # it immediately). Retained messages were snapshotted above, so the will messages amqtt
            # publishes for these abnormal disconnects reach nobody and are not kept.
            broker.fte_closing = True
            broker.fte_close_listeners()
            broker.fte_abort_connections()
            try:
                await asyncio.wait_for(broker.fte_idle.wait(), _SHUTDOWN_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("embedded broker: client handlers still running %.0fs after abort", _SHUTDOWN_TIMEOUT)
            # Then let amqtt release the rest (sessions, broadcast loop, plugins).
            shutdown = asyncio.ensure_future(broker.shutdown())
            done, _ = await asyncio.wait({shutdown}, timeout=_SHUTDOWN_TIMEOUT)
            if not done:
                log.warning("embedded broker: amqtt shutdown did not finish in %.0fs", _SHUTDOWN_TIMEOUT)
                shutdown.cancel()
                await asyncio.gather(shutdown, return_exceptions=True)
                return
            exc = shutdown.exception()
            if exc is not None:
                log.warning("amqtt shutdown raised %r", exc)
            log.info("embedded MQTT broker on %s stopped", _format_url(self.host, self._port))

    async def serve_until(self, stop_event: asyncio.Event) -> None:
        """Start, run until ``stop_event`` is set, then stop."""
        await self.start()
        try:
            await stop_event.wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {_format_url(self.host, self._port)} {state}>"


def run_broker_forever(host: str = "127.0.0.1", port: int = 1883, *, quiet: bool = True) -> int:
    """Run the embedded broker until SIGINT/SIGTERM (blocking; ``fte broker --port N``).

    Prints one line ``embedded MQTT broker listening on mqtt://host:port`` once it accepts
    connections. Returns the process exit status (0 on a clean stop).
    """

    async def _serve() -> None:
        broker = EmbeddedBroker(host=host, port=port, quiet=quiet)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread / not supported
                pass
        try:
            await broker.start()
            print(f"embedded MQTT broker listening on {broker.url}", flush=True)
            await stop.wait()
        finally:
            await broker.stop()
            for signum in installed:
                loop.remove_signal_handler(signum)

    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:  # SIGINT before the handler was installed
        return 0
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.embedded_broker", description="Run the embedded MQTT broker (amqtt)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1883, help="port to listen on; 0 picks a free port")
    parser.add_argument("--log-level", default="WARNING", help="log level for the broker (default WARNING)")
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet = level > logging.DEBUG
    if quiet:
        quiet_amqtt_loggers(max(level, logging.WARNING))
    return run_broker_forever(args.host, args.port, quiet=quiet)


if __name__ == "__main__":
    sys.exit(main())
