"""Does a broker hold small messages back for the client's delayed ACK? The rule, from round-trip samples.

A broker writing with Nagle's algorithm (Mosquitto without `set_tcp_nodelay true`, as Debian ships it) sends
a small packet only once the previous one to the same client is acknowledged; a client that does not ask for
quick ACKs (agent.quickack) acknowledges after its delayed-ACK timer, 40 ms on Linux (200 ms elsewhere).
So a small QoS 1 message's round trip measured twice on one connection, without and with quick ACKs, shows
the pattern as a step of tens of ms that quick ACKs remove. A broker that is far away or slow is slow both
ways: no step, no warning. Pure: the broker probe (agent.broker_probe) takes the samples.
"""

from __future__ import annotations

import statistics
from typing import Sequence

SAMPLES = 5
"""Round trips taken each way."""
STEP_MS = 25.0
"""The smallest slowdown (ms) without quick ACKs that counts as the pattern (the delayed ACK is ≥ 40 ms)."""
SHARE = 0.5
"""... and with quick ACKs the round trip must be at most this share of the one without."""


def delayed_ack_pattern(plain_ms: Sequence[float], quick_ms: Sequence[float]) -> bool:
    """True when the round trips without quick ACKs (`plain_ms`) are a delayed-ACK step above those with them
    (`quick_ms`), by their medians. False when either is empty (nothing measured, nothing claimed)."""
    if not plain_ms or not quick_ms:
        return False
    plain, quick = statistics.median(plain_ms), statistics.median(quick_ms)
    return plain - quick >= STEP_MS and quick <= SHARE * plain


def delayed_ack_message(plain_ms: Sequence[float], quick_ms: Sequence[float]) -> str:
    """The warning of the probe when `delayed_ack_pattern` holds (one line, with what to do)."""
    return (f"the broker holds small messages back until the client acknowledges the previous one (Nagle's "
            f"algorithm on the broker: a small message's round trip {statistics.median(plain_ms):.0f} ms, "
            f"{statistics.median(quick_ms):.1f} ms with the quick ACKs this agent asks for); agents work around "
            f"it where TCP_QUICKACK exists (Linux), other clients do not: set set_tcp_nodelay true in "
            f"mosquitto.conf (docs/brokers.md)")
