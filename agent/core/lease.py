"""The rules of the standby pair's lease (IO-free; the clock is the caller's).

One agent name, two processes; the one holding the lease row is the active. The row's `expires_at` is set by
the database server's clock (`now() + ttl`) at every renewal, so the standby's decision uses one clock only.
The active's own decision uses its monotonic clock from the moment it *sent* the renewal that succeeded: the
server ran the statement after that moment, so the lease lasts at least `ttl` after it in real time.

    renew every   renew_every  (ttl / 4)
    must stop at  sent + stop_after   (stop_after = ttl * 0.6 < ttl: it stops before the lease can expire)
    standby may take the lease when the server's now() > expires_at; it looks every poll_every (ttl / 10)

With takeover timeout T: ttl = T * 2/3, so takeover <= ttl + poll_every + one round trip < T.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class LeaseAction(str, Enum):
    KEEP = "keep"    # lease fresh: act
    RENEW = "renew"  # time to renew (and still allowed to act)
    STOP = "stop"    # no renewal succeeded in time: stop acting now, before the lease may expire


@dataclass(frozen=True)
class LeasePlan:
    ttl: float
    renew_every: float
    stop_after: float
    poll_every: float

    @classmethod
    def for_takeover(cls, takeover_s: float) -> "LeasePlan":
        """The lease timings for a standby that must take over within `takeover_s` seconds of the active's death."""
        if takeover_s <= 0:
            raise ValueError("the takeover timeout must be positive")
        ttl = takeover_s * 2 / 3
        return cls(ttl=ttl, renew_every=ttl / 4, stop_after=ttl * 0.6, poll_every=ttl / 10)


def active_action(plan: LeasePlan, now: float, last_renew_sent: float | None, last_attempt: float | None) -> LeaseAction:
    """What the active does at `now` (monotonic): `last_renew_sent` when the last *successful* renewal (or the
    acquisition) was sent, `last_attempt` when the last attempt (successful or not) was sent."""
    if last_renew_sent is None or now - last_renew_sent >= plan.stop_after:
        return LeaseAction.STOP
    if last_attempt is None or now - last_attempt >= plan.renew_every:
        return LeaseAction.RENEW
    return LeaseAction.KEEP


def may_act(plan: LeasePlan, now: float, last_renew_sent: float | None) -> bool:
    """The fence check before a side effect: True while the lease is certainly still ours."""
    return last_renew_sent is not None and now - last_renew_sent < plan.stop_after


def standby_may_take(server_now: float, expires_at: float | None) -> bool:
    """The standby takes the lease when there is none or it expired, both by the database server's clock."""
    return expires_at is None or server_now > expires_at
