"""Transfer ids as the commands take them: the whole id, or a prefix of 8 or more of its characters that
one transfer known to the running agents starts with (fte-cancel-transfer, fte-logs -t, fte-show-transfer)."""

from __future__ import annotations

from typing import Any, Optional

from agent.core.statuses import AGENT_RUNNING
from agent.wire.protocol import ListTransfers

from .client import ClientError, FteClient, new_request_id


async def transfers_of(c: FteClient, agent: Optional[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every transfer the (running) agents know, and a warning per agent that did not answer."""
    statuses = await c.agent_statuses(settle=0.5)
    names = [agent] if agent else sorted(n for n, s in statuses.items() if s.status in AGENT_RUNNING)
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for n in names:
        try:
            r = await c.request(n, ListTransfers(kind="list_transfers", request_id=new_request_id(),
                                                 reply_to=c.client_id), timeout=5)
        except ClientError as exc:
            warnings.append(str(exc))
            continue
        if not r.ok:
            warnings.append(f"agent {n}: {r.message}")
            continue
        rows += [dict(t, agent=n) for t in r.data.get("transfers", [])]
    return rows, warnings


TRANSFER_ID_CHARS = 48
SHORTEST_PREFIX = 8  # the logs, fte top and the demo show the first 12 characters of an id


def check_transfer_id(given: str) -> str:
    """The id or id prefix as typed, lower-cased, if it can be one; else a ClientError saying what is wanted."""
    tid = given.strip().lower()
    if not (SHORTEST_PREFIX <= len(tid) <= TRANSFER_ID_CHARS) or any(ch not in "0123456789abcdef" for ch in tid):
        raise ClientError(f"{given!r} is not a transfer id: give the {TRANSFER_ID_CHARS} hex characters printed by "
                          f"fte-create-transfer, or the first {SHORTEST_PREFIX} or more of them (fte-logs and "
                          f"fte top show the first 12)")
    return tid


async def resolve_transfer_id(c: FteClient, given: str, agent: Optional[str]) -> str:
    """The whole id of the one transfer the agents know that starts with `given` (a whole id is taken as it is)."""
    return (await find_transfer(c, given, agent))[0]


async def find_transfer(c: FteClient, given: str, agent: Optional[str]) -> tuple[str, Optional[list[str]]]:
    """(whole id, the agents that listed it) for an id prefix, asking the running agents (or `agent`) for
    their transfers as fte-list-transfers does; (the id, None) for a whole id, asking nobody."""
    tid = check_transfer_id(given)
    if len(tid) == TRANSFER_ID_CHARS:
        return tid, None
    rows, warnings = await transfers_of(c, agent)
    tid = pick_transfer_id(tid, [str(t.get("transfer_id", "")) for t in rows], agent, warnings)
    return tid, sorted({str(t["agent"]) for t in rows if t.get("transfer_id") == tid})


def pick_transfer_id(prefix: str, known: list[str], agent: Optional[str] = None,
                     warnings: Optional[list[str]] = None) -> str:
    """The one id in `known` that starts with `prefix`; a ClientError saying what to do when none or several do."""
    matches = sorted({t for t in known if t.startswith(prefix)})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        who = f"agent {agent} knows no transfer" if agent else "no running agent knows a transfer"
        unanswered = f" ({'; '.join(warnings)})" if warnings else ""
        raise ClientError(f"{who} whose id starts with {prefix}{unanswered}; list them with fte-list-transfers, "
                          f"or give the whole id")
    raise ClientError(f"{len(matches)} transfers have ids starting with {prefix}: {', '.join(matches[:10])}"
                      + (" ..." if len(matches) > 10 else "") + "; give more characters of the id")
