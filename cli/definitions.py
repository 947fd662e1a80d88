"""`fte key trust-creator`, `untrust-creator`, `creators`: whose templates this client uses.

The signing and checking are in agent.definitions; these commands edit $FTE_CONFIG_HOME/keys/trusted_creators
and show it beside the client's own keys (which are always trusted as creators).
"""

from __future__ import annotations

import typer

from .app import command, fail, key_app, out


def say(text: str) -> None:
    out.print(text, markup=False, emoji=False, soft_wrap=True)


@command("trust-creator", group=key_app)
def trust_creator(
    name: str = typer.Argument(..., help="The creator's requester name (as fte key show prints it)."),
    public_key: str = typer.Argument(..., help="Their public key (base64, from fte key show)."),
) -> None:
    """Use templates signed by this creator's key (besides your own)."""
    from agent.definitions import trust_creator as add
    from agent.settings import config_home

    try:
        path = add(config_home(), name, public_key)
    except ValueError as exc:
        fail(str(exc))
    say(f"Templates created by {name} with this key are now used here; {path}")

@command("untrust-creator", group=key_app)
def untrust_creator(
    name: str = typer.Argument(..., help="The creator to stop trusting."),
) -> None:
    """Stop using templates signed by this creator (your own keys stay trusted)."""
    from agent.definitions import TRUSTED_CREATORS, untrust_creator as remove
    from agent.settings import config_home

    if not remove(config_home(), name):
        fail(f"{name} is not in {config_home() / 'keys' / TRUSTED_CREATORS}; see them with: fte key creators")
    say(f"Templates created by {name} are no longer used here.")

@command("creators", group=key_app)
def creators() -> None:
    """List the creators whose templates this client uses: your own keys and trusted_creators."""
    from agent.auth import public_text
    from agent.definitions import DefinitionTrust
    from agent.settings import config_home

    try:
        found = DefinitionTrust(config_home()).creators()
    except ValueError as exc:
        fail(str(exc))
    if not found:
        say(f"No creator is trusted: no key in {config_home() / 'keys'}; create yours with: fte key generate")
    for c in found:
        say(f"{c.name} {public_text(c.key)} ({c.source})")
