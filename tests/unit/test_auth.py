"""Signed commands: what an agent with authorityChecking=true accepts and refuses."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.auth import (AuthError, Authority, canonical, ensure_key, load_private, parse_trust_file, public_text,
                        sign, trust)

NOW = 1_800_000_000.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


@pytest.fixture
def setup(tmp_path: Path):
    home = tmp_path / "home"
    alice = ensure_key(home, "alice")
    bob = ensure_key(home, "bob")
    agent = tmp_path / "agents" / "A1"
    trust(agent, "alice", public_text(alice.public_key()), "all")
    trust(agent, "bob", public_text(bob.public_key()), "cancel")
    clock = {"now": NOW}
    authority = Authority(agent / "authorized_requesters", clock=lambda: clock["now"])
    return authority, alice, bob, clock


def cmd(kind: str = "create_transfer", **extra) -> dict:
    return {"kind": kind, "request_id": "r1", "sent_at": iso(NOW), **extra}


def roundtrip(signed: dict) -> dict:
    return json.loads(json.dumps(signed))  # what the agent parses from the wire


def test_signed_command_from_trusted_requester_is_accepted(setup) -> None:
    authority, alice, _, _ = setup
    assert authority.check(roundtrip(sign(cmd(), "alice", alice))) == "alice"


@pytest.mark.parametrize("tamper, reason", [
    (lambda c: c.pop("signature"), "not signed"),
    (lambda c: c.pop("nonce"), "not signed"),
    (lambda c: c.update(request_id="r2"), "bad signature"),
    (lambda c: c.update(kind="stop_agent"), "bad signature"),
    (lambda c: c.update(requester="mallory"), "not trusted"),
    (lambda c: c.update(signature="not base64!"), "bad signature"),
])
def test_tampered_or_unsigned_commands_are_refused(setup, tamper, reason) -> None:
    authority, alice, _, _ = setup
    c = roundtrip(sign(cmd(), "alice", alice))
    tamper(c)
    with pytest.raises(AuthError, match=reason):
        authority.check(c)


def test_a_key_not_in_the_trust_file_is_refused_even_with_a_trusted_name(setup, tmp_path: Path) -> None:
    authority, _, _, _ = setup
    mallory = ensure_key(tmp_path / "other", "alice")  # same name, different key
    with pytest.raises(AuthError, match="bad signature"):
        authority.check(roundtrip(sign(cmd(), "alice", mallory)))


def test_replay_of_the_same_command_is_refused(setup) -> None:
    authority, alice, _, _ = setup
    c = roundtrip(sign(cmd(), "alice", alice))
    authority.check(c)
    with pytest.raises(AuthError, match="replay"):
        authority.check(c)


@pytest.mark.parametrize("offset, ok", [(0, True), (299, True), (-299, True), (301, False), (-301, False)])
def test_commands_outside_the_time_window_are_refused(setup, offset: float, ok: bool) -> None:
    authority, alice, _, clock = setup
    c = roundtrip(sign(cmd(sent_at=iso(NOW + offset)), "alice", alice))
    if ok:
        assert authority.check(c) == "alice"
    else:
        with pytest.raises(AuthError, match="apart"):
            authority.check(c)


@pytest.mark.parametrize("kind, allowed", [
    ("cancel_transfer", True), ("ping", True), ("query_transfer", True), ("list_transfers", True),
    ("create_transfer", False), ("stop_agent", False), ("something_new", False),
])
def test_permissions_decide_what_a_requester_may_do(setup, kind: str, allowed: bool) -> None:
    authority, _, bob, _ = setup
    c = roundtrip(sign(cmd(kind), "bob", bob))
    if allowed:
        assert authority.check(c) == "bob"
    else:
        with pytest.raises(AuthError, match="lacks"):
            authority.check(c)


def test_canonical_form_ignores_key_order_and_signature() -> None:
    a = {"b": 1, "a": [1, 2], "signature": "x"}
    b = {"a": [1, 2], "b": 1}
    assert canonical(a) == canonical(b)


@pytest.mark.parametrize("line, fragment", [
    ("alice", "expected"),
    ("alice AAAA all", "not a base64 Ed25519 public key"),
    ("alice {key} fly", "unknown permission"),
])
def test_trust_file_errors_name_the_line(tmp_path: Path, line: str, fragment: str) -> None:
    key = public_text(ensure_key(tmp_path, "k").public_key())
    with pytest.raises(ValueError, match=fragment) as exc:
        parse_trust_file("# comment\n" + line.format(key=key), tmp_path / "authorized_requesters")
    assert ":2:" in str(exc.value)


def test_trust_replaces_an_existing_entry_and_the_authority_rereads_the_file(setup, tmp_path: Path) -> None:
    authority, _, bob, _ = setup
    with pytest.raises(AuthError):
        authority.check(roundtrip(sign(cmd("create_transfer"), "bob", bob)))
    path = trust(tmp_path / "agents" / "A1", "bob", public_text(bob.public_key()), "transfer,cancel")
    stamp = time.time() + 10  # a distinct mtime, whatever the file system's resolution
    os.utime(path, (stamp, stamp))
    assert authority.check(roundtrip(sign(cmd("create_transfer"), "bob", bob))) == "bob"
    assert path.read_text().count("\nbob ") == 1


def test_private_key_file_is_private(tmp_path: Path) -> None:
    ensure_key(tmp_path, "alice")
    mode = (tmp_path / "keys" / "alice.key").stat().st_mode & 0o777
    assert mode == 0o600
    assert load_private(tmp_path, "nobody") is None
