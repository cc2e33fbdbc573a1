"""Issue 10 end to end: the installed ``vramwatch run`` on a real systemd user
manager over the fake driver, where the parts meet: one incident over two
resources, dry run then enforce by SIGHUP, a lost GPU beside a healthy one,
and an orphan that keeps the memory after a restart."""

from __future__ import annotations

import os
import signal
import time

from tests.e2e.conftest import Bed
from tests.fakenvml import FakeGpu, mib

INTERVAL_S = 1
GRACE_S = 2
UUID0 = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
UUID1 = "GPU-8f1c2a3e-1111-0000-0000-000000000000"


def config(*, extra_daemon: str = "", host_floor: str = "1MiB", tenants: str) -> str:
    return f"""
[daemon]
interval = "{INTERVAL_S}s"
bus = "user"
cooldown = "1m"
reclaim_timeout = "20s"
{extra_daemon}
[gpu]
min_free_vram = "2GiB"
grace = "{GRACE_S}s"

[host]
min_available_ram = "{host_floor}"
grace = "{GRACE_S}s"
{tenants}"""


def test_one_incident_over_two_resources_restarts_one_tenant(bed: Bed) -> None:
    """A is over its VRAM and RAM budgets, B over its RAM budget, both floors breached:
    A is restarted, and B is not while A's action holds host RAM."""
    bed.gpu(total_mib=15360)
    a = bed.tenant("a.service", vram_mib=13700, ram_mib=160)
    b = bed.tenant("b.service", ram_mib=160)
    bed.sb.set_mem_available(256 * 2**20)  # under the 1 GiB floor for the whole test
    tenants = """
[[tenant]]
unit = "a.service"
vram = "3000MiB"
ram = "100MiB"

[[tenant]]
unit = "b.service"
ram = "100MiB"
"""
    try:
        daemon = bed.run_daemon(bed.config(config(host_floor="1GiB", tenants=tenants)))
        restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 3)
        bed.restarted("a.service", a)
        waiting = daemon.wait_event("waiting", timeout=5)
        time.sleep(6 * INTERVAL_S)  # well inside reclaim_timeout: B must be left alone
    finally:
        bed.sb.restore_meminfo()

    assert ("a.service", "vram") == (restart["unit"], restart["resource"])
    assert ["a.service"] == [e["unit"] for e in daemon.named("restart")]
    assert ("ram", "a.service") == (waiting["resource"], waiting["unit"])
    assert b.invocation_id == bed.sb.unit_state("b.service").invocation_id


def test_dry_run_then_sighup_to_enforce_restarts_on_the_next_breach(bed: Bed) -> None:
    """Dry run reaches its own max_restarts (two would_restarts, then rate_limited); none of
    it counts: after the reload to enforce, the breach is a restart, not a restart storm."""
    bed.gpu(total_mib=15360)
    hog = bed.tenant("hog.service", vram_mib=13700, once=False)
    tenants = '\n[[tenant]]\nunit = "hog.service"\nvram = "3000MiB"\n'
    dry = (
        config(
            extra_daemon='dry_run = true\nmax_restarts = 2\nrestart_window = "1h"',
            tenants=tenants,
        )
        .replace('cooldown = "1m"', 'cooldown = "2s"')
        .replace('reclaim_timeout = "20s"', 'reclaim_timeout = "1s"')
    )
    path = bed.config(dry)
    daemon = bed.run_daemon(path)
    daemon.wait_event("rate_limited", timeout=30)
    storms = len(daemon.named("rate_limited"))
    assert 2 == len(daemon.named("would_restart"))
    assert hog.invocation_id == bed.sb.unit_state("hog.service").invocation_id

    path.write_text(dry.replace("dry_run = true", "dry_run = false"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config_reloaded", timeout=5)
    restart = daemon.wait_event("restart", timeout=2 * INTERVAL_S + 3)

    assert "hog.service" == restart["unit"]
    assert storms == len(daemon.named("rate_limited"))
    bed.restarted("hog.service", hog)


def test_a_lost_gpu_leaves_the_healthy_one_guarded(bed: Bed) -> None:
    """GPU 1 reports GPU_IS_LOST; A's 13.4 GiB on GPU 0 proves it over its 3000 MiB budget."""
    bed.state.write(
        [FakeGpu(UUID0, mib(15360)), FakeGpu(UUID1, mib(15360))],
        errors={"nvmlDeviceGetMemoryInfo*@1": "GPU_IS_LOST"},
        reap=True,
        procdir=bed.procdir,
    )
    os.chmod(bed.state.path, 0o644)
    a = bed.tenant("a.service", vram_mib=13700, gpu=0)
    tenants = '\n[[tenant]]\nunit = "a.service"\nvram = "3000MiB"\n'
    daemon = bed.run_daemon(bed.config(config(tenants=tenants)))

    error = daemon.wait_event("gpu_lost", timeout=5)
    restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 3)
    bed.restarted("a.service", a)

    assert 1 == error["gpu"]
    assert ("a.service", 0) == (restart["unit"], restart["gpu"])
    assert "unit uses at least 13.4 GiB VRAM, budget 2.9 GiB" in restart["message"]
    assert [] == daemon.named("no_candidate")


def test_an_orphan_keeping_the_vram_is_not_reclaimed_and_nobody_else_is_restarted(
    bed: Bed,
) -> None:
    """A's helper leaves the unit on stop and keeps its 10 GiB: the restart freed nothing.
    Not reclaimed, and B (also over budget on that GPU) waits for reclaim_timeout."""
    bed.gpu(total_mib=15360)
    a = bed.tenant("a.service", vram_mib=10240, orphan_s=60)
    b = bed.tenant("b.service", vram_mib=4000)
    tenants = """
[[tenant]]
unit = "a.service"
vram = "3000MiB"

[[tenant]]
unit = "b.service"
vram = "3000MiB"
"""
    daemon = bed.run_daemon(bed.config(config(tenants=tenants)))
    daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 3)
    bed.restarted("a.service", a)
    time.sleep(8 * INTERVAL_S)

    assert ["a.service"] == [e["unit"] for e in daemon.named("restart")]
    assert [] == daemon.named("reclaimed")
    assert b.invocation_id == bed.sb.unit_state("b.service").invocation_id
