"""Test support: real brokers in subprocesses, a fault-injecting TCP proxy, bounded waits.

Everything here talks to real processes and real sockets; nothing is mocked.
"""

from tests.support.brokers import (
    AmqttProcess,
    BrokerProcess,
    MosquittoProcess,
    ThreadedTcpProxy,
    TcpProxy,
    async_wait_for,
    find_mosquitto,
    free_port,
    mqtt_probe,
    split_url,
    wait_for,
)

__all__ = [
    "AmqttProcess",
    "BrokerProcess",
    "MosquittoProcess",
    "ThreadedTcpProxy",
    "TcpProxy",
    "async_wait_for",
    "find_mosquitto",
    "free_port",
    "mqtt_probe",
    "split_url",
    "wait_for",
]
