"""Issue 14 part 3 end to end: a tenant whose RAM grows steadily on the real user
manager gets ``growing`` with a forecast within 20 % of the truth; a tenant whose
RAM is a sawtooth (batches taken and given back) never does."""

from __future__ import annotations

import time

from tests.e2e.conftest import Bed

GROW_MIB_PER_S = 8.0
BUDGET_MIB = 1024

CONFIG = f"""
[daemon]
interval = "1s"
bus = "user"

[gpu]
min_free_vram = "1MiB"

[host]
# MemAvailable is pinned at 3 GiB by the test: under twice this floor every tick
# reads the tenants' RAM afresh (no 10 s reuse of a sum far from the floor).
min_available_ram = "2GiB"

[trend]
# Buckets of 5 s: longer than the sawtooth's 3 s period plus a tick, so every
# bucket holds a trough even when ticks come late (a loaded machine); with
# buckets shorter than the period, a bucket's lowest reading is wherever the
# ticks fell on the ramp, and the troughs are noise that can fit a slope.
window = "60s"
warn_within = "1h"

[[tenant]]
unit = "leaky.service"
ram = "{BUDGET_MIB}MiB"

[[tenant]]
unit = "batches.service"
ram = "{BUDGET_MIB}MiB"
"""


def test_a_steady_leak_is_forecast_and_a_sawtooth_is_not(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    bed.sb.set_mem_available(3 * 2**30)
    try:
        bed.tenant("leaky.service", ram_mib=32, extra=("--ram-grow-mib-per-s", str(GROW_MIB_PER_S)))
        bed.tenant(
            "batches.service",
            ram_mib=32,
            extra=("--ram-sawtooth-mib", "200", "--sawtooth-s", "3"),
        )
        # Past start-up (the interpreter and the first 32 MiB): the window holds the leak
        # alone, not the steeper ramp of a process coming up.
        time.sleep(3)
        daemon = bed.run_daemon(bed.config(CONFIG))
        growing = daemon.wait_event("growing", timeout=90, unit="leaky.service")
        time.sleep(15)
    finally:
        bed.sb.restore_meminfo()

    rate = growing["rate_bytes_per_s"] / 2**20
    truth_s = (BUDGET_MIB * 2**20 - growing["used_bytes"]) / (GROW_MIB_PER_S * 2**20)
    assert abs(rate - GROW_MIB_PER_S) <= 0.2 * GROW_MIB_PER_S, growing
    assert abs(growing["seconds_to_budget"] - truth_s) <= 0.2 * truth_s, growing
    assert [] == daemon.named("growing", unit="batches.service")
