"""The agent's connection to the broker, kept alive by one reconnection policy.

Reconnection is a layer of its own (as in magic-wormhole): the rest of the agent sees a link that is
up or down, is told when it changes, and gets `LinkDown` from `publish` while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence
from urllib.parse import urlparse

import aiomqtt
from .core.errors import FteError
from .quickack import ack_reads_at_once
from .core.brokers import BrokerRotation
from .core.policy import STABLE_CONNECTION, SUBSCRIBE_ATTEMPTS, SUBSCRIBE_RETRY_DELAY

log = logging.getLogger("fte.link")


class LinkDown(FteError, ConnectionError):
    """The broker connection is down; what was being published was not sent."""


class MessageTooLarge(FteError, ValueError):
    """A message bigger than the broker was found to pass (agent.broker_probe): not sent, because the broker
    would throw the agent's connection out for it, and again at every reconnection."""


def packet_size(topic: str, payload: bytes, qos: int = 1) -> int:
    """Bytes of the MQTT 3.1.1 PUBLISH packet of `payload` on `topic` (what a broker's max_packet_size counts)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
    return 1 + (1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4) + remaining


class BrokerConfigError(FteError, ValueError):
    """The TLS files of a broker address cannot be used (a configuration problem: retrying does not help)."""


def redact_url(url: str) -> str:
    """``url`` with any password in it replaced by ``***``, for messages."""
    return re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", url)


class _SocketErrors(logging.Handler):
    """Remembers the last error paho-mqtt logged on its socket. A TLS alert that arrives after the handshake
    (TLS 1.3: "certificate required" when the broker wants a client certificate) is only logged by paho;
    aiomqtt then reports nothing but "Operation timed out"."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: tuple[float, str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = (time.monotonic(), record.getMessage())

    def since(self, t0: float) -> str | None:
        last = self.last
        return last[1] if last is not None and last[0] >= t0 else None


_socket_errors = _SocketErrors()
logging.getLogger("mqtt").addHandler(_socket_errors)  # aiomqtt's (and so paho's) logger


def connect_error(exc: BaseException, since: float) -> str:
    """``explain_connect_error`` of a failed connect that started at ``since`` (time.monotonic()),
    with the socket error paho logged meanwhile, if any."""
    detail = _socket_errors.since(since)
    return explain_connect_error(f"{exc}: {detail}" if detail and detail not in str(exc) else exc)


def explain_connect_error(error: BaseException | str) -> str:
    """A refused or failed broker connection in one line, with what to check. Never contains a secret:
    the reasons come from the TLS library and the broker's CONNACK, which do not echo credentials."""
    text = str(error) or type(error).__name__
    low = text.lower()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if "mismatch" in low:
            hint = ("the broker's certificate is not issued for the host name in the broker URL; use a name or "
                    "address listed in its subjectAltName")
        else:
            hint = ("the broker's certificate is not signed by a trusted CA; give the CA that signed it "
                    "(agents: brokerCaFile; commands: FTE_BROKER_CA_FILE)")
    elif "certificate required" in low or "certificate_required" in low or "handshake failure" in low \
            or "bad certificate" in low or "unknown ca" in low:
        hint = ("the broker wants a client certificate it trusts (agents: brokerCertFile and brokerKeyFile; "
                "commands: FTE_BROKER_CERT_FILE and FTE_BROKER_KEY_FILE)")
    elif "wrong version number" in low or "wrong_version_number" in low or "record layer failure" in low \
            or "unexpected eof" in low:
        hint = "is this port a TLS listener? use mqtt:// for a plain one, mqtts:// for TLS"
    elif "connection reset" in low:
        hint = "a broker resets plain connections to a TLS listener: if this port is one, use mqtts://"
    elif "bad user name or password" in low or "bad username or password" in low or "not authori" in low:
        hint = ("check the user name and password (agents: brokerUsername and brokerPassword or "
                "FTE_BROKER_PASSWORD; commands: FTE_BROKER_USERNAME and FTE_BROKER_PASSWORD) and the broker's "
                "password file and ACL")
    else:
        return text
    return f"{text} ({hint})"


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, hence never in a log line
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_url(cls, url: str, **kw: object) -> "BrokerAddress":
        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError(f"broker URL {redact_url(url)!r} is not of the form mqtt://HOST:PORT or "
                             "mqtts://HOST:PORT")
        tls = u.scheme in ("mqtts", "ssl")
        port = u.port or (8883 if tls else 1883)
        return cls(host=u.hostname, port=port, tls=tls, username=u.username or kw.get("username"),  # type: ignore[arg-type]
                   password=u.password or kw.get("password"), ca_file=kw.get("ca_file"),  # type: ignore[arg-type]
                   cert_file=kw.get("cert_file"), key_file=kw.get("key_file"))  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context (None for mqtt://): the broker's certificate must chain to ``ca_file``
        (the system CAs when not set) and name ``host``. Raises BrokerConfigError for unusable files."""
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise BrokerConfigError(f"cannot use the CA file {self.ca_file}: {_reason(exc)}; "
                                    "give a PEM file of CA certificates") from None
        if self.cert_file:
            try:
                # an encrypted key must fail here, not prompt for a passphrase on a terminal nobody watches
                ctx.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
            except (OSError, _PassphraseNeeded) as exc:
                what = f"client certificate {self.cert_file}" + (f" with key {self.key_file}" if self.key_file else "")
                raise BrokerConfigError(f"cannot use the {what}: {_reason(exc)}; give PEM files of a certificate "
                                        "and its unencrypted private key") from None
        return ctx


class _PassphraseNeeded(FteError):
    def __str__(self) -> str:
        return "the private key is encrypted (a passphrase would be needed)"


def _no_passphrase() -> bytes:
    raise _PassphraseNeeded()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, ssl.SSLError) and "PEM lib" in str(exc):
        return "not a PEM file, or the key does not belong to the certificate"
    return str(exc)


class _BoundedClient(aiomqtt.Client):
    """aiomqtt's client whose connect is one bounded attempt: the TCP connect (and TLS handshake) and the
    wait for the broker's CONNACK each take at most ``connect_timeout``, and a connection closed before the
    CONNACK fails the attempt at once. (aiomqtt left such a connect waiting for its whole operation timeout:
    behind a TCP forwarder that accepts and then closes while the broker is down, every attempt hung 4 s.)"""

    def __init__(self, *args: object, connect_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.connect_timeout = connect_timeout
        self._client.connect_timeout = connect_timeout  # paho's socket connect
        on_disconnect = self._client.on_disconnect

        def closed_early(*a: object, **kw: object) -> None:
            # called in the event loop's thread (aiomqtt drives paho from it), as aiomqtt's own callbacks
            if not self._connected.done():
                self._connected.set_exception(aiomqtt.MqttError("the connection was closed before the broker "
                                                                "answered the CONNECT"))
            on_disconnect(*a, **kw)  # type: ignore[misc]

        self._client.on_disconnect = closed_early

    async def __aenter__(self) -> "_BoundedClient":
        operations, self.timeout = self.timeout, self.connect_timeout  # the CONNACK wait
        try:
            await super().__aenter__()
        except BaseException:
            # aiomqtt leaves the socket of a connect that timed out (a silent listener) open and watched by
            # the event loop: one fd and one reader leaked per attempt of a long outage
            try:
                self._client._sock_close()  # paho's own close: unregisters the socket from aiomqtt's loop
            except Exception:  # best effort: the attempt has failed anyway
                pass
            raise
        finally:
            self.timeout = operations
        return self


def make_client(addr: BrokerAddress, client_id: str, keepalive: int = 30,
                will: aiomqtt.Will | None = None, logger: logging.Logger | None = None,
                connect_timeout: float = 4.0) -> aiomqtt.Client:
    client = _BoundedClient(
        addr.host, addr.port, identifier=client_id, username=addr.username, password=addr.password,
        keepalive=keepalive, will=will, tls_context=addr.tls_context(), clean_session=True, logger=logger,
        connect_timeout=connect_timeout,
        # operations (subscribe, unsubscribe) without a timeout of their own wait this long
        max_inflight_messages=64, timeout=4,
        # Nagle's algorithm held acks and small control messages back for tens of ms each: 3x slower
        # transfers and 5x slower small-file sets (docs/performance.md)
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    # a window of chunks is many publishes in flight by design; aiomqtt would warn about it
    client.pending_calls_threshold = 1 << 16
    # a broker without TCP_NODELAY (Mosquitto's default) would hold small messages for our delayed ACKs
    ack_reads_at_once(client._client)
    return client


async def subscribe_granted(client: aiomqtt.Client, topic: str, timeout: float | None = None) -> bool:
    """SUBSCRIBE to ``topic`` at QoS 1; asked again when the broker refuses it (SUBACK 0x80), up to
    SUBSCRIBE_ATTEMPTS times: a NATS 2.9 cluster short of a node refuses about 4 in 10 new QoS 1
    subscriptions (docs/brokers.md, "A NATS cluster"). True once granted; False if refused every time."""
    kwargs = {} if timeout is None else {"timeout": timeout}
    for attempt in range(1, SUBSCRIBE_ATTEMPTS + 1):
        granted = await client.subscribe(topic, qos=1, **kwargs)
        if not _refused(granted):
            if attempt > 1:
                log.warning("the broker refused the subscription to %s %d time(s) before granting it",
                            topic, attempt - 1)
            return True
        if attempt < SUBSCRIBE_ATTEMPTS:
            await asyncio.sleep(SUBSCRIBE_RETRY_DELAY)
    return False


def _refused(granted: object) -> bool:
    """True if a SUBACK refused the subscription (MQTT 3.1.1: 0x80; MQTT 5: a failure reason code)."""
    for code in granted if isinstance(granted, (tuple, list)) else ():
        failure = getattr(code, "is_failure", None)
        if failure if failure is not None else isinstance(code, int) and code >= 0x80:
            return True
    return False


MessageHandler = Callable[[aiomqtt.Message], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


class BrokerLink:
    """Connect, subscribe, dispatch; on loss, tell the agent and reconnect with backoff."""

    def __init__(self, addr: BrokerAddress | Sequence[BrokerAddress], client_id: str, subscriptions: list[str],
                 on_message: MessageHandler, on_up: Hook, on_down: Hook, keepalive: int = 30,
                 will: aiomqtt.Will | None = None, before_up: Hook | None = None,
                 not_up: Callable[[BaseException], None] | None = None,
                 urgent: Callable[[aiomqtt.Message], bool] | None = None, connect_timeout: float = 2.0) -> None:
        # the brokers of the list, tried in order (agent.core.brokers); `addr` is the one of the current or
        # last attempt (the node the agent is on while `up` is set)
        self.addrs = [addr] if isinstance(addr, BrokerAddress) else list(addr)
        self.addr = self.addrs[0]
        self.connect_timeout = connect_timeout
        # awaited on every connection before the subscriptions and before the link is up (the broker probe):
        # nothing is announced to the agent, and no transfer resumes, until it returns
        self._before_up = before_up
        # called (not awaited) with the error when a connection attempt fails before the link is up
        self._not_up = not_up
        # called (not awaited) by the reader with every message before it is queued for the worker; True when
        # it handled the message there and then. For small messages a handler running in the worker may be
        # waiting for (agent statuses): queued, they would only be seen once that handler has given up. And
        # for messages that must not hold up the worker (the agent's commands go to a lane of their own,
        # agent.command_lane, rate-limited and bounded): queued, chunks and acks would wait behind them.
        self._urgent = urgent
        self.client_id = client_id
        # subscribed at every connection; add_subscription / remove_subscription change it while running
        self.subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self.keepalive = keepalive
        self.will = will
        self._client: aiomqtt.Client | None = None
        self.up = asyncio.Event()
        # set when the current connection is lost: publishes waiting for a PUBACK give up at once
        self._lost = asyncio.Event()
        # messages are handled by one worker, so that a slow handler never delays noticing a dead broker
        self._inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        self.connects = 0
        self._up_since: float | None = None
        # the largest PUBLISH packet the broker was found to pass, when the broker check found a smaller one
        # refused (None: no limit known); publish() refuses bigger ones (MessageTooLarge)
        self.max_packet: int | None = None

    async def run(self) -> None:
        """Run until `stop()`: the one reconnection policy of the agent.

        Raises BrokerConfigError at once if the TLS files cannot be used: no reconnection fixes that."""
        for addr in self.addrs:
            try:
                addr.tls_context()
            except BrokerConfigError as exc:
                log.error("cannot connect to %s: %s", addr.url, exc)
                raise
        self._worker = asyncio.create_task(self._work(), name="link-worker")
        try:
            await self._run()
        finally:
            self._worker.cancel()

    async def _work(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._on_message(message)
            except Exception:  # a bad message must never take the agent down
                log.exception("error handling a message on %s", message.topic)

    async def _run(self) -> None:
        # which broker next and how long to wait first: agent.core.brokers (the backoff of agent.core.policy)
        rotation = BrokerRotation(len(self.addrs))
        while not self._stopping:
            index, wait = rotation.next_attempt()
            if wait:
                await asyncio.sleep(wait)
            if self._stopping:
                return
            self.addr = self.addrs[index]
            self._up_since = None
            try:
                await self._session()
            except (aiomqtt.MqttError, OSError, BrokerConfigError):
                pass  # one failed attempt (or a lost connection): the rotation says what next
            if self._up_since is not None:
                rotation.connected()
                # a connection that lasted starts the next outage's backoff afresh; one thrown out soon does not
                rotation.lost(stable=time.monotonic() - self._up_since >= STABLE_CONNECTION)

    async def _session(self) -> None:
        try:
            client = make_client(self.addr, self.client_id, self.keepalive, self.will,
                                 connect_timeout=self.connect_timeout)
        except BrokerConfigError as exc:  # the files were fine at start (say, replaced while renewing them)
            log.warning("cannot connect to %s: %s", self.addr.url, exc)
            raise
        started = time.monotonic()
        try:
            async with client:
                self._client = client
                self._lost = asyncio.Event()
                if self._before_up is not None:
                    await self._before_up()
                # topics added while these subscribe (add_subscription before the link is up) are taken too
                done: set[str] = set()
                while pending := [t for t in self.subscriptions if t not in done]:
                    for topic in pending:
                        done.add(topic)
                        await self._subscribe(client, topic)
                self.connects += 1
                self._up_since = time.monotonic()
                self.up.set()
                log.info("connected to %s as %s", self.addr.url, self.client_id)
                await self._on_up()
                async for message in client.messages:
                    if self._urgent is not None:
                        try:
                            if self._urgent(message):
                                continue
                        except Exception:  # a bad message must never take the agent down
                            log.exception("error handling a message on %s", message.topic)
                            continue
                    self._inbox.put_nowait(message)
        except aiomqtt.MqttError as exc:
            if not self._stopping:
                # The configuration hints of connect_error (TLS listener, certificates, credentials) explain a
                # connect that fails; on a connection that was up and then dropped (broker killed or frozen,
                # network cut: tests/fault) "connection reset" got the TLS-listener hint, which misleads.
                log.warning("broker connection to %s lost or refused: %s", self.addr.url,
                            exc if self.up.is_set() else connect_error(exc, started))
            if self.up.is_set():
                raise  # a connection that was up and dropped (_run: STABLE_CONNECTION)
            if self._not_up is not None and not self._stopping:
                self._not_up(exc)
            raise
        finally:
            was_up = self.up.is_set()
            self.up.clear()
            self._lost.set()
            self._client = None
            if was_up and not self._stopping:
                await self._on_down()

    @staticmethod
    async def _subscribe(client: aiomqtt.Client, topic: str) -> None:
        if not await subscribe_granted(client, topic):
            log.error("the broker refused the subscription to %s %d times: nothing sent there reaches this "
                      "agent; check the broker's ACL (docs/security.md)", topic, SUBSCRIBE_ATTEMPTS)

    async def add_subscription(self, topic: str) -> bool:
        """Subscribe to `topic` from now on: on the live connection at once (returns once the broker has
        answered), and again at every reconnection. While the link is down it only notes the topic: the
        next connection subscribes to it before the link is up. True when the broker granted it on the live
        connection (or it was already taken and the link is up)."""
        if topic in self.subscriptions:
            return self.up.is_set()
        self.subscriptions.append(topic)
        client = self._client
        if client is None or not self.up.is_set():
            return False
        try:
            granted = await subscribe_granted(client, topic)
        except aiomqtt.MqttError as exc:  # the connection is going: the next one subscribes
            log.debug("subscription to %s not made now (%s); it is made at the next connection", topic, exc)
            return False
        if not granted:
            log.error("the broker refused the subscription to %s %d times: nothing sent there reaches this "
                      "agent; check the broker's ACL (docs/security.md)", topic, SUBSCRIBE_ATTEMPTS)
        return granted

    async def remove_subscription(self, topic: str) -> None:
        """Undo add_subscription: unsubscribe on the live connection, and not again at reconnections."""
        if topic not in self.subscriptions:
            return
        self.subscriptions.remove(topic)
        client = self._client
        if client is None or not self.up.is_set():
            return
        try:
            await client.unsubscribe(topic)
        except aiomqtt.MqttError:
            pass  # the connection is going, and the next one does not subscribe to it

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        client = self._client
        if client is None or not self.up.is_set():
            raise LinkDown(f"not connected to {self.addr.url}")
        self.check_size(topic, payload, qos)
        lost = self._lost
        publish = asyncio.ensure_future(client.publish(topic, payload, qos=qos, retain=retain, timeout=60))
        if not publish.done():
            waiter = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({publish, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if not publish.done():
                publish.cancel()
                raise LinkDown(f"lost the connection to {self.addr.url}")
        try:
            publish.result()
        except aiomqtt.MqttError as exc:
            raise LinkDown(str(exc)) from exc

    def check_size(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Raise MessageTooLarge if the broker was found to refuse a message this big."""
        if self.max_packet is not None and (size := packet_size(topic, payload, qos)) > self.max_packet:
            raise MessageTooLarge(f"a {size}-byte message on {topic} is larger than the broker passes (its largest "
                                  f"is {self.max_packet} bytes, found by the broker check)")

    async def stop(self, final: list[tuple[str, bytes, bool]] | None = None) -> None:
        """Publish the final messages (e.g. STOPPED status), then disconnect cleanly (no will)."""
        client = self._client
        if client is not None and self.up.is_set():
            # Unsubscribe first, so that nothing is on its way to us when we close: a socket closed with
            # unread data sends a reset, and Mosquitto, failing to write to it, drops the connection before it
            # reads our DISCONNECT and publishes the will (UNREACHABLE over our STOPPED: seen in CI, and 70 of
            # 100 closes while messages flowed in a raw-socket experiment, none after an UNSUBACK). The broker
            # writes in order, so what it queued for us arrives before the UNSUBACK, and nothing after it.
            if self.subscriptions:
                try:
                    await client.unsubscribe(list(self.subscriptions), timeout=5)
                except Exception:  # best effort on the way out
                    pass
            for topic, payload, retain in final or []:
                try:
                    await client.publish(topic, payload, qos=1, retain=retain, timeout=5)
                except Exception:  # best effort on the way out
                    pass
        # the caller then cancels run(): leaving `async with client` sends DISCONNECT, so no will fires
        self._stopping = True
