"""Signed replies, events and statuses (agent.wire.provenance) and the keys a client trusts (cli.trusted_agents)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire import provenance as P
from agent.auth import public_text
from agent.wire.binding import load_or_create_agent_key
from agent.wire.protocol import parse_agent_status, parse_reply
from cli.trusted_agents import AgentKeys, agent_name_of, trust_agent

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
TOPIC = "SYSTEM.FTE/Log/A1/" + "ab" * 24


def test_a_signed_event_is_the_same_json_with_one_more_member() -> None:
    event = {"transfer_id": "ab" * 24, "action": "completed", "job_name": None, "name": "caf\u00e9 \udcff"}
    payload = json.dumps(event).encode()
    signed = P.sign_payload(payload, P.EVENT, TOPIC, KEY)
    back = json.loads(signed)
    assert back.pop("signature") and back == json.loads(payload)
    assert P.verify_payload(signed, P.EVENT, TOPIC, [KEY.public_key()])


def test_a_signature_is_bound_to_its_key_purpose_and_subject() -> None:
    signed = P.sign_payload(b'{"request_id":"r1","ok":true}', P.REPLY, "A1", KEY)
    assert P.verify_payload(signed, P.REPLY, "A1", [OTHER.public_key(), KEY.public_key()])
    assert not P.verify_payload(signed, P.REPLY, "A1", [OTHER.public_key()])
    assert not P.verify_payload(signed, P.REPLY, "A2", [KEY.public_key()])  # another agent's reply
    assert not P.verify_payload(signed, P.STATUS, "A1", [KEY.public_key()])  # another kind of message
    assert not P.verify_payload(signed, P.REPLY, "A1", [])


def test_an_event_signature_does_not_move_to_another_transfer() -> None:
    signed = P.sign_payload(b'{"action":"completed"}', P.EVENT, TOPIC, KEY)
    assert not P.verify_payload(signed, P.EVENT, "SYSTEM.FTE/Log/A1/" + "cd" * 24, [KEY.public_key()])


@pytest.mark.parametrize("tamper", [
    lambda s: s.replace(b'"ok":true', b'"ok":false'),
    lambda s: s.replace(b'"r1"', b'"r2"'),
    lambda s: s[:-3] + b'A"}',  # another signature
    lambda s: s.replace(b',"signature"', b',"x":1,"signature"'),  # a member slipped in before it
])
def test_a_tampered_message_does_not_verify(tamper) -> None:
    signed = P.sign_payload(b'{"request_id":"r1","ok":true}', P.REPLY, "A1", KEY)
    assert not P.verify_payload(tamper(signed), P.REPLY, "A1", [KEY.public_key()])


@pytest.mark.parametrize("payload", [b"", b"garbage", b"{}", b'{"signature":"x"}', b"[1,2]", b'{"a":1}'])
def test_unsigned_or_malformed_messages_do_not_verify(payload: bytes) -> None:
    assert not P.verify_payload(payload, P.EVENT, TOPIC, [KEY.public_key()])
    assert P.why_unverified(payload, [KEY.public_key()], "A1") == "not signed"


def test_an_empty_object_and_an_empty_message_are_handled() -> None:
    assert P.verify_payload(P.sign_payload(b"{}", P.EVENT, TOPIC, KEY), P.EVENT, TOPIC, [KEY.public_key()])
    assert P.sign_payload(b"", P.EVENT, TOPIC, KEY) == b""  # clearing a retained topic stays possible
    assert P.sign_payload(b'{"a":1}', P.EVENT, TOPIC, None) == b'{"a":1}'


def test_signed_replies_and_statuses_parse_as_before() -> None:
    reply = parse_reply(P.sign_payload(b'{"request_id":"r1","ok":true}', P.REPLY, "A1", KEY))
    assert reply.ok and reply.signature
    st = parse_agent_status(P.sign_payload(b'{"agent":"A1","status":"READY","time":"t","verified":true}',
                                           P.STATUS, "A1", KEY))
    assert st.status == "READY" and st.verified is False  # only the reader sets it, never the message


def test_the_client_trusts_local_agents_and_its_list(tmp_path: Path) -> None:
    local = load_or_create_agent_key(tmp_path / "agents" / "A1")
    keys = AgentKeys(tmp_path)
    assert [public_text(k) for k in keys.keys("A1")] == [public_text(local.public_key())]
    assert keys.keys("B1") == [] and keys.keys("../A1") == []
    remote = Ed25519PrivateKey.generate().public_key()
    trust_agent(tmp_path, "B1", public_text(remote))
    # a line for a local agent's name does not replace its key
    trust_agent(tmp_path, "A1", public_text(remote))
    keys = AgentKeys(tmp_path)
    assert [public_text(k) for k in keys.keys("B1")] == [public_text(remote)]
    assert [public_text(k) for k in keys.keys("A1")] == [public_text(local.public_key())]
    again = Ed25519PrivateKey.generate().public_key()
    trust_agent(tmp_path, "B1", public_text(again))  # replaced, not added
    assert [public_text(k) for k in AgentKeys(tmp_path).keys("B1")] == [public_text(again)]
    assert {row[0] for row in AgentKeys(tmp_path).describe()} == {"A1", "B1"}


def test_agent_names_are_taken_as_fte_key_show_prints_them() -> None:
    assert agent_name_of("agent.A1") == agent_name_of("A1") == "A1"
    with pytest.raises(ValueError):
        agent_name_of("agent.../x")
