"""Helpers for the packaging tests: they need root and Debian tools.

Like the sandbox tests, a missing prerequisite skips with the reason on a
laptop and fails under CI=true, where ./scripts/bootstrap must have installed
everything.
"""

from __future__ import annotations

import os
import re
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


# A warning or deprecation notice from a build backend or the Python warnings
# machinery: SetuptoolsDeprecationWarning, "`project.license` as a TOML table
# is deprecated", _BetaConfiguration, "warning: ...".
WARNING = re.compile(r"warn|deprecat", re.IGNORECASE)
# pip's note that an index named in this machine's pip configuration has no
# page for a package: about the machine, not the build.
PIP_INDEX_NOTE = re.compile(
    r"^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$"
)
# pip's own flag, echoed in build's verbose log of the command it runs.
PIP_FLAG = "--no-warn-script-location"


def warning_lines(output: str) -> list[str]:
    """The lines of a build's output that warn, or announce a deprecation."""
    return [
        line
        for line in output.splitlines()
        if WARNING.search(line.replace(PIP_FLAG, "")) and not PIP_INDEX_NOTE.match(line.strip())
    ]
