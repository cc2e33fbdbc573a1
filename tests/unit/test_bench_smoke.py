"""The per-tick benchmark runs end to end with tiny sizes and prints its table.

No timing is asserted: figures are for people (docs/benchmarks.md). This only
keeps bench/tick.py from rotting while the code it measures changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox.fixtures import in_ci

ROOT = Path(__file__).resolve().parents[2]


def test_tick_bench_prints_one_row_per_size_with_both_approaches() -> None:
    """Two GPU sizes on both layouts give a header, a rule and four rows with a
    naive/vramwatch ratio."""
    if os.geteuid() != 0 or shutil.which("gcc") is None:
        reason = "bench.tick needs root (it creates cgroups) and gcc (the fake NVML)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)

    result = subprocess.run(
        [sys.executable, "-m", "bench.tick", "--gpus", "1,2", "--procs", "3", "--tenants", "2"]
        + ["--host", "5", "--ticks", "2", "--naive-ticks", "1", "--layout", "both"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert 0 == result.returncode, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert 6 == len(rows), result.stdout
    assert ["1", "2", "1", "2"] == [row.split("|")[3].strip() for row in rows[2:]]
    assert "v2" == rows[-1].split("|")[1].split()[0], result.stdout
    assert all(row.rstrip(" |").endswith("x") for row in rows[2:]), result.stdout
