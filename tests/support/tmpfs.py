"""A real, small tmpfs that fills up: what a full destination disk looks like to the agent (ENOSPC).

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the test is skipped, saying why (and fails
in CI, which runs as root: tests.support.ci).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.ci import unavailable


@contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    """`where` (created) with a tmpfs of `size` mounted on it, unmounted again afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        unavailable(f"cannot mount a {size} tmpfs on {where} (needs root): {p.stderr.strip() or p.returncode}")
    try:
        yield where
    finally:
        # lazily: an agent killed mid-write may still hold a file open for a moment
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
