"""Host RAM guarding, NVML faults and journald, end to end."""

from __future__ import annotations

import time
from dataclasses import replace

from tests.e2e.conftest import Bed
from tests.e2e.harness import T4_UUID
from tests.fakenvml import FakeGpu, FakeMig, gib, mib

RAM_CONFIG = """
[daemon]
interval = "1s"
bus = "user"
reclaim_timeout = "5s"

[gpu]
min_free_vram = "2GiB"
grace = "1s"

[host]
min_available_ram = "1GiB"
grace = "1s"

[[tenant]]
unit = "stt-workers.service"
ram = "100MiB"

[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
ram = "4GiB"
"""


def test_ram_hog_over_budget_is_restarted_when_the_host_floor_is_breached(bed: Bed) -> None:
    """cgroup v1 here: the unit's RAM is the summed RSS of its processes."""
    bed.gpu(total_mib=15360)
    hog = bed.tenant("stt-workers.service", ram_mib=300)
    small = bed.tenant("immich-ml.service", ram_mib=20)
    bed.sb.set_mem_available(512 * 1024 * 1024)
    daemon = bed.run_daemon(bed.config(RAM_CONFIG))

    restart = daemon.wait_event("restart", timeout=6)

    assert ("stt-workers.service", "ram", mib(100), mib(512)) == (
        restart["unit"],
        restart["resource"],
        restart["budget_bytes"],
        restart["free_bytes"],
    )
    assert restart["used_bytes"] >= mib(300)
    assert restart["message"].startswith(
        "restarting stt-workers.service: host MemAvailable 512 MiB < floor 1 GiB for "
    )
    bed.restarted("stt-workers.service", hog)
    assert small == bed.sb.unit_state("immich-ml.service")


def test_a_lost_gpu_is_logged_ram_is_still_guarded_and_the_gpu_recovers(bed: Bed) -> None:
    bed.gpu(total_mib=15360, errors={"nvmlDeviceGetComputeRunningProcesses_v3": "GPU_IS_LOST"})
    bed.tenant("stt-workers.service", ram_mib=300)
    bed.sb.set_mem_available(512 * 1024 * 1024)
    daemon = bed.run_daemon(bed.config(RAM_CONFIG))

    error = daemon.wait_event("gpu_lost", timeout=5)
    daemon.wait_event("restart", timeout=6, unit="stt-workers.service")
    bed.gpu(total_mib=15360)  # the fault clears
    recovered = daemon.wait_event("sampling_recovered", timeout=6)

    assert (0, "vram", True) == (error["gpu"], error["resource"], error["lost"])
    assert error["error"].startswith("GPU_IS_LOST")
    assert (0, "GPU 0 (GPU-8f1c2a3e-0000-0000-0000-000000000000) reads cleanly again") == (
        recovered["gpu"],
        recovered["message"],
    )
    assert (1, 0) == (len(daemon.named("gpu_lost")), len(daemon.named("sampling_error")))
    assert None is daemon.proc.poll()


def test_no_driver_at_start_then_the_driver_appears(bed: Bed) -> None:
    """Started before the NVIDIA driver: RAM-only, then VRAM guarding once NVML answers."""
    hog = bed.tenant("immich-ml.service", vram_mib=14000)
    daemon = bed.run_daemon(bed.config(RAM_CONFIG))

    missing = daemon.wait_event("sampling_error", timeout=5)
    time.sleep(1)
    bed.gpu(total_mib=15360)
    daemon.wait_event("sampling_recovered", timeout=10)
    restart = daemon.wait_event("restart", timeout=8)

    assert ("warning", "NVIDIA driver not loaded (nvidia.ko); guarding host RAM only") == (
        missing["level"],
        missing["message"],
    )
    assert ("immich-ml.service", "vram") == (restart["unit"], restart["resource"])
    bed.restarted("immich-ml.service", hog)


def test_decisions_are_native_journal_entries(bed: Bed) -> None:
    """--log-target journal: one entry per decision with VRAMWATCH_* fields and a MESSAGE_ID."""
    bed.gpu(total_mib=15360)
    bed.tenant("immich-ml.service", vram_mib=14000)
    daemon = bed.run_daemon(bed.config(RAM_CONFIG), journal=True)

    entries = bed.journal("restart")
    daemon.stop()

    assert 1 <= len(entries), "no restart entry in the journal"
    entry = entries[0]
    expected = {
        "SYSLOG_IDENTIFIER": "vramwatch",
        "PRIORITY": "4",
        "MESSAGE_ID": "d018d6e4eb8d4146a86e458ceda09147",
        "VRAMWATCH_UNIT": "immich-ml.service",
        "VRAMWATCH_RESOURCE": "vram",
        "VRAMWATCH_GPU": "0",
        "VRAMWATCH_USED_BYTES": str(mib(14000)),
        "VRAMWATCH_BUDGET_BYTES": str(mib(3000)),
        "VRAMWATCH_FREE_BYTES": str(mib(15360 - 14000)),
        "VRAMWATCH_FLOOR_BYTES": str(mib(2048)),
        "OBJECT_SYSTEMD_UNIT": "immich-ml.service",
    }
    assert expected == {k: entry.get(k) for k in expected}
    assert entry["MESSAGE"].startswith("restarting immich-ml.service: GPU 0 free 1.3 GiB < floor")


# NVML hangs for this long (issue 11): longer than any deadline, as after an Xid.
HANG_S = 60
HUNG_CONFIG = RAM_CONFIG.replace(
    'grace = "1s"\n\n[host]', 'grace = "1s"\nnvml_timeout = "500ms"\n\n[host]'
)
GRACE_S, INTERVAL_S = 1, 1


def test_a_hung_nvml_never_stops_host_ram_guarding_and_vram_guarding_resumes(bed: Bed) -> None:
    """NVML calls hang for 60 s while MemAvailable is under its floor: the RAM tenant is
    restarted within grace + 2 intervals; once NVML answers, VRAM is guarded again."""
    bed.gpu(total_mib=15360)
    ram_hog = bed.tenant("stt-workers.service", ram_mib=300)
    daemon = bed.run_daemon(bed.config(HUNG_CONFIG))
    daemon.wait_event("started", timeout=5)
    time.sleep(1.5)  # a clean GPU sample or two first

    bed.gpu(total_mib=15360, delays={"nvmlDeviceGetMemoryInfo_v2": HANG_S * 1000})
    hung = daemon.wait_event("nvml_hung", timeout=5)
    bed.gpu(total_mib=15360)  # later calls are quick again; the stuck one sleeps on
    vram_hog = bed.tenant("immich-ml.service", vram_mib=14000, ram_mib=20)
    breach_at = time.monotonic()
    bed.sb.set_mem_available(512 * 1024 * 1024)
    ram_restart = daemon.wait_event("restart", timeout=10, unit="stt-workers.service")
    bed.restarted("stt-workers.service", ram_hog)
    bed.sb.restore_meminfo()
    vram_restart = daemon.wait_event("restart", timeout=HANG_S + 15, unit="immich-ml.service")
    recovered = daemon.named("sampling_recovered")

    assert ("vram", 0) == (hung["resource"], len(daemon.named("sampling_error")))
    assert "ram" == ram_restart["resource"]
    assert ram_restart["_t"] - breach_at <= GRACE_S + 2 * INTERVAL_S + 0.5
    assert "vram" == vram_restart["resource"]
    assert vram_restart["_t"] >= hung["_t"] + HANG_S - 5  # not before the stuck call returned
    assert ["NVML answers again"] == [e["message"][:18] for e in recovered]
    assert 1 == len(daemon.named("nvml_hung"))
    bed.restarted("immich-ml.service", vram_hog)
    assert None is daemon.proc.poll()


def test_a_gpu_lost_then_back_is_guarded_again_without_a_restart_of_vramwatch(bed: Bed) -> None:
    """The GPU falls off the bus (it keeps its index, every call on it fails GPU_IS_LOST)
    while a tenant is over its VRAM budget: nothing is enforced on it; after the reset the
    same daemon guards it again and restarts the tenant."""
    healthy = FakeGpu(T4_UUID, mib(15360))
    bed.gpus([healthy])
    daemon = bed.run_daemon(bed.config(RAM_CONFIG))
    daemon.wait_event("started", timeout=5)
    time.sleep(1.5)  # the GPU is known by its UUID

    bed.gpus([replace(healthy, lost="GPU_IS_LOST")])
    told = daemon.wait_event("gpu_lost", timeout=5)
    hog = bed.tenant("immich-ml.service", vram_mib=14000, ram_mib=20)
    time.sleep(3)  # grace is 1 s: a lost GPU would have been acted on by now
    assert [] == daemon.named("restart")
    bed.gpus([healthy])  # reset done: the GPU is back
    back = daemon.wait_event("sampling_recovered", timeout=6)
    restart = daemon.wait_event("restart", timeout=6)

    assert ("vram", T4_UUID, "GPU_IS_LOST") == (
        told["resource"],
        told["gpu_uuid"],
        told["error"].split(":")[0],
    )
    assert 0 == back["gpu"]
    assert ("immich-ml.service", "vram", 0) == (
        restart["unit"],
        restart["resource"],
        restart["gpu"],
    )
    bed.restarted("immich-ml.service", hog)
    assert 1 == len(daemon.named("gpu_lost"))
    assert 1 == len(daemon.named("started"))


MIG_CONFIG = """
[daemon]
interval = "1s"
bus = "user"
reclaim_timeout = "5s"

[gpu]
min_free_vram = "10%"
grace = "1s"

[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"

[[tenant]]
unit = "llm.service"
vram = "1000MiB"
"""
A100_UUID = "GPU-a1000000-0000-0000-0000-000000000000"
MIG0_UUID = "MIG-a1000000-0000-0000-0000-000000000000"
MIG1_UUID = "MIG-a1000000-0000-0000-0000-000000000001"


def test_a_breached_mig_instance_restarts_only_its_own_tenant(bed: Bed) -> None:
    """MIG 0 (20 GiB, floor 10% = 2 GiB) is breached by immich-ml; llm is over its budget
    on MIG 1, which is fine: only immich-ml is restarted, llm is left alone."""
    bed.gpus(
        [
            FakeGpu(
                A100_UUID,
                gib(80),
                name="NVIDIA A100-SXM4-80GB",
                mig=(
                    FakeMig(MIG0_UUID, gib(20), "MIG 2g.20gb"),
                    FakeMig(MIG1_UUID, gib(40), "MIG 3g.40gb"),
                ),
            )
        ]
    )
    hog = bed.tenant("immich-ml.service", vram_mib=19 * 1024, gpu="0:0")
    other = bed.tenant("llm.service", vram_mib=5 * 1024, gpu="0:1")
    daemon = bed.run_daemon(bed.config(MIG_CONFIG))

    restart = daemon.wait_event("restart", timeout=8)
    bed.restarted("immich-ml.service", hog)
    time.sleep(2)

    assert ("immich-ml.service", "vram", 0, gib(2), gib(1)) == (
        restart["unit"],
        restart["resource"],
        restart["gpu"],
        restart["floor_bytes"],
        restart["free_bytes"],
    )
    assert restart["message"].startswith("restarting immich-ml.service: GPU 0 MIG 0 free 1 GiB")
    assert [MIG0_UUID] == [e["gpu_uuid"] for e in daemon.named("floor_breached")]
    assert ["immich-ml.service"] == [e["unit"] for e in daemon.named("restart")]
    assert other == bed.sb.unit_state("llm.service")
