"""The wire: what travels through the broker, and how a receiver knows it is genuine.

- protocol: topic names (`Topics`), the JSON message models (strict, size-limited) and the binary chunk and
  bundle frames;
- binding: the per-transfer keys and MACs that bind data and control messages to their two agents, and the
  agent's identity key;
- provenance: the signatures of the replies, statuses and log events an agent publishes;
- events: the log events as models (what agents write, what the CLI and a logger read).

Between the two other layers: the core (agent/core) knows none of this, the shell (agent/*.py) sends, receives
and checks it.
"""
