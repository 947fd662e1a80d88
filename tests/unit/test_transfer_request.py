"""The transfer-request flags are checked once (cli/transfer_request.py): fte-create-transfer,
fte-create-template and fte-create-monitor refuse a bad -rt, -de, -sd or -cs with the same one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.transfer_request import TransferRequestError, check_flags, parse_metadata, transfer_spec

# the same flag value given to each command; each command's other flags are complete and valid
COMMANDS = {
    "create-transfer": ["create-transfer", "-sa", "A1", "-da", "A2", "-dd", "/in", "/data/x"],
    "create-template": ["create-template", "-tn", "T1", "-sa", "A1", "-da", "A2", "-dd", "/in"],
    "create-monitor": ["create-monitor", "-ma", "A1", "-mn", "M1", "-md", "/watch", "-tr", "match,*.csv",
                       "-pu", "seconds", "-da", "A2", "-dd", "/in"],
}
BAD = {
    ("-rt", "-5"): "-rt",
    ("-de", "sometimes"): "-de 'sometimes' is not one of: error, overwrite",
    ("-sd", "shred"): "-sd 'shred' is not one of: leave, delete",
    ("-cs", "crc32"): "-cs 'crc32' is not one of: sha256, md5, none",
}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cli.main import app

    monkeypatch.setenv("FTE_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTE_BROKER_URL", "mqtt://127.0.0.1:9")  # nothing listens: the check comes first
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


@pytest.mark.parametrize("flag,value", sorted(BAD))
def test_the_three_commands_refuse_a_bad_flag_with_the_same_line(cli, flag: str, value: str) -> None:
    lines = {}
    for verb, args in COMMANDS.items():
        r = cli(*args[:1], flag, value, *args[1:])
        assert r.exit_code == 1, (verb, r.output)
        errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, (verb, r.output)
        lines[verb] = errors[0]
    assert len(set(lines.values())) == 1, lines
    assert BAD[(flag, value)] in lines["create-transfer"]
    with pytest.raises(TransferRequestError) as exc:
        check_flags(*(value if f == flag else None for f in ("-de", "-sd", "-cs")),
                    int(value) if flag == "-rt" else None)  # type: ignore[arg-type]
    assert lines["create-transfer"] == f"error: {exc.value}"


@pytest.mark.parametrize("flag,value,words", [
    ("-pr", "10", "-pr 10 is not a priority: give a whole number from 0 (lowest, the default) to 9 (highest)"),
    ("--bandwidth", "20MB", "--bandwidth '20MB' is not a rate in bytes a second"),
])
def test_the_three_commands_refuse_a_bad_priority_or_bandwidth_alike(cli, flag: str, value: str,
                                                                    words: str) -> None:
    lines = set()
    for args in COMMANDS.values():
        r = cli(*args[:1], flag, value, *args[1:])
        errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert r.exit_code == 1 and len(errors) == 1, r.output
        lines.add(errors[0])
    assert len(lines) == 1 and words in lines.pop()


def test_metadata_is_parsed_once_with_one_message(cli) -> None:
    assert parse_metadata(["a=1,b=2", "a=3"]) == {"a": "3", "b": "2"}
    with pytest.raises(TransferRequestError, match=r"-md 'oops' is not key=value \(e.g. -md ticket=42\)"):
        parse_metadata(["a=1,oops"])
    for verb in ("create-transfer", "create-template"):
        args = COMMANDS[verb]
        r = cli(*args[:1], "-md", "oops", *args[1:])
        assert r.exit_code == 1 and "error: -md 'oops' is not key=value (e.g. -md ticket=42)" in r.output, r.output


def test_a_bad_task_field_of_a_monitor_is_one_line_naming_the_flag(cli) -> None:
    args = COMMANDS["create-monitor"]
    r = cli(*[("a/b" if a == "A2" else a) for a in args])
    assert r.exit_code == 1, r.output
    assert "error: invalid transfer request: -da 'a/b'" in r.output and "Traceback" not in r.output, r.output


def test_transfer_spec_builds_what_the_flags_say() -> None:
    spec = transfer_spec("A1", "A2", ["/x", "/y"], None, "/in", "overwrite", "delete", "MD5", recursive=True,
                         recovery_timeout=30, job_name="j", metadata=["k=v"])
    assert [(i.source, i.destination, i.destination_type, i.recursive) for i in spec.items] == [
        ("/x", "/in", "directory", True), ("/y", "/in", "directory", True)]
    assert (spec.exist, spec.disposition, spec.checksum, spec.recovery_timeout, spec.metadata) == (
        "overwrite", "delete", "md5", 30, {"k": "v"})


def test_priority_and_bandwidth_go_into_the_spec_and_a_monitor_task() -> None:
    from agent.monitor import MonitorSpec

    spec = transfer_spec("A1", "A2", ["/data/x"], None, "/in", "error", "leave", "sha256", priority=7,
                         bandwidth="20M")
    assert (spec.priority, spec.bandwidth) == (7, 20_000_000)
    task = MonitorSpec(name="M1", agent="A1", directory="/watch", trigger="match,*.csv", poll_seconds=5,
                       task=spec.model_dump()).task
    assert (task.priority, task.bandwidth) == (7, 20_000_000)
    plain = transfer_spec("A1", "A2", ["/data/x"], None, "/in", "error", "leave", "sha256", bandwidth="0")
    # not given: off the wire (an older agent takes the request), 0 and only agentMaxBandwidth at the agent
    assert plain.priority is None and plain.bandwidth is None
    assert b"priority" not in plain.model_dump_json(exclude_none=True).encode()
