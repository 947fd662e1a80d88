"""Signed definitions (agent.definitions): what a signature binds, whom a client trusts, and the
trusted_creators file's edits (atomic, locked: parallel edits lose no line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.auth import ensure_key, public_text, sign
from agent.definitions import (TRUSTED_CREATORS, DefinitionTrust, DefinitionTrustError, sign_definition,
                               trust_creator, untrust_creator)

DOC = {"name": "nightly", "created": "2026-01-01T00:00:00Z", "spec": {"source_agent": "A1", "items": []}}


def test_signature_binds_kind_name_and_content(tmp_path: Path) -> None:
    trust = DefinitionTrust(tmp_path)
    signed = sign_definition("template", "nightly", DOC, "alice", ensure_key(tmp_path, "alice"))
    assert trust.verify("template", "nightly", signed) == "alice"
    for kind, name, doc in (("template", "daily", signed), ("monitor", "nightly", signed),
                            ("template", "nightly", {**signed, "spec": {"source_agent": "A9", "items": []}}),
                            ("template", "nightly", {**signed, "extra": 1})):
        with pytest.raises(DefinitionTrustError, match="bad signature for its creator 'alice'"):
            trust.verify(kind, name, doc)


def test_a_command_signature_is_not_a_definition_signature(tmp_path: Path) -> None:
    """The same key signs commands; a signed command's signature over the same fields does not verify as a
    definition (the domain tag), so no captured command can be turned into a template."""
    key = ensure_key(tmp_path, "alice")
    cmd = sign(dict(DOC, created_by="alice"), "alice", key, target="A1")
    with pytest.raises(DefinitionTrustError, match="bad signature"):
        DefinitionTrust(tmp_path).verify("template", "nightly", cmd)


def test_whom_a_client_trusts(tmp_path: Path) -> None:
    me, other = tmp_path / "me", tmp_path / "other"
    bob_doc = sign_definition("template", "nightly", DOC, "bob", ensure_key(other, "bob"))
    trust = DefinitionTrust(me)
    with pytest.raises(DefinitionTrustError, match="'bob', whose key you do not trust.*trust-creator bob KEY"):
        trust.verify("template", "nightly", bob_doc)
    bob_pub = (other / "keys" / "bob.pub").read_text().strip()
    path = trust_creator(me, "bob", bob_pub)
    assert path == me / "keys" / TRUSTED_CREATORS
    assert trust.verify("template", "nightly", bob_doc) == "bob"
    # another key under the same name (someone else calling themselves bob) does not pass for bob
    fake = sign_definition("template", "nightly", DOC, "bob", ensure_key(tmp_path / "fake", "bob"))
    with pytest.raises(DefinitionTrustError, match="bad signature"):
        trust.verify("template", "nightly", fake)
    assert untrust_creator(me, "bob") and not untrust_creator(me, "bob")
    with pytest.raises(DefinitionTrustError, match="whose key you do not trust"):
        trust.verify("template", "nightly", bob_doc)
    with pytest.raises(ValueError, match="agent's identity key"):
        trust_creator(me, "agent.A1", bob_pub)
    with pytest.raises(ValueError, match="not a base64 Ed25519 public key"):
        trust_creator(me, "bob", "nonsense")


def test_unsigned_says_how_to_mend_it(tmp_path: Path) -> None:
    with pytest.raises(DefinitionTrustError) as info:
        DefinitionTrust(tmp_path).verify("template", "nightly", dict(DOC, created_by="alice"))
    assert "not signed" in str(info.value) and "fte-create-template -tn nightly --force" in str(info.value)


def test_parallel_trust_edits_lose_nothing(tmp_path: Path) -> None:
    """Twelve `trust_creator` in separate processes at once: every line is there afterwards."""
    pubs = [public_text(ensure_key(tmp_path / f"k{i}", f"c{i}").public_key()) for i in range(12)]
    code = ("import sys; from pathlib import Path; from agent.definitions import trust_creator; "
            "trust_creator(Path(sys.argv[1]), sys.argv[2], sys.argv[3])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "me"), f"c{i}", pub])
             for i, pub in enumerate(pubs)]
    assert [p.wait(60) for p in procs] == [0] * 12
    names = {c.name for c in DefinitionTrust(tmp_path / "me").creators()}
    assert names == {f"c{i}" for i in range(12)}
