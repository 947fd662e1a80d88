"""The test brokers and fault tools behave like the real thing (so fault tests can trust them).

Runs on both brokers (amqtt subprocess and mosquitto): large QoS 1 payloads, retained messages,
last wills on a killed client, broker kill/restart, and network cuts through the TCP proxy.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid

import aiomqtt
import pytest

from tests.support.brokers import (
    BrokerProcess,
    MosquittoProcess,
    TcpProxy,
    ThreadedTcpProxy,
    mqtt_probe,
    split_url,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

CHUNK = 256 * 1024
WAIT = 15.0  # generous bound for any single event on a slow 2-core CI machine


def client(url: str, **kwargs: object) -> aiomqtt.Client:
    host, port = split_url(url)
    kwargs.setdefault("timeout", WAIT)
    return aiomqtt.Client(host, port, **kwargs)  # type: ignore[arg-type]


def unique_topic(name: str) -> str:
    return f"fte-test/{uuid.uuid4().hex}/{name}"


async def next_message(c: aiomqtt.Client, timeout: float = WAIT) -> aiomqtt.Message:
    return await asyncio.wait_for(c.messages.__anext__(), timeout)


async def drain_until_dropped(c: aiomqtt.Client) -> None:
    """Iterate messages until the connection drops (aiomqtt raises MqttError)."""
    async for _ in c.messages:
        pass


async def assert_drops(task: asyncio.Task[None], what: str) -> None:
    """The client's message loop ends with MqttError (bounded), as an agent's would."""
    try:
        await asyncio.wait_for(task, WAIT)
    except aiomqtt.MqttError:
        return
    except asyncio.TimeoutError:
        pytest.fail(f"{what}: the client did not notice its connection drop within {WAIT}s")
    pytest.fail(f"{what}: the message loop ended without MqttError")


async def roundtrip(url: str, topic: str, payload: bytes = b"ping") -> None:
    async with client(url) as sub, client(url) as pub:
        await sub.subscribe(topic, qos=1)
        await pub.publish(topic, payload, qos=1)
        msg = await next_message(sub)
        assert msg.payload == payload


# -- pub/sub basics on both brokers ----------------------------------------------------------------


async def test_qos1_256kib_payloads(broker_url: str) -> None:
    topic = unique_topic("data")
    payloads = [os.urandom(CHUNK) for _ in range(8)]
    async with client(broker_url) as sub, client(broker_url) as pub:
        await sub.subscribe(topic, qos=1)
        for p in payloads:
            await pub.publish(topic, p, qos=1)  # returns once the broker's PUBACK arrived
        for expected in payloads:
            msg = await next_message(sub)
            assert msg.qos == 1
            assert len(msg.payload) == CHUNK  # type: ignore[arg-type]
            assert msg.payload == expected


async def test_retained_message_reaches_late_subscriber(broker_url: str) -> None:
    topic = unique_topic("status")
    async with client(broker_url) as pub:
        await pub.publish(topic, b'{"status":"READY"}', qos=1, retain=True)
    try:
        async with client(broker_url) as late:
            await late.subscribe(topic, qos=1)
            msg = await next_message(late)
            assert msg.payload == b'{"status":"READY"}'
            assert msg.retain
    finally:
        async with client(broker_url) as pub:
            await pub.publish(topic, b"", qos=1, retain=True)  # clear it on the shared broker


WILL_CLIENT = r"""
import asyncio, sys
import aiomqtt

async def main():
    host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    will = aiomqtt.Will(topic, b"UNREACHABLE", qos=1, retain=True)
    async with aiomqtt.Client(host, port, will=will, keepalive=60, timeout=15):
        print("connected", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_last_will_published_when_client_process_is_killed(broker_url: str) -> None:
    topic = unique_topic("agent")
    host, port = split_url(broker_url)
    async with client(broker_url) as watcher:
        await watcher.subscribe(topic, qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WILL_CLIENT, host, str(port), topic,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
            if line.strip() != b"connected":
                err = await asyncio.wait_for(proc.stderr.read(), 5)  # type: ignore[union-attr]
                pytest.fail(f"will client did not connect: {line!r} {err.decode(errors='replace')}")
            proc.kill()
            await asyncio.wait_for(proc.wait(), WAIT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        msg = await next_message(watcher)
        assert msg.payload == b"UNREACHABLE"
    try:
        async with client(broker_url) as late:  # the will was retained, as an agent's status is
            await late.subscribe(topic, qos=1)
            msg = await next_message(late)
            assert msg.payload == b"UNREACHABLE"
            assert msg.retain
    finally:
        async with client(broker_url) as pub:
            await pub.publish(topic, b"", qos=1, retain=True)


# -- broker outages --------------------------------------------------------------------------------


async def test_killed_broker_drops_clients_and_restarts_on_same_port(fresh_broker: BrokerProcess) -> None:
    url, port = fresh_broker.url, fresh_broker.port
    topic = unique_topic("outage")
    async with client(url) as c:
        await c.subscribe(topic, qos=1)
        reader = asyncio.ensure_future(drain_until_dropped(c))
        fresh_broker.kill()
        await assert_drops(reader, "broker killed")

    with pytest.raises(aiomqtt.MqttError):  # nobody listening while it is down
        async with client(url, timeout=5):
            pass

    await asyncio.to_thread(fresh_broker.restart)
    assert fresh_broker.port == port and fresh_broker.url == url
    await roundtrip(url, topic)


async def test_stopped_broker_drops_clients(fresh_broker: BrokerProcess) -> None:
    async with client(fresh_broker.url) as c:
        await c.subscribe(unique_topic("x"), qos=1)
        reader = asyncio.ensure_future(drain_until_dropped(c))
        await asyncio.to_thread(fresh_broker.stop)
        await assert_drops(reader, "broker stopped")
    assert fresh_broker.returncode == 0 or isinstance(fresh_broker, MosquittoProcess)


def test_paused_broker_does_not_answer_until_resumed(fresh_mosquitto: MosquittoProcess) -> None:
    assert fresh_mosquitto.answers()
    fresh_mosquitto.pause()
    try:
        assert not mqtt_probe(fresh_mosquitto.host, fresh_mosquitto.port, timeout=0.5)
    finally:
        fresh_mosquitto.resume()
    wait_for(fresh_mosquitto.answers, WAIT, message="mosquitto did not answer after SIGCONT")


def test_restart_with_live_process_kills_it_first(fresh_mosquitto: MosquittoProcess) -> None:
    old_pid = fresh_mosquitto.pid
    fresh_mosquitto.restart()
    assert fresh_mosquitto.pid != old_pid
    assert fresh_mosquitto.answers()
    assert fresh_mosquitto.starts == 2


# -- network faults through the proxy ----------------------------------------------------------------


async def test_proxy_cut_drops_connection_and_restore_allows_reconnect(broker_url: str) -> None:
    topic = unique_topic("via-proxy")
    async with TcpProxy.for_url(broker_url) as proxy:
        await roundtrip(proxy.url, topic, b"before")
        async with client(proxy.url) as c:
            await c.subscribe(topic, qos=1)
            await proxy.wait_active(1)
            reader = asyncio.ensure_future(drain_until_dropped(c))
            proxy.cut()
            await assert_drops(reader, "proxy cut")
        await proxy.wait_active(0)

        with pytest.raises(aiomqtt.MqttError, match="refused"):  # refused while cut
            async with client(proxy.url, timeout=5):
                pass

        proxy.restore()
        await roundtrip(proxy.url, topic, b"after")
        assert proxy.bytes_up > 0 and proxy.bytes_down > 0


async def test_proxy_pause_holds_traffic_until_resumed(broker_url: str) -> None:
    topic = unique_topic("paused")
    async with TcpProxy.for_url(broker_url) as proxy, client(broker_url) as sub:
        await sub.subscribe(topic, qos=1)
        async with client(proxy.url) as pub:
            proxy.pause()
            publish = asyncio.ensure_future(pub.publish(topic, b"held", qos=1))
            done, _ = await asyncio.wait({publish}, timeout=0.5)  # negative check: nothing gets through
            assert not done, "PUBACK came back through a paused proxy"
            assert len(sub.messages) == 0
            proxy.resume()
            await asyncio.wait_for(publish, WAIT)
            msg = await next_message(sub)
            assert msg.payload == b"held"


def test_threaded_proxy_cut_and_restore(broker_url: str) -> None:
    with ThreadedTcpProxy.for_url(broker_url) as proxy:
        assert mqtt_probe(proxy.host, proxy.port, timeout=WAIT)
        with socket.create_connection((proxy.host, proxy.port), timeout=WAIT) as raw:
            proxy.wait_active(1)
            proxy.cut()
            raw.settimeout(WAIT)
            try:
                assert raw.recv(1) == b""  # closed ...
            except ConnectionResetError:
                pass  # ... or reset: either way the connection is gone
        assert not mqtt_probe(proxy.host, proxy.port, timeout=2)
        proxy.restore()
        assert mqtt_probe(proxy.host, proxy.port, timeout=WAIT)
        proxy.wait_active(0)

        proxy.cut(refuse_new=False)  # keep listening, reset each new connection after accepting it
        assert not mqtt_probe(proxy.host, proxy.port, timeout=2)
        assert proxy.connections_refused >= 1
        proxy.restore()
        assert mqtt_probe(proxy.host, proxy.port, timeout=WAIT)


# -- helpers ---------------------------------------------------------------------------------------------


def test_wait_for_returns_value_and_raises_with_message() -> None:
    assert wait_for(lambda: 42, 1.0) == 42
    with pytest.raises(AssertionError, match="never true"):
        wait_for(lambda: False, 0.1, message=lambda: "never true")
