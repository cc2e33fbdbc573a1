"""vramwatch run, as an operator runs it, on a real systemd user manager and
the real pynvml over a fake driver: who gets restarted, who does not, and why."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import Bed
from tests.fakenvml import mib

INTERVAL_S = 1
GRACE_S = 2

CONFIG = f"""
[daemon]
interval = "{INTERVAL_S}s"
bus = "user"
cooldown = "1m"
reclaim_timeout = "20s"

[gpu]
min_free_vram = "2GiB"
grace = "{GRACE_S}s"

[host]
min_available_ram = "1MiB"

[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"

[[tenant]]
unit = "llama.service"
vram = "5000MiB"
protected = true

[[tenant]]
unit = "whisper.service"
vram = "2000MiB"
"""


def test_vram_hog_over_budget_is_restarted_and_the_others_are_left_alone(bed: Bed) -> None:
    """10700 MiB hog on a 15360 MiB GPU, floor 2 GiB: only the hog is restarted, in time."""
    bed.gpu(total_mib=15360)
    hog = bed.tenant("immich-ml.service", vram_mib=10700)
    llama = bed.tenant("llama.service", vram_mib=2500)
    whisper = bed.tenant("whisper.service", vram_mib=1000)
    daemon = bed.run_daemon(bed.config(CONFIG))
    started = daemon.wait_event("started")["_t"]

    restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 2)
    reclaimed = daemon.wait_event("reclaimed", timeout=10)

    assert restart["_t"] - started <= INTERVAL_S + GRACE_S + 2
    assert {
        "unit": "immich-ml.service",
        "resource": "vram",
        "gpu": 0,
        "used_bytes": mib(10700),
        "budget_bytes": mib(3000),
        "free_bytes": mib(15360 - 10700 - 2500 - 1000),
        "floor_bytes": mib(2048),
    } == {
        k: restart[k]
        for k in (
            "unit",
            "resource",
            "gpu",
            "used_bytes",
            "budget_bytes",
            "free_bytes",
            "floor_bytes",
        )
    }
    assert restart["message"].startswith(
        "restarting immich-ml.service: GPU 0 free 1.1 GiB < floor 2 GiB for "
    )
    after = bed.sb.unit_state("immich-ml.service")
    assert ("active", True, True) == (
        after.active_state,
        after.main_pid != hog.main_pid,
        after.invocation_id != hog.invocation_id,
    )
    assert ("immich-ml.service", mib(10700), 0) == (
        reclaimed["unit"],
        reclaimed["freed_bytes"],
        reclaimed["used_bytes"],
    )
    assert llama == bed.sb.unit_state("llama.service")
    assert whisper == bed.sb.unit_state("whisper.service")
    assert [] == daemon.named("action_failed")


def test_within_budget_tenants_are_never_restarted_and_the_real_user_is_named(bed: Bed) -> None:
    """The memory is held by a unit that is no tenant: one no_candidate warning, no restart."""
    bed.gpu(total_mib=15360)
    whisper = bed.tenant("whisper.service", vram_mib=1000)
    intruder = bed.tenant("intruder.service", vram_mib=13000)
    daemon = bed.run_daemon(bed.config(CONFIG))

    warning = daemon.wait_event("no_candidate", timeout=INTERVAL_S + GRACE_S + 3)
    time.sleep(3 * INTERVAL_S)  # more ticks in the same breach: no repeat

    # A user unit is named with its manager, apart from a system unit of its name.
    owner = f"intruder.service (user@{bed.sb.uid})"
    assert 1 == len(daemon.named("no_candidate"))
    assert owner == warning["top_users"][0]["owner"]
    assert f"biggest users: {owner} 12.7 GiB" in warning["message"]
    assert [] == daemon.named("restart")
    assert whisper == bed.sb.unit_state("whisper.service")
    assert intruder == bed.sb.unit_state("intruder.service")


def test_a_protected_tenant_over_budget_is_not_restarted(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    llama = bed.tenant("llama.service", vram_mib=14000)
    daemon = bed.run_daemon(bed.config(CONFIG))

    skipped = daemon.wait_event("skipped", timeout=INTERVAL_S + GRACE_S + 3)
    daemon.wait_event("no_candidate", timeout=3)

    assert ("llama.service", "protected") == (skipped["unit"], skipped["reason"])
    assert [] == daemon.named("restart")
    assert llama == bed.sb.unit_state("llama.service")


def test_dry_run_logs_would_restart_and_restarts_nothing(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    hog = bed.tenant("immich-ml.service", vram_mib=14000)
    daemon = bed.run_daemon(bed.config(CONFIG), "--dry-run")

    would = daemon.wait_event("would_restart", timeout=INTERVAL_S + GRACE_S + 3)
    time.sleep(2 * INTERVAL_S)

    assert "immich-ml.service" == would["unit"]
    assert would["message"].startswith("would restart immich-ml.service: GPU 0 free ")
    assert [] == daemon.named("restart")
    assert hog == bed.sb.unit_state("immich-ml.service")


def test_a_restart_storm_is_stopped_after_max_restarts(bed: Bed) -> None:
    """A tenant that re-grabs its VRAM at once is restarted max_restarts times, then left."""
    bed.gpu(total_mib=15360)
    first = bed.tenant("immich-ml.service", vram_mib=14000, once=False)
    config = (
        CONFIG.replace('cooldown = "1m"', 'cooldown = "0s"\nmax_restarts = 2')
        .replace('reclaim_timeout = "20s"', 'reclaim_timeout = "1s"')
        .replace(f'grace = "{GRACE_S}s"', 'grace = "0s"')
    )
    daemon = bed.run_daemon(bed.config(config))

    limited = daemon.wait_event("rate_limited", timeout=30)
    time.sleep(3 * INTERVAL_S)

    assert 2 == len(daemon.named("restart"))
    assert ("immich-ml.service", 2, 2) == (
        limited["unit"],
        limited["actions"],
        limited["max_restarts"],
    )
    assert 1 == len(daemon.named("rate_limited"))
    assert [] == daemon.named("action_failed")  # both restarts went through systemd
    assert first.invocation_id != bed.sb.unit_state("immich-ml.service").invocation_id


def test_a_failing_restart_is_action_failed_and_the_daemon_lives_on(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    marker = bed.dir / "procs" / ".started"
    # The second start fails in ExecStartPre: the restart job ends "failed".
    bed.tenant(
        "immich-ml.service",
        vram_mib=14000,
        properties={
            "ExecStartPre": f"/bin/sh -c 'test ! -e {marker} && touch {marker}'",
        },
    )
    daemon = bed.run_daemon(bed.config(CONFIG))

    failed = daemon.wait_event("action_failed", timeout=INTERVAL_S + GRACE_S + 5)
    time.sleep(2 * INTERVAL_S)

    assert ("immich-ml.service", "failed") == (failed["unit"], failed["result"])
    assert None is daemon.proc.poll()


def test_sighup_with_a_broken_config_keeps_the_old_one_and_sigterm_exits_zero(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    path = bed.config(CONFIG)
    daemon = bed.run_daemon(path)
    daemon.wait_event("started")
    path.write_text('[daemon]\ninterval = "soon"\n')

    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_event("config_rejected", timeout=5)
    hog = bed.tenant("immich-ml.service", vram_mib=14000)
    daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 3)  # still guarding
    t0 = time.monotonic()
    daemon.signal(signal.SIGTERM)
    rc = daemon.proc.wait(timeout=5)
    took = time.monotonic() - t0

    assert (
        f'{path}: daemon.interval: expected a duration such as "500ms", "2s", "5m" or "1h", '
        'got "soon"' == rejected["error"]
    )
    bed.restarted("immich-ml.service", hog)
    assert 0 == rc
    assert took < 1.0, f"SIGTERM took {took:.2f}s"


def test_a_tenant_whose_unit_no_longer_exists_is_action_failed(bed: Bed) -> None:
    """Its unit file is gone but its process lives on in the unit's cgroup: NoSuchUnit."""
    bed.gpu(total_mib=15360)
    proc = bed.sb.popen(
        [
            bed.sb.python,
            str(bed.sb.workdir / "tenant.py"),
            "--procdir",
            str(bed.procdir),
            "--vram-mib",
            "14000",
        ],
        stdout=subprocess.DEVNULL,
    )
    ghosts = [
        Path(top) / f"user@{bed.sb.uid}.service" / "app.slice" / "ghost.service"
        for top in bed.sb.cgroup_dirs
    ]
    for ghost in ghosts:
        ghost.mkdir(parents=True, exist_ok=True)
        (ghost / "cgroup.procs").write_text(str(proc.pid))
    config = CONFIG + '\n[[tenant]]\nunit = "ghost.service"\nvram = "3000MiB"\n'
    daemon = bed.run_daemon(bed.config(config))

    failed = daemon.wait_event("action_failed", timeout=INTERVAL_S + GRACE_S + 5)
    time.sleep(INTERVAL_S)

    proc.kill()
    proc.wait()
    assert ("ghost.service", "org.freedesktop.systemd1.NoSuchUnit") == (
        failed["unit"],
        failed["result"],
    )
    assert failed["message"].startswith("restart ghost.service failed: Unit ghost.service ")
    assert None is daemon.proc.poll()
