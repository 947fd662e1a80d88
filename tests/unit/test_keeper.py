"""The template keeper's rules (agent.core.keeper) by tables: what a reconnection republishes or forgets,
and which template versions a tombstone kills."""

from __future__ import annotations

import pytest

from agent.core.keeper import Reconcile, is_dead, reconcile

T0, T1 = "2026-12-02T10:00:00Z", "2026-12-02T11:00:00Z"


@pytest.mark.parametrize("kept,present,before,now,expected", [
    # the broker kept its state (the epoch this keeper saw last): absent = deleted while away
    ({"a", "b"}, {"a"}, "e1", "e1", Reconcile((), ("b",), False)),
    ({"a"}, {"a"}, "e1", "e1", Reconcile((), (), False)),
    # no marker: the broker lost its retained state; republish the absent ones, set a new marker
    ({"a", "b"}, set(), "e1", None, Reconcile(("a", "b"), (), True)),
    ({"a", "b"}, {"b"}, "e1", None, Reconcile(("a",), (), True)),  # another keeper already republished b
    # another epoch: the broker lost it and another keeper set the marker again; republish what is absent
    ({"a", "b"}, {"a"}, "e1", "e2", Reconcile(("b",), (), False)),
    # a keeper that never saw a marker and finds one: nothing it keeps is forgotten
    ({"a"}, set(), None, "e2", Reconcile(("a",), (), False)),
    # a brand-new broker, nothing kept: only the marker
    (set(), set(), None, None, Reconcile((), (), True)),
])
def test_reconcile(kept: set[str], present: set[str], before: str | None, now: str | None,
                   expected: Reconcile) -> None:
    assert reconcile(kept, present, before, now) == expected


@pytest.mark.parametrize("created,tombstone,dead", [
    (T0, T0, True),  # the deleted version itself
    (T0, T1, True),  # an older version
    (T1, T0, False),  # created anew after the deletion
    (T0, None, False),  # a tombstone without a known version kills nothing
    ("garbage", T0, False),
    ("2026-12-02T10:00:00", T0, False),  # naive against aware: not comparable, not dead
])
def test_is_dead(created: str, tombstone: str | None, dead: bool) -> None:
    assert is_dead(created, tombstone) is dead


def test_template_topics() -> None:
    from agent.wire.protocol import Topics

    t = Topics("P")
    assert t.template_name(t.templates("daily")) == "daily"
    for other in ("P/Templates/", "P/Templates/a/b", "Q/Templates/a", t.keeper_epoch()):
        assert t.template_name(other) is None, other
