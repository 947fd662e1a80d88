"""The outbox signs what it publishes for the topic it publishes it on, an event shortened to fit included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire import provenance as P
from agent.link import MessageTooLarge
from agent.store import StateStore
from agent.transferlog import OutboxPublisher

KEY = Ed25519PrivateKey.generate()
TOPIC = "SYSTEM.FTE/Log/A1/" + "ab" * 24


def test_every_published_message_is_signed_and_the_shortened_one_too(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    sent: list[tuple[str, bytes]] = []

    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if len(payload) > 600:
            raise MessageTooLarge(f"{len(payload)} bytes")
        sent.append((topic, payload))

    big = {"transfer_id": "ab" * 24, "action": "completed", "files": [{"source": "/x" * 40}] * 10}
    store.outbox_put(TOPIC, json.dumps(big).encode())
    store.outbox_put(TOPIC, json.dumps({"action": "started"}).encode())
    store.outbox_put("SYSTEM.FTE/Monitors/A1/m", b"", retain=True)  # a deletion stays an empty message
    outbox = OutboxPublisher(store, publish, lambda: True,
                             sign=lambda topic, payload: P.sign_payload(payload, P.EVENT, topic, KEY))
    asyncio.run(outbox.drain())
    assert [t for t, _ in sent] == [TOPIC, TOPIC, "SYSTEM.FTE/Monitors/A1/m"]
    shortened, started, deletion = (p for _, p in sent)
    assert json.loads(shortened)["files_omitted"] == 10
    assert P.verify_payload(shortened, P.EVENT, TOPIC, [KEY.public_key()])
    assert P.verify_payload(started, P.EVENT, TOPIC, [KEY.public_key()])
    assert deletion == b""
    store.close()
