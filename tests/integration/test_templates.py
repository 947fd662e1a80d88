"""Templates and transfer request files end to end: the console scripts against Mosquitto and two agents.

fte-create-template / fte-list-templates / fte-delete-templates, fte-create-transfer -tn with overrides, and
the -gt / -td round trip. Templates are retained on the session broker, so every test uses names of its
own and deletes them at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agents import FteEnv, start_pair
from tests.support.brokers import MosquittoProcess

pytestmark = pytest.mark.timeout(120)

AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def fte(tmp_path: Path, data: Path, mosquitto: MosquittoProcess) -> Iterator[FteEnv]:
    """Agents A1 and A2 (sandbox: `data`) on the Mosquitto session broker."""
    env = start_pair(tmp_path / "fte_home", mosquitto.ensure_running().url, data, **AGENT_PROPERTIES)
    try:
        yield env
    finally:
        env.stop_all()


@pytest.fixture
def names(fte: FteEnv) -> Iterator[list[str]]:
    """Unique template names for the test; whatever is left of them is deleted afterwards."""
    made = [f"t{i}-{secrets.token_hex(4)}" for i in range(3)]
    yield made
    fte.run("delete-templates", *made)


def make_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def same(a: Path, b: Path) -> bool:
    return b.is_file() and hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def listed(env: FteEnv, *args: str) -> list[str]:
    r = env.run("list-templates", *args)
    assert r.returncode == 0, str(r)
    return r.stdout.splitlines()


def test_template_create_list_submit_with_override_delete(fte: FteEnv, data: Path, names: list[str]) -> None:
    t = names[0]
    src = make_file(data / "src" / "report.bin", 300_000)
    r = fte.run("create-template", "-tn", t, "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-rt", "60",
                "-jn", "nightly", str(src))
    assert r.returncode == 0, str(r)
    assert f"template {t}" in r.stdout

    # the name is taken until --force
    r = fte.run("create-template", "-tn", t, "-sa", "A1")
    assert r.returncode == 1 and f"template {t} already exists" in r.stderr and "--force" in r.stderr, str(r)

    assert t in listed(fte)
    verbose = "\n".join(listed(fte, "-v", t))
    for expected in (t, "A1 -> A2", str(src), str(data / "in"), "(directory)", "60"):
        assert expected in verbose, verbose
    r = fte.run("list-templates", "--json", t)
    assert r.returncode == 0, str(r)
    doc = json.loads(r.stdout)
    assert doc["name"] == t and doc["spec"]["recovery_timeout"] == 60 and doc["spec"]["job_name"] == "nightly"
    assert doc["spec"]["items"][0]["source"] == str(src) and doc["created"]

    # submit the template with an override: -df to another name
    dest = data / "in" / "renamed.bin"
    r = fte.run("create-transfer", "-tn", t, "-df", str(dest), "-w", "60", "--json", timeout=90)
    assert r.returncode == 0, str(r)
    outcome = r.json()
    assert outcome["result_code"] == 0 and outcome["state"] == "complete", str(r)
    assert same(src, dest)
    assert not (data / "in" / "report.bin").exists()  # the template's destination was overridden

    # the template as it is: to its directory
    r = fte.run("create-transfer", "-tn", t, "-w", timeout=90)
    assert r.returncode == 0, str(r)
    assert same(src, data / "in" / "report.bin")

    r = fte.run("delete-templates", t)
    assert r.returncode == 0 and f"Deleted template {t}." in r.stdout, str(r)
    assert t not in listed(fte)
    r = fte.run("create-transfer", "-tn", t, "-w")
    assert r.returncode == 1 and f"template {t} does not exist" in r.stderr, str(r)


def test_partial_template_completed_on_the_command_line(fte: FteEnv, data: Path, names: list[str]) -> None:
    """A template without -da and without sources: submitting it says what is missing; giving it works;
    sources given replace the (absent) template sources and go to the template's destination."""
    t = names[0]
    r = fte.run("create-template", "-tn", t, "-sa", "A1", "-dd", str(data / "out"), "-de", "overwrite")
    assert r.returncode == 0, str(r)
    verbose = "\n".join(listed(fte, "-v", t))
    assert "give -da" in verbose and "(not set: give them when submitting)" in verbose, verbose

    r = fte.run("create-transfer", "-tn", t, "-w")
    assert r.returncode == 1 and f"template {t} has no destination agent; give -da" in r.stderr, str(r)
    r = fte.run("create-transfer", "-tn", t, "-da", "A2", "-w")
    assert r.returncode == 1 and f"template {t} has no source files" in r.stderr, str(r)

    a = make_file(data / "src" / "a.bin", 70_000)
    b = make_file(data / "src" / "b.bin", 1_000)
    (data / "out").mkdir()
    (data / "out" / "a.bin").write_bytes(b"old")  # -de overwrite comes from the template
    r = fte.run("create-transfer", "-tn", t, "-da", "A2", "-w", "60", str(a), str(b), timeout=90)
    assert r.returncode == 0, str(r)
    assert same(a, data / "out" / "a.bin") and same(b, data / "out" / "b.bin")


def test_delete_templates_missing_name(fte: FteEnv, data: Path, names: list[str]) -> None:
    """A missing name is an error naming it (non-zero exit), but the others are deleted."""
    keep, gone = names[0], names[1]
    for n in (keep, gone):
        r = fte.run("create-template", "-tn", n, "-sa", "A1", "-da", "A2", "-dd", str(data / "in"))
        assert r.returncode == 0, str(r)
    missing = f"missing-{secrets.token_hex(4)}"
    r = fte.run("delete-templates", gone, missing)
    assert r.returncode == 1 and missing in r.stderr and f"Deleted template {gone}." in r.stdout, str(r)
    names_now = listed(fte)
    assert gone not in names_now and keep in names_now
    r = fte.run("list-templates", keep, missing)
    assert r.returncode == 1 and missing in r.stderr and keep in r.stdout, str(r)

    # --force replaces
    r = fte.run("create-template", "-tn", keep, "-sa", "A1", "-da", "A2", "-dd", str(data / "other"), "--force")
    assert r.returncode == 0 and "Replaced template" in r.stdout, str(r)
    assert str(data / "other") in "\n".join(listed(fte, "-v", keep))


def test_generate_then_submit_definition(fte: FteEnv, data: Path, tmp_path: Path) -> None:
    """-gt writes the request without submitting it; -td submits it (as it is, and with an override)."""
    src = make_file(data / "src" / "payload.bin", 200_000)
    req = tmp_path / "request.json"
    dest = data / "in" / "payload.bin"
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(dest), "-rt", "30", "-gt", str(req),
                str(src))
    assert r.returncode == 0, str(r)
    assert json.loads(req.read_text())["spec"]["recovery_timeout"] == 30
    assert not dest.exists() and not (data / "in").exists()  # nothing was submitted

    r = fte.run("create-transfer", "-td", str(req), "-w", "60", timeout=90)
    assert r.returncode == 0, str(r)
    assert same(src, dest)

    other = data / "in" / "copy2.bin"
    r = fte.run("create-transfer", "-td", str(req), "-df", str(other), "-w", "60", "--json", timeout=90)
    assert r.returncode == 0 and r.json()["result_code"] == 0, str(r)
    assert same(src, other)

    # the template's JSON (fte-list-templates --json NAME) is accepted as a definition too
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "spec": {"source_agent": "A1", "items": []}}')
    r = fte.run("create-transfer", "-td", str(bad), "-w")
    assert r.returncode == 1 and str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1, str(r)


def test_template_json_as_definition(fte: FteEnv, data: Path, tmp_path: Path, names: list[str]) -> None:
    """`fte-list-templates --json NAME` saved to a file is a -td file (brackets in names survive the output)."""
    t = names[0]
    src = make_file(data / "src" / "t.bin", 5_000)
    dest = data / "from[json]" / "[/x]"  # sources are wildcards on the agent; destinations are not
    r = fte.run("create-template", "-tn", t, "-sa", "A1", "-da", "A2", "-dd", str(dest), str(src))
    assert r.returncode == 0, str(r)
    r = fte.run("list-templates", "--json", t)
    assert r.returncode == 0, str(r)
    assert json.loads(r.stdout)["spec"]["items"][0]["destination"] == str(dest)
    assert str(dest) in "\n".join(listed(fte, "-v", t))
    tfile = tmp_path / "template.json"
    tfile.write_text(r.stdout)
    r = fte.run("create-transfer", "-td", str(tfile), "-w", "60", timeout=90)
    assert r.returncode == 0, str(r)
    assert same(src, dest / "t.bin")
