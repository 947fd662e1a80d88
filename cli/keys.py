"""`fte key ...`: requester keys (who may command an agent) and the agent keys this client believes.

The template creators' subcommands of `fte key` are in cli/definitions.py.
"""

from __future__ import annotations

from typing import Optional

import typer

from .app import command, fail, key_app, out


@command("generate", group=key_app)
def key_generate(
    name: Optional[str] = typer.Option(None, "--name", help="Requester name (default: $FTE_REQUESTER or your user)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
) -> None:
    """Create your signing key in $FTE_CONFIG_HOME/keys and print its public half."""
    from agent.auth import generate_key, load_private, public_text, requester_name
    from agent.settings import config_home

    name = name or requester_name()
    try:
        path = generate_key(config_home(), name, overwrite=force)
    except (FileExistsError, ValueError) as exc:
        fail(f"{exc}; use --force to replace it" if isinstance(exc, FileExistsError) else str(exc))
    key = load_private(config_home(), name)
    assert key is not None
    out.print(f"Created {path}")
    out.print(f"{name} {public_text(key.public_key())}")


@command("show", group=key_app)
def key_show(
    name: Optional[str] = typer.Option(None, "--name", help="Requester name."),
    agent: Optional[str] = typer.Option(None, "--agent", help="Show this agent's identity key instead."),
) -> None:
    """Print your requester name and public key (give this line to an agent's owner)."""
    from agent.auth import load_private, public_text, requester_name
    from agent.settings import agent_dir, config_home

    if agent:
        from agent.wire.binding import agent_requester, load_or_create_agent_key

        if not (agent_dir(agent) / "agent.properties").exists():
            fail(f"agent {agent} is not configured here ({agent_dir(agent)})")
        pub = public_text(load_or_create_agent_key(agent_dir(agent)).public_key())
        out.print(f"{agent_requester(agent)} {pub}")
        return
    name = name or requester_name()
    key = load_private(config_home(), name)
    if key is None:
        fail(f"no key for {name} in {config_home() / 'keys'}; create one with: fte key generate")
    out.print(f"{name} {public_text(key.public_key())}")


@command("trust", group=key_app)
def key_trust(
    agent: str = typer.Argument(..., help="The agent (configured under $FTE_CONFIG_HOME) that will obey."),
    name: str = typer.Argument(..., help="Requester name."),
    public_key: str = typer.Argument(..., help="The requester's public key (base64, from fte key show)."),
    permissions: str = typer.Option("transfer,cancel", "-p", "--permissions",
                                    help="Comma-separated: transfer, cancel, monitor, admin; or all."),
) -> None:
    """Let a requester command an agent (or, as agent.NAME with -p transfer, let agent NAME take part in transfers)."""
    from agent.auth import check_trust_entry, is_agent_key_name, trust
    from agent.settings import agent_dir

    d = agent_dir(agent)
    if not (d / "agent.properties").exists():
        fail(f"agent {agent} is not configured here ({d}); create it with fte-create-agent -agentName {agent}")
    try:
        check_trust_entry(name, permissions)
        path = trust(d, name, public_key, permissions)
    except ValueError as exc:
        fail(str(exc))
    if is_agent_key_name(name):
        out.print(f"{agent} now takes part in transfers with the agent whose identity key is {name}; {path}")
        return
    out.print(f"{agent} now obeys {name} ({permissions}); {path}")


@command("untrust", group=key_app)
def key_untrust(
    agent: str = typer.Argument(..., help="The agent (configured under $FTE_CONFIG_HOME)."),
    name: str = typer.Argument(..., help="The requester (or agent.NAME) it stops trusting."),
) -> None:
    """Stop an agent obeying a requester (or taking part in transfers with agent NAME, given as agent.NAME)."""
    from agent.auth import TRUST_FILE, untrust
    from agent.settings import agent_dir

    d = agent_dir(agent)
    if not (d / "agent.properties").exists():
        fail(f"agent {agent} is not configured here ({d}); see the agents with fte-list-agents")
    if not untrust(d, name):
        fail(f"{name} is not in {d / TRUST_FILE}; see who {agent} trusts with: fte key list {agent}")
    out.print(f"{agent} no longer trusts {name} (at once: a running agent re-reads {d / TRUST_FILE})")


@command("trust-agent", group=key_app)
def key_trust_agent(
    agent: str = typer.Argument(..., help="The agent, as NAME or agent.NAME (as fte key show --agent prints it)."),
    public_key: str = typer.Argument(..., help="Its identity key (base64), from fte key show --agent NAME where "
                                               "the agent is configured."),
) -> None:
    """Believe an agent configured elsewhere: its replies, log events and statuses (signed by this key)."""
    from agent.settings import config_home

    from .trusted_agents import agent_name_of, trust_agent

    try:
        name = agent_name_of(agent)
        path = trust_agent(config_home(), name, public_key)
    except ValueError as exc:
        fail(str(exc))
    out.print(f"This client now believes agent {name} when it is signed by that key; {path}")


@command("trusted-agents", group=key_app)
def key_trusted_agents() -> None:
    """List the agents whose replies, events and statuses this client believes, and their keys."""
    from agent.settings import config_home

    from .trusted_agents import AgentKeys

    keys = AgentKeys(config_home())
    rows = keys.describe()
    if keys.problem:
        fail(f"{keys.problem}; fix or remove that line")
    if not rows:
        out.print("No agent key is trusted here: no agent is configured in this FTE_CONFIG_HOME and "
                  "fte key trust-agent was not used.")
    for name, key, where in rows:
        out.print(f"agent.{name} {key} ({where})", markup=False)


@command("list", group=key_app)
def key_list(agent: str = typer.Argument(..., help="Agent whose trusted requesters to list.")) -> None:
    """List the requesters an agent obeys."""
    from agent.auth import TRUST_FILE, parse_trust_file, public_text
    from agent.settings import agent_dir

    path = agent_dir(agent) / TRUST_FILE
    if not path.exists():
        out.print(f"agent {agent} trusts no requester ({path} does not exist)")
        return
    try:
        trusted = parse_trust_file(path.read_text(), path)
    except ValueError as exc:
        fail(str(exc))
    for t in trusted.values():
        out.print(f"{t.name} {public_text(t.key)} {','.join(sorted(t.permissions))}")
