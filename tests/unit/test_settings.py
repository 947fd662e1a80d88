"""agent/settings.py: sources and precedence, one-line errors, warnings and the writer.

Every test uses tmp_path and an explicit env dict; nothing reads the real environment or home."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.properties import parse_properties
from agent.settings import (
    AGENT_NAME_RE,
    AgentSettings,
    SettingsError,
    agent_dir,
    config_home,
    default_sandbox,
    load_agent_settings,
    properties_path,
    render_agent_properties,
    timeout_warnings,
    validate_agent_name,
    write_agent_properties,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"FTE_CONFIG_HOME": str(tmp_path / "fte")}


def write(env: dict[str, str], text: str, name: str = "A1") -> Path:
    path = properties_path(name, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(env: dict[str, str], text: str, **extra_env: str) -> AgentSettings:
    write(env, text)
    return load_agent_settings("A1", {**env, **extra_env})


def load_error(env: dict[str, str], text: str, **extra_env: str) -> str:
    with pytest.raises(SettingsError) as info:
        load(env, text, **extra_env)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ paths


def test_paths_follow_fte_config_home(tmp_path: Path) -> None:
    env = {"FTE_CONFIG_HOME": str(tmp_path)}
    assert config_home(env) == tmp_path
    assert agent_dir("A1", env) == tmp_path / "agents" / "A1"
    assert properties_path("A1", env) == tmp_path / "agents" / "A1" / "agent.properties"


def test_config_home_defaults_to_dot_fte_in_home() -> None:
    assert config_home({}) == Path.home() / ".fte"
    assert default_sandbox() == str(Path.home())


def test_agent_dir_refuses_names_that_escape() -> None:
    with pytest.raises(ValueError, match="invalid agent name"):
        agent_dir("../etc", {"FTE_CONFIG_HOME": "/x"})


# ------------------------------------------------------------------------------------ agent names


@pytest.mark.parametrize("name", ["A1", "a", "AGENT.ONE", "agent_2", "x" * 28, "MixedCase.9_"])
def test_valid_agent_names(name: str) -> None:
    assert validate_agent_name(name) == name
    assert AGENT_NAME_RE.match(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("x" * 29, "29 characters"),
        (".hidden", "starts with '.'"),
        ("a/b", "'/'"),
        ("a+b", "'+'"),
        ("a#b", "'#'"),
        ("a b", "' '"),
        ("agent\n", "'\\n'"),
        ("é", "'é'"),
    ],
)
def test_invalid_agent_names(name: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_agent_name(name)
    assert problem in str(info.value)
    assert "1-28 characters of A-Z a-z 0-9 . _" in str(info.value)
    assert not AGENT_NAME_RE.match(name)


# ---------------------------------------------------------------------------- defaults and sources


def test_defaults(env: dict[str, str]) -> None:
    s = load(env, "agentName=A1\n")
    assert (s.brokerUrl, s.broker_host, s.broker_port) == ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883)
    assert s.broker_tls is False
    assert (s.brokerUsername, s.brokerPassword, s.brokerKeepalive, s.topicPrefix) == (None, None, 30, "SYSTEM.FTE")
    assert (s.agentChunkSize, s.agentWindowSize) == (262144, 32)
    assert (s.transferAckTimeout, s.transferAckTimeoutRetries, s.transferRecoveryTimeout) == (60000, 5, -1)
    assert (s.maxSourceTransfers, s.maxDestinationTransfers, s.maxQueuedTransfers) == (25, 25, 1000)
    assert (s.sandboxRoot, s.sandbox_allow, s.sandbox_deny) == (None, [], [])
    assert s.agentStatusPublishRateLimit == 30
    # Defaults that depend on where things live are made concrete by the loader.
    assert s.agentStateDir == agent_dir("A1", env) / "state" == s.state_dir
    assert s.transferRoot == Path.home() == s.transfer_root
    assert s.stall_detection_ms == 300_000


@pytest.mark.parametrize(
    ("file_line", "extra_env", "expected"),
    [
        ("", {}, 60000),  # default
        ("transferAckTimeout=1000", {}, 1000),  # file beats default
        ("transferAckTimeout=1000", {"FTE_TRANSFERACKTIMEOUT": "2000"}, 2000),  # env beats file
        ("transferAckTimeout=1000", {"FTE_transferAckTimeout": "3000"}, 3000),  # any case
        ("transferAckTimeout=1000", {"fte_TransferAckTimeout": "4000"}, 4000),
        ("", {"FTE_TRANSFERACKTIMEOUT": "5000"}, 5000),  # env beats default
        ("transferAckTimeout=1000", {"FTE_TRANSFERACKTIMEOUT": ""}, 1000),  # empty variable = unset
        ("transferAckTimeout=", {}, 60000),  # empty value = default
        ("transferAckTimeout = 7000   ", {}, 7000),  # stray blanks are not an error
    ],
)
def test_precedence_env_over_file_over_default(
    env: dict[str, str], file_line: str, extra_env: dict[str, str], expected: int
) -> None:
    assert load(env, f"agentName=A1\n{file_line}\n", **extra_env).transferAckTimeout == expected


@pytest.mark.parametrize(
    ("variable", "field", "value"),
    [
        ("FTE_BROKER_URL", "brokerUrl", "mqtts://broker.example:8884"),
        ("FTE_BROKERURL", "brokerUrl", "mqtts://broker.example:8884"),
        ("FTE_BROKER_USERNAME", "brokerUsername", "fte"),
        ("FTE_brokerUsername", "brokerUsername", "fte"),
    ],
)
def test_broker_environment_names(env: dict[str, str], variable: str, field: str, value: str) -> None:
    s = load(env, "agentName=A1\nbrokerUrl=mqtt://file:1883\nbrokerUsername=fromfile\n", **{variable: value})
    assert getattr(s, field) == value


def test_broker_password_from_environment_keeps_spaces(env: dict[str, str]) -> None:
    s = load(env, "agentName=A1\nbrokerPassword=fromfile\n", FTE_BROKER_PASSWORD=" s3cret ")
    assert s.brokerPassword is not None and s.brokerPassword.get_secret_value() == " s3cret "


def test_unrelated_fte_variables_are_ignored(env: dict[str, str]) -> None:
    # FTE_AGENTNAME in particular: a shell-wide default agent must not rename the agent being loaded.
    s = load(env, "agentName=A1\n", FTE_FOO="bar", FTE_COMMAND_TIMEOUT="abc", FTE_AGENTNAME="OTHER", OTHER="1")
    assert s.agentName == "A1"


def test_conflicting_environment_variables_are_an_error(env: dict[str, str]) -> None:
    message = load_error(env, "agentName=A1\n", FTE_BROKER_URL="mqtt://a:1", FTE_BROKERURL="mqtt://b:1")
    assert "FTE_BROKERURL and FTE_BROKER_URL" in message and "brokerUrl" in message


def test_same_value_twice_in_environment_is_fine(env: dict[str, str]) -> None:
    s = load(env, "agentName=A1\n", FTE_BROKER_URL="mqtt://a:1", FTE_BROKERURL="mqtt://a:1")
    assert s.broker_host == "a"


def test_init_kwargs_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FTE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FTE_TRANSFERACKTIMEOUT", "2000")
    monkeypatch.setenv("FTE_AGENTWINDOWSIZE", "8")
    s = AgentSettings(agentName="A1", transferAckTimeout=1000)
    assert (s.transferAckTimeout, s.agentWindowSize) == (1000, 8)


def test_settings_are_frozen(env: dict[str, str]) -> None:
    s = load(env, "agentName=A1\n")
    with pytest.raises(ValueError):
        s.transferAckTimeout = 5  # type: ignore[misc]


def test_secret_never_printed(env: dict[str, str]) -> None:
    s = load(env, "agentName=A1\nbrokerPassword=hunter2\n")
    assert isinstance(s.brokerPassword, SecretStr)
    assert s.brokerPassword.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert "hunter2" not in str(s.model_dump())


# ------------------------------------------------------------------------------------ error lines


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "agentName=A1\n# timers\ntransferAckTimeout=abc\n",
            ":3: transferAckTimeout='abc' is not a whole number of milliseconds",
        ),
        ("agentName=A1\nagentChunkSize=1.5\n", ":2: agentChunkSize='1.5' is not a whole number of bytes"),
        ("agentName=A1\nagentChunkSize=64_000\n", ":2: agentChunkSize='64_000' is not a whole number of bytes"),
        (
            "agentName=A1\ntransferRecoveryTimeout=-5\n",
            ":2: transferRecoveryTimeout='-5' is out of range: it must be -1 (recover until successful), 0",
        ),
        ("agentName=A1\nagentChunkSize=512\n", ":2: agentChunkSize='512' is out of range: it must be between 1024"),
        ("agentName=A1\nagentWindowSize=0\n", ":2: agentWindowSize='0' is out of range"),
        ("agentName=A1\ntransferAckTimeout=0\n", ":2: transferAckTimeout='0' is out of range"),
        ("agentName=A1\ntransferAckTimeoutRetries=-1\n", ":2: transferAckTimeoutRetries='-1' is out of range"),
        ("agentName=A1\nbrokerKeepalive=4\n", ":2: brokerKeepalive='4' is out of range"),
        ("agentName=A1\nmaxQueuedTransfers=-1\n", ":2: maxQueuedTransfers='-1' is out of range: it must be 0 or more"),
        ("agentName=A1\nagentStatusPublishRateLimit=0\n", ":2: agentStatusPublishRateLimit='0' is out of range"),
        (
            "agentName=A1\ntransferAckTimout=5\n",
            ":2: unknown property 'transferAckTimout'; did you mean 'transferAckTimeout'?",
        ),
        ("agentName=A1\ntransferacktimeout=5\n", "did you mean 'transferAckTimeout'?"),
        ("agentName=A1\nagentQMgr=QM1\n", ":2: unknown property 'agentQMgr'; it is an IBM MQ setting"),
        ("agentName=A1\nfrobnicate=1\n", ":2: unknown property 'frobnicate'; remove it"),
        ("agentName=A1\nbrokerUrl=http://h:1883\n", ":2: brokerUrl='http://h:1883' is not a valid broker URL"),
        ("agentName=A1\nbrokerUrl=localhost:1883\n", ":2: brokerUrl='localhost:1883' is not a valid broker URL"),
        ("agentName=A1\nbrokerUrl=mqtt://\n", "is not a valid broker URL (no host)"),
        ("agentName=A1\nbrokerUrl=mqtt://h:99999\n", "is not a valid broker URL (bad host or port)"),
        ("agentName=A1\nbrokerUrl=mqtt://h:1883/x\n", "no path, query or fragment"),
        ("agentName=A1\ntopicPrefix=a/+/b\n", ":2: topicPrefix='a/+/b' must not contain the MQTT wildcards"),
        ("agentName=A1\ntopicPrefix=/fte\n", "must not start or end with '/'"),
        ("agentName=A1\ntopicPrefix=$SYS\n", "must not start with '$'"),
        ("agentName=A1\ntransferRoot=relative/dir\n", ":2: transferRoot='relative/dir' is not an absolute path"),
        ("agentName=A1\nbrokerCaFile=/does/not/exist.pem\n", ":2: brokerCaFile='/does/not/exist.pem' does not exist"),
        ("agentName=A1\nsandboxRoot=data\n", ":2: sandboxRoot='data' has entry 'data' which is not an absolute path"),
        ("agentName=A1\nsandboxRoot=!/tmp/x\n", "lists no directory to allow, only exclusions"),
        ("agentName=A2\n", ":1: agentName='A2' does not match the agent directory name 'A1'; set agentName=A1"),
        ("agentName=A/1\n", ":1: agentName='A/1' is not a valid agent name (it contains '/')"),
        ("transferAckTimeout=5000\n", "agent.properties: agentName is missing; add the line agentName=A1"),
        ("agentName=A1\nx=\\u12\n", ":2: x: malformed \\uXXXX escape"),
    ],
)
def test_errors_name_file_line_and_property(env: dict[str, str], text: str, expected: str) -> None:
    message = load_error(env, text)
    assert message.startswith(str(properties_path("A1", env)))
    assert expected in message


def test_error_from_environment_names_the_variable(env: dict[str, str]) -> None:
    message = load_error(env, "agentName=A1\ntransferAckTimeout=1000\n", FTE_TransferAckTimeout="soon")
    assert message.startswith("environment variable FTE_TransferAckTimeout: transferAckTimeout='soon' is not a whole")
    assert "agent.properties" not in message


def test_first_problem_by_line_is_reported_and_all_are_kept(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        load(env, "agentName=A1\nagentWindowSize=0\nbogus=1\ntransferAckTimeout=x\n")
    assert str(info.value).endswith("(and 2 more problems)")
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in info.value.problems] == ["2", "3", "4"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("agentName=A1\nbrokerUrl=mqtt://user:hunter2@h:1883\n", "hunter2"),
        ("agentName=A1\nbrokerPassword=hunter2\nbrokerUrl=ftp://x\n", "hunter2"),
        ("agentName=A1\nbrokerPasword=hunter2\n", "hunter2"),  # a misspelt password key
    ],
)
def test_errors_never_echo_passwords(env: dict[str, str], text: str, secret: str) -> None:
    assert secret not in load_error(env, text)


def test_missing_file_says_how_to_create_it(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        load_agent_settings("A1", env)
    assert str(info.value) == (
        f"agent 'A1' has no configuration at {properties_path('A1', env)}; "
        "create it with: fte-create-agent -agentName A1"
    )


def test_explicit_path(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.properties"
    path.write_text("agentName=A1\nagentWindowSize=4\n")
    assert load_agent_settings("A1", env, path=path).agentWindowSize == 4
    with pytest.raises(SettingsError, match="no configuration at .*missing.properties"):
        load_agent_settings("A1", env, path=tmp_path / "missing.properties")


def test_invalid_agent_name_argument(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="invalid agent name '../x'"):
        load_agent_settings("../x", env)


def test_latin1_file_is_read(env: dict[str, str]) -> None:
    path = properties_path("A1", env)
    path.parent.mkdir(parents=True)
    path.write_bytes("agentName=A1\nbrokerUsername=jos\xe9\n".encode("iso-8859-1"))
    assert load_agent_settings("A1", env).brokerUsername == "josé"


# ---------------------------------------------------------------------------------- parsed values


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),
        ("mqtt://broker", "broker", 1883, False),
        ("mqtts://broker", "broker", 8883, True),
        ("MQTTS://Broker.Example:9999", "broker.example", 9999, True),
        ("mqtt://[::1]:1884", "::1", 1884, False),
        ("mqtt://broker:1883/", "broker", 1883, False),
    ],
)
def test_broker_url_parts(env: dict[str, str], url: str, host: str, port: int, tls: bool) -> None:
    s = load(env, f"agentName=A1\nbrokerUrl={url}\n")
    assert (s.broker_host, s.broker_port, s.broker_tls) == (host, port, tls)


@pytest.mark.parametrize(
    ("spec", "allow", "deny"),
    [
        ("/srv/data", ["/srv/data"], []),
        ("/srv/a:/srv/b", ["/srv/a", "/srv/b"], []),
        ("/srv/data:!/srv/data/private", ["/srv/data"], ["/srv/data/private"]),
        ("!/srv/data/private:/srv/data", ["/srv/data"], ["/srv/data/private"]),  # order does not matter
        (" /srv/a : ! /srv/a/x :", ["/srv/a"], ["/srv/a/x"]),  # blanks and empty entries
        ("~/in:!~/in/.ssh", ["~/in"], ["~/in/.ssh"]),
    ],
)
def test_sandbox_parsing(env: dict[str, str], spec: str, allow: list[str], deny: list[str]) -> None:
    s = load(env, f"agentName=A1\nsandboxRoot={spec}\n")
    assert s.sandbox_allow == [Path(p).expanduser() for p in allow]
    assert s.sandbox_deny == [Path(p).expanduser() for p in deny]
    assert all(p.is_absolute() for p in s.sandbox_allow + s.sandbox_deny)


def test_paths_expand_home_and_tls_files_must_exist(env: dict[str, str], tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = load(env, f"agentName=A1\nbrokerUrl=mqtts://h\nbrokerCaFile={ca}\ntransferRoot=~/x\nagentStateDir={tmp_path}\n")
    assert (s.brokerCaFile, s.transferRoot, s.agentStateDir) == (ca, Path.home() / "x", tmp_path)


# --------------------------------------------------------------------------------------- warnings


BASE = "agentName=A1\nsandboxRoot=~\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", []),
        # 10 s x 5 = 50 s <= 2 x 30 s keepalive
        ("transferAckTimeout=10000\n", ["ack stall detection (transferAckTimeout 10000 ms x 5 = 50 s)"]),
        ("transferAckTimeout=60000\ntransferAckTimeoutRetries=1\nbrokerKeepalive=30\n", ["is not longer than 2 x"]),
        ("transferAckTimeout=60001\ntransferAckTimeoutRetries=1\nbrokerKeepalive=30\n", []),  # just longer: fine
        ("transferAckTimeout=70000\ntransferAckTimeoutRetries=0\n", []),  # 0 retries still waits one timeout
        ("transferRecoveryTimeout=60\n", ["transferRecoveryTimeout (60 s) is shorter than ack stall detection"]),
        ("transferRecoveryTimeout=300\n", []),
        ("transferRecoveryTimeout=0\n", []),  # explicit "fail at once" is a choice, not a mistake
        ("transferRecoveryTimeout=-1\n", []),
        ("transferRoot=/elsewhere\n", ["transferRoot /elsewhere is outside sandboxRoot"]),
        ("brokerCaFile=CAFILE\n", ["brokerCaFile set but brokerUrl mqtt://127.0.0.1:1883 is not TLS"]),
    ],
)
def test_timeout_warnings(env: dict[str, str], tmp_path: Path, extra: str, expected: list[str]) -> None:
    ca = tmp_path / "ca.pem"
    ca.touch()
    s = load(env, BASE + extra.replace("CAFILE", str(ca)))
    warnings = timeout_warnings(s)
    assert len(warnings) == len(expected), warnings
    for warning, fragment in zip(warnings, expected):
        assert fragment in warning


def test_no_sandbox_warning(env: dict[str, str]) -> None:
    warnings = timeout_warnings(load(env, "agentName=A1\n"))
    assert warnings == [
        "agent A1 has no sandboxRoot: it can read and write every file its user can; "
        "set sandboxRoot in agent.properties to restrict it"
    ]


# ----------------------------------------------------------------------------------------- writer


def test_writer_round_trips_through_parser_and_loader(env: dict[str, str]) -> None:
    values = {
        "agentName": "A1",
        "brokerUrl": "mqtts://broker.example:8883",
        "brokerPassword": "p@ss:w=rd #1 ",
        "sandboxRoot": "/srv/data:!/srv/data/private",
        "transferRecoveryTimeout": "600",
    }
    path = properties_path("A1", env)
    write_agent_properties(path, values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it may hold a password
    parsed = parse_properties(path.read_text(encoding="ascii"))
    assert {k: v.value for k, v in parsed.items()} == values  # unset properties are commented out
    s = load_agent_settings("A1", env)
    assert s.brokerPassword is not None and s.brokerPassword.get_secret_value() == "p@ss:w=rd #1 "
    assert (s.broker_port, s.transferRecoveryTimeout, s.sandbox_deny) == (8883, 600, [Path("/srv/data/private")])


def test_writer_lists_every_property_with_its_default(env: dict[str, str]) -> None:
    text = render_agent_properties({"agentName": "A1"})
    for name, info in AgentSettings.model_fields.items():
        assert info.description and f"# {info.description}\n" in text
        if name != "agentName":
            default = "" if info.default is None else str(info.default)
            if isinstance(info.default, bool):
                default = default.lower()  # Java properties spell booleans true/false
            assert f"\n#{name}={default}\n" in text
    # Uncommenting any default line must give a valid file with the same settings.
    uncommented = re.sub(r"^#(?=[A-Za-z]+=)", "", text, flags=re.MULTILINE)
    assert uncommented.count("\n#") < text.count("\n#") - 15
    write(env, uncommented)
    assert load_agent_settings("A1", env).transferAckTimeout == 60000


def test_writer_refuses_to_overwrite_unless_forced(env: dict[str, str]) -> None:
    path = properties_path("A1", env)
    write_agent_properties(path, {"agentName": "A1"})
    with pytest.raises(FileExistsError, match="already exists; not overwriting"):
        write_agent_properties(path, {"agentName": "A1", "agentWindowSize": "4"})
    assert load_agent_settings("A1", env).agentWindowSize == 32
    write_agent_properties(path, {"agentName": "A1", "agentWindowSize": "4"}, force=True)
    assert load_agent_settings("A1", env).agentWindowSize == 4
    assert [p.name for p in path.parent.iterdir()] == ["agent.properties"]  # no temporary file left


@pytest.mark.parametrize(
    ("values", "error", "fragment"),
    [
        ({"agentName": "A1", "transferAckTimout": "5"}, ValueError, "did you mean 'transferAckTimeout'"),
        ({"agentName": "A1", "transferAckTimeout": "soon"}, SettingsError, "transferAckTimeout='soon' is not"),
        ({"transferAckTimeout": "5"}, ValueError, "agentName is required"),
    ],
)
def test_writer_rejects_bad_values_before_writing(
    env: dict[str, str], values: dict[str, str], error: type[Exception], fragment: str
) -> None:
    path = properties_path("A1", env)
    with pytest.raises(error, match=fragment):
        write_agent_properties(path, values)
    assert not path.exists()


def test_sample_file_is_the_writer_output() -> None:
    sample = REPO / "config" / "agent.properties.sample"
    expected = render_agent_properties({"agentName": "A1", "brokerUrl": "mqtt://127.0.0.1:1883", "sandboxRoot": "~",
                                        "authorityChecking": "true"})
    assert sample.read_text(encoding="ascii") == expected, "regenerate config/agent.properties.sample"
