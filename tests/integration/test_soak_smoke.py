"""The soak (bench/soak.py) at tiny scale: 2 agents, 6 transfers in 2 waves through the stock Mosquitto.

A smoke test of the soak's own checks, not of speed (no timing assertion): every destination file has
its source's sha256, each transfer had exactly one `completed` event on `SYSTEM.FTE/Log/#` (counted by a
real subscriber), no part file is left, and the report renders.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bench.harness import machine_info
from bench.soak import SoakConfig, render_result, run_soak
from tests.support.brokers import find_mosquitto
from tests.support.ci import unavailable

pytestmark = pytest.mark.timeout(120)


def test_soak_at_tiny_scale(tmp_path) -> None:
    if find_mosquitto() is None:
        unavailable("mosquitto is not installed (apt install mosquitto)")
    r = run_soak(SoakConfig(agents=2, transfers=6, waves=2, broker="mosquitto", workdir=tmp_path, settle=0.5))
    assert not r.errors, r.errors
    assert len(r.transfers) == 6 and not r.refused and not r.not_completed, (r.refused, r.not_completed)
    assert r.intact == 6 and not r.damaged, r.damaged
    assert [r.completed_counts.get(t["transfer_id"]) for t in r.transfers] == [1] * 6, r.completed_counts
    assert r.part_files == []
    assert set(r.agent_hwm) == {"A01", "A02"} and all(v > 0 for v in r.agent_hwm.values())
    assert r.broker_hwm and r.ok
    text = render_result(r, datetime.now(timezone.utc), "run_soak", machine_info())
    assert "**6 of 6**" in text
