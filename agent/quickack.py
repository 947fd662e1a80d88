"""Acknowledge at once what the broker sends (TCP_QUICKACK), so that a broker with Nagle's algorithm on does
not hold its next small message back until this host's delayed ACK fires.

Mosquitto as Debian ships it (no `set_tcp_nodelay`) writes with Nagle's algorithm: a small packet waits
while an earlier one to the same client is unacknowledged, and the client's kernel delays that ACK (Linux:
40 ms at least) when it has nothing to send back. A QoS 1 publish is answered by a PUBACK, so the next
message from the broker on that connection (an ack of the destination, a control reply) waited 40 ms.
Measured through config/mosquitto.conf: a small message's round trip 43 ms; with the broker's
`set_tcp_nodelay true` 1 ms; with this, on the stock broker, 1.7 ms (docs/performance.md, "On a stock
broker"). Linux leaves quick-ack mode on its own, so it is asked for again after each read of a packet's
body: one setsockopt (about a microsecond) per MQTT packet.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import aiomqtt

TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere nothing is done
_SWITCH = "_fte_quick_ack"  # on paho's client: whether its reads ask for quick ACKs


def ack_reads_at_once(paho_client: Any) -> bool:
    """Make `paho_client` (paho-mqtt's Client, aiomqtt's `_client`) ask for an immediate ACK after every read
    of a packet's body. False (nothing changed) where the platform or the paho version does not allow it."""
    read: Callable[[int], bytes] | None = getattr(paho_client, "_sock_recv", None)
    if TCP_QUICKACK is None or read is None:
        return False
    option = TCP_QUICKACK
    setattr(paho_client, _SWITCH, True)

    def read_and_ack(bufsize: int) -> bytes:
        data = read(bufsize)
        # bufsize 1: the fixed header's bytes; the body follows at once, so one request a packet is enough
        if bufsize > 1 and getattr(paho_client, _SWITCH):
            sock = paho_client._sock
            if sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, option, 1)
                except OSError:  # a socket being closed, or one that is not TCP: nothing to speed up
                    pass
        return data

    paho_client._sock_recv = read_and_ack
    return True


def quick_acks(client: aiomqtt.Client, on: bool) -> None:
    """Turn the quick ACKs of a client of agent.link.make_client on or off (the broker probe measures the
    broker as a client without them sees it)."""
    paho_client = getattr(client, "_client", None)
    if paho_client is not None and hasattr(paho_client, _SWITCH):
        setattr(paho_client, _SWITCH, on)
