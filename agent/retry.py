"""Retry policies, applied in one place each (as rclone does): broker reconnection lives in
`agent.link`; the resync attempts of a recovering transfer use `resync_delay`."""

from __future__ import annotations

from types import SimpleNamespace

from tenacity import wait_exponential

# Between resync attempts of a recovering transfer: 0.5 s, 1 s, 2 s, 4 s, then every 5 s.
RESYNC_BACKOFF = wait_exponential(multiplier=0.5, min=0.5, max=5)


def resync_delay(attempt: int) -> float:
    """Seconds to wait before resync attempt number `attempt` (1-based)."""
    return float(RESYNC_BACKOFF(SimpleNamespace(attempt_number=max(1, attempt))))  # type: ignore[arg-type]
