"""The Prometheus text of an agent (agent.metrics): every metric has # HELP and # TYPE, fte_build_info, and the
duration and size histograms with cumulative buckets."""

from __future__ import annotations

import re

from agent import __version__
from agent.metrics import DURATION_BUCKETS, SIZE_BUCKETS, Metrics

SAMPLE = re.compile(r'^([a-z_]+?)(_bucket|_sum|_count)?\{([^}]*)\} (\S+)$')


def _metrics() -> Metrics:
    m = Metrics("A1")
    m.gauges.update({"fte_broker_connected": lambda: {"": 1}, "fte_transfers_active": lambda: {'role="source"': 2}})
    m.transfer_finished("complete", 0, {"seconds": 0.3, "bytes": 2_500})
    m.transfer_finished("complete", 0, {"seconds": 42.0, "bytes": 7_000_000})
    m.transfer_finished("failed", 1, {"seconds": 9_999_999.0, "bytes": 0})
    return m


def test_every_metric_has_help_and_type() -> None:
    text = _metrics().render()
    helped = set(re.findall(r"^# HELP (\S+) \S", text, re.M))
    typed = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert helped == set(typed)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        name = m.group(1) if m.group(1) in typed else m.group(1) + (m.group(2) or "")
        assert name in typed, line
        if m.group(2):
            assert typed[name] in ("histogram", "summary"), line


def test_build_info() -> None:
    assert f'fte_build_info{{agent="A1",version="{__version__}"}} 1' in _metrics().render().splitlines()


def test_histograms_are_cumulative_with_inf_sum_count() -> None:
    lines = _metrics().render().splitlines()
    for name, bounds, total in (("fte_transfer_duration_seconds", DURATION_BUCKETS, 0.3 + 42.0 + 9_999_999.0),
                                ("fte_transfer_size_bytes", SIZE_BUCKETS, 2_500 + 7_000_000)):
        buckets = [ln for ln in lines if ln.startswith(name + "_bucket")]
        assert len(buckets) == len(bounds) + 1 and 'le="+Inf"} 3' in buckets[-1], buckets
        counts = [int(b.rsplit(" ", 1)[1]) for b in buckets]
        assert counts == sorted(counts)
        assert f"{name}_count{{agent=\"A1\"}} 3" in lines
        [s] = [ln for ln in lines if ln.startswith(name + "_sum")]
        assert float(s.rsplit(" ", 1)[1]) == total
    # 0.3 s is in le=0.5 but not le=0.1; 42 s in le=60
    assert 'fte_transfer_duration_seconds_bucket{agent="A1",le="0.1"} 0' in lines
    assert 'fte_transfer_duration_seconds_bucket{agent="A1",le="0.5"} 1' in lines
    assert 'fte_transfer_duration_seconds_bucket{agent="A1",le="60"} 2' in lines
    assert 'fte_transfer_size_bytes_bucket{agent="A1",le="1000"} 1' in lines  # the empty failed transfer
