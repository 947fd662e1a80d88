"""What a test does when the machine lacks something it needs: skipped locally, saying why; failed in CI.

CI (CI=true) installs everything the suite needs (.ci/run): a test skipped there would be a guarantee
nobody checked, shown green.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Stop the test: pytest.fail in CI, pytest.skip elsewhere (both with `reason`)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run must provide it)")
    pytest.skip(reason)
