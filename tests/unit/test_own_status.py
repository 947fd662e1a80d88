"""The agent's own status, republished byte for byte with every heartbeat (agent.status.OwnStatus.republish):
over a late last will a cluster node retained where the agent does not read."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.router import DropLog
from agent.settings import AgentSettings
from agent.status import OwnStatus
from agent.wire.protocol import Topics, parse_agent_status


def own_status(sent: list[tuple[str, bytes, bool]], up: list[bool], stopping: list[bool]) -> OwnStatus:
    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        sent.append((topic, payload, retain))

    return OwnStatus("A1", AgentSettings(agentName="A1"), Topics(), Ed25519PrivateKey.generate(),
                     publish=publish, link_up=lambda: up[0], stopping=lambda: stopping[0], busy=lambda: False,
                     transfers=lambda: ({}, {}), chunk_size=lambda: 262144, broker_check=lambda: None,
                     tidy=lambda: None, drops=DropLog())


@pytest.mark.asyncio
async def test_republish_sends_the_last_status_again_unchanged_and_only_while_connected_and_running() -> None:
    sent: list[tuple[str, bytes, bool]] = []
    up, stopping = [True], [False]
    status = own_status(sent, up, stopping)
    await status.republish()
    assert sent == [], "nothing was published yet: nothing to republish"
    status.word = "READY"
    await status.publish()
    await status.republish()
    assert len(sent) == 2 and sent[0] == sent[1], "the same bytes (same time, same signature), retained"
    assert sent[0][0] == "SYSTEM.FTE/Agents/A1" and sent[0][2] is True
    assert parse_agent_status(sent[1][1]).status == "READY"
    up[0] = False
    await status.republish()
    up[0], stopping[0] = True, True
    await status.republish()
    assert len(sent) == 2, "not while the link is down, nor once the agent is stopping (its STOPPED stays)"
