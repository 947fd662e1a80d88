"""TLS test support: a throwaway PKI, Mosquitto with TLS / passwords / ACL, and an FteEnv per broker user.

* :class:`Pki` generates (with ``cryptography``) a CA, a server certificate for 127.0.0.1 / ::1 /
  localhost and client certificates (CN = the broker user name), as unencrypted PEM files.
* :class:`TlsMosquittoProcess` is :class:`MosquittoProcess` listening with TLS only: either a
  generated configuration, or ``config/mosquitto-tls.conf`` itself (``template=``) with the port and
  file paths replaced, so that the configuration shipped in docs/security.md is the one tested.
  Users and passwords go into a password file written with ``mosquitto_passwd -b``.
* :class:`SecureFteEnv` is :class:`FteEnv` with one environment for the commands (operator
  credentials, CA file) and one per agent (say, ``FTE_BROKER_PASSWORD`` for that agent only).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.agents import AgentProcess, FteEnv, script
from tests.support.brokers import PROJECT_ROOT, MosquittoProcess

__all__ = [
    "ACL_FILE",
    "CONFIG_TEMPLATE",
    "Pki",
    "SecureFteEnv",
    "TlsMosquittoProcess",
    "find_mosquitto_passwd",
    "tls_probe",
]

CONFIG_TEMPLATE = PROJECT_ROOT / "config" / "mosquitto-tls.conf"
ACL_FILE = PROJECT_ROOT / "config" / "mosquitto.acl"


# ---------------------------------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # fast, and accepted by OpenSSL / Mosquitto


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class _Ca:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path


def _make_ca(directory: Path, name: str) -> _Ca:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    path = directory / f"{slug}.crt"
    _write_cert(path, cert)
    _write_key(directory / f"{slug}.key", key)
    return _Ca(name, key, cert, path)


def _issue(ca: _Ca, common_name: str, *, server: bool, directory: Path, stem: str) -> tuple[Path, Path]:
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    _write_cert(cert_path, cert)
    _write_key(key_path, key)
    return cert_path, key_path


class Pki:
    """A throwaway PKI in ``directory``: ``ca_file``, ``server_cert`` / ``server_key``, client certificates
    on demand (:meth:`client`), and ``other_ca_file``: a CA that signed nothing of this broker."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca = _make_ca(self.dir, "mqtt-fte test CA")
        self.ca_file = self._ca.cert_path
        self.server_cert, self.server_key = _issue(self._ca, "localhost", server=True, directory=self.dir,
                                                   stem="server")
        self.other_ca_file = _make_ca(self.dir, "some other CA").cert_path
        self._clients: dict[str, tuple[Path, Path]] = {}

    def client(self, common_name: str) -> tuple[Path, Path]:
        """(certificate, key) PEM files of a client certificate with CN=``common_name``."""
        if common_name not in self._clients:
            stem = "client-" + re.sub(r"[^A-Za-z0-9._-]+", "_", common_name)
            self._clients[common_name] = _issue(self._ca, common_name, server=False, directory=self.dir, stem=stem)
        return self._clients[common_name]

    def context(self, client: str | None = None) -> ssl.SSLContext:
        """A client SSL context trusting this CA (and presenting the certificate of ``client``)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client is not None:
            cert, key = self.client(client)
            ctx.load_cert_chain(str(cert), str(key))
        return ctx


# ---------------------------------------------------------------------------------------------------
# Mosquitto with TLS
# ---------------------------------------------------------------------------------------------------


def find_mosquitto_passwd() -> str | None:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for candidate in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd",
                      "/opt/homebrew/bin/mosquitto_passwd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def tls_probe(host: str, port: int, context: ssl.SSLContext, timeout: float = 1.0) -> bool:
    """True if a TLS handshake with ``host:port`` succeeds and the broker answers an MQTT CONNECT with a
    CONNACK (accepted or not: a broker that refuses anonymous clients is up all the same)."""
    rest = b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x0ffte-tls-probe-1"
    packet = b"\x10" + bytes([len(rest)]) + rest
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as s:
                s.settimeout(timeout)
                s.sendall(packet)
                data = b""
                while len(data) < 4:
                    chunk = s.recv(4 - len(data))
                    if not chunk:
                        return False
                    data += chunk
                return data[0] == 0x20 and data[1] == 0x02
    except (OSError, ssl.SSLError):
        return False


class TlsMosquittoProcess(MosquittoProcess):
    """Mosquitto listening with TLS only (``mqtts://``), optionally with passwords and an ACL file.

    ``template``: a Mosquitto configuration to start from (e.g. :data:`CONFIG_TEMPLATE`); its
    ``listener``, ``cafile``/``certfile``/``keyfile``, ``password_file``, ``acl_file`` and
    ``persistence_location`` are replaced with this broker's, ``require_certificate`` and
    ``use_identity_as_username`` are switched as asked, and nothing else is changed.
    Without ``template`` a minimal configuration is generated (anonymous unless ``users`` are given).

    ``users``: user name -> password, written with ``mosquitto_passwd -b`` (raises FileNotFoundError
    when the tool is missing: check :func:`find_mosquitto_passwd` first and skip).
    """

    kind = "mosquitto-tls"

    def __init__(
        self,
        pki: Pki,
        *,
        template: Path | None = None,
        users: dict[str, str] | None = None,
        acl_file: Path | None = None,
        require_certificate: bool = False,
        use_identity_as_username: bool = False,
        log_debug: bool = False,
        **kwargs: Any,
    ) -> None:
        self.pki = pki
        self.template = template
        self.users = dict(users or {})
        self.acl_source = acl_file
        self.require_certificate = require_certificate
        self.use_identity_as_username = use_identity_as_username
        self.log_debug = log_debug
        self._passwd_written = False
        super().__init__(**kwargs)

    @property
    def url(self) -> str:
        host = self.connect_host
        return f"mqtts://[{host}]:{self.port}" if ":" in host else f"mqtts://{host}:{self.port}"

    @property
    def password_path(self) -> Path:
        return self.workdir / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.workdir / "mosquitto.acl"

    @property
    def connect_host(self) -> str:
        """Where clients connect: the listening address, or loopback for a wildcard one."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    def probe_context(self) -> ssl.SSLContext:
        # always present a client certificate, so the probe also works with require_certificate
        return self.pki.context(client="fte-probe")

    def answers(self, timeout: float = 1.0) -> bool:
        return tls_probe(self.connect_host, self.port, self.probe_context(), timeout)

    def _wait_ready(self, deadline: float) -> str:
        assert self.proc is not None
        ctx = self.probe_context()
        interval = 0.02
        while True:
            if self.proc.poll() is not None:
                return "exited"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed out"
            if tls_probe(self.connect_host, self.port, ctx, timeout=min(1.0, max(0.05, remaining))):
                return "ready" if self.proc.poll() is None else "exited"
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, 0.1)

    # -- files -----------------------------------------------------------------------------------

    def _write_password_file(self) -> None:
        if self._passwd_written:
            return
        self.password_path.write_text("")  # empty: nobody logs in with a password
        self.password_path.chmod(0o600)
        tool = find_mosquitto_passwd()
        if self.users and tool is None:
            raise FileNotFoundError("mosquitto_passwd not found (it comes with the mosquitto package)")
        for user, password in self.users.items():
            subprocess.run([str(tool), "-b", str(self.password_path), user, password], check=True,
                           capture_output=True, timeout=30)
        self._passwd_written = True

    def _tail_lines(self) -> list[str]:
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            "# --- added by tests/support/tls.py",
            f"user {user}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self.log_debug:
            lines.append("log_type debug")
        lines += ["connection_messages true", "log_timestamp true", "log_timestamp_format %Y-%m-%dT%H:%M:%S",
                  "sys_interval 0", *self.extra_config]
        return lines

    def _render_template(self, text: str) -> str:
        replacements = {
            "listener": f"listener {self.port} {self.host}",
            "cafile": f"cafile {self.pki.ca_file}",
            "certfile": f"certfile {self.pki.server_cert}",
            "keyfile": f"keyfile {self.pki.server_key}",
            "password_file": f"password_file {self.password_path}",
            "acl_file": f"acl_file {self.acl_path}",
            "persistence_location": f"persistence_location {self.workdir}/",
        }
        switches = {"require_certificate": self.require_certificate,
                    "use_identity_as_username": self.use_identity_as_username}
        seen: set[str] = set()
        out = []
        for line in text.splitlines():
            stripped = line.strip()
            word = stripped.lstrip("#").split(" ", 1)[0] if stripped else ""
            if stripped and not stripped.startswith("#") and word in replacements:
                out.append(replacements[word])
                seen.add(word)
            elif word in switches and (stripped.startswith("#" + word + " ") or stripped.startswith(word + " ")):
                out.append(f"{word} true" if switches[word] else f"#{word} true")
                seen.add(word)
            else:
                out.append(line)
        missing = set(replacements) - seen
        if missing:
            raise ValueError(f"{self.template}: no line for {', '.join(sorted(missing))}")
        return "\n".join(out + self._tail_lines()) + "\n"

    def config_text(self) -> str:
        if self.template is not None:
            return self._render_template(self.template.read_text())
        lines = [
            "# generated by tests/support/tls.py",
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            f"cafile {self.pki.ca_file}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
        ]
        if self.require_certificate:
            lines.append("require_certificate true")
        if self.use_identity_as_username:
            lines.append("use_identity_as_username true")
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self.password_path}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_source is not None:
            lines.append(f"acl_file {self.acl_path}")
        lines += ["persistence false", "max_inflight_messages 0", "max_inflight_bytes 0",
                  f"max_queued_messages {self.max_queued_messages}", "max_queued_bytes 0"]
        return "\n".join(lines + self._tail_lines()) + "\n"

    def _prepare(self) -> None:
        if self.users or self.template is not None:
            self._write_password_file()
        if self.acl_source is not None:
            shutil.copyfile(self.acl_source, self.acl_path)
        elif self.template is not None:
            shutil.copyfile(ACL_FILE, self.acl_path)
        super()._prepare()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------------
# agents and commands with their own broker credentials
# ---------------------------------------------------------------------------------------------------


@dataclass
class SecureFteEnv(FteEnv):
    """:class:`FteEnv` where the commands and each agent get environments of their own.

    ``cli_env``: added for every ``fte-*`` command and for :meth:`status` (e.g. FTE_BROKER_CA_FILE,
    FTE_BROKER_USERNAME, FTE_BROKER_PASSWORD of an operator). ``agent_env[name]``: added for that
    agent only. Agents never see ``cli_env``: FTE_BROKER_USERNAME / FTE_BROKER_PASSWORD would
    override their own brokerUsername / brokerPassword.
    """

    cli_env: dict[str, str] = field(default_factory=dict)
    agent_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def base_env(self) -> dict[str, str]:
        return FteEnv.env.fget(self)  # type: ignore[attr-defined]

    @property
    def env(self) -> dict[str, str]:
        return {**self.base_env, **self.cli_env}

    def env_of_agent(self, name: str) -> dict[str, str]:
        return {**self.base_env, **self.agent_env.get(name, {})}

    def start_agent(self, name: str, wait_ready: bool = True, timeout: float = 20) -> AgentProcess:
        log = self.agent_dir(name) / "test-agent.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            proc = subprocess.Popen([script("start-agent"), name, "-F"], env=self.env_of_agent(name), stdout=fh,
                                    stderr=fh, stdin=subprocess.DEVNULL)
        agent = AgentProcess(name, proc, log)
        self.agents[name] = agent
        if wait_ready:
            self.wait_status(name, {"READY", "ACTIVE"}, timeout=timeout, pid=proc.pid, process=agent)
        return agent

    def status(self, name: str) -> dict[str, Any] | None:
        from cli.client import ClientError, FteClient

        async def read() -> dict[str, Any] | None:
            try:
                async with FteClient(self.broker_url, env=self.env) as c:
                    st = await c.agent_status(name, settle=0.3)
                    return st.model_dump() if st else None
            except ClientError:
                return None

        return asyncio.run(read())
