"""Agent configuration: ``agent.properties`` + ``FTE_*`` environment variables -> ``AgentSettings``.

Property names are MFT's (camelCase) so an MFT administrator can read and edit the file directly.
Sources, highest precedence first:

1. keyword arguments to ``AgentSettings(...)``;
2. environment variables ``FTE_<propertyName>`` in any case (``FTE_TRANSFERACKTIMEOUT``), plus the
   conventional ``FTE_BROKER_URL`` / ``FTE_BROKER_USERNAME`` / ``FTE_BROKER_PASSWORD``;
3. ``$FTE_CONFIG_HOME/agents/<name>/agent.properties`` (read by ``load_agent_settings``);
4. the defaults below.

``load_agent_settings`` is the entry point: it turns every problem into a one-line ``SettingsError``
that names the file and line (or the environment variable), the property, and what to do.
See docs/configuration.md and docs/timeouts.md.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .core.brokers import check_broker_list, split_broker_list
from .core.errors import FteError
from .core.units import parse_rate
from agent.names import AGENT_NAME_RE, AGENT_NAME_RULE, agent_name_problem as _agent_name_problem, validate_agent_name
from agent.home import config_home  # (re-exported: agent.settings.config_home)
from agent.properties import PropertiesSyntaxError, PropertyValue, format_properties, parse_properties

__all__ = [
    "AGENT_NAME_RE",
    "AgentSettings",
    "SettingsError",
    "agent_dir",
    "config_home",
    "default_sandbox",
    "load_agent_settings",
    "properties_path",
    "render_agent_properties",
    "timeout_warnings",
    "validate_agent_name",
    "write_agent_properties",
]

ENV_PREFIX = "FTE_"
# Names people already use for brokers elsewhere (12-factor style); accepted next to FTE_<propertyName>.
ENV_ALIASES: dict[str, str] = {
    "FTE_BROKER_URL": "brokerUrl",
    "FTE_BROKER_USERNAME": "brokerUsername",
    "FTE_BROKER_PASSWORD": "brokerPassword",
    "FTE_TOPIC_PREFIX": "topicPrefix",  # the commands read this one too: one variable for both
}
# agentName is never read from the environment: an agent's identity is its directory, and a shell-wide
# FTE_AGENTNAME (say, a default agent for commands) must not rename whichever agent gets started.
_NOT_FROM_ENV = frozenset({"agentName"})
# Never echoed in messages, and kept byte-exact (spaces can be part of a password).
_SECRET = frozenset({"brokerPassword"})
# Properties an MFT user may bring along that have no meaning over MQTT: say so instead of "unknown".
_MFT_ONLY = {
    "agentQMgr": "brokerUrl",
    "agentQMgrHost": "brokerUrl",
    "agentQMgrPort": "brokerUrl",
    "agentQMgrChannel": "brokerUrl",
    "agentDesc": None,
    "agentType": None,
}

_WHOLE_RE = re.compile(r"[+-]?[0-9]+")


class SettingsError(FteError):
    """A configuration problem. ``str()`` is one line saying where, what is wrong and what to do;
    ``problems`` lists every problem found (the first one is the one in ``str()``)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        more = len(self.problems) - 1
        super().__init__(message + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""))


# --------------------------------------------------------------------------------------------- paths


def agent_dir(name: str, env: Mapping[str, str] = os.environ) -> Path:
    """``<config_home>/agents/<name>``; the name is validated so it can never escape that directory."""
    return config_home(env) / "agents" / validate_agent_name(name)


def properties_path(name: str, env: Mapping[str, str] = os.environ) -> Path:
    return agent_dir(name, env) / "agent.properties"


def default_sandbox() -> str:
    """Safe default sandboxRoot for a new agent: the user's home directory."""
    return str(Path.home())


# ------------------------------------------------------------------------------------ value checks


def _problem(reason: str) -> PydanticCustomError:
    # The reason goes through the context so that braces in it are never taken as a template.
    return PydanticCustomError("fte_value", "{reason}", {"reason": reason})


def _whole(unit: str, rule: str, ok: Callable[[int], bool]) -> BeforeValidator:
    """Parse a whole number strictly ("60000", not "60_000" or "6e4") and check its range."""
    of_unit = f" of {unit}" if unit else ""

    def check(value: object) -> int:
        if isinstance(value, str) and _WHOLE_RE.fullmatch(value.strip()):
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool):
            raise _problem(f"is not a whole number{of_unit}; write digits only")
        if not ok(value):
            raise _problem(f"is out of range: it must be {rule}")
        return value

    return BeforeValidator(check)


def _check(func: Callable[[Any], Any], before: bool = False) -> AfterValidator | BeforeValidator:
    """Wrap a plain function raising ValueError into a validator with our message style (`before`: ahead of
    the type's own parsing, for values written with a unit: "20M")."""

    def run(value: Any) -> Any:
        try:
            return func(value)
        except ValueError as exc:
            raise _problem(str(exc)) from None

    return BeforeValidator(run) if before else AfterValidator(run)


def _agent_name(value: str) -> str:
    problem = _agent_name_problem(value)
    if problem is not None:
        raise ValueError(f"is not a valid agent name ({problem}); {AGENT_NAME_RULE}")
    return value


def _parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` -> (host, port, tls)."""
    fix = "use mqtt://HOST:PORT or mqtts://HOST:PORT"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"is not a valid broker URL (bad host or port); {fix}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"is not a valid broker URL (the scheme must be mqtt:// or mqtts://); {fix}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password; set brokerUsername and brokerPassword instead")
    if not parts.hostname:
        raise ValueError(f"is not a valid broker URL (no host); {fix}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"is not a valid broker URL (no path, query or fragment allowed); {fix}")
    if port == 0:
        raise ValueError(f"is not a valid broker URL (port 0); {fix}")
    tls = scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def _broker_url(value: str) -> str:
    """One URL or a comma-separated list of them (agent.core.brokers), each checked."""
    return ",".join(check_broker_list(value, _parse_broker_url))


def _connect_timeout(value: float) -> float:
    if not 0.1 <= value <= 60:
        raise ValueError("must be between 0.1 and 60 seconds")
    return value


def _topic_prefix(value: str) -> str:
    if not value:
        raise ValueError("is empty; use e.g. topicPrefix=SYSTEM.FTE")
    if "+" in value or "#" in value or "\x00" in value:
        raise ValueError("must not contain the MQTT wildcards + or #")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError("must not start or end with '/' or contain '//'; use e.g. SYSTEM.FTE or site1/fte")
    if value.startswith("$"):
        raise ValueError("must not start with '$' (reserved for broker topics such as $SYS)")
    return value


def _expand(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # "~" with no resolvable home directory
        return path


def _parse_sandbox(spec: str) -> tuple[list[Path], list[Path]]:
    """``/a:/b:!/a/private`` -> ([/a, /b], [/a/private]). Entries are separated by os.pathsep."""
    allow: list[Path] = []
    deny: list[Path] = []
    for entry in spec.split(os.pathsep):
        entry = entry.strip()
        if not entry:
            continue
        excluded = entry.startswith("!")
        text = entry[1:].strip() if excluded else entry
        path = _expand(Path(text))
        if not text or not path.is_absolute():
            raise ValueError(f"has entry {entry!r} which is not an absolute path; write it in full or start it with ~/")
        (deny if excluded else allow).append(path)
    if not allow:
        raise ValueError(
            "lists no directory to allow, only exclusions starting with '!'; "
            f"list the allowed directories first, e.g. sandboxRoot=/srv/data{os.pathsep}!/srv/data/private"
        )
    return allow, deny


def _sandbox(value: str | None) -> str | None:
    if value is not None:
        _parse_sandbox(value)
    return value


def _command_path(value: str) -> str:
    from .core.program_call import ProgramCallError, split_command_path

    try:
        split_command_path(value)
    except ProgramCallError as exc:
        raise ValueError(str(exc).removeprefix("commandPath ")) from None
    return value


def _absolute(value: Path | None) -> Path | None:
    if value is None:
        return None
    path = _expand(value)
    if not path.is_absolute():
        raise ValueError("is not an absolute path; write it in full or start it with ~/")
    return path


def _existing_file(value: Path | None) -> Path | None:
    path = _absolute(value)
    if path is not None and not path.is_file():
        raise ValueError("does not exist or is not a file; give the path of a PEM file the agent can read")
    return path


# ------------------------------------------------------------------------------- loading context


@dataclass
class _Load:
    """What one settings load reads from, and where each value came from (for error messages).

    Passed to the sources through a ContextVar because pydantic-settings builds sources per class,
    not per call; a ContextVar is safe with threads and asyncio tasks."""

    env: Mapping[str, str]
    path: Path | None = None
    file_values: dict[str, PropertyValue] | None = None  # pre-parsed text (the writer's self-check)
    label: str | None = None  # replaces "<path>:<line>" in messages when the text is not a file yet
    origins: dict[str, str] = field(default_factory=dict)  # property -> "file:line" / "environment variable X"
    order: dict[str, tuple[int, int]] = field(default_factory=dict)  # property -> sort key for reporting
    raw: dict[str, str] = field(default_factory=dict)  # property -> text as written

    def note(self, key: str, origin: str, order: tuple[int, int], raw: str) -> None:
        # Sources run from highest precedence down, so the first origin noted is the one that wins.
        if key not in self.origins:
            self.origins[key], self.order[key], self.raw[key] = origin, order, raw


_LOADING: ContextVar[_Load | None] = ContextVar("_LOADING", default=None)


@contextmanager
def _loading(ctx: _Load) -> Iterator[_Load]:
    token = _LOADING.set(ctx)
    try:
        yield ctx
    finally:
        _LOADING.reset(token)


def _clean(key: str, value: str) -> str:
    # Java keeps trailing blanks in values; they are almost always accidents ("60000 "), so strip them,
    # except in secrets where a space may be meant.
    return value if key in _SECRET else value.strip()


class _EnvironmentSource(PydanticBaseSettingsSource):
    """``FTE_<propertyName>`` in any case, plus ENV_ALIASES. Other FTE_* variables are not ours: ignored."""

    def __init__(self, settings_cls: type[BaseSettings], ctx: _Load) -> None:
        super().__init__(settings_cls)
        self.ctx = ctx

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        names = {(ENV_PREFIX + key).upper(): key for key in self.settings_cls.model_fields if key not in _NOT_FROM_ENV}
        names.update(ENV_ALIASES)
        found: dict[str, list[tuple[str, str]]] = {}
        for var, value in self.ctx.env.items():
            key = names.get(var.upper())
            if key is not None and value != "":  # empty means "not set", as for an unset variable
                found.setdefault(key, []).append((var, _clean(key, value)))
        result: dict[str, Any] = {}
        for key, pairs in sorted(found.items()):
            pairs.sort()
            if len({value for _, value in pairs}) > 1:
                variables = " and ".join(var for var, _ in pairs)
                raise SettingsError(
                    f"environment variables {variables} set {key} to different values; unset all but one"
                )
            var, value = pairs[0]
            self.ctx.note(key, f"environment variable {var}", (0, 0), value)
            result[key] = value
        return result


class _PropertiesFileSource(PydanticBaseSettingsSource):
    """The agent.properties file, parsed with agent.properties. Unknown keys are passed on so that the
    model's extra="forbid" rejects them and we can name them with their line."""

    def __init__(self, settings_cls: type[BaseSettings], ctx: _Load) -> None:
        super().__init__(settings_cls)
        self.ctx = ctx

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def _read(self) -> dict[str, PropertyValue]:
        ctx = self.ctx
        if ctx.file_values is not None:
            return ctx.file_values
        if ctx.path is None:
            return {}
        try:
            data = ctx.path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or exc
            raise SettingsError(f"cannot read {ctx.path}: {reason}; check it exists and is readable") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("iso-8859-1")  # what Java's Properties.load(InputStream) assumes
        try:
            return parse_properties(text)
        except PropertiesSyntaxError as exc:
            raise SettingsError(f"{ctx.path}:{exc.line}: {exc.message}") from None

    def __call__(self) -> dict[str, Any]:
        known = self.settings_cls.model_fields
        result: dict[str, Any] = {}
        for key, prop in self._read().items():
            value = _clean(key, prop.value)
            if key in known and value == "":
                continue  # "key=" means "use the default", as in MFT
            origin = self.ctx.label or f"{self.ctx.path}:{prop.line}"
            self.ctx.note(key, origin, (1, prop.line), value)
            result[key] = value
        return result


# -------------------------------------------------------------------------------------- settings

_MS = "milliseconds"


def _agent_store(v: str | None) -> str | None:
    if v and not (v.startswith("postgresql://") or v.startswith("postgres://")):
        raise ValueError(f"agentStore {v!r} is not a postgresql:// URL; leave it unset for the local sqlite store")
    return v or None


class AgentSettings(BaseSettings):
    """One agent's configuration. Field names are the agent.properties property names."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    agentName: Annotated[str, _check(_agent_name)] = Field(
        description="Name of this agent: 1-28 characters of A-Z a-z 0-9 . _ (must match its directory name)."
    )
    brokerUrl: Annotated[str, _check(_broker_url)] = Field(
        "mqtt://127.0.0.1:1883",
        description="MQTT broker: mqtt://HOST:PORT (plain, port 1883 by default) or mqtts://HOST:PORT (TLS, 8883); "
        "or a comma-separated list of them, tried in order at every (re)connection.",
    )
    brokerConnectTimeout: Annotated[
        float, _check(_connect_timeout)
    ] = Field(
        2.0, description="Seconds one connection attempt to a broker may take (TCP connect, TLS, CONNACK) before "
        "the next URL is tried (0.1 .. 60)."
    )
    brokerUsername: str | None = Field(None, description="User name to connect to the broker (not set: anonymous).")
    brokerPassword: SecretStr | None = Field(
        None, description="Password for brokerUsername; prefer the FTE_BROKER_PASSWORD environment variable."
    )
    brokerCaFile: Annotated[Path | None, _check(_existing_file)] = Field(
        None,
        description="PEM file of CA certificates that sign the broker's certificate (mqtts://; default: system CAs).",
    )
    brokerCertFile: Annotated[Path | None, _check(_existing_file)] = Field(
        None, description="PEM client certificate, for brokers that require mutual TLS."
    )
    brokerKeyFile: Annotated[Path | None, _check(_existing_file)] = Field(
        None, description="PEM private key of brokerCertFile."
    )
    brokerKeepalive: Annotated[
        int, _whole("seconds", "between 5 and 65535 seconds", lambda v: 5 <= v <= 65535)
    ] = Field(
        30, description="Seconds between MQTT keepalive pings; the broker marks the agent UNREACHABLE after 1.5x this."
    )
    topicPrefix: Annotated[str, _check(_topic_prefix)] = Field(
        "SYSTEM.FTE",
        description="Root of every topic, shared by all agents and commands (no + # or leading/trailing /).",
    )
    agentChunkSize: Annotated[
        int, _whole("bytes", "between 1024 and 16777216 bytes (16 MiB)", lambda v: 1024 <= v <= 16 * 1024 * 1024)
    ] = Field(262144, description="Bytes of file data per chunk message (1024 .. 16777216).")
    agentWindowSize: Annotated[int, _whole("chunks", "between 1 and 1024 chunks", lambda v: 1 <= v <= 1024)] = Field(
        32, description="Chunks a source sends ahead of the destination's acknowledgement (memory = window x chunk)."
    )
    agentMaxDataInFlight: Annotated[int, _whole("bytes", "0 (no cap) or more bytes", lambda v: v >= 0)] = Field(
        67108864, description="Bytes sent and not yet acknowledged across all the transfers of this agent as a "
        "source (0: no cap; each transfer may still send one chunk)."
    )
    agentMaxBandwidth: Annotated[int, _check(parse_rate, before=True)] = Field(
        0, description="Bytes a second this agent sends at most, all its transfers and messages together: digits "
        "with an optional K, M or G (powers of 1000), e.g. 20M; 0: unlimited (fte-create-transfer --bandwidth "
        "caps one transfer; the lower applies)."
    )
    brokerProbe: bool = Field(
        True,
        description="true: at every connection, check that the broker keeps topics as published and passes "
        "chunk messages, and lower the chunk size if not (docs/brokers.md); false: no check.",
    )
    agentFsync: bool = Field(
        True,
        description="true: a received file is flushed to disk (fsync of the part file, rename, fsync of its "
        "directory) before it is reported done; false: not (faster; for scratch data only: a crash of the "
        "destination's host can lose files already reported done).",
    )
    transferAckTimeout: Annotated[int, _whole(_MS, "a positive number of milliseconds", lambda v: v > 0)] = Field(
        60000, description="Milliseconds without an acknowledgement (source) or data (destination) before retrying."
    )
    transferAckTimeoutRetries: Annotated[int, _whole("retries", "0 or more", lambda v: v >= 0)] = Field(
        5,
        description="The transfer enters recovery after transferAckTimeout x max(1, retries) without acknowledgement.",
    )
    transferRecoveryTimeout: Annotated[
        int,
        _whole(
            "seconds",
            "-1 (recover until successful), 0 (fail as soon as recovery starts) or a positive number of seconds",
            lambda v: v >= -1,
        ),
    ] = Field(
        -1,
        description="Seconds a source keeps recovering a stalled transfer: -1 until successful, 0 fail at once "
        "(fte-create-transfer -rt overrides).",
    )
    maxSourceTransfers: Annotated[int, _whole("transfers", "0 or more", lambda v: v >= 0)] = Field(
        25, description="Transfers this agent runs at once as the source (0: it sends nothing)."
    )
    maxDestinationTransfers: Annotated[int, _whole("transfers", "0 or more", lambda v: v >= 0)] = Field(
        25, description="Transfers this agent runs at once as the destination (0: it receives nothing)."
    )
    maxQueuedTransfers: Annotated[int, _whole("transfers", "0 or more", lambda v: v >= 0)] = Field(
        1000, description="Transfers waiting for a free slot before new requests are refused (0: no waiting)."
    )
    sandboxRoot: Annotated[str | None, _check(_sandbox)] = Field(
        None,
        description=f"Directories the agent may read and write, separated by '{os.pathsep}'; '!' excludes "
        f"(e.g. /srv/data{os.pathsep}!/srv/data/private). Not set: anything its user can.",
    )
    transferRoot: Annotated[Path | None, _check(_absolute)] = Field(
        None, description="Base directory for relative file paths in transfer requests (default: the user's home)."
    )
    agentStateDir: Annotated[Path | None, _check(_absolute)] = Field(
        None, description="Directory of the agent's state store: transfers, checkpoints (default: <agent dir>/state)."
    )
    agentStore: Annotated[str | None, _check(_agent_store)] = Field(
        None, description="Where the agent's state lives: not set, the sqlite file in agentStateDir; "
        "postgresql://USER@HOST:PORT/DB: that database, shared by a standby pair (docs/operations.md, Standby pair)."
    )
    standbyTakeoverTimeout: Annotated[
        int, _whole(_MS, "at least 3000 milliseconds", lambda v: v >= 3000)
    ] = Field(15000, description="With agentStore=postgresql://: milliseconds within which the standby takes over "
              "after the active died or lost the database (the active stops acting at 0.4x this without a renewal).")
    agentStatusPublishRateLimit: Annotated[int, _whole("seconds", "1 or more seconds", lambda v: v >= 1)] = Field(
        30, description="Minimum seconds between re-publications of the agent status when transfers change state."
    )
    metricsPort: Annotated[int, _whole("port", "0 (off) or a TCP port 1..65535", lambda v: 0 <= v <= 65535)] = Field(
        0, description="TCP port of the agent's Prometheus metrics (http://127.0.0.1:PORT/metrics); 0: off."
    )
    metricsHost: str = Field("127.0.0.1", description="Address the metrics port listens on (0.0.0.0: every interface).")
    authorityChecking: bool = Field(
        False,
        description="true: obey only commands signed by a requester listed in the agent's authorized_requesters "
        "file (fte-create-agent turns it on and trusts your key); false: obey anyone who can publish to it.",
    )
    commandPath: Annotated[str, _check(_command_path)] = Field(
        "", description="Directories, separated by ':', of the programs that program calls (-presrc, -postsrc, "
        "-predst, -postdst, monitor command tasks) may run on this agent; empty: none may run. Must be outside "
        "sandboxRoot (the agent refuses to start otherwise)."
    )
    commandTimeout: Annotated[int, _whole("seconds", "1 or more seconds", lambda v: v >= 1)] = Field(
        60, description="Seconds a program call may run before it is killed (each attempt)."
    )
    agentEncryption: bool = Field(
        True,
        description="true: encrypt the files' bytes, names and sizes end to end (AES-256-GCM) on every transfer "
        "this agent sends, and refuse transfers sent to it in the clear; false: send and accept them "
        "authenticated but readable by the broker (for a broker you trust, or to measure the cost).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Outside load_agent_settings (plain AgentSettings(...)): os.environ and no file.
        ctx = _LOADING.get() or _Load(env=os.environ)
        return init_settings, _EnvironmentSource(settings_cls, ctx), _PropertiesFileSource(settings_cls, ctx)

    # Parsed views -------------------------------------------------------------------------------

    @property
    def broker_urls(self) -> list[str]:
        """The brokers of brokerUrl, in the order they are tried."""
        return split_broker_list(self.brokerUrl)

    @property
    def broker_host(self) -> str:
        return _parse_broker_url(self.brokerUrl)[0]

    @property
    def broker_port(self) -> int:
        return _parse_broker_url(self.brokerUrl)[1]

    @property
    def broker_tls(self) -> bool:
        return _parse_broker_url(self.brokerUrl)[2]

    @property
    def sandbox_allow(self) -> list[Path]:
        """Directories the agent may use; empty when no sandboxRoot is set (no restriction)."""
        return _parse_sandbox(self.sandboxRoot)[0] if self.sandboxRoot else []

    @property
    def sandbox_deny(self) -> list[Path]:
        """Exclusions ('!' entries) inside the allowed directories."""
        return _parse_sandbox(self.sandboxRoot)[1] if self.sandboxRoot else []

    @property
    def transfer_root(self) -> Path:
        return self.transferRoot or Path.home()

    @property
    def state_dir(self) -> Path:
        # load_agent_settings fills agentStateDir from its env; this fallback uses os.environ.
        return self.agentStateDir or agent_dir(self.agentName) / "state"

    @property
    def stall_detection_ms(self) -> int:
        """Time without any acknowledgement after which a transfer enters recovery."""
        return self.transferAckTimeout * max(1, self.transferAckTimeoutRetries)


# ------------------------------------------------------------------------------- error reporting


def _suggest(key: str) -> str:
    if key in _MFT_ONLY:
        instead = _MFT_ONLY[key]
        return "; it is an IBM MQ setting with no meaning here" + (f": use {instead}" if instead else ": remove it")
    by_lower = {name.lower(): name for name in AgentSettings.model_fields}  # case slips count as close
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {by_lower[close[0]]!r}?"
    return "; remove it (the supported properties are listed in docs/configuration.md)"


def _shown(key: str, raw: str) -> str:
    if key in _SECRET:
        return "'***'"
    if key == "brokerUrl":
        raw = re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", raw)  # never echo a password in a URL
    return repr(raw)


def _describe(exc: ValidationError, ctx: _Load, expected_name: str | None) -> SettingsError:
    where = ctx.label or (str(ctx.path) if ctx.path else "agent settings")
    problems: list[tuple[tuple[int, int], str]] = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "?"
        origin = ctx.origins.get(key, "argument")
        order = ctx.order.get(key, (2, 0))
        kind = error["type"]
        if kind == "extra_forbidden":
            message = f"{origin}: unknown property {key!r}{_suggest(key)}"
        elif kind == "missing":
            example = expected_name or "<value>"
            message = f"{where}: {key} is missing; add the line {key}={example}"
            order = (-1, 0)
        else:
            raw = ctx.raw.get(key, str(error.get("input")))
            reason = (error.get("ctx") or {}).get("reason") if kind == "fte_value" else None
            message = f"{origin}: {key}={_shown(key, raw)} {reason or 'is invalid: ' + error['msg']}"
        problems.append((order, message))
    problems.sort(key=lambda p: p[0])
    lines = [message for _, message in problems]
    return SettingsError(lines[0], lines)


def _build(ctx: _Load, expected_name: str | None) -> AgentSettings:
    with _loading(ctx):
        try:
            return AgentSettings()
        except ValidationError as exc:
            raise _describe(exc, ctx, expected_name) from None


def load_agent_settings(name: str, env: Mapping[str, str] = os.environ, path: Path | None = None,
                        require_directories: bool = False) -> AgentSettings:
    """Load agent ``name`` from ``$FTE_CONFIG_HOME/agents/<name>/agent.properties`` (or ``path``),
    with ``FTE_*`` variables from ``env`` taking precedence. Raises SettingsError (one line).

    ``require_directories`` (an agent about to start): the directories of sandboxRoot and transferRoot must
    exist, as the agent would otherwise refuse every transfer there with a puzzling "outside the sandbox"."""
    try:
        validate_agent_name(name)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    file = path if path is not None else properties_path(name, env)
    if not file.is_file():
        raise SettingsError(
            f"agent {name!r} has no configuration at {file}; create it with: fte-create-agent -agentName {name}"
        )
    ctx = _Load(env=env, path=file)
    settings = _build(ctx, expected_name=name)
    if settings.agentName != name:
        origin = ctx.origins.get("agentName", str(file))
        raise SettingsError(
            f"{origin}: agentName={settings.agentName!r} does not match the agent directory name {name!r}; "
            f"set agentName={name} (or use the directory of agent {settings.agentName})"
        )
    # Make the defaults that depend on the environment concrete, so the rest of the agent never guesses.
    filled: dict[str, Any] = {}
    if settings.agentStateDir is None:
        filled["agentStateDir"] = agent_dir(name, env) / "state"
    if require_directories:
        _require_directories(settings, ctx)
        _command_path_outside_sandbox(settings, ctx)
    if settings.transferRoot is None:
        filled["transferRoot"] = Path.home()
    return settings.model_copy(update=filled) if filled else settings


def _require_directories(s: AgentSettings, ctx: _Load) -> None:
    """SettingsError naming the property and its origin for a directory the agent needs that is not one."""
    wanted = [("sandboxRoot", p, f"sandboxRoot={s.sandboxRoot!r} lists {p}, which") for p in s.sandbox_allow]
    if s.transferRoot is not None:  # the default (the home directory) is the user's, not a setting to fix
        wanted.append(("transferRoot", s.transferRoot, f"transferRoot={str(s.transferRoot)!r}"))
    for key, path, shown in wanted:
        if not path.exists():
            problem = f"does not exist; create the directory or correct {key}"
        elif not path.is_dir():
            problem = f"is not a directory; {key} names directories"
        else:
            continue
        raise SettingsError(f"{ctx.origins.get(key, str(ctx.path))}: {shown} {problem}")


def _command_path_outside_sandbox(s: AgentSettings, ctx: _Load) -> None:
    """SettingsError when a file this agent receives could land in commandPath (and so become a program it
    runs): commandPath needs a sandboxRoot, and no directory of one may be inside the other."""
    from .core.program_call import command_path_overlap, split_command_path

    dirs = split_command_path(s.commandPath)
    if not dirs:
        return
    where = ctx.origins.get("commandPath", str(ctx.path))
    if not s.sandboxRoot:
        raise SettingsError(f"{where}: commandPath is set but sandboxRoot is not: the agent could write files "
                            "into commandPath; set sandboxRoot to the directories it transfers, outside commandPath")
    real = [os.path.realpath(d) for d in dirs]
    hit = command_path_overlap(real, [os.path.realpath(p) for p in s.sandbox_allow],
                               [os.path.realpath(p) for p in s.sandbox_deny])
    if hit is not None:
        raise SettingsError(f"{where}: commandPath directory {hit[0]} overlaps sandboxRoot directory {hit[1]}: a "
                            "file that arrives could become a program the agent runs; move commandPath outside "
                            "sandboxRoot")


# -------------------------------------------------------------------------------------- warnings


def timeout_warnings(s: AgentSettings) -> list[str]:
    """Human warnings for settings that are valid but probably not what was meant (printed at startup)."""
    warnings: list[str] = []
    stall_s = s.stall_detection_ms / 1000
    retries = max(1, s.transferAckTimeoutRetries)
    stall = f"transferAckTimeout {s.transferAckTimeout} ms x {retries} = {stall_s:g} s"
    if s.stall_detection_ms <= 2 * s.brokerKeepalive * 1000:
        warnings.append(
            f"agent {s.agentName}: ack stall detection ({stall}) is not longer than 2 x brokerKeepalive "
            f"({2 * s.brokerKeepalive} s): transfers will enter recovery before a lost broker connection is noticed; "
            "raise transferAckTimeout or lower brokerKeepalive"
        )
    if 0 < s.transferRecoveryTimeout < stall_s:
        warnings.append(
            f"agent {s.agentName}: transferRecoveryTimeout ({s.transferRecoveryTimeout} s) is shorter than ack stall "
            f"detection ({stall}): a stalled transfer gets less time to recover than it took to notice the stall; "
            f"raise it to at least {stall_s:g} or use -1 (recover until successful)"
        )
    if not s.sandboxRoot:
        warnings.append(
            f"agent {s.agentName} has no sandboxRoot: it can read and write every file its user can; "
            "set sandboxRoot in agent.properties to restrict it"
        )
    elif not any(_inside(s.transfer_root, root) for root in s.sandbox_allow):
        warnings.append(
            f"agent {s.agentName}: transferRoot {s.transfer_root} is outside sandboxRoot: "
            "every relative path in a transfer request will be refused"
        )
    tls_files = [n for n in ("brokerCaFile", "brokerCertFile", "brokerKeyFile") if getattr(s, n) is not None]
    if tls_files and not any(_parse_broker_url(u)[2] for u in s.broker_urls):
        warnings.append(
            f"agent {s.agentName}: {', '.join(tls_files)} set but brokerUrl {s.brokerUrl} is not TLS: "
            "they are ignored; use mqtts://"
        )
    return warnings


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# ---------------------------------------------------------------------------------------- writer


def _default_text(info: FieldInfo) -> str:
    if isinstance(info.default, bool):
        return "true" if info.default else "false"  # Java properties spelling
    return "" if info.default is None else str(info.default)


def render_agent_properties(values: Mapping[str, str]) -> str:
    """The text ``write_agent_properties`` writes: every property, with the set ones active and the
    others commented out with their default, each under a one-line explanation."""
    unknown = [key for key in values if key not in AgentSettings.model_fields]
    if unknown:
        raise ValueError(f"unknown property {unknown[0]!r}{_suggest(unknown[0])}")
    name = values.get("agentName", "<agent>")
    header = (
        f"agent.properties of mqtt-fte agent {name}\n"
        "Java properties syntax: key=value; '#' or '!' starts a comment; '\\' at the end of a line continues it.\n"
        "A line '#property=value' shows the default: remove the '#' and edit the value to change it.\n"
        "Environment variables FTE_<property> (any case) override this file. Restart the agent to apply changes.\n"
        "Reference: docs/configuration.md; every timer: docs/timeouts.md"
    )
    blocks = ["".join(f"# {line}\n" for line in header.splitlines())]
    for key, info in AgentSettings.model_fields.items():
        if key in values:
            blocks.append(format_properties([(key, str(values[key]), info.description)]))
        else:
            comment, line = format_properties([(key, _default_text(info), info.description)]).splitlines()
            blocks.append(f"{comment}\n#{line}\n")
    return "\n".join(blocks)


def write_agent_properties(path: Path, values: dict[str, str], *, force: bool = False) -> None:
    """Write a commented agent.properties (mode 0600: it may hold brokerPassword).

    The text is checked by loading it back (round trip through the parser and the model) before
    anything is written. Raises ValueError for an unknown property, SettingsError for a bad value,
    FileExistsError if ``path`` exists and ``force`` is false.
    """
    if "agentName" not in values:
        raise ValueError("agentName is required to write agent.properties")
    text = render_agent_properties(values)
    _build(_Load(env={}, path=path, file_values=parse_properties(text), label=f"cannot create {path}"), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # O_EXCL: no check-then-write race
        except FileExistsError:
            raise FileExistsError(
                f"{path} already exists; not overwriting it (use force, fte-create-agent -f, to replace it)"
            ) from None
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as out:
            out.write(text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii", newline="\n") as out:
        out.write(text)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of it
