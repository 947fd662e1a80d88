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

from tests.support.agents import FteEnv, running_agents, sandbox_dir
from tests.support.brokers import MosquittoProcess

pytestmark = pytest.mark.timeout(120)

AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return sandbox_dir(tmp_path)


@pytest.fixture
def fte(tmp_path: Path, data: Path, mosquitto: MosquittoProcess) -> Iterator[FteEnv]:
    """Agents A1 and A2 (sandbox: `data`) on the Mosquitto session broker."""
    with running_agents(tmp_path / "fte_home", mosquitto.ensure_running().url, data, **AGENT_PROPERTIES) as env:
        yield env


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


# --------------------------------------------------------------------------- templates others publish


def publish_retained(env: FteEnv, name: str, document: dict) -> None:
    """What anyone who may publish on the broker can do: replace the retained template `name`."""
    import asyncio

    import aiomqtt

    from tests.support.brokers import split_url

    host, port = split_url(env.broker_url)

    async def go() -> None:
        async with aiomqtt.Client(host, port, identifier=f"third-party-{secrets.token_hex(4)}", timeout=30) as c:
            await c.publish(f"SYSTEM.FTE/Templates/{name}", json.dumps(document).encode(), qos=1, retain=True)

    asyncio.run(asyncio.wait_for(go(), 30))


def template_document(env: FteEnv, name: str) -> dict:
    r = env.run("list-templates", "--json", name)
    assert r.returncode == 0, str(r)
    doc = json.loads(r.stdout)
    doc.pop("verified", None)
    doc.pop("problem", None)
    return doc


class OtherPerson(FteEnv):
    """Someone else on the same broker: their own FTE_CONFIG_HOME and requester name, no agents."""

    requester: str = "mallory"

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "FTE_REQUESTER": self.requester}


def assert_refused(fte: FteEnv, data: Path, name: str, src: Path, problem: str) -> None:
    r = fte.run("create-transfer", "-tn", name, "-w", "20", timeout=60)
    assert r.returncode != 0 and problem in r.stderr, str(r)
    assert len(r.stderr.strip().splitlines()) == 1, str(r)
    assert src.exists() and not (data / "in").exists(), str(r)  # -sd delete did not run: nothing was submitted
    r = fte.run("list-transfers", "--json")
    assert r.returncode == 0 and r.stdout.strip() in ("[]", ""), str(r)


def test_template_replaced_by_a_third_party_is_refused(fte: FteEnv, data: Path, names: list[str],
                                                       tmp_path: Path) -> None:
    """The retained template `nightly` overwritten by someone else (a -sd delete of another file, to another
    directory): unsigned, with a forged signature, signed by a key nobody trusts, or a valid signed
    template republished under this name: create-transfer -tn refuses it in one line, and nothing starts."""
    t, other = names[0], names[1]
    mine = make_file(data / "src" / "report.bin", 1000)
    victim = make_file(data / "src" / "precious.bin", 1000)
    r = fte.run("create-template", "-tn", t, "-sa", "A1", "-da", "A2", "-dd", str(data / "out"), str(mine))
    assert r.returncode == 0, str(r)
    original = template_document(fte, t)
    assert original["signature"] and original["created_by"]

    attack = dict(original, spec={"source_agent": "A1", "destination_agent": "A2", "disposition": "delete",
                                  "items": [{"source": str(victim), "destination": str(data / "in"),
                                             "destination_type": "directory", "recursive": False}]})
    unsigned = {k: v for k, v in attack.items() if k != "signature"}
    publish_retained(fte, t, unsigned)
    assert_refused(fte, data, t, victim, f"template {t} is not signed by its creator")
    r = fte.run("list-templates", "-v", t)
    assert r.returncode == 0 and "UNVERIFIED" in r.stdout and "fte-create-template" in r.stdout, str(r)

    publish_retained(fte, t, attack)  # the original's signature over another spec
    assert_refused(fte, data, t, victim, "bad signature")

    # signed all right, by a key of someone this client does not trust
    mallory = OtherPerson(tmp_path / "mallory_home", fte.broker_url)
    assert mallory.run("key", "generate").returncode == 0
    r = mallory.run("create-template", "-tn", other, "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-sd",
                    "delete", str(victim))
    assert r.returncode == 0, str(r)
    foreign = template_document(mallory, other)
    publish_retained(fte, t, dict(foreign, name=t))
    assert_refused(fte, data, t, victim, "'mallory', whose key you do not trust")
    r = fte.run("create-transfer", "-tn", other, "-w", "20", timeout=60)
    assert r.returncode != 0 and "'mallory', whose key you do not trust" in r.stderr, str(r)
    assert "fte key trust-creator mallory" in r.stderr and victim.exists(), str(r)

    # my own valid template `t`, republished as another name
    publish_retained(fte, other, dict(original, name=other))
    r = fte.run("create-transfer", "-tn", other, "-w", "20", timeout=60)
    assert r.returncode != 0 and "bad signature" in r.stderr and victim.exists(), str(r)

    # the listing marks what is not verified; the plain listing too
    publish_retained(fte, t, original)
    lines = listed(fte, t, other)
    assert lines[0] == t and other in lines[1] and "UNVERIFIED" in lines[1], lines
    docs = [json.loads(line) for line in listed(fte, "--json", t, other)]
    assert [d["verified"] for d in docs] == [True, False], docs


def test_a_trusted_creator_template_is_used(fte: FteEnv, data: Path, names: list[str], tmp_path: Path) -> None:
    """Someone else's template is refused until their key is trusted (fte key trust-creator), then used;
    before it is submitted, the CLI says where the files go from and to."""
    t = names[0]
    src = make_file(data / "src" / "shared.bin", 20_000)
    bob = OtherPerson(tmp_path / "bob_home", fte.broker_url)
    bob.requester = "bob"
    r = bob.run("key", "generate")
    assert r.returncode == 0, str(r)
    bob_line = r.stdout.strip().splitlines()[-1]
    r = bob.run("create-template", "-tn", t, "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-sd", "leave",
                str(src))
    assert r.returncode == 0, str(r)
    assert "created by 'bob'" in "\n".join(listed(fte, "-v", t)) or "bob" in "\n".join(listed(fte, "-v", t))
    r = fte.run("create-transfer", "-tn", t, "-w", "20", timeout=60)
    assert r.returncode != 0 and "whose key you do not trust" in r.stderr, str(r)

    r = fte.run("key", "trust-creator", *bob_line.split())
    assert r.returncode == 0, str(r)
    r = fte.run("key", "creators")
    assert r.returncode == 0 and bob_line in r.stdout, str(r)
    r = fte.run("create-transfer", "-tn", t, "-w", "60", timeout=90)
    assert r.returncode == 0, str(r)
    assert same(src, data / "in" / "shared.bin")
    assert f"template {t} by bob" in r.stderr and f"A1:{src}" in r.stderr and f"A2:{data / 'in'}" in r.stderr, str(r)
    assert "-sd leave" in r.stderr, str(r)

    r = fte.run("key", "untrust-creator", "bob")
    assert r.returncode == 0, str(r)
    r = fte.run("create-transfer", "-tn", t, "-w", "20", timeout=60)
    assert r.returncode != 0 and "whose key you do not trust" in r.stderr, str(r)


def test_summary_is_shown_before_the_submission(fte: FteEnv, data: Path, names: list[str]) -> None:
    """The source and destination are printed before anything is sent: a submission that then fails
    (the source agent overridden to one that does not exist) still shows them first."""
    t = names[0]
    r = fte.run("create-template", "-tn", t, "-sa", "A1", "-da", "A2", "-dd", "/nowhere/in", "-sd", "delete",
                "/nowhere/out/x.bin")
    assert r.returncode == 0, str(r)
    r = fte.run("create-transfer", "-tn", t, "-sa", "Z9", "--timeout", "2", timeout=60)
    assert r.returncode != 0, str(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) >= 2 and "Z9:/nowhere/out/x.bin" in lines[0] and "A2:/nowhere/in" in lines[0], str(r)
    assert "-sd delete" in lines[0] and "Z9" in lines[-1], str(r)
