"""Signed commands: what an agent with authorityChecking=true accepts and refuses."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.auth import (AuthError, Authority, canonical, check_trust_entry, ensure_key, generate_key, load_private,
                        parse_trust_file, public_text, sign, trust)
from agent.wire.binding import agent_requester, load_or_create_agent_key
from agent.definitions import parse_creators
from agent.store import StateStore
from cli.trusted_agents import parse_trusted_agents

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


def signed(c: dict, requester: str, key, target: str = "A1") -> dict:
    return roundtrip(sign(c, requester, key, target=target))


def check(authority: Authority, raw: dict, agent: str = "A1", kind: str | None = None) -> str:
    """The agent's check: it is agent `agent` and about to run `kind` (the raw command's kind unless told)."""
    return authority.check(raw, agent=agent, kind=kind if kind is not None else str(raw.get("kind")))


def test_signed_command_from_trusted_requester_is_accepted(setup) -> None:
    authority, alice, _, _ = setup
    assert check(authority, signed(cmd(), "alice", alice)) == "alice"


@pytest.mark.parametrize("tamper, reason", [
    (lambda c: c.pop("signature"), "not signed"),
    (lambda c: c.pop("nonce"), "not signed"),
    (lambda c: c.update(request_id="r2"), "bad signature"),
    (lambda c: c.update(kind="stop_agent"), "bad signature"),
    (lambda c: c.update(target="A2"), "bad signature"),
    (lambda c: c.pop("target"), "bad signature"),
    (lambda c: c.update(requester="mallory"), "not trusted"),
    (lambda c: c.update(signature="not base64!"), "bad signature"),
])
def test_tampered_or_unsigned_commands_are_refused(setup, tamper, reason) -> None:
    authority, alice, _, _ = setup
    c = signed(cmd(), "alice", alice)
    tamper(c)
    with pytest.raises(AuthError, match=reason):
        check(authority, c)


def test_a_key_not_in_the_trust_file_is_refused_even_with_a_trusted_name(setup, tmp_path: Path) -> None:
    authority, _, _, _ = setup
    mallory = ensure_key(tmp_path / "other", "alice")  # same name, different key
    with pytest.raises(AuthError, match="bad signature"):
        check(authority, signed(cmd(), "alice", mallory))


def test_replay_of_the_same_command_is_refused(setup) -> None:
    authority, alice, _, _ = setup
    c = signed(cmd(), "alice", alice)
    check(authority, c)
    with pytest.raises(AuthError, match="replay"):
        check(authority, c)


@pytest.mark.parametrize("offset, ok", [(0, True), (299, True), (-299, True), (301, False), (-301, False)])
def test_commands_outside_the_time_window_are_refused(setup, offset: float, ok: bool) -> None:
    authority, alice, _, clock = setup
    c = signed(cmd(sent_at=iso(NOW + offset)), "alice", alice)
    if ok:
        assert check(authority, c) == "alice"
    else:
        with pytest.raises(AuthError, match="apart"):
            check(authority, c)


@pytest.mark.parametrize("offset, words", [(-301, "sent 301 s ago"), (412, "sent 412 s in the future")])
def test_a_stale_command_says_which_way_its_time_is_off(setup, offset: float, words: str) -> None:
    authority, alice, _, _ = setup
    with pytest.raises(AuthError) as exc:
        check(authority, signed(cmd(sent_at=iso(NOW + offset)), "alice", alice))
    assert words in str(exc.value) and "+" not in str(exc.value)


def test_a_command_addressed_to_another_agent_is_refused(setup) -> None:
    authority, alice, _, _ = setup
    c = signed(cmd("stop_agent"), "alice", alice, target="A3")
    with pytest.raises(AuthError, match="addressed to agent 'A3', not to 'A1'"):
        check(authority, c, agent="A1")
    assert check(authority, c, agent="A3") == "alice"  # the agent it was for obeys it


def test_a_command_signed_without_a_target_is_refused(setup) -> None:
    """What an fte older than target binding signs: valid on every agent's topic, so it is refused."""
    authority, alice, _, _ = setup
    old = signed(cmd(), "alice", alice)
    old.pop("target")
    old.pop("signature")
    old["signature"] = base64.b64encode(alice.sign(canonical(old))).decode()
    with pytest.raises(AuthError, match="does not name the agent it is for"):
        check(authority, old)


def test_the_signed_kind_must_be_the_command_the_agent_runs(setup) -> None:
    authority, alice, _, _ = setup
    c = signed(cmd("ping"), "alice", alice)
    with pytest.raises(AuthError, match="the signed command is 'ping', not 'stop_agent'"):
        check(authority, c, kind="stop_agent")


def test_nonces_kept_in_the_state_store_outlive_the_authority(setup, tmp_path: Path) -> None:
    """A restarted agent (a new Authority on the same state store) refuses what the one before it accepted."""
    authority, alice, _, clock = setup
    trust_path = authority.trust_path
    c = signed(cmd(), "alice", alice)
    store = StateStore(tmp_path / "state" / "state.db")
    assert check(Authority(trust_path, clock=lambda: clock["now"], nonces=store), c) == "alice"
    store.close()
    store = StateStore(tmp_path / "state" / "state.db")
    with pytest.raises(AuthError, match="already received once"):
        check(Authority(trust_path, clock=lambda: clock["now"], nonces=store), c)
    # expired nonces are forgotten (their commands are stale anyway)
    assert store.claim_nonce("n-later", NOW + 600, NOW)
    assert not store.claim_nonce("n-later", NOW + 1200, NOW + 599)
    assert store.claim_nonce("n-later", NOW + 1200, NOW + 600)
    store.close()


def test_an_agents_identity_key_never_commands_even_when_trusted(setup, tmp_path: Path) -> None:
    authority, _, _, _ = setup
    identity = load_or_create_agent_key(tmp_path / "agents" / "A2")
    # written by hand (trust() itself refuses more than the transfer permission for an agent key)
    path = tmp_path / "agents" / "A1" / "authorized_requesters"
    path.write_text(path.read_text() + f"{agent_requester('A2')} {public_text(identity.public_key())} all\n")
    for kind in ("create_transfer", "ping"):
        with pytest.raises(AuthError, match="is an agent's identity key"):
            check(authority, signed(cmd(kind), agent_requester("A2"), identity))


def test_requester_keys_and_agent_keys_have_separate_names(tmp_path: Path) -> None:
    for name in ("agent.A1", "Agent.A1"):
        with pytest.raises(ValueError, match="agents' identity keys"):
            generate_key(tmp_path, name)
    assert not (tmp_path / "keys" / "agent.A1.key").exists()
    check_trust_entry("agent.A1", "transfer")
    check_trust_entry("alice", "all")
    for perms in ("all", "transfer,admin", "cancel"):
        with pytest.raises(ValueError, match="only to take part in transfers"):
            check_trust_entry("agent.A1", perms)


@pytest.mark.parametrize("kind, allowed", [
    ("cancel_transfer", True), ("ping", True), ("query_transfer", True), ("list_transfers", True),
    ("create_transfer", False), ("stop_agent", False), ("something_new", False),
])
def test_permissions_decide_what_a_requester_may_do(setup, kind: str, allowed: bool) -> None:
    authority, _, bob, _ = setup
    c = signed(cmd(kind), "bob", bob)
    if allowed:
        assert check(authority, c) == "bob"
    else:
        with pytest.raises(AuthError, match="lacks"):
            check(authority, c)


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


@pytest.mark.parametrize("parse, good, bad_fields, expected", [
    (parse_trust_file, "alice {key} all", "alice {key}", "expected '<requester> <public key> <permissions>'"),
    (parse_creators, "alice {key}", "alice {key} all", "expected '<requester> <public key>'"),
    (parse_trusted_agents, "agent.A1 {key}", "agent.A1", "expected 'agent.<NAME> <public key>'"),
])
def test_key_list_files_skip_comments_and_name_the_bad_line(tmp_path: Path, parse, good: str, bad_fields: str,
                                                             expected: str) -> None:
    """trusted_requesters, trusted_creators and trusted_agents are read by one line reader (auth.key_lines):
    comments and blank lines skipped, a wrong field count or a key that does not load names path:line."""
    key = public_text(ensure_key(tmp_path, "k").public_key())
    path = tmp_path / "keys"
    head = "# comment\n\n   \n"
    assert len(parse(head + good.format(key=key) + "  # trailing comment\n", path)) == 1
    with pytest.raises(ValueError) as exc:
        parse(head + bad_fields.format(key=key), path)
    assert str(exc.value) == f"{path}:4: {expected}"
    with pytest.raises(ValueError, match="not a base64 Ed25519 public key") as exc:
        parse(head + good.format(key="AAAA"), path)
    assert str(exc.value).startswith(f"{path}:4: ")


def test_trusted_agents_bad_name_names_the_line(tmp_path: Path) -> None:
    key = public_text(ensure_key(tmp_path, "k").public_key())
    with pytest.raises(ValueError, match="is not an agent name") as exc:
        parse_trusted_agents(f"# c\nagent.no/slash {key}\n", tmp_path / "trusted_agents")
    assert str(exc.value).startswith(f"{tmp_path / 'trusted_agents'}:2: ")
    from agent.names import AGENT_NAME_RULE

    assert AGENT_NAME_RULE in str(exc.value)  # the one rule's words, not a copy


def test_trust_replaces_an_existing_entry_and_the_authority_rereads_the_file(setup, tmp_path: Path) -> None:
    authority, _, bob, _ = setup
    with pytest.raises(AuthError):
        check(authority, signed(cmd("create_transfer"), "bob", bob))
    path = trust(tmp_path / "agents" / "A1", "bob", public_text(bob.public_key()), "transfer,cancel")
    stamp = time.time() + 10  # a distinct mtime, whatever the file system's resolution
    os.utime(path, (stamp, stamp))
    assert check(authority, signed(cmd("create_transfer"), "bob", bob)) == "bob"
    assert path.read_text().count("\nbob ") == 1


def test_private_key_file_is_private(tmp_path: Path) -> None:
    ensure_key(tmp_path, "alice")
    mode = (tmp_path / "keys" / "alice.key").stat().st_mode & 0o777
    assert mode == 0o600
    assert load_private(tmp_path, "nobody") is None
