"""The status words an agent and a file can have, each defined once.

An agent's status is what it retains on ``<prefix>/Agents/<agent>`` (and its will says UNREACHABLE); a
file's status is the state of one file of a transfer in the state store and in holdings. Both are
`StrEnum`s: a member is the very string on the wire and in the store, so a status read from JSON
compares equal to its member.
"""

from __future__ import annotations

from enum import StrEnum


class AgentState(StrEnum):
    STARTING = "STARTING"
    READY = "READY"  # connected, no transfer running
    ACTIVE = "ACTIVE"  # connected, running at least one transfer
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"  # stopped cleanly
    UNREACHABLE = "UNREACHABLE"  # its will: the broker lost it


# An agent that takes work: the two statuses of a connected, running agent.
AGENT_RUNNING: frozenset[str] = frozenset({AgentState.READY, AgentState.ACTIVE})
# An agent that is gone: a transfer to it waits in recovery.
AGENT_GONE: frozenset[str] = frozenset({AgentState.UNREACHABLE, AgentState.STOPPED})
# An agent that is gone or going: a resync to it is not worth sending.
AGENT_LEAVING: frozenset[str] = AGENT_GONE | {AgentState.STOPPING}


class FileStatus(StrEnum):
    READY = "ready"  # being sent or written
    RENAMING = "renaming"  # destination: verified, being renamed into place (finished after a restart)
    CONVERTING = "converting"  # destination, -t text: verified, being converted (done again after a restart)
    DONE = "done"
    FAILED = "failed"
