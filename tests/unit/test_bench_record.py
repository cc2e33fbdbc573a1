"""A day of a 4-GPU, 20-tenant host at a 2 s interval fits in 50 MB (bench/record.py).

Measured on an hour of ticks and scaled to a day; CPU per tick is for people
(docs/benchmarks.md), not asserted: it depends on the machine and its load.
"""

from __future__ import annotations

from pathlib import Path

from bench.record import DAY_TICKS, measure

DAY_BUDGET_BYTES = 50 * 10**6


def test_a_day_of_a_4_gpu_20_tenant_host_fits_in_50_mb(tmp_path: Path) -> None:
    ticks = 1800  # an hour at 2 s

    size, cpu_ms = measure(ticks, tmp_path)

    assert ticks == len(cpu_ms)
    assert size * DAY_TICKS // ticks <= DAY_BUDGET_BYTES
