"""What a template keeper decides after a (re)connection, and which template versions are dead (no IO).

Templates are retained messages written by the CLI; a non-persistent broker loses them when it restarts.
Each agent keeps the signed templates it has seen (agent.template_keeper) and republishes them when the
broker lost its retained state. It knows that from the retained epoch marker (<prefix>/Keeper/epoch) the
keepers set: a broker that still holds the epoch this keeper saw last kept its retained state (a kept
template that is absent then was deleted, and is forgotten without a tombstone, in case it only came late); no marker, or another epoch, means it lost it (the absent ones
are republished). A deletion is remembered as a tombstone: the `created` time of the version deleted, so
that a stale copy (created at or before it) that another keeper republishes is cleared again, and a
template created anew under the same name (created later) is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


def created_time(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def is_dead(created: object, tombstone: object) -> bool:
    """A template version `created` at that time is a deleted one (its tombstone is the deleted version's
    `created`): at or before the tombstone. Unknown times are not dead (nothing to compare)."""
    c, t = created_time(created), created_time(tombstone)
    if c is None or t is None:
        return False
    if (c.tzinfo is None) != (t.tzinfo is None):
        return False
    return c <= t


@dataclass(frozen=True)
class Reconcile:
    republish: tuple[str, ...]  # kept templates to publish again (the broker lost them)
    forget: tuple[str, ...]  # kept templates deleted while this keeper was away (tombstone them)
    set_epoch: bool  # publish a new epoch marker (the broker has none)


def reconcile(kept: set[str], present: set[str], epoch_before: str | None, epoch_now: str | None) -> Reconcile:
    """After a connection's retained messages arrived: `kept` the live templates this keeper holds,
    `present` those the broker sent, `epoch_before` the marker this keeper saw last (None: never),
    `epoch_now` the broker's marker now (None: absent)."""
    absent = tuple(sorted(kept - present))
    if epoch_now is not None and epoch_now == epoch_before:
        return Reconcile((), absent, False)  # the broker kept its state: what is absent was deleted
    return Reconcile(absent, (), epoch_now is None)
