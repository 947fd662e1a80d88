"""What the commands use to talk to agents: request/reply, retained status, log subscriptions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any, AsyncIterator, Callable

import aiomqtt

from agent.core.errors import FteError
from agent.core.brokers import BrokerListError, BrokerRotation, check_broker_list
from agent.link import BrokerAddress, BrokerConfigError, connect_error, make_client, redact_url, subscribe_granted
from agent.core.policy import SUBSCRIBE_ATTEMPTS
from agent.wire import provenance
from agent.wire.protocol import AgentStatus, ProtocolError, Reply, Topics, dump, parse_agent_status, parse_reply

from .trusted_agents import AgentKeys

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"

# paho logs connection trouble as warnings; the commands report it themselves, in one line
logging.getLogger("mqtt").addHandler(logging.NullHandler())
logging.getLogger("mqtt").propagate = False


# seconds one connection attempt of a command may take (TCP connect, TLS, CONNACK) before the next broker of the
# list is tried (agents: brokerConnectTimeout)
CONNECT_TIMEOUT = 4.0

# seconds the broker may take to confirm a subscription (SUBACK)
SUBSCRIBE_TIMEOUT = 30.0


class ClientError(FteError):
    """A command failed; the message says what was wrong and what to do. `code` is the exit code."""


class NoAnswer(ClientError):
    """An agent did not answer a request within the wait (and no ignored reply came either)."""


def broker_url(explicit: str | None = None, agent: str | None = None) -> str:
    """--broker, else FTE_BROKER_URL, else the broker of a locally configured agent, else localhost."""
    if explicit:
        return explicit
    if os.environ.get("FTE_BROKER_URL"):
        return os.environ["FTE_BROKER_URL"]
    if agent:
        try:
            from agent.settings import load_agent_settings

            return str(load_agent_settings(agent).brokerUrl)
        except Exception:
            pass
    return DEFAULT_BROKER


# Broker credentials and TLS files of the commands (agents use their agent.properties instead).
BROKER_ENV = {
    "username": "FTE_BROKER_USERNAME",
    "password": "FTE_BROKER_PASSWORD",
    "ca_file": "FTE_BROKER_CA_FILE",
    "cert_file": "FTE_BROKER_CERT_FILE",
    "key_file": "FTE_BROKER_KEY_FILE",
}


def broker_address(url: str, env: Mapping[str, str] = os.environ) -> BrokerAddress:
    """The broker at `url` with the commands' credentials from the environment: FTE_BROKER_USERNAME,
    FTE_BROKER_PASSWORD and, for mqtts://, FTE_BROKER_CA_FILE, FTE_BROKER_CERT_FILE, FTE_BROKER_KEY_FILE.
    An empty variable counts as unset."""
    values = {key: env.get(var) or None for key, var in BROKER_ENV.items()}
    for key in ("ca_file", "cert_file", "key_file"):
        path = values[key]
        if path is not None:
            path = os.path.expanduser(path)
            if not os.path.isfile(path):
                raise ClientError(f"{BROKER_ENV[key]}={path} does not exist or is not a file; "
                                  "give the path of a PEM file")
            values[key] = path
    if values["key_file"] and not values["cert_file"]:
        raise ClientError("FTE_BROKER_KEY_FILE is set but FTE_BROKER_CERT_FILE is not; set both for a client "
                          "certificate")
    try:
        return BrokerAddress.from_url(url, **values)
    except ValueError as exc:
        raise ClientError(str(exc)) from None


def broker_addresses(urls: str, env: Mapping[str, str] = os.environ) -> list[BrokerAddress]:
    """`broker_address` of each URL of a comma-separated list (agent.core.brokers), in order. A malformed
    entry is one error naming it."""
    def check(url: str) -> None:
        BrokerAddress.from_url(url)

    try:
        entries = check_broker_list(urls, check)
    except BrokerListError as exc:
        raise ClientError(f"the broker list (--broker or FTE_BROKER_URL) {redact_url(urls)!r}: "
                          f"{redact_url(str(exc))}; give URLs like mqtt://HOST:PORT separated by commas") from None
    except ValueError as exc:  # a single URL: its own message
        raise ClientError(str(exc)) from None
    return [broker_address(url, env) for url in entries]


def topic_prefix() -> str:
    return os.environ.get("FTE_TOPIC_PREFIX", "SYSTEM.FTE")


class FteClient:
    """One broker connection for one command. Use as `async with FteClient(url) as c:`."""

    def __init__(self, url: str, prefix: str | None = None, env: Mapping[str, str] | None = None,
                 keys: AgentKeys | None = None, on_ignored: Callable[[str], None] | None = None) -> None:
        # env: where FTE_BROKER_USERNAME / _PASSWORD / _CA_FILE / _CERT_FILE / _KEY_FILE come from (os.environ),
        # and FTE_CONFIG_HOME, whose agent keys the client trusts (keys: others, e.g. the demo's)
        from agent.home import config_home

        # the brokers of the list, tried in order at every (re)connection; addr: the one connected (or tried)
        self.addrs = broker_addresses(url, os.environ if env is None else env)
        self.addr = self.addrs[0]
        self._rotation = BrokerRotation(len(self.addrs))
        self.keys = keys or AgentKeys(config_home(os.environ if env is None else env))
        # told of every message ignored because it is not signed by a trusted agent key (the commands' -v)
        self.on_ignored = on_ignored
        self._unverified_replies: dict[str, str] = {}  # request id -> why its reply was not believed
        # status topic -> why the last message on it was not a status of the agent it names (require_agent says it)
        self._invalid_statuses: dict[str, str] = {}
        self.url = self.addr.url  # never the URL as given: it may hold a password
        self.topics = Topics(prefix or topic_prefix())
        self.client_id = "fte-cli-" + secrets.token_hex(6)
        self._stack = AsyncExitStack()
        self.client: aiomqtt.Client | None = None
        self._pending: dict[str, tuple[asyncio.Future[Reply], str]] = {}  # request id -> (reply, agent asked)
        self._queues: list[tuple[str, asyncio.Queue[aiomqtt.Message]]] = []
        self._reader: asyncio.Task[None] | None = None
        self.disconnected = asyncio.Event()

    async def __aenter__(self) -> "FteClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the first broker of the list that answers (one round: each tried once, in order; after a
        lost connection the round starts with the next one)."""
        self.disconnected.clear()
        failures: list[str] = []
        for _ in range(len(self.addrs)):
            index, _wait = self._rotation.next_attempt()  # no wait within a round
            self.addr = self.addrs[index]
            try:
                client = await self._connect_one()
            except ClientError as exc:
                if len(self.addrs) == 1:
                    raise
                failures.append(str(exc))
                continue
            self._rotation.connected()
            break
        else:
            self._rotation = BrokerRotation(len(self.addrs))  # the next connect() starts at the first again
            raise ClientError(f"cannot connect to any broker of the list: {'; '.join(failures)}")
        self.url = self.addr.url
        self.client = client
        try:
            # 30 s, not aiomqtt's 10: a loaded broker (the embedded one under a big transfer) can be that slow
            # a refused subscription is asked for again (a NATS 2.9 cluster short of a node refuses some)
            await subscribe_granted(client, self.topics.replies(self.client_id), timeout=SUBSCRIBE_TIMEOUT)
            for topic, _ in self._queues:
                await subscribe_granted(client, topic, timeout=SUBSCRIBE_TIMEOUT)
        except aiomqtt.MqttError as exc:
            # connected, but the broker did not confirm a subscription (overloaded, or an ACL refused it)
            raise ClientError(f"the broker at {self.addr.url} accepted the connection but did not confirm a "
                              f"subscription ({exc}); it may be overloaded, or its ACL may refuse the topic: try "
                              "again, or check the broker's log") from None
        self._reader = asyncio.create_task(self._read())

    async def _connect_one(self) -> aiomqtt.Client:
        try:
            client = make_client(self.addr, self.client_id, keepalive=10, connect_timeout=CONNECT_TIMEOUT)
        except BrokerConfigError as exc:
            raise ClientError(f"cannot connect to the broker at {self.addr.url}: {exc}") from None
        started = time.monotonic()
        try:
            await self._stack.enter_async_context(client)
        except aiomqtt.MqttError as exc:
            reason = connect_error(exc, started)
            if reason == str(exc):  # nothing more specific known: the usual cause
                reason += "; is it running? (set --broker or FTE_BROKER_URL)"
            raise ClientError(f"cannot connect to the broker at {self.addr.url}: {reason}") from None
        return client

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            try:
                await self._reader
            except BaseException:
                pass
        try:
            await self._stack.aclose()
        except Exception:
            pass
        self._stack = AsyncExitStack()

    async def reconnect(self, give_up_after: float | None = None) -> None:
        """Reconnect after the broker went away (to the next broker of the list first), retrying every second."""
        await self.close()
        self._rotation.lost(stable=True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            try:
                await self.connect()
                return
            except ClientError:
                if give_up_after is not None and loop.time() - start > give_up_after:
                    raise
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        assert self.client is not None
        try:
            async for m in self.client.messages:
                topic = str(m.topic)
                payload = bytes(m.payload) if isinstance(m.payload, (bytes, bytearray)) else b""
                if topic == self.topics.replies(self.client_id):
                    try:
                        reply = parse_reply(payload)
                    except ProtocolError:
                        continue
                    pending = self._pending.get(reply.request_id)
                    if pending is None:
                        continue
                    fut, agent = pending
                    keys = self.keys.keys(agent)
                    if not provenance.verify_payload(payload, provenance.REPLY, agent, keys):
                        # a forged answer (anyone can publish here) must not stand for the agent's: wait on
                        why = provenance.why_unverified(payload, keys, agent)
                        self._unverified_replies[reply.request_id] = why
                        self.ignored(f"ignored a reply to request {reply.request_id} claiming to be from agent "
                                     f"{agent}: {why}")
                        continue
                    self._pending.pop(reply.request_id, None)
                    if not fut.done():
                        fut.set_result(reply)
                    continue
                for pattern, q in self._queues:
                    if m.topic.matches(pattern):
                        q.put_nowait(m)
        except aiomqtt.MqttError:
            pass
        finally:
            self.disconnected.set()

    async def subscribe(self, topic: str, q: "asyncio.Queue[aiomqtt.Message] | None" = None
                        ) -> "asyncio.Queue[aiomqtt.Message]":
        q = q if q is not None else asyncio.Queue()
        self._queues.append((topic, q))
        assert self.client is not None
        if not await subscribe_granted(self.client, topic, timeout=SUBSCRIBE_TIMEOUT):
            # reading on as if subscribed would answer "not known" or "did not answer": a wrong answer
            raise ClientError(f"the broker at {self.addr.url} refused the subscription to {topic} "
                              f"{SUBSCRIBE_ATTEMPTS} times; check the broker's ACL for your user (docs/security.md); "
                              "a NATS cluster short of a node refuses some for as long as the node is away "
                              "(docs/brokers.md): try again")
        return q

    async def request(self, agent: str, command: Any, timeout: float = 10.0) -> Reply:
        """Send a command to an agent and wait for its reply."""
        assert self.client is not None
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[command.request_id] = (fut, agent)
        try:
            await self.client.publish(self.topics.commands(agent), self.sign(command, agent), qos=1)
        except aiomqtt.MqttError as exc:
            raise ClientError(f"lost the broker at {self.addr.url}: {exc}") from None
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            why = self._unverified_replies.get(command.request_id)
            if why is not None:
                raise ClientError(f"no trustworthy answer from agent {agent} within {timeout:g} s: a reply came "
                                  f"but was ignored ({why}); if agent {agent} runs elsewhere, trust its key with: "
                                  f"fte key trust-agent {agent} KEY (KEY from fte key show --agent {agent} where "
                                  f"it is configured)", 2) from None
            raise NoAnswer(f"agent {agent} did not answer within {timeout:g} s; is it running? "
                              f"(check with fte-list-agents, start it with fte-start-agent {agent})", 2) from None
        finally:
            self._pending.pop(command.request_id, None)
            self._unverified_replies.pop(command.request_id, None)

    def ignored(self, note: str) -> None:
        if self.on_ignored is not None:
            self.on_ignored(note)

    def status_of(self, message: aiomqtt.Message) -> AgentStatus | None:
        """The agent status in `message` (on <prefix>/Agents/<name>), `verified` when it is signed by that
        agent's trusted key; None for anything that is not a status of the agent its topic names."""
        payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
        levels = self.topics.split(str(message.topic))
        topic = str(message.topic)
        try:
            st = parse_agent_status(payload)
        except ProtocolError as exc:
            if payload:
                self._invalid_statuses[topic] = str(exc)
                self.ignored(f"ignored a status on {message.topic} that is not one ({exc})")
            return None
        if levels != [self.topics.AGENTS, st.agent]:
            self._invalid_statuses[topic] = f"a status of agent {st.agent}"
            self.ignored(f"ignored a status of agent {st.agent} published on {message.topic}")
            return None
        self._invalid_statuses.pop(topic, None)
        keys = self.keys.keys(st.agent)
        st._verified = provenance.verify_payload(payload, provenance.STATUS, st.agent, keys)
        if not st._verified:
            self.ignored(f"the status of agent {st.agent} is unverified: "
                         f"{provenance.why_unverified(payload, keys, st.agent)}")
        return st

    def event_of(self, message: aiomqtt.Message) -> dict[str, Any] | None:
        """The JSON object of an agent's event or retained listing (<prefix>/Log/<agent>/...,
        <prefix>/Transfers/<agent>/..., <prefix>/Monitors/<agent>/..., <prefix>/Scheduler/<agent>) when it is
        signed by that agent's trusted key for that topic; None (and a note) for anything else."""
        payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
        topic = str(message.topic)
        levels = self.topics.split(topic)
        agent = levels[1] if len(levels) >= 2 else ""
        keys = self.keys.keys(agent)
        if not provenance.verify_payload(payload, provenance.EVENT, topic, keys):
            self.ignored(f"ignored an event on {topic}: {provenance.why_unverified(payload, keys, agent or '?')}")
            return None
        return event_of(message)

    def sign(self, command: Any, agent: str) -> bytes:
        """The command's bytes for `agent`, signed with the requester's key when there is one (agent.auth): the
        signature covers `agent` (the command's `target`), so the bytes are obeyed by that agent only."""
        from agent.auth import is_agent_key_name, load_private, requester_name, sign
        from agent.home import config_home

        name = requester_name()
        if is_agent_key_name(name):
            raise ClientError(f"requester name {name!r} (FTE_REQUESTER or your user name) is in the namespace of "
                              "agents' identity keys, which never command an agent; set FTE_REQUESTER to another "
                              "name")
        try:
            key = load_private(config_home(), name)
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read your signing key: {exc}") from None
        if key is None:
            return dump(command)
        return json.dumps(sign(json.loads(dump(command)), name, key, target=agent)).encode()

    async def retained_json(self, topic: str, settle: float = 0.7) -> list[dict[str, Any]]:
        """The retained JSON objects on `topic` (a filter), collected until none arrives for `settle` s."""
        q = await self.subscribe(topic)
        rows: list[dict[str, Any]] = []
        while True:
            try:
                m = await asyncio.wait_for(q.get(), settle)
            except asyncio.TimeoutError:
                return rows
            data = self.event_of(m)  # an agent's listing, signed by it for this topic: no other
            if data is not None:
                rows.append(data)

    async def agent_statuses(self, settle: float = 0.5, want: str | None = None) -> dict[str, AgentStatus]:
        """The retained statuses of every agent (or, with `want`, until that one arrives)."""
        q = await self.subscribe(self.topics.agent_status(want) if want else self.topics.all_agent_status())
        found: dict[str, AgentStatus] = {}
        while True:
            try:
                m = await asyncio.wait_for(q.get(), settle)
            except asyncio.TimeoutError:
                return found
            st = self.status_of(m)
            if st is None:
                continue
            found[st.agent] = st
            if want and st.agent == want:
                return found

    async def agent_statuses_of(self, names: list[str], settle: float = 1.0) -> dict[str, AgentStatus]:
        """The retained statuses of the named agents, each read on its own topic <prefix>/Agents/<name>
        (every broker delivers a retained message to such a subscription; RabbitMQ 3.x does not to
        <prefix>/Agents/+): until all have arrived, or none arrived for `settle` s."""
        q: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        for name in names:
            await self.subscribe(self.topics.agent_status(name), q)
        wanted = set(names)
        found: dict[str, AgentStatus] = {}
        while not wanted <= found.keys():
            try:
                m = await asyncio.wait_for(q.get(), settle)
            except asyncio.TimeoutError:
                break
            st = self.status_of(m)
            if st is not None and st.agent in wanted:
                found[st.agent] = st
        return found

    async def last_heard(self, names: list[str], settle: float = 0.5) -> dict[str, dict[str, Any]]:
        """Each named agent's retained heartbeat (<prefix>/Agents/<name>/heard: {agent, time, interval,
        keepalive}) when that agent signed it; an agent without one (an older fte) is left out."""
        q: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        for name in names:
            await self.subscribe(self.topics.heard(name), q)
        found: dict[str, dict[str, Any]] = {}
        while not set(names) <= found.keys():
            try:
                m = await asyncio.wait_for(q.get(), settle)
            except asyncio.TimeoutError:
                break
            heard = self.heard_of(m)
            if heard is not None:
                found[heard["agent"]] = heard
        return found

    def heard_of(self, message: aiomqtt.Message) -> dict[str, Any] | None:
        """The heartbeat in `message` when the agent its topic names signed it, checked; else None."""
        levels = self.topics.split(str(message.topic))
        if len(levels) != 3 or levels[0] != self.topics.AGENTS or levels[2] != "heard":
            return None
        data = self.event_of(message)
        if not isinstance(data, dict) or data.get("agent") != levels[1] or not isinstance(data.get("time"), str) \
                or len(data["time"]) > 64:
            return None
        return data

    async def agent_status(self, agent: str, settle: float = 1.0) -> AgentStatus | None:
        return (await self.agent_statuses(settle=settle, want=agent)).get(agent)

    def invalid_status(self, agent: str) -> str | None:
        """Why the last message read on the agent's status topic was not its status (None: it was, or none came)."""
        return self._invalid_statuses.get(self.topics.agent_status(agent))

    def invalid_status_text(self, agent: str) -> str | None:
        """What to tell the user when the agent's status topic holds something that is not its status (None:
        it does not). Something is there: "no status" would send the user looking for a typo."""
        why = self.invalid_status(agent)
        if why is None:
            return None
        return (f"the status on {self.topics.agent_status(agent)} is not a valid agent status ({why}): ignored; "
                f"a running agent {agent} replaces it within a second: if it stays, agent {agent} is not running, "
                f"or not on this broker (check the name with fte-list-agents)")

    async def require_agent(self, agent: str) -> AgentStatus:
        st = await self.agent_status(agent)
        invalid = self.invalid_status_text(agent) if st is None else None
        if invalid is not None:
            raise ClientError(invalid)
        if st is None:
            raise ClientError(f"agent {agent!r} is not known on the broker at {self.addr.url} (no status on "
                              f"{self.topics.agent_status(agent)}); check the name with fte-list-agents, "
                              f"or create and start it with fte-create-agent / fte-start-agent")
        return st


def new_request_id() -> str:
    return secrets.token_hex(8)


def event_of(message: aiomqtt.Message) -> dict[str, Any] | None:
    try:
        data = json.loads(bytes(message.payload))  # type: ignore[arg-type]
        return data if isinstance(data, dict) else None
    except Exception:
        return None


class RecentEvents:
    """Log events are delivered at least once: an agent killed between publishing an event and noting it as
    published publishes it again at its restart, with the same `event_id`. This remembers the ids of the
    last `size` events, so that a reader shows each event once."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._ids: dict[str, None] = {}

    def first_time(self, event: dict[str, Any]) -> bool:
        eid = event.get("event_id")
        if not isinstance(eid, str):
            return True  # not a transfer event (or an older agent): nothing to go by
        if eid in self._ids:
            return False
        self._ids[eid] = None
        if len(self._ids) > self.size:
            del self._ids[next(iter(self._ids))]
        return True


async def iterate(q: "asyncio.Queue[aiomqtt.Message]", timeout: float | None) -> AsyncIterator[aiomqtt.Message]:
    while True:
        yield await asyncio.wait_for(q.get(), timeout)
