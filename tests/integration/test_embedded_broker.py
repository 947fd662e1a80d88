"""The embedded amqtt broker (``fte broker``, ``fte demo``): in-process lifecycle and the CLI entry."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid

import aiomqtt
import pytest

from agent.embedded_broker import EmbeddedBroker
from tests.support.brokers import PROJECT_ROOT, TcpProxy, free_port, mqtt_probe

pytestmark = pytest.mark.timeout(90)

WAIT = 15.0


def client(b: EmbeddedBroker | TcpProxy, **kwargs: object) -> aiomqtt.Client:
    kwargs.setdefault("timeout", WAIT)
    return aiomqtt.Client(b.host, b.port, **kwargs)  # type: ignore[arg-type]


def topic(name: str) -> str:
    return f"fte-test/{uuid.uuid4().hex}/{name}"


async def next_message(c: aiomqtt.Client, timeout: float = WAIT) -> aiomqtt.Message:
    return await asyncio.wait_for(c.messages.__anext__(), timeout)


async def drain_until_dropped(c: aiomqtt.Client) -> None:
    async for _ in c.messages:
        pass


async def test_port_zero_picks_a_port_and_url() -> None:
    async with EmbeddedBroker(host="127.0.0.1", port=0) as b:
        assert b.running
        assert b.port > 0
        assert b.url == f"mqtt://127.0.0.1:{b.port}"
        assert await asyncio.to_thread(mqtt_probe, b.host, b.port, 5.0)
    assert not b.running


async def test_explicit_port_and_port_in_use() -> None:
    port = free_port()
    async with EmbeddedBroker(port=port) as b:
        assert b.port == port and b.url.endswith(f":{port}")
        with pytest.raises(OSError):  # a first start fails fast when the port is taken
            await EmbeddedBroker(port=port).start()


async def test_qos1_256kib_payloads() -> None:
    t = topic("data")
    payloads = [os.urandom(256 * 1024) for _ in range(8)]
    async with EmbeddedBroker() as b, client(b) as sub, client(b) as pub:
        await sub.subscribe(t, qos=1)
        for p in payloads:
            await pub.publish(t, p, qos=1)
        for expected in payloads:
            msg = await next_message(sub)
            assert msg.qos == 1 and msg.payload == expected


async def test_stop_drops_every_client_and_start_reuses_the_port() -> None:
    async with EmbeddedBroker() as b:
        port = b.port
        async with client(b) as subscriber, client(b) as idle:
            await subscriber.subscribe(topic("x"), qos=1)
            reader = asyncio.ensure_future(drain_until_dropped(subscriber))
            idle_reader = asyncio.ensure_future(drain_until_dropped(idle))
            # a connection that never sent CONNECT is closed too
            raw = await asyncio.to_thread(socket.create_connection, (b.host, b.port), WAIT)
            raw.settimeout(WAIT)
            try:
                await b.stop()
                assert not b.running and b.connection_count == 0
                for task in (reader, idle_reader):
                    with pytest.raises(aiomqtt.MqttError):
                        await asyncio.wait_for(task, WAIT)
                try:
                    assert await asyncio.to_thread(raw.recv, 1) == b""
                except ConnectionResetError:
                    pass
            finally:
                raw.close()

        with pytest.raises(aiomqtt.MqttError, match="refused"):  # down: nothing listens
            async with client(b, timeout=5):
                pass

        await b.start()
        assert b.port == port
        t = topic("after")
        async with client(b) as sub, client(b) as pub:
            await sub.subscribe(t, qos=1)
            await pub.publish(t, b"back", qos=1)
            assert (await next_message(sub)).payload == b"back"


async def test_stop_and_start_are_idempotent() -> None:
    b = EmbeddedBroker()
    await b.stop()  # never started: no-op
    await b.start()
    await b.start()
    port = b.port
    await b.stop()
    await b.stop()
    await b.start()
    assert b.port == port
    await b.stop()


@pytest.mark.parametrize("keep", [True, False])
async def test_retained_messages_across_restart(keep: bool) -> None:
    t = topic("status")
    async with EmbeddedBroker(keep_retained=keep) as b:
        async with client(b) as pub:
            await pub.publish(t, b"READY", qos=1, retain=True)
        await b.stop()
        await b.start()
        async with client(b) as late:
            await late.subscribe(t, qos=1)
            if keep:
                msg = await next_message(late)
                assert msg.payload == b"READY" and msg.retain
            else:
                with pytest.raises(asyncio.TimeoutError):  # negative check: a short bounded window
                    await next_message(late, timeout=0.5)


async def test_an_unsubscribed_filter_does_not_bring_retained_messages_to_new_clients() -> None:
    """amqtt 0.12 sends a connecting client the retained messages matching any filter in its subscription table,
    and kept a filter there after its last subscriber unsubscribed (agents unsubscribe before they stop): every
    later client would have received every retained agent status. A disconnection always removed the filter."""
    t = topic("status")
    async with EmbeddedBroker() as b, client(b) as agent:
        await agent.subscribe(t.rsplit("/", 1)[0] + "/+", qos=1)
        await agent.publish(t, b"STOPPED", qos=1, retain=True)
        await agent.unsubscribe(t.rsplit("/", 1)[0] + "/+")
        async with client(b) as newcomer:
            await newcomer.subscribe(topic("own"), qos=1)
            with pytest.raises(asyncio.TimeoutError):  # negative check: a short bounded window
                await next_message(newcomer, timeout=0.5)
        async with client(b) as reader:  # the retained message itself is still there for those who ask
            await reader.subscribe(t, qos=1)
            assert (await next_message(reader)).payload == b"STOPPED"


async def test_a_new_client_gets_no_retained_messages_it_did_not_subscribe_to() -> None:
    """amqtt 0.12 sent a connecting client the retained messages matching any other client's filters."""
    t = topic("status")
    async with EmbeddedBroker() as b, client(b) as agent:
        await agent.subscribe(t.rsplit("/", 1)[0] + "/+", qos=1)  # stays subscribed
        await agent.publish(t, b"READY", qos=1, retain=True)
        async with client(b) as newcomer:
            await newcomer.subscribe(topic("own"), qos=1)
            with pytest.raises(asyncio.TimeoutError):  # negative check: a short bounded window
                await next_message(newcomer, timeout=0.5)
            await newcomer.subscribe(t, qos=1)  # asked for: it comes
            assert (await next_message(newcomer)).payload == b"READY"


async def test_clients_connect_while_others_disconnect() -> None:
    """A client connecting while others disconnected lost its connection now and then: amqtt iterated its
    subscription table across awaits (for a session that existed before) while disconnections deleted from it."""
    prefix = topic("log").rsplit("/", 1)[0]
    ids = [f"persistent-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    async with EmbeddedBroker() as b:
        async with client(b) as pub:
            for i in range(200):
                await pub.publish(f"{prefix}/t{i}", b"{}" * 100, qos=1, retain=True)
        for cid in ids:  # sessions that outlive their connections, subscribed to those retained messages
            async with client(b, identifier=cid, clean_session=False) as c:
                await c.subscribe(f"{prefix}/#", qos=1)
        stop = asyncio.Event()

        async def churn() -> None:  # clean sessions coming and going, each with a filter of its own
            while not stop.is_set():
                async with client(b) as c:
                    await c.subscribe(topic("churn") + "/#", qos=1)

        churners = [asyncio.ensure_future(churn()) for _ in range(3)]
        failures = []
        try:
            for _ in range(15):
                for cid in ids:
                    try:
                        async with client(b, identifier=cid, clean_session=False, timeout=5) as c:
                            await c.subscribe(topic("own"), qos=1)
                    except aiomqtt.MqttError as exc:
                        failures.append(repr(exc))
        finally:
            stop.set()
            churned = await asyncio.gather(*churners, return_exceptions=True)
        assert failures == [], failures
        assert [r for r in churned if r is not None] == []


async def test_last_will_when_the_network_to_a_client_is_cut() -> None:
    t = topic("agent")
    async with EmbeddedBroker() as b, TcpProxy(b.host, b.port) as proxy, client(b) as watcher:
        await watcher.subscribe(t, qos=1)
        will = aiomqtt.Will(t, b"UNREACHABLE", qos=1, retain=True)
        async with client(proxy, will=will) as agent:
            reader = asyncio.ensure_future(drain_until_dropped(agent))
            await proxy.wait_active(1)
            proxy.cut()
            with pytest.raises(aiomqtt.MqttError):
                await asyncio.wait_for(reader, WAIT)
        msg = await next_message(watcher)
        assert msg.payload == b"UNREACHABLE"


# -- the CLI entry: python -m agent.embedded_broker ---------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_module_entry_prints_url_and_stops_cleanly_on_signal(signum: int) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.embedded_broker", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # readline blocks until the line or EOF; the process is killed below if the test times out
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == f"embedded MQTT broker listening on mqtt://127.0.0.1:{port}", (
            line + (proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        )
        assert mqtt_probe("127.0.0.1", port, timeout=WAIT)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        assert not mqtt_probe("127.0.0.1", port, timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)


# -- fte demo: the README's first command ---------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_fte_demo_runs_to_success(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`fte demo` as a new user runs it (the README's "Try it"): every act ends as it says, exit 0."""
    fte = os.path.join(os.path.dirname(sys.executable), "fte")
    env = dict(os.environ, FTE_CONFIG_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    env.pop("FTE_BROKER_URL", None)
    proc = subprocess.run([fte, "demo", "--size", "8"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=220)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    for said in ("file arrived intact", "recovered: started -> recovering -> resumed -> completed",
                 "result 69 (RecoveryTimedOut); part file removed", "demo succeeded"):
        assert said in out, f"{said!r} not in:\n{out}"
