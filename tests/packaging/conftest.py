"""Helpers for the packaging tests: they need root and Debian tools.

Like the sandbox tests, a missing prerequisite skips with the reason on a
laptop and fails under CI=true, where ./scripts/bootstrap must have installed
everything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# The end-to-end bed (installed vramwatch on the sandbox manager) for `check`.
from tests.e2e.conftest import bed, e2e_lib, vramwatch_bin  # noqa: F401
from tests.sandbox.fixtures import in_ci

ROOT = Path(__file__).resolve().parents[2]


def require(*, root: bool = False, commands: tuple[str, ...] = ()) -> None:
    """Skip (or fail under CI) unless this machine has what a test needs."""
    problems = [f"{c} not found" for c in commands if shutil.which(c) is None]
    if root and os.geteuid() != 0:
        problems.append("needs root")
    if problems:
        reason = "; ".join(problems) + " (run ./scripts/bootstrap as root)"
        if in_ci():
            pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
        pytest.skip(reason)
