"""Issue 14 part 1 end to end: the incident on the 16 GB card, on a real systemd
user manager with the fake driver. llama-swap is idle and needs its 5000 MiB to
load a model; immich-ml's arena grows to 10700 MiB; free VRAM (2.8 GiB) stays
above a plain 1 GiB floor, so without ``reserve`` nothing happens."""

from __future__ import annotations

import os
import time

from tests.e2e.conftest import Bed
from tests.fakenvml import FakeGpu, mib

T4_UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
INTERVAL_S = 1
GRACE_S = 2


def incident(bed: Bed, reserve: bool) -> str:
    bed.state.write(
        [FakeGpu(T4_UUID, mib(15360), base_used_bytes=mib(300))],
        reap=True,
        procdir=bed.procdir,
    )
    os.chmod(bed.state.path, 0o644)
    return f"""
[daemon]
interval = "{INTERVAL_S}s"
bus = "user"
cooldown = "1m"

[gpu]
min_free_vram = "1GiB"
grace = "{GRACE_S}s"

[host]
min_available_ram = "1MiB"

[[tenant]]
unit = "llama-swap.service"
vram = "5000MiB"
reserve = {"true" if reserve else "false"}

[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"

[[tenant]]
unit = "frigate.service"
vram = "2000MiB"
"""


def test_the_reserved_budget_of_an_idle_llm_server_gets_the_arena_restarted(bed: Bed) -> None:
    text = incident(bed, reserve=True)
    llama = bed.tenant("llama-swap.service", vram_mib=0)
    immich = bed.tenant("immich-ml.service", vram_mib=10700)
    frigate = bed.tenant("frigate.service", vram_mib=1500)
    daemon = bed.run_daemon(bed.config(text))

    restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 3)
    bed.restarted("immich-ml.service", immich)

    assert "immich-ml.service" == restart["unit"]
    assert restart["message"].startswith(
        "restarting immich-ml.service: GPU 0 free 2.8 GiB < floor 5.9 GiB (1 GiB + 4.9 GiB "
        "reserved for llama-swap.service, idle) for "
    )
    assert llama == bed.sb.unit_state("llama-swap.service")
    assert frigate == bed.sb.unit_state("frigate.service")


def test_without_reserve_the_same_host_is_left_alone(bed: Bed) -> None:
    text = incident(bed, reserve=False)
    bed.tenant("llama-swap.service", vram_mib=0)
    immich = bed.tenant("immich-ml.service", vram_mib=10700)
    bed.tenant("frigate.service", vram_mib=1500)
    daemon = bed.run_daemon(bed.config(text))

    daemon.wait_event("started")
    time.sleep(INTERVAL_S + GRACE_S + 3)

    assert [] == daemon.named("restart")
    assert [] == daemon.named("floor_breached")
    assert immich == bed.sb.unit_state("immich-ml.service")


def test_check_exits_78_when_the_reservations_cannot_fit_the_gpu(bed: Bed) -> None:
    """min_free_vram 1 GiB + 15000 MiB reserved do not fit a 15360 MiB T4."""
    text = incident(bed, reserve=True).replace('vram = "5000MiB"', 'vram = "15000MiB"', 1)
    path = bed.config(text)

    check = bed.cli("check", "-c", str(path))

    assert (78, "") == (check.returncode, check.stdout)
    assert (
        f"vramwatch: {path}: GPU 0: min_free_vram (1 GiB) plus the budgets reserved on it "
        "(14.6 GiB for llama-swap.service) exceed its 15 GiB\n"
    ) == check.stderr
