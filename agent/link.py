"""The agent's connection to the broker, kept alive by one reconnection policy.

Reconnection is a layer of its own (as in magic-wormhole): the rest of the agent sees a link that is
up or down, is told when it changes, and gets `LinkDown` from `publish` while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import urlparse

import aiomqtt
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

log = logging.getLogger("fte.link")


class LinkDown(ConnectionError):
    """The broker connection is down; what was being published was not sent."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_url(cls, url: str, **kw: object) -> "BrokerAddress":
        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError(f"broker URL {url!r} is not of the form mqtt://HOST:PORT or mqtts://HOST:PORT")
        tls = u.scheme in ("mqtts", "ssl")
        port = u.port or (8883 if tls else 1883)
        return cls(host=u.hostname, port=port, tls=tls, username=u.username or kw.get("username"),  # type: ignore[arg-type]
                   password=u.password or kw.get("password"), ca_file=kw.get("ca_file"),  # type: ignore[arg-type]
                   cert_file=kw.get("cert_file"), key_file=kw.get("key_file"))  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_client(addr: BrokerAddress, client_id: str, keepalive: int = 30,
                will: aiomqtt.Will | None = None) -> aiomqtt.Client:
    client = aiomqtt.Client(
        addr.host, addr.port, identifier=client_id, username=addr.username, password=addr.password,
        keepalive=keepalive, will=will, tls_context=addr.tls_context(), clean_session=True,
        max_inflight_messages=64, timeout=10,
    )
    # a window of chunks is many publishes in flight by design; aiomqtt would warn about it
    client.pending_calls_threshold = 1 << 16
    return client


MessageHandler = Callable[[aiomqtt.Message], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


class BrokerLink:
    """Connect, subscribe, dispatch; on loss, tell the agent and reconnect with backoff."""

    def __init__(self, addr: BrokerAddress, client_id: str, subscriptions: list[str], on_message: MessageHandler,
                 on_up: Hook, on_down: Hook, keepalive: int = 30, will: aiomqtt.Will | None = None) -> None:
        self.addr = addr
        self.client_id = client_id
        self.subscriptions = subscriptions
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

    async def run(self) -> None:
        """Run until `stop()`: the one reconnection policy of the agent."""
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
        policy = AsyncRetrying(
            wait=wait_exponential(multiplier=0.2, min=0.2, max=5),
            retry=retry_if_exception_type((aiomqtt.MqttError, OSError)),
            reraise=True,
        )
        while not self._stopping:
            async for attempt in policy:
                with attempt:
                    if self._stopping:
                        return
                    await self._session()
            # a clean end of a session without stop() (should not happen) loops around

    async def _session(self) -> None:
        client = make_client(self.addr, self.client_id, self.keepalive, self.will)
        try:
            async with client:
                self._client = client
                self._lost = asyncio.Event()
                for topic in self.subscriptions:
                    await client.subscribe(topic, qos=1)
                self.connects += 1
                self.up.set()
                log.info("connected to %s as %s", self.addr.url, self.client_id)
                await self._on_up()
                async for message in client.messages:
                    self._inbox.put_nowait(message)
        except aiomqtt.MqttError as exc:
            if not self._stopping:
                log.warning("broker connection to %s lost or refused: %s", self.addr.url, exc)
            raise
        finally:
            was_up = self.up.is_set()
            self.up.clear()
            self._lost.set()
            self._client = None
            if was_up and not self._stopping:
                await self._on_down()

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        client = self._client
        if client is None or not self.up.is_set():
            raise LinkDown(f"not connected to {self.addr.url}")
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

    async def stop(self, final: list[tuple[str, bytes, bool]] | None = None) -> None:
        """Publish the final messages (e.g. STOPPED status), then disconnect cleanly (no will)."""
        client = self._client
        if client is not None and self.up.is_set():
            for topic, payload, retain in final or []:
                try:
                    await client.publish(topic, payload, qos=1, retain=retain, timeout=5)
                except Exception:  # best effort on the way out
                    pass
        # the caller then cancels run(): leaving `async with client` sends DISCONNECT, so no will fires
        self._stopping = True
