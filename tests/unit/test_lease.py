"""agent.core.lease: the standby pair's lease rules, by tables (the clock is a number)."""

from __future__ import annotations

import pytest

from agent.core.lease import LeaseAction, LeasePlan, active_action, may_act, standby_may_take

PLAN = LeasePlan.for_takeover(15.0)  # ttl 10, renew every 2.5, stop after 6, poll every 1


def test_the_plan_keeps_the_order_renew_stop_expiry_takeover() -> None:
    for t in (3.0, 15.0, 60.0):
        p = LeasePlan.for_takeover(t)
        assert p.renew_every < p.stop_after < p.ttl < p.ttl + p.poll_every < t


@pytest.mark.parametrize("now, sent, attempt, want", [
    (100.0, None, None, LeaseAction.STOP),        # never held
    (100.0, 100.0, 100.0, LeaseAction.KEEP),      # just renewed
    (102.4, 100.0, 100.0, LeaseAction.KEEP),
    (102.5, 100.0, 100.0, LeaseAction.RENEW),     # renew_every after the last attempt
    (104.0, 100.0, 103.0, LeaseAction.KEEP),      # an attempt in flight/failed 1 s ago: not yet again
    (105.6, 100.0, 103.0, LeaseAction.RENEW),     # failed renewals: try again
    (105.9, 100.0, 105.6, LeaseAction.KEEP),
    (106.0, 100.0, 105.6, LeaseAction.STOP),      # stop_after since the last success: stop, lease still valid
    (500.0, 100.0, 499.0, LeaseAction.STOP),
])
def test_active_action(now: float, sent: float | None, attempt: float | None, want: LeaseAction) -> None:
    assert active_action(PLAN, now, sent, attempt) is want


@pytest.mark.parametrize("now, sent, want", [
    (100.0, None, False), (100.0, 100.0, True), (105.99, 100.0, True), (106.0, 100.0, False),
])
def test_may_act_is_the_fence(now: float, sent: float | None, want: bool) -> None:
    assert may_act(PLAN, now, sent) is want


@pytest.mark.parametrize("server_now, expires_at, want", [
    (100.0, None, True), (100.0, 110.0, False), (110.0, 110.0, False), (110.1, 110.0, True),
])
def test_standby_may_take(server_now: float, expires_at: float | None, want: bool) -> None:
    assert standby_may_take(server_now, expires_at) is want


def test_a_network_cut_stops_the_active_before_the_standby_may_take() -> None:
    """The worst case: the renewal sent at t reached the server at once (expires t + ttl), then the network was
    cut. The active stops at t + stop_after; the standby may take only after t + ttl."""
    t = 1000.0
    stop = next(x / 10 for x in range(int(t * 10), int((t + 20) * 10)) if active_action(PLAN, x / 10, t, x / 10)
                is LeaseAction.STOP)
    take = next(x / 10 for x in range(int(t * 10), int((t + 20) * 10)) if standby_may_take(x / 10, t + PLAN.ttl))
    assert stop < take <= t + PLAN.ttl + PLAN.poll_every


def test_a_takeover_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LeasePlan.for_takeover(0)
