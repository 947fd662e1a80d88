"""How every human-facing figure of fte is written (CLI output, agent log messages, docs): decimal units,
powers of 1000, as most tools (rsync, curl, rich) and the bandwidth syntax of issue 17 write them:
1 kB = 1000 B, 1 MB = 1000 kB, rates in MB/s. Machine fields (JSON, metrics) stay in bytes and seconds.
"""

from __future__ import annotations

import re
from typing import Any

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def size_text(n: Any) -> str:
    """`n` bytes as 999 B, 1.5 kB, 12.3 MB, ... (one decimal past bytes); '?' for what is no number."""
    try:
        v = float(n)
    except (TypeError, ValueError):
        return "?"
    if v != v or v < 0:  # NaN, negative
        return "?"
    for unit in _UNITS:
        if v < 999.95 or unit == _UNITS[-1]:
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return "?"


def rate_text(bytes_per_second: Any) -> str:
    """A rate as 12.3 MB/s (decimal units, as size_text)."""
    text = size_text(bytes_per_second)
    return text if text == "?" else text + "/s"


def duration_text(seconds: Any) -> str:
    """Seconds as 45s, 3m05s, 2h07m; '?' for what is no number, '' for None."""
    if seconds is None:
        return ""
    try:
        s = int(round(float(seconds)))
    except (TypeError, ValueError, OverflowError):
        return "?"
    if s < 0:
        return "?"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


_RATE_RE = re.compile(r"([0-9]+)([KMG]?)")
_RATE_FACTOR = {"": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3}
RATE_SYNTAX = "bytes a second: digits with an optional K, M or G (powers of 1000), e.g. 20M; 0 = unlimited"


def parse_rate(text: Any) -> int:
    """A rate as written in agentMaxBandwidth and --bandwidth ("500K", "20M", "1G", "0") in bytes a second;
    ValueError (saying the syntax) for anything else. The suffix is a power of 1000, as everywhere in fte."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = _RATE_RE.fullmatch(str(text).strip().upper()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not a rate in {RATE_SYNTAX}")
    return int(m.group(1)) * _RATE_FACTOR[m.group(2)]
