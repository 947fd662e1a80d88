"""mqtt-fte: managed file transfer over MQTT."""

__version__ = "0.1.0"
