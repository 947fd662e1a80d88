"""Templates and transfer request files without a broker: the merge rules (command line over template),
the request file's round trip, bad files, and the create-transfer flags that need no broker (-gt, -td)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.wire.protocol import TransferSpec, Topics
from cli.templates import (Overrides, RequestFileError, Template, TemplateError, TemplateSpec, load_request_file,
                           merge, read_definition_file, request_document, template_spec, validate_template_name,
                           write_request_file)

FULL = TemplateSpec.model_validate({
    "source_agent": "A1", "destination_agent": "A2",
    "items": [{"source": "/data/a.bin", "destination": "/in", "destination_type": "directory"},
              {"source": "/data/b.bin", "destination": "/in", "destination_type": "directory"}],
    "exist": "overwrite", "disposition": "delete", "checksum": "md5", "recovery_timeout": 60, "job_name": "nightly",
    "metadata": {"team": "ops", "run": "1"},
})


def test_topic() -> None:
    assert Topics().templates("T1") == "SYSTEM.FTE/Templates/T1"
    assert Topics("P").templates() == "P/Templates/+"


# --------------------------------------------------------------------------- merging


def test_template_alone_makes_the_transfer() -> None:
    spec = merge(FULL, Overrides(), "template T")
    assert spec.source_agent == "A1" and spec.destination_agent == "A2"
    assert [(i.source, i.destination, i.destination_type) for i in spec.items] == [
        ("/data/a.bin", "/in", "directory"), ("/data/b.bin", "/in", "directory")]
    assert (spec.exist, spec.disposition, spec.checksum, spec.recovery_timeout, spec.job_name) == (
        "overwrite", "delete", "md5", 60, "nightly")
    assert spec.metadata == {"team": "ops", "run": "1"}


def test_every_flag_given_overrides_the_template() -> None:
    ov = Overrides(source_agent="B1", destination_agent="B2", exist="error", disposition="leave", checksum="SHA256",
                   recovery_timeout=0, job_name="adhoc", recursive=True)
    spec = merge(FULL, ov, "template T")
    assert (spec.source_agent, spec.destination_agent) == ("B1", "B2")
    assert (spec.exist, spec.disposition, spec.checksum, spec.recovery_timeout, spec.job_name) == (
        "error", "leave", "sha256", 0, "adhoc")
    assert all(i.recursive for i in spec.items)
    # the template's sources and destination stand
    assert [i.source for i in spec.items] == ["/data/a.bin", "/data/b.bin"]
    assert {i.destination for i in spec.items} == {"/in"}


def test_destination_flag_overrides_the_template_destination() -> None:
    spec = merge(FULL, Overrides(dest_file="/in/renamed.bin", sources=["/data/a.bin"]), "template T")
    assert [(i.source, i.destination, i.destination_type) for i in spec.items] == [
        ("/data/a.bin", "/in/renamed.bin", "file")]
    spec = merge(FULL, Overrides(dest_dir="/elsewhere"), "template T")
    assert {(i.destination, i.destination_type) for i in spec.items} == {("/elsewhere", "directory")}
    assert len(spec.items) == 2


def test_sources_given_replace_the_template_sources() -> None:
    spec = merge(FULL, Overrides(sources=["/x/1", "/x/2", "/x/3"]), "template T")
    assert [i.source for i in spec.items] == ["/x/1", "/x/2", "/x/3"]
    assert {(i.destination, i.destination_type) for i in spec.items} == {("/in", "directory")}


def test_metadata_adds_keys_and_wins_on_conflict() -> None:
    spec = merge(FULL, Overrides(metadata={"run": "2", "extra": "yes"}), "template T")
    assert spec.metadata == {"team": "ops", "run": "2", "extra": "yes"}


def test_template_recursive_applies_to_sources_given() -> None:
    base = TemplateSpec.model_validate({"items": [{"destination": "/in", "destination_type": "directory",
                                                   "recursive": True}]})
    spec = merge(base, Overrides(source_agent="A1", destination_agent="A2", sources=["/tree"]), "template T")
    assert spec.items[0].recursive and spec.items[0].destination == "/in"


@pytest.mark.parametrize("base, ov, message", [
    ({"destination_agent": "A2", "items": [{"source": "/a", "destination": "/in", "destination_type": "file"}]},
     Overrides(), "template T has no source agent; give -sa"),
    ({"source_agent": "A1", "items": [{"source": "/a", "destination": "/in", "destination_type": "file"}]},
     Overrides(), "template T has no destination agent; give -da"),
    ({"source_agent": "A1", "destination_agent": "A2", "items": [{"destination": "/in",
                                                                  "destination_type": "directory"}]},
     Overrides(), "template T has no source files; give them as arguments"),
    ({"source_agent": "A1", "destination_agent": "A2"}, Overrides(sources=["/a"]),
     "template T has no destination; give -df FILE or -dd DIRECTORY"),
    ({"source_agent": "A1", "destination_agent": "A2", "items": [{"source": "/a"}]}, Overrides(),
     "template T has no destination for /a; give -df FILE or -dd DIRECTORY"),
    ({"source_agent": "A1", "destination_agent": "A2",
      "items": [{"source": "/a", "destination": "/x", "destination_type": "directory"},
                {"source": "/b", "destination": "/y", "destination_type": "directory"}]},
     Overrides(sources=["/c"]), "template T sends its files to different destinations"),
    ({}, Overrides(source_agent="A1", destination_agent="A2", dest_file="/f", dest_dir="/d", sources=["/a"]),
     "give at most one destination"),
    ({}, Overrides(source_agent="bad name!", destination_agent="A2", dest_dir="/d", sources=["/a"]),
     "invalid transfer request from template T: source_agent: String should match pattern"),
])
def test_missing_or_invalid_after_merging(base: dict, ov: Overrides, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        merge(base, ov, "template T")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_parts_given_on_the_command_line() -> None:
    base = template_spec(Overrides(source_agent="A1", dest_dir="/in"))
    spec = merge(base, Overrides(destination_agent="A2", sources=["/a"]), "template T")
    assert (spec.destination_agent, spec.items[0].source, spec.items[0].destination) == ("A2", "/a", "/in")


def test_different_destinations_kept_without_new_sources() -> None:
    base = {"source_agent": "A1", "destination_agent": "A2",
            "items": [{"source": "/a", "destination": "/x", "destination_type": "directory"},
                      {"source": "/b", "destination": "/y/b", "destination_type": "file"}]}
    spec = merge(base, Overrides(), "template T")
    assert [(i.destination, i.destination_type) for i in spec.items] == [("/x", "directory"), ("/y/b", "file")]


# --------------------------------------------------------------------------- template specs and names


def test_template_spec_from_flags() -> None:
    assert template_spec(Overrides()) == TemplateSpec()
    only_dest = template_spec(Overrides(dest_dir="/in", recursive=True))
    assert [i.model_dump() for i in only_dest.items] == [
        {"source": None, "destination": "/in", "destination_type": "directory", "recursive": True}]
    with_sources = template_spec(Overrides(sources=["/a", "/b"]))
    assert [(i.source, i.destination) for i in with_sources.items] == [("/a", None), ("/b", None)]
    assert template_spec(Overrides(checksum="MD5")).checksum == "md5"
    with pytest.raises(TemplateError, match="invalid template: source_agent"):
        template_spec(Overrides(source_agent="no/slash"))
    with pytest.raises(TemplateError, match="give at most one destination"):
        template_spec(Overrides(dest_file="/f", dest_dir="/d"))


def test_template_spec_rules() -> None:
    with pytest.raises(ValueError, match="only item"):
        TemplateSpec.model_validate({"items": [{"destination": "/d", "destination_type": "directory"},
                                               {"source": "/a"}]})
    with pytest.raises(ValueError, match="go together"):
        TemplateSpec.model_validate({"items": [{"source": "/a", "destination": "/d"}]})


@pytest.mark.parametrize("name", ["T", "nightly.backup_2-x", "a" * 64])
def test_valid_template_names(name: str) -> None:
    assert validate_template_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 65, "a/b", "a+b", "#", "with space", "é"])
def test_invalid_template_names(name: str) -> None:
    with pytest.raises(TemplateError, match="not a valid template name"):
        validate_template_name(name)


# --------------------------------------------------------------------------- request files


def test_request_file_round_trip(tmp_path: Path) -> None:
    spec = merge(FULL, Overrides(), "template T")
    path = write_request_file(tmp_path / "req.json", spec)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["spec"]["source_agent"] == "A1"
    loaded = load_request_file(path)
    assert loaded == request_document(spec)
    assert TransferSpec.model_validate(loaded["spec"]) == spec
    kind, base, label = read_definition_file(path)
    assert kind == "request" and str(path) in label
    assert merge(base, Overrides(), label) == spec


def signed_template(home: Path, t: Template, creator: str = "me") -> dict:
    from agent.auth import ensure_key
    from agent.definitions import sign_definition

    return sign_definition("template", t.name, json.loads(t.model_dump_json(exclude_none=True)), creator,
                           ensure_key(home, creator))


def test_template_json_accepted_as_a_request(tmp_path: Path) -> None:
    from agent.definitions import DefinitionTrust

    home = tmp_path / "home"
    trust = DefinitionTrust(home)
    t = Template(name="T", created="2024-01-01T00:00:00Z", created_by="me", spec=FULL)
    path = tmp_path / "t.json"
    # a line of fte-list-templates --json: the listing's verdict is not part of the template
    path.write_text(json.dumps({**signed_template(home, t), "verified": True}))
    kind, base, label = read_definition_file(path, trust)
    assert kind == "template" and label.startswith("template T")
    assert load_request_file(path, trust)["spec"]["items"][0]["source"] == "/data/a.bin"
    partial = Template(name="P", created="2024-01-01T00:00:00Z", spec=template_spec(Overrides(source_agent="A1")))
    path.write_text(json.dumps(signed_template(home, partial)))
    with pytest.raises(RequestFileError, match="template P .* has no destination agent; give -da"):
        load_request_file(path, trust)


def test_template_json_must_verify(tmp_path: Path) -> None:
    """A template's JSON in a file is verified as on the broker: unsigned, altered, renamed, or by a creator
    not trusted here is refused, in one line that says how to mend it."""
    from agent.definitions import DefinitionTrust

    home = tmp_path / "home"
    t = Template(name="T", created="2024-01-01T00:00:00Z", spec=FULL)
    good = signed_template(home, t)
    path = tmp_path / "t.json"
    cases = [
        ({k: v for k, v in good.items() if k != "signature"}, "not signed by its creator"),
        ({**good, "spec": {**good["spec"], "disposition": "leave"}}, "bad signature for its creator 'me'"),
        ({**good, "name": "U"}, "bad signature"),
        (signed_template(tmp_path / "elsewhere", t, creator="eve"), "'eve', whose key you do not trust"),
        ({**good, "created_by": "agent.A1"}, "agents do not create templates"),
    ]
    for document, problem in cases:
        path.write_text(json.dumps(document))
        with pytest.raises(RequestFileError) as info:
            load_request_file(path, DefinitionTrust(home))
        assert problem in info.value.line() and "\n" not in info.value.line(), info.value.line()
        assert "fte-create-template" in info.value.line() or "trust-creator" in info.value.line()


GOOD_SPEC = {"source_agent": "A1", "destination_agent": "A2",
             "items": [{"source": "/a", "destination": "/in", "destination_type": "directory"}]}


@pytest.mark.parametrize("content, problem", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"version": 2, "spec": {}}', "version 2 is not supported"),
    ('{"version": 1}', "spec: Field required"),
    (json.dumps({"version": 1, "spec": {**GOOD_SPEC, "items": []}}), "spec.items: List should have at least 1"),
    (json.dumps({"version": 1, "spec": {**GOOD_SPEC, "recovery_timeout": "60"}}), "spec.recovery_timeout"),
    (json.dumps({"version": 1, "spec": {**GOOD_SPEC, "exist": "maybe"}}), "spec.exist"),
    (json.dumps({"version": 1, "spec": {**GOOD_SPEC, "colour": "red"}}), "spec.colour: Extra inputs"),
    (json.dumps({"version": 1, "spec": {k: v for k, v in GOOD_SPEC.items() if k != "destination_agent"}}),
     "spec.destination_agent: Field required"),
    (json.dumps({"spec": GOOD_SPEC}), "neither a transfer request"),
    (json.dumps({"name": "bad name", "created": "x", "spec": {}}), "template: name: String should match"),
    ("", "not JSON"),
])
def test_bad_request_files(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(RequestFileError) as info:
        load_request_file(path)
    assert problem in str(info.value)
    line = info.value.line()
    assert str(path) in line and problem in line and "\n" not in line


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(RequestFileError, match="cannot read it: No such file"):
        load_request_file(tmp_path / "nope.json")
    with pytest.raises(RequestFileError, match="is a directory"):
        load_request_file(tmp_path)
    with pytest.raises(RequestFileError, match="cannot write it"):
        write_request_file(tmp_path / "no" / "dir" / "x.json", merge(FULL, Overrides(), "T"))


def test_request_file_error_is_a_value_error() -> None:
    # the monitor commands reuse load_request_file and catch ValueError/Exception
    assert issubclass(RequestFileError, ValueError)


# --------------------------------------------------------------------------- the command line, offline


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cli.main import app

    monkeypatch.setenv("FTE_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTE_BROKER_URL", "mqtt://127.0.0.1:9")  # nothing listens: -gt must not need it
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_generate_then_definition_with_overrides(cli, tmp_path: Path) -> None:
    req = tmp_path / "req.json"
    r = cli("create-transfer", "-sa", "A1", "-da", "A2", "-dd", "/in", "-rt", "30", "-md", "a=1", "-gt", str(req),
            "/data/x", "/data/y")
    assert r.exit_code == 0, r.output
    assert "Wrote the transfer request" in r.stdout and str(req) in r.stdout
    doc = json.loads(req.read_text())
    assert doc["version"] == 1 and [i["source"] for i in doc["spec"]["items"]] == ["/data/x", "/data/y"]
    assert doc["spec"]["recovery_timeout"] == 30

    out = tmp_path / "req2.json"
    r = cli("create-transfer", "-td", str(req), "-df", "/in/one.bin", "-de", "overwrite", "-md", "b=2", "-gt",
            str(out), "/data/only")
    assert r.exit_code == 0, r.output
    spec = load_request_file(out)["spec"]
    assert [(i["source"], i["destination"], i["destination_type"]) for i in spec["items"]] == [
        ("/data/only", "/in/one.bin", "file")]
    assert spec["exist"] == "overwrite" and spec["recovery_timeout"] == 30 and spec["metadata"] == {"a": "1", "b": "2"}
    # defaults of flags not given do not override the file
    r = cli("create-transfer", "-td", str(out), "--json", "-gt", str(tmp_path / "req3.json"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["spec"]["exist"] == "overwrite"
    # a flag typed on the command line overrides even when it repeats the default
    r = cli("create-transfer", "-td", str(out), "-de", "error", "-cs", "sha256", "--json", "-gt",
            str(tmp_path / "req4.json"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["spec"]["exist"] == "error"


def test_bad_definition_file_is_one_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "spec": {"source_agent": "A1"}}')
    r = cli("create-transfer", "-td", str(bad))
    assert r.exit_code == 1
    assert r.stderr.strip().count("\n") == 0
    assert str(bad) in r.stderr and "spec.destination_agent: Field required" in r.stderr


def test_flag_combinations(cli, tmp_path: Path) -> None:
    req = tmp_path / "r.json"
    r = cli("create-transfer", "-sa", "A1", "-da", "A2", "-df", "/f", "-w", "-1", "-gt", str(req), "/a")
    assert r.exit_code == 1 and "-w has no meaning with -gt" in r.stderr and not req.exists()
    r = cli("create-transfer", "-tn", "T", "-td", str(req))
    assert r.exit_code == 1 and "give -tn TEMPLATE or -td FILE, not both" in r.stderr
    r = cli("create-transfer", "-tn", "bad/name")
    assert r.exit_code == 1 and "not a valid template name" in r.stderr
    r = cli("create-transfer", "-sa", "A1", "-da", "A2", "-df", "/f", "-de", "bad", "-gt", str(req), "/a")
    assert r.exit_code == 1 and "-de 'bad' is not one of" in r.stderr


def test_plain_create_transfer_still_requires_its_flags(cli) -> None:
    """Without -tn/-td, missing sources, -sa or -da stay usage errors, as before templates."""
    r = cli("create-transfer", "-sa", "A1", "-da", "A2", "-df", "/f")
    assert r.exit_code in (1, 2) and "Missing argument 'sources'" in r.stderr
    r = cli("create-transfer", "-da", "A2", "-df", "/f", "/a")
    assert r.exit_code in (1, 2) and "Missing option '-sa'" in r.stderr
    r = cli("create-transfer", "-sa", "A1", "-df", "/f", "/a")
    assert r.exit_code in (1, 2) and "Missing option '-da'" in r.stderr
    r = cli("create-transfer", "-sa", "A1", "-da", "A2", "/a")
    assert r.exit_code == 1 and "give exactly one destination" in r.stderr


def test_template_commands_are_registered(cli) -> None:
    for verb in ("create-template", "list-templates", "delete-templates"):
        r = cli(verb, "--help")
        assert r.exit_code == 0, r.output
    r = cli("create-template", "-tn", "bad/name", "-sa", "A1")
    assert r.exit_code == 1 and "not a valid template name" in r.stderr
    r = cli("create-template", "-tn", "T", "-rt", "-7")
    assert r.exit_code == 1 and "-rt -7 is invalid" in r.stderr
