"""The agent keys a client trusts: whose replies, log events and statuses it believes (agent.wire.provenance).

Two sources, both under $FTE_CONFIG_HOME:

    agents/<NAME>/agent.key     an agent configured here: its own identity key (its public half is used)
    keys/trusted_agents         agents elsewhere: lines `agent.<NAME> <base64 Ed25519 public key>`,
                                written by `fte key trust-agent NAME KEY` (`#` starts a comment)

An agent configured here is trusted with the key it has here only: a line in trusted_agents for the same
name is not consulted, so nobody who can add a line can stand in for a local agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.atomic_files import locked, write_atomic
from agent.auth import at_line, key_lines, keys_dir, load_public, public_text
from agent.wire.binding import AGENT_KEY_FILE, agent_requester
from agent.names import AGENT_NAME_RE, AGENT_NAME_RULE

TRUSTED_AGENTS_FILE = "trusted_agents"
_NAME = AGENT_NAME_RE


def agent_name_of(text: str) -> str:
    """`A1` or `agent.A1` (as `fte key show --agent A1` prints it) as the agent's name; ValueError if neither."""
    name = text[len("agent."):] if text.startswith("agent.") else text
    if not _NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not an agent name ({AGENT_NAME_RULE}; as fte key show --agent NAME "
                         f"prints it)")
    return name


def parse_trusted_agents(text: str, path: Path) -> dict[str, Any]:
    """agent name -> public key, from the lines of a trusted_agents file."""
    found: dict[str, Any] = {}
    for n, (requester, pub) in key_lines(text, path, 2, "agent.<NAME> <public key>"):
        with at_line(path, n):
            found[agent_name_of(requester)] = load_public(pub)
    return found


def trust_agent(home: Path, name: str, public: str) -> Path:
    """Add (or replace) an agent's key in the client's trust list; atomic, and locked against a concurrent
    update (two runs at once both keep their line)."""
    load_public(public)
    d = keys_dir(home)
    path = d / TRUSTED_AGENTS_FILE
    with locked(d):
        lines = path.read_text().splitlines() if path.exists() else [
            "# Agents whose replies, log events and statuses this client believes: agent.<NAME> <public key>",
            "# Add with: fte key trust-agent NAME KEY (the line fte key show --agent NAME prints where NAME runs)"]
        lines = [ln for ln in lines if ln.split("#", 1)[0].split()[:1] != [agent_requester(name)]]
        lines.append(f"{agent_requester(name)} {public}")
        write_atomic(path, ("\n".join(lines) + "\n").encode(), 0o644)
    return path


class AgentKeys:
    """The keys one client trusts, read when first needed (a command lives for seconds)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._local: dict[str, Any] = {}
        self._listed: dict[str, Any] | None = None
        self.problem: str | None = None  # an unreadable trust list, said once by the commands

    def keys(self, agent: str) -> list[Any]:
        if not _NAME.fullmatch(agent):
            return []
        if agent not in self._local:
            self._local[agent] = self._local_key(agent)
        if self._local[agent] is not None:
            return [self._local[agent]]
        listed = self.listed().get(agent)
        return [listed] if listed is not None else []

    def _local_key(self, agent: str) -> Any:
        from agent.wire.binding import load_or_create_agent_key

        path = self.home / "agents" / agent / AGENT_KEY_FILE
        if not path.is_file():
            return None
        try:
            return load_or_create_agent_key(path.parent).public_key()
        except (OSError, ValueError):
            return None  # another user's agent (its key unreadable here): the trust list may name it

    def listed(self) -> dict[str, Any]:
        if self._listed is None:
            path = keys_dir(self.home) / TRUSTED_AGENTS_FILE
            try:
                self._listed = parse_trusted_agents(path.read_text(), path)
            except FileNotFoundError:
                self._listed = {}
            except (OSError, ValueError) as exc:
                self.problem = str(exc)
                self._listed = {}
        return self._listed

    def describe(self) -> list[tuple[str, str, str]]:
        """(agent, public key, where from) of every trusted agent, for `fte key trusted-agents`."""
        rows = []
        try:
            local = sorted(p.parent.name for p in (self.home / "agents").glob(f"*/{AGENT_KEY_FILE}"))
        except OSError:
            local = []
        for name in local:
            key = self.keys(name)
            if key:
                rows.append((name, public_text(key[0]), "configured here"))
        for name, key in sorted(self.listed().items()):
            if name not in local:
                rows.append((name, public_text(key), TRUSTED_AGENTS_FILE))
        return rows
