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
import os
import signal
import socket
import sys
from typing import Any

__all__ = ["EmbeddedBroker", "quiet_amqtt_loggers", "run_broker_forever", "main"]

log = logging.getLogger(__name__)

#: Loggers of amqtt and its dependencies that chatter at INFO/DEBUG on every connection.
NOISY_LOGGERS = ("amqtt", "transitions", "websockets")

_LISTENER = "default"
_RESTART_BIND_TIMEOUT = 5.0  # seconds to retry binding the same port on restart
_SHUTDOWN_TIMEOUT = 10.0  # bound on each phase of stop(): client handlers ending, amqtt shutdown


def quiet_amqtt_loggers(level: int = logging.WARNING) -> None:
    """Raise amqtt's (and its dependencies') loggers to ``level`` (default WARNING)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _format_url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # IPv6 literal
        host = f"[{host}]"
    return f"mqtt://{host}:{port}"


def _broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt 0.12 configuration: the non-deprecated ``plugins`` mapping (dotted class path -> options).

    Only the anonymous auth plugin is loaded: no EventLogger/PacketLogger plugins (noise), no
    BrokerSysPlugin (no ``$SYS`` publishing), no topic checking plugin (every topic is allowed).
    The listener is ``external``: :class:`EmbeddedBroker` owns the listening socket and hands each
    accepted connection to amqtt, so that it can close every one of them on :meth:`EmbeddedBroker.stop`.
    """
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return {
        "listeners": {_LISTENER: {"type": "external", "bind": f"{bind_host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":  # on Windows SO_REUSEADDR would allow two brokers on one port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_BROKER_CLASS: Any = None


class _SnapshotKeys(dict):  # type: ignore[type-arg]
    """A dict whose iteration goes over a copy of its keys: amqtt iterates its subscription table across awaits
    (when a client connects) while other clients' disconnections delete from it."""

    def __iter__(self) -> Any:
        return iter(list(super().__iter__()))


def _broker_class() -> Any:
    """amqtt's Broker with three of its faults mended; made lazily (amqtt is heavy and only the broker needs it).

    amqtt 0.12, when a client connects, sends it the retained messages matching every topic filter in its
    subscription table (any client's, not only this session's), iterating over that table across awaits:
    - a client disconnecting meanwhile deletes from the table, and the new client's connection ended with
      "dictionary changed size during iteration" (seen as a command or agent losing its connection at once,
      now and then, under load): the table is iterated over a copy of its keys;
    - a new client received every retained agent status and transfer log event: retained messages are now
      sent only for filters the session itself subscribes to (what MQTT says: on SUBSCRIBE);
    - a filter stayed in the table after its last subscriber unsubscribed (only a disconnection removed one);
      agents unsubscribe before they stop (agent.link.BrokerLink.stop): the filter now goes too."""
    global _BROKER_CLASS
    if _BROKER_CLASS is None:
        from amqtt.broker import Broker

        class _Broker(Broker):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._subscriptions = _SnapshotKeys()

            async def _publish_retained_messages_for_subscription(self, subscription: Any, session: Any) -> None:
                subscribers = self._subscriptions.get(subscription[0], ())
                if any(s.client_id == session.client_id for s, _ in subscribers):
                    await super()._publish_retained_messages_for_subscription(subscription, session)

            async def _handle_unsubscription(self, client_session: Any, handler: Any, waiter: Any) -> None:
                await super()._handle_unsubscription(client_session, handler, waiter)
                for topic in waiter.result().topics:
                    if topic in self._subscriptions and not self._subscriptions[topic]:
                        del self._subscriptions[topic]

        _BROKER_CLASS = _Broker
    return _BROKER_CLASS


def _no_delay(conn: socket.socket) -> None:
    """Send small packets at once. asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and an
    accepted socket of a listener made with proto 0 is not one: amqtt wrote with Nagle's algorithm, and a
    small message's round trip was a 40 ms step for clients without quick ACKs (the broker probe's warning,
    docs/brokers.md)."""
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not TCP (a test's socketpair): nothing to do
        pass


class EmbeddedBroker:
    """An amqtt broker running in the current event loop.

    ``port=0`` lets the OS choose a free port when the broker first starts; :attr:`port` then holds it
    and every later :meth:`start` binds that same port again.

    The listening socket and every accepted connection belong to this object (amqtt only sees
    streams), so :meth:`stop` really closes every client connection, including ones accepted a moment
    before and ones that never sent CONNECT. (asyncio's own ``Server.close()`` can leak a connection
    accepted in the same loop iteration, and amqtt's shutdown only closes the sessions it knows.)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_retained: bool = True,
        quiet: bool = True,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self._port = port
        self.keep_retained = keep_retained
        self._broker: Any = None
        self._lsock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._closing = False
        self._raw: set[socket.socket] = set()  # accepted, not yet wrapped in a transport
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
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
        return len(self._raw) + len(self._writers)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening (no-op if already running). Raises OSError if the port is taken."""
        async with self._lock:
            if self._broker is not None:
                return
            lsock = await self._bind()
            try:
                if self._port == 0:
                    self._port = int(lsock.getsockname()[1])
                broker = _broker_class()(_broker_config(self.host, self._port))
                await broker.start()
            except BaseException:
                lsock.close()
                raise
            if self.keep_retained and self._retained:
                broker.retained_messages.update(self._retained)
            self._retained = {}
            self._closing = False
            self._broker = broker
            self._lsock = lsock
            self._start_accepting(lsock, broker)
            self._started_once = True
            log.info("embedded MQTT broker listening on %s", self.url)

    async def _bind(self) -> socket.socket:
        # A restart may race the release of our own port: retry briefly. A first start fails fast.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (_RESTART_BIND_TIMEOUT if self._started_once else 0.0)
        delay = 0.05
        while True:
            try:
                return _listen_socket(self.host, self._port)
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES) or loop.time() >= deadline:
                    raise OSError(
                        exc.errno, f"embedded broker cannot listen on {self.host}:{self._port}: {exc.strerror}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _start_accepting(self, lsock: socket.socket, broker: Any) -> None:
        loop = asyncio.get_running_loop()

        def on_readable() -> None:
            # accept synchronously: a connection is tracked from the instant it exists in this process
            for _ in range(64):
                try:
                    conn, _addr = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # EMFILE, ECONNABORTED, ...: keep serving the others
                    log.warning("embedded broker: accept failed: %s", exc)
                    return
                conn.setblocking(False)
                _no_delay(conn)
                if self._closing:
                    conn.close()
                    continue
                self._raw.add(conn)
                self._track(loop.create_task(self._serve(conn, broker)))

        try:
            loop.add_reader(lsock.fileno(), on_readable)
        except NotImplementedError:  # event loops without add_reader (Windows proactor)
            self._accept_task = loop.create_task(self._accept_loop(lsock, broker))

    async def _accept_loop(self, lsock: socket.socket, broker: Any) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                conn, _addr = await loop.sock_accept(lsock)
            except OSError as exc:
                if self._closing:
                    return
                log.warning("embedded broker: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            _no_delay(conn)
            if self._closing:
                conn.close()
                return
            self._raw.add(conn)
            self._track(loop.create_task(self._serve(conn, broker)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, broker: Any) -> None:
        from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter

        try:
            try:
                reader, writer = await asyncio.open_connection(sock=conn, limit=2**20)
            finally:
                self._raw.discard(conn)
        except OSError:
            conn.close()
            return
        self._writers.add(writer)
        try:
            if self._closing:
                return
            await broker.external_connected(StreamReaderAdapter(reader), StreamWriterAdapter(writer), _LISTENER)
        except Exception as exc:  # noqa: BLE001 - one bad client must not take the broker down
            log.debug("embedded broker: client connection ended with %r", exc)
        finally:
            self._writers.discard(writer)
            writer.transport.abort()  # no-op if amqtt already closed it

    def _drop_connections(self) -> None:
        for conn in list(self._raw):
            try:
                conn.shutdown(socket.SHUT_RDWR)  # its transport is being created: let it see EOF
            except OSError:
                pass
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        """Stop the broker: stop listening and drop every client connection (no-op if stopped).

        Like a crash or outage, every client sees its connection drop at once. Retained messages are
        kept for the next :meth:`start` when ``keep_retained``; the will messages of the dropped
        clients reach nobody and are not retained.
        """
        async with self._lock:
            broker, self._broker = self._broker, None
            if broker is None:
                return
            if self.keep_retained:
                self._retained = dict(broker.retained_messages)
            self._closing = True
            loop = asyncio.get_running_loop()
            lsock, self._lsock = self._lsock, None
            if lsock is not None:
                if self._accept_task is None:
                    loop.remove_reader(lsock.fileno())
                lsock.close()
            if self._accept_task is not None:
                self._accept_task.cancel()
                await asyncio.gather(self._accept_task, return_exceptions=True)
                self._accept_task = None
            self._drop_connections()
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=_SHUTDOWN_TIMEOUT)
                if pending:
                    log.warning("embedded broker: %d client handlers still running; cancelling", len(pending))
                    for task in pending:
                        task.cancel()
                    await asyncio.wait(pending, timeout=_SHUTDOWN_TIMEOUT)
            # then let amqtt release the rest (sessions, broadcast loop, plugins)
            shutdown = asyncio.ensure_future(broker.shutdown())
            done, _ = await asyncio.wait({shutdown}, timeout=_SHUTDOWN_TIMEOUT)
            if not done:
                log.warning("embedded broker: amqtt shutdown did not finish in %.0fs", _SHUTDOWN_TIMEOUT)
                shutdown.cancel()
                await asyncio.gather(shutdown, return_exceptions=True)
            elif shutdown.exception() is not None:
                log.warning("embedded broker: amqtt shutdown raised %r", shutdown.exception())
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
