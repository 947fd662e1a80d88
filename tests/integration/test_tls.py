"""The broker connection secured: TLS (server and client certificates), passwords, and the ACL of docs/security.md.

Real processes throughout: Mosquitto with a throwaway PKI (tests/support/tls.py), agents started with
fte-start-agent, commands run as fte-* scripts. The password/ACL tests start Mosquitto with
config/mosquitto-tls.conf and config/mosquitto.acl themselves (only port and file paths replaced).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from agent.link import connect_error
from tests.support.agents import AgentProcess, wait_until
from tests.support.brokers import find_mosquitto, mqtt_probe
from tests.support.tls import (ACL_FILE, CONFIG_TEMPLATE, Pki, SecureFteEnv, TlsMosquittoProcess,
                               find_mosquitto_passwd)

if find_mosquitto() is None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("mosquitto binary not found; install mosquitto", pytrace=False)
    pytest.skip("mosquitto binary not found; install mosquitto (apt install mosquitto) to run these tests",
                allow_module_level=True)

needs_passwd = pytest.mark.skipif(
    find_mosquitto_passwd() is None,
    reason="mosquitto_passwd not found (it comes with the mosquitto package): cannot write a password file",
)

PREFIX = "SYSTEM.FTE"
# distinctive, so that a leak anywhere is found by a plain substring search
PW_A1 = "pw-A1-Qx7vL2k9"
PW_A2 = "pw-A2-Zr4mN8c1"
PW_ADMIN = "pw-admin-Hd3sT6y0"
PW_WRONG = "pw-wrong-Kb5jW1e8"
SECRETS = (PW_A1, PW_A2, PW_ADMIN, PW_WRONG)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def envs() -> Iterator[list[SecureFteEnv]]:
    """Every SecureFteEnv a test makes; their agents are stopped at the end, whatever happened."""
    made: list[SecureFteEnv] = []
    yield made
    for env in made:
        env.stop_all()


def _env(envs: list[SecureFteEnv], tmp_path: Path, url: str, **kw: object) -> SecureFteEnv:
    home = tmp_path / "fte_home"
    home.mkdir(exist_ok=True)
    env = SecureFteEnv(home, url, **kw)  # type: ignore[arg-type]
    envs.append(env)
    return env


def _transfer(env: SecureFteEnv, data: Path, src: str, dst: str, size: int = 600_000) -> None:
    """A file of `size` random bytes (several 256 KiB chunks) from `src` to `dst`, checked byte for byte."""
    payload = os.urandom(size)
    source = data / f"from-{src}.bin"
    source.write_bytes(payload)
    target = data / f"to-{dst}-from-{src}.bin"
    r = env.run("create-transfer", "-sa", src, "-da", dst, "-df", str(target), str(source), "-w", "30", timeout=60)
    assert r.returncode == 0, f"{r}\n--- {src} ---\n{env.agents[src].log_tail()}\n--- {dst} ---\n" \
                              f"{env.agents[dst].log_tail()}"
    assert target.read_bytes() == payload


def _log(agent: AgentProcess) -> str:
    return agent.log.read_text(errors="replace")


# --------------------------------------------------------------------------------------------------
# in-process MQTT clients (to play a misbehaving agent)
# --------------------------------------------------------------------------------------------------


Who = tuple[ssl.SSLContext, "str | None", "str | None"]  # TLS context (client certificate), user, password


def _client(broker: TlsMosquittoProcess, who: Who) -> aiomqtt.Client:
    ctx, user, password = who
    return aiomqtt.Client(broker.host, broker.port, identifier=f"test-{secrets.token_hex(4)}", username=user,
                          password=password, tls_context=ctx, timeout=5)


async def _delivered(broker: TlsMosquittoProcess, publisher: Who, reader: Who, topic: str, marker: str,
                     retain: bool = False) -> bool:
    """Does a message that `publisher` publishes on `topic` reach `reader`, who may read `topic`?

    Decided without waiting for a timeout: `publisher` then publishes on `marker`, a topic it may write
    and `reader` may read; the broker delivers one publisher's messages in order, so the marker arriving
    first means the message was dropped."""
    probe = json.dumps({"kind": "ping", "request_id": secrets.token_hex(8), "reply_to": "nobody-listens"}).encode()
    async with _client(broker, reader) as sub, _client(broker, publisher) as pub:
        await sub.subscribe(topic, qos=1)
        await sub.subscribe(marker, qos=1)
        await pub.publish(topic, probe, qos=1, retain=retain)
        if marker != topic:  # (a positive control may use the topic itself: the probe comes first)
            await pub.publish(marker, b"marker", qos=1)
        async with asyncio.timeout(10):
            async for m in sub.messages:
                if bytes(m.payload) == probe:  # type: ignore[arg-type]
                    return True
                if str(m.topic) == marker:
                    return False
    raise AssertionError("the message stream ended")


def _tid() -> str:
    return secrets.token_hex(24)


# --------------------------------------------------------------------------------------------------
# TLS with a CA file
# --------------------------------------------------------------------------------------------------


def test_transfer_over_tls_with_ca_file(tmp_path: Path, pki: Pki, data: Path,
                                        envs: list[SecureFteEnv]) -> None:
    with TlsMosquittoProcess(pki, workdir=tmp_path / "broker") as broker:
        assert not mqtt_probe(broker.host, broker.port), "the broker must only speak TLS"
        env = _env(envs, tmp_path, broker.url, cli_env={"FTE_BROKER_CA_FILE": str(pki.ca_file)})
        for name in ("A1", "A2"):
            env.create_agent(name, sandbox=data, brokerCaFile=pki.ca_file)
        a1, a2 = env.start_agent("A1"), env.start_agent("A2")
        _transfer(env, data, "A1", "A2")

        r = env.run("list-agents", "--json")
        assert r.returncode == 0 and set(json.loads(r.stdout)) >= {"A1", "A2"}, str(r)
        assert f"connected to {broker.url}" in _log(a1) and f"connected to {broker.url}" in _log(a2)

        # a command without the CA refuses the broker's certificate, and says what to set
        bare = SecureFteEnv(env.home, broker.url)
        r = bare.run("ping-agent", "A1")
        assert r.returncode != 0
        assert "CERTIFICATE_VERIFY_FAILED" in r.stderr and "FTE_BROKER_CA_FILE" in r.stderr, str(r)
        # a CA file that does not exist is named
        r = SecureFteEnv(env.home, broker.url, cli_env={"FTE_BROKER_CA_FILE": str(tmp_path / "nope.pem")}).run(
            "ping-agent", "A1")
        assert r.returncode != 0 and "FTE_BROKER_CA_FILE" in r.stderr and "nope.pem" in r.stderr, str(r)


def test_wrong_ca_agent_logs_why_and_keeps_trying(tmp_path: Path, pki: Pki, data: Path,
                                                  envs: list[SecureFteEnv]) -> None:
    with TlsMosquittoProcess(pki, workdir=tmp_path / "broker") as broker:
        env = _env(envs, tmp_path, broker.url, cli_env={"FTE_BROKER_CA_FILE": str(pki.ca_file)})
        env.create_agent("A1", sandbox=data, brokerCaFile=pki.other_ca_file)
        a1 = env.start_agent("A1", wait_ready=False)

        def refusals() -> list[str]:
            return [line for line in _log(a1).splitlines() if "CERTIFICATE_VERIFY_FAILED" in line]

        # it retries (with backoff) and every attempt says why, naming the property to fix
        lines = wait_until(lambda: len(refusals()) >= 3 and refusals(), 15,
                           f"agent A1 did not report the certificate failure:\n{a1.log_tail()}")
        assert all("brokerCaFile" in line and broker.url in line for line in lines), lines
        assert a1.alive(), f"agent exited instead of retrying:\n{a1.log_tail()}"
        assert "Traceback" not in _log(a1)
        assert env.status("A1") is None  # never reached the broker
        a1.terminate(timeout=10)
        assert not a1.alive()

        # a CA file that is no PEM at all cannot get better by retrying: the agent stops and says so
        junk = tmp_path / "junk-ca.pem"
        junk.write_text("this is not a certificate\n")
        env.create_agent("A2", sandbox=data, brokerCaFile=junk)
        a2 = env.start_agent("A2", wait_ready=False)
        a2.proc.wait(15)
        assert a2.proc.returncode != 0
        assert f"cannot use the CA file {junk}" in _log(a2), a2.log_tail()


# --------------------------------------------------------------------------------------------------
# client certificates (mutual TLS, user name = certificate CN, the ACL of config/mosquitto.acl)
# --------------------------------------------------------------------------------------------------


def test_client_certificates_as_identity(tmp_path: Path, pki: Pki, data: Path, envs: list[SecureFteEnv]) -> None:
    with TlsMosquittoProcess(pki, workdir=tmp_path / "broker", template=CONFIG_TEMPLATE,
                             require_certificate=True, use_identity_as_username=True) as broker:
        admin_cert, admin_key = pki.client("fte-admin")
        env = _env(envs, tmp_path, broker.url, cli_env={
            "FTE_BROKER_CA_FILE": str(pki.ca_file), "FTE_BROKER_CERT_FILE": str(admin_cert),
            "FTE_BROKER_KEY_FILE": str(admin_key)})
        for name in ("A1", "A2"):
            cert, key = pki.client(name)
            env.create_agent(name, sandbox=data, brokerCaFile=pki.ca_file, brokerCertFile=cert, brokerKeyFile=key)
        env.start_agent("A1")
        env.start_agent("A2")
        _transfer(env, data, "A1", "A2")
        _transfer(env, data, "A2", "A1", size=10_000)

        # the certificate's CN is the broker user, so config/mosquitto.acl applies unchanged
        as_a1, as_a2 = (pki.context("A1"), None, None), (pki.context("A2"), None, None)
        as_admin = (pki.context("fte-admin"), None, None)

        async def acl() -> None:
            commands = f"{PREFIX}/Commands/A2"
            assert await _delivered(broker, as_admin, as_a2, commands, marker=commands), \
                "control: the operator's command must reach the agent"
            assert not await _delivered(broker, as_a1, as_a2, commands, marker=f"{PREFIX}/Data/A2/{_tid()}"), \
                "the certificate CN=A1 published a command to A2"

        asyncio.run(acl())

        # without a client certificate the broker refuses, and the reason names the settings
        async def no_cert() -> str:
            try:
                async with aiomqtt.Client(broker.host, broker.port, tls_context=pki.context(), timeout=2) as c:
                    await c.publish(f"{PREFIX}/Commands/A1", b"{}", qos=1)
            except aiomqtt.MqttError as exc:
                return connect_error(exc, 0.0)
            return "connected"

        reason = asyncio.run(no_cert())
        assert "brokerCertFile" in reason and "FTE_BROKER_CERT_FILE" in reason, reason


# --------------------------------------------------------------------------------------------------
# user names and passwords, secrets never shown, and the ACL
# --------------------------------------------------------------------------------------------------


@needs_passwd
def test_passwords_secrets_and_acl(tmp_path: Path, pki: Pki, data: Path, envs: list[SecureFteEnv]) -> None:
    users = {"A1": PW_A1, "A2": PW_A2, "fte-admin": PW_ADMIN}
    with TlsMosquittoProcess(pki, workdir=tmp_path / "broker", template=CONFIG_TEMPLATE, users=users,
                             acl_file=ACL_FILE) as broker:
        operator = {"FTE_BROKER_CA_FILE": str(pki.ca_file), "FTE_BROKER_USERNAME": "fte-admin",
                    "FTE_BROKER_PASSWORD": PW_ADMIN}
        env = _env(envs, tmp_path, broker.url, cli_env=operator,
                   agent_env={"A2": {"FTE_BROKER_PASSWORD": PW_A2}})
        # A1: user and password in agent.properties; A2: user in the file, password from the environment
        env.create_agent("A1", sandbox=data, brokerCaFile=pki.ca_file, brokerUsername="A1", brokerPassword=PW_A1)
        env.create_agent("A2", sandbox=data, brokerCaFile=pki.ca_file, brokerUsername="A2")
        assert PW_A2 not in (env.agent_dir("A2") / "agent.properties").read_text()
        a1, a2 = env.start_agent("A1"), env.start_agent("A2")

        # under the ACL each agent still does its job, as source and as destination
        _transfer(env, data, "A1", "A2")
        _transfer(env, data, "A2", "A1", size=10_000)
        r = env.run("ping-agent", "A2")
        assert r.returncode == 0, str(r)

        # the ACL confines: an agent's broker user cannot command agents, forge another agent's status,
        # or read another agent's file data
        ctx = pki.context()
        as_a1, as_a2, as_admin = (ctx, "A1", PW_A1), (ctx, "A2", PW_A2), (ctx, "fte-admin", PW_ADMIN)
        commands, data_a2 = f"{PREFIX}/Commands/A2", f"{PREFIX}/Data/A2/{_tid()}"

        async def acl() -> None:
            assert await _delivered(broker, as_admin, as_a2, commands, marker=commands), \
                "control: an operator's command must reach the agent"
            assert not await _delivered(broker, as_a1, as_a2, commands, marker=data_a2), \
                "agent A1's broker user published a command to A2"
            assert not await _delivered(broker, as_a2, as_a2, commands, marker=data_a2), \
                "an agent's broker user may not command even itself"
            assert await _delivered(broker, as_a1, as_a2, data_a2, marker=data_a2), \
                "control: a source agent must be able to send data to its destination"
            assert not await _delivered(broker, as_a2, as_a1, data_a2, marker=f"{PREFIX}/Data/A1/{_tid()}"), \
                "agent A1's broker user read file data sent to A2"
            assert not await _delivered(broker, as_a1, as_admin, f"{PREFIX}/Agents/A2",
                                        marker=f"{PREFIX}/Log/A1/{_tid()}", retain=True), \
                "agent A1's broker user published A2's status"
            assert not await _delivered(broker, as_a1, as_admin, f"{PREFIX}/Log/A2/{_tid()}",
                                        marker=f"{PREFIX}/Log/A1/{_tid()}"), \
                "agent A1's broker user wrote into A2's transfer log"

        asyncio.run(acl())
        st = env.status("A2")
        assert st is not None and st["pid"] == a2.pid and st["status"] in ("READY", "ACTIVE"), st
        for agent in (a1, a2):
            assert "refused the subscription" not in _log(agent), agent.log_tail()

        # secrets never shown: status, details, refused connections, logs
        for args in (("show-agent-details", "A1"), ("show-agent-details", "A2", "--json"), ("list-agents",)):
            r = env.run(*args)
            assert r.returncode == 0, str(r)
            assert not any(s in r.stdout + r.stderr for s in SECRETS), str(r)

        wrong = SecureFteEnv(env.home, broker.url, cli_env={**operator, "FTE_BROKER_PASSWORD": PW_WRONG})
        r = wrong.run("ping-agent", "A1")
        assert r.returncode != 0 and "Not authori" in r.stderr, str(r)
        assert "FTE_BROKER_PASSWORD" in r.stderr, str(r)
        assert not any(s in r.stdout + r.stderr for s in SECRETS), str(r)
        r = SecureFteEnv(env.home, broker.url, cli_env={"FTE_BROKER_CA_FILE": str(pki.ca_file)}).run(
            "ping-agent", "A1")
        assert r.returncode != 0 and "Not authori" in r.stderr, f"anonymous access must be refused: {r}"

        # an agent with a wrong password: refused, says why, keeps trying, never writes the password
        env.create_agent("A3", sandbox=data, brokerCaFile=pki.ca_file, brokerUsername="A1", brokerPassword=PW_WRONG)
        a3 = env.start_agent("A3", wait_ready=False)
        wait_until(lambda: _log(a3).count("Not authori") >= 2, 15, f"A3 did not report the refusal:\n{a3.log_tail()}")
        assert "brokerPassword" in _log(a3) and a3.alive(), a3.log_tail()
        a3.terminate(timeout=10)

        env.stop_all()
        for agent in (a1, a2, a3):
            text = _log(agent)
            leaked = [s for s in SECRETS if s in text]
            assert not leaked, f"{agent.name}'s log contains a password:\n{text}"


# --------------------------------------------------------------------------------------------------
# the documentation shows the files that the tests above use
# --------------------------------------------------------------------------------------------------


def test_docs_show_the_tested_configuration() -> None:
    from agent.settings import AgentSettings
    from cli.client import BROKER_ENV
    from tests.support.brokers import PROJECT_ROOT

    doc = (PROJECT_ROOT / "docs" / "security.md").read_text()
    for path in (CONFIG_TEMPLATE, ACL_FILE):
        assert path.read_text() in doc, f"docs/security.md does not show {path.name} as it is"
    for prop in ("brokerUrl", "brokerUsername", "brokerPassword", "brokerCaFile", "brokerCertFile", "brokerKeyFile"):
        assert prop in AgentSettings.model_fields and f"`{prop}" in doc, prop
    for var in BROKER_ENV.values():
        assert f"`{var}`" in doc, var
