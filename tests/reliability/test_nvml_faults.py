"""Every NVML function vramwatch calls, failing with every error that matters.

The real pynvml over the fake driver, the real Sampler on a fixture /proc and
cgroup tree, the real policy: whatever fails, nothing raises, the failed GPU
is never acted on, and the next clean read guards it again.
"""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakenvml import FakeGpu, FakeMig, FakeNvmlState, FakeProcess, gib, mib
from tests.sources.test_sampler import CONFIG, UUID, gpus, proc, world
from tests.unit.builders import notified
from vramwatch import config as cfg
from vramwatch import policy
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.metrics import Metrics
from vramwatch.model import Action, Event
from vramwatch.sampler import Sampler
from vramwatch.sources.nvml import INIT_RETRY_MAX_NS, NvmlSource
from vramwatch.sources.procfs import ProcFs

S = 10**9

# The exported symbols pynvml reaches for each call vramwatch makes.
FUNCTIONS = [
    "nvmlInit",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
]
CODES = [
    "GPU_IS_LOST",
    "UNKNOWN",
    "TIMEOUT",
    "NOT_SUPPORTED",
    "INSUFFICIENT_SIZE",
    "DRIVER_NOT_LOADED",
    "NO_PERMISSION",
    "LIB_RM_VERSION_MISMATCH",
]
# Lists vramwatch may do without: a GPU without MPS or graphics says NOT_SUPPORTED.
OPTIONAL = {
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
}
HOG = "immich-ml.service"  # 10700 MiB on a 3000 MiB budget in the fixture world


def ticks(sampler: Sampler, start_s: int, n: int) -> list[policy.Decision]:
    history = policy.History()
    out = []
    for i in range(n):
        snap = sampler.sample(CONFIG, (start_s + 2 * i) * S)
        decision = policy.decide(CONFIG, snap, history)
        history = decision.history
        out.append(decision)
    return out


def vram_actions(decisions: list[policy.Decision]) -> list[str]:
    return [a.unit for d in decisions for a in d.actions if a.resource == "vram"]


def test_control_without_a_fault_the_hog_is_acted_on(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """The fault tests below can fail: the same world, clean, leads to an action."""
    fake_nvml.write(gpus())
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    decisions = ticks(sampler, 0, 8)
    sampler.close()

    assert [HOG] == vram_actions(decisions)


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_failing_nvml_call_never_raises_and_never_leads_to_a_vram_action(
    fake_nvml: FakeNvmlState, tmp_path: Path, function: str, code: str
) -> None:
    fake_nvml.write(gpus(), errors={function: code})
    source = NvmlSource()
    sampler = Sampler(source, world(tmp_path, 900_000))

    decisions = ticks(sampler, 0, 8)
    snap = sampler.sample(CONFIG, 20 * S)
    fake_nvml.write(gpus())  # the fault clears
    healed = [sampler.sample(CONFIG, t) for t in (21 * S, 21 * S + INIT_RETRY_MAX_NS)][-1]
    sampler.close()

    if function in OPTIONAL and code == "NOT_SUPPORTED":
        # Not an error: that list is empty; the compute list still attributes the hog.
        assert [HOG] == vram_actions(decisions)
        return
    assert [] == vram_actions(decisions)
    assert None is snap.units[HOG].vram_bytes  # unknown, never "0" or a partial sum
    assert snap.nvml_error is not None or all(g.error is not None for g in snap.gpus)
    assert (None, [None]) == (healed.nvml_error, [g.error for g in healed.gpus])
    assert healed.units[HOG].vram_bytes is not None


@pytest.mark.parametrize("function", FUNCTIONS)
def test_one_transient_failure_costs_one_sample(
    fake_nvml: FakeNvmlState, tmp_path: Path, function: str
) -> None:
    fake_nvml.write(gpus(), errors={function: "TIMEOUT 1"})
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    first = sampler.sample(CONFIG, 0)
    later = sampler.sample(CONFIG, INIT_RETRY_MAX_NS)
    sampler.close()

    assert first.units[HOG].vram_bytes is None
    assert later.units[HOG].vram_bytes is not None


@pytest.mark.parametrize(
    "function",
    [
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    ],
)
def test_every_process_list_survives_the_size_race(
    fake_nvml: FakeNvmlState, tmp_path: Path, function: str
) -> None:
    """INSUFFICIENT_SIZE when processes appear between pynvml's size query and its fill."""
    fake_nvml.write(gpus(), grow={function: 40})
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    assert [None] == [g.error for g in snap.gpus]
    assert snap.units[HOG].vram_bytes is not None


def test_a_size_race_that_never_settles_is_an_error_sample_not_a_hang(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpus(), errors={"nvmlDeviceGetComputeRunningProcesses_v3": "INSUFFICIENT_SIZE"})
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    assert (snap.gpus[0].error or "").startswith("INSUFFICIENT_SIZE")
    assert None is snap.units[HOG].vram_bytes


# --------------------------------------------------------------------------
# One lost GPU costs only that GPU; GPUs are found again (issue 10, item 6b)

SPARE = "GPU-00000000-1111-2222-3333-444444444444"


def spare_and_hog_gpu(lost: str | None = None) -> list[FakeGpu]:
    """GPU 0 idle and healthy; GPU 1 holds the hog (and may be lost)."""
    return [FakeGpu(SPARE, mib(24576), name="NVIDIA A10"), replace(gpus()[0], lost=lost)]


def test_while_one_gpu_is_lost_the_others_stay_in_every_snapshot(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(spare_and_hog_gpu())
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))
    sampler.sample(CONFIG, 0)
    fake_nvml.write(spare_and_hog_gpu(lost="GPU_IS_LOST"))

    snaps = [sampler.sample(CONFIG, t * S) for t in range(2, 12, 2)]
    sampler.close()

    assert [[(SPARE, mib(24576), None), (UUID, None, "GPU_IS_LOST")]] * 5 == [
        [(g.uuid, g.free_bytes, g.error.split(":")[0] if g.error else None) for g in s.gpus]
        for s in snaps
    ]
    assert [None] * 5 == [s.nvml_error for s in snaps]


def test_a_gpu_lost_then_back_is_guarded_again(fake_nvml: FakeNvmlState, tmp_path: Path) -> None:
    fake_nvml.write(spare_and_hog_gpu(lost="GPU_IS_LOST"))
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    lost = ticks(sampler, 0, 8)
    fake_nvml.write(spare_and_hog_gpu())  # the reset brought it back
    back = ticks(sampler, 16, 8)
    sampler.close()

    assert ([], [HOG]) == (vram_actions(lost), vram_actions(back))


def test_a_hot_added_gpu_is_guarded_without_a_restart(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(spare_and_hog_gpu()[:1])
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    before = ticks(sampler, 0, 8)
    fake_nvml.write(spare_and_hog_gpu())  # the hog's GPU is hot-added
    after = ticks(sampler, 16, 8)
    sampler.close()

    assert ([], [HOG]) == (vram_actions(before), vram_actions(after))


@pytest.mark.parametrize("code", ["GPU_IS_LOST", "RESET_REQUIRED"])
def test_a_lost_gpu_is_told_once_never_enforced_on_and_recovers(
    fake_nvml: FakeNvmlState, tmp_path: Path, code: str
) -> None:
    fake_nvml.write(spare_and_hog_gpu())
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))
    history = policy.decide(CONFIG, sampler.sample(CONFIG, 0), policy.History()).history
    fake_nvml.write(spare_and_hog_gpu(lost=code))
    events: list[Event] = []
    actions: list[Action] = []
    for t in [*range(2, 20, 2), policy.REMINDER_NS // S + 10, 2 * policy.REMINDER_NS // S]:
        snap = sampler.sample(CONFIG, t * S)
        decision = policy.decide(CONFIG, snap, history)
        history = decision.history
        events += [e for e in decision.events]
        actions += decision.actions
    lost_flags = [g.lost for g in snap.gpus]
    fake_nvml.write(spare_and_hog_gpu())
    back = policy.decide(CONFIG, sampler.sample(CONFIG, 700 * S), history)
    sampler.close()

    assert [("gpu_lost", 1, UUID, code)] == [
        (e.name, e.fields["gpu"], e.fields["gpu_uuid"], e.fields["error"].split(":")[0])
        for e in events
        if e.level == "error"
    ]
    assert ([], [False, True]) == (actions, lost_flags)
    assert ["sampling_recovered"] == [e.name for e in back.events]


# --------------------------------------------------------------------------
# Garbage values (a binding/driver mismatch): a bad sample, never attributed


def with_extra(*extra: FakeProcess) -> list[FakeGpu]:
    gpu = gpus()[0]
    return [replace(gpu, processes=gpu.processes + extra)]


@pytest.mark.parametrize("pid", [31337, 4194305])
def test_a_pid_that_stays_missing_from_proc_makes_the_gpu_a_bad_sample(
    fake_nvml: FakeNvmlState, tmp_path: Path, pid: int
) -> None:
    fake_nvml.write(with_extra(FakeProcess(pid, mib(10))))
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    first = sampler.sample(CONFIG, 0)  # could be a process that just exited
    recheck = sampler.sample(CONFIG, S // 10)  # the re-check right before an action
    second = sampler.sample(CONFIG, 2 * S)
    decisions = ticks(sampler, 4, 8)
    fake_nvml.write(gpus())  # the garbage is gone
    healed = sampler.sample(CONFIG, 30 * S)
    sampler.close()

    assert (None, None) == (first.gpus[0].error, [p.owner for p in first.gpus[0].processes][-1])
    assert None is recheck.gpus[0].error
    assert (second.gpus[0].error or "").startswith(f"BAD_SAMPLE: NVML keeps listing PID {pid}")
    assert ((), None) == (second.gpus[0].processes, second.units[HOG].vram_bytes)
    assert [] == vram_actions(decisions)
    assert "sampling_error" in [e.name for d in decisions[:1] for e in d.events]
    assert (None, mib(10700)) == (healed.gpus[0].error, healed.units[HOG].vram_bytes)


def test_a_process_holding_more_than_the_device_makes_the_gpu_a_bad_sample(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(with_extra(FakeProcess(5001, mib(16000))))
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    snap = sampler.sample(CONFIG, 0)
    decisions = ticks(sampler, 2, 8)
    sampler.close()

    assert (
        "BAD_SAMPLE: PID 5001 reportedly holds 15.6 GiB on a 15 GiB GPU "
        "(NVML library and driver mismatched?)"
    ) == snap.gpus[0].error
    assert ((), None) == (snap.gpus[0].processes, snap.units[HOG].vram_bytes)
    assert [] == vram_actions(decisions)


# --------------------------------------------------------------------------
# MIG: each instance is a guarded device with its own floor (issue 11, item 3)

MIG_CONFIG = cfg.parse(
    """
[gpu]
min_free_vram = "10%"
[host]
min_available_ram = "50%"
[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
[[tenant]]
unit = "llama.service"
vram = "1000MiB"
""",
    "/etc/vramwatch.toml",
)
PARENT = "GPU-a1000000-0000-0000-0000-000000000000"
MIG0 = "MIG-a1000000-0000-0000-0000-000000000000"
MIG1 = "MIG-a1000000-0000-0000-0000-000000000001"


def test_a_breached_mig_instance_restarts_only_its_over_budget_tenant(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """MIG 0 (20 GiB, floor 10% = 2 GiB) has 1 GiB free, held by immich-ml; MIG 1 is
    fine although llama is over its budget there: only immich-ml is acted on."""
    fake_nvml.write(
        [
            FakeGpu(
                PARENT,
                gib(80),
                mig=(
                    FakeMig(MIG0, gib(20), processes=(FakeProcess(4242, gib(19)),)),
                    FakeMig(MIG1, gib(40), processes=(FakeProcess(5000, gib(5)),)),
                ),
            )
        ]
    )
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))
    history = policy.History()
    actions: list[Action] = []
    breaches: list[Event] = []
    for i in range(8):
        decision = policy.decide(MIG_CONFIG, sampler.sample(MIG_CONFIG, 2 * i * S), history)
        history = decision.history
        actions += decision.actions
        breaches += [e for e in decision.events if e.name == "floor_breached"]
    sampler.close()

    assert [("immich-ml.service", f"gpu:{MIG0}", gib(2), gib(1))] == [
        (a.unit, a.resource_key, a.floor_bytes, a.free_bytes) for a in actions
    ]
    assert actions[0].message.startswith("restarting immich-ml.service: GPU 0 MIG 0 free 1 GiB")
    assert [(0, 0, MIG0, PARENT)] == [
        (e.fields["gpu"], e.fields["mig"], e.fields["gpu_uuid"], e.fields["parent_uuid"])
        for e in breaches
    ]


# --------------------------------------------------------------------------
# MPS: the server holds memory for its clients; never theirs, never a victim

MPS_CONFIG = cfg.parse(
    """
[gpu]
min_free_vram = "2GiB"
[host]
min_available_ram = "50%"
[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
ram = "1GiB"
[[tenant]]
unit = "nvidia-mps.service"
vram = "100MiB"
ram = "100MiB"
""",
    "/etc/vramwatch.toml",
)


def mps_world(tmp_path: Path, available_kib: int) -> ProcFs:
    procfs = world(tmp_path, available_kib)
    proc(tmp_path, 700, "/system.slice/nvidia-mps.service", "nvidia-cuda-mps")
    unit = tmp_path / "cgroup" / "system.slice" / "nvidia-mps.service"
    unit.mkdir()
    (unit / "memory.stat").write_text(f"anon {gib(3)}\nfile 0\nshmem 0\n")
    (unit / "cgroup.procs").write_text("700\n")
    return procfs


def mps_gpu() -> list[FakeGpu]:
    """The MPS server holds 9 GiB; its client immich-ml is listed (MPS list) with 8 GiB."""
    return [
        FakeGpu(
            UUID,
            gib(80),
            processes=(FakeProcess(700, gib(9)), FakeProcess(4242, gib(8), "mps")),
        )
    ]


def test_the_mps_server_is_never_charged_for_its_clients_memory(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(mps_gpu())
    sampler = Sampler(NvmlSource(), mps_world(tmp_path, 900_000))

    snap = sampler.sample(MPS_CONFIG, 0)
    sampler.close()

    assert (0, gib(8)) == (
        snap.units["nvidia-mps.service"].vram_bytes,
        snap.units["immich-ml.service"].vram_bytes,
    )
    assert frozenset({"nvidia-mps.service"}) == snap.mps_units


def test_the_unit_running_the_mps_server_is_never_a_victim(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """RAM breached: nvidia-mps.service is the most over its RAM budget, but restarting
    it would kill every MPS client: it is skipped (reason mps), the next tenant acted on."""
    fake_nvml.write(mps_gpu())
    sampler = Sampler(NvmlSource(), mps_world(tmp_path, 100_000))
    history = policy.History()
    actions, skipped = [], []
    for i in range(8):
        decision = policy.decide(MPS_CONFIG, sampler.sample(MPS_CONFIG, 2 * i * S), history)
        history = decision.history
        actions += [(a.unit, a.resource) for a in decision.actions]
        skipped += [
            (e.fields["unit"], e.fields["reason"]) for e in decision.events if e.name == "skipped"
        ]
    sampler.close()

    assert [("immich-ml.service", "ram")] == actions
    assert [("nvidia-mps.service", "mps")] == skipped


# --------------------------------------------------------------------------
# A hung driver, through the real Daemon loop (issue 11, item 1)


def test_while_nvml_hangs_every_tick_feeds_the_watchdog_and_gpu_up_is_0(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """The keep-alive reflects the loop, not NVML: each tick ends with WATCHDOG=1 after at
    most one deadline, while the NVML call stays stuck."""
    path = tmp_path / "vramwatch.toml"
    path.write_text('[gpu]\nnvml_timeout = "200ms"\n[[tenant]]\nunit = "immich-ml.service"\n')
    fake_nvml.write(gpus())
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))
    notes: list[str] = []
    metrics = Metrics()
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            sampler,
            actuator=None,  # type: ignore[arg-type]  # nothing is over budget: never called
            events=EventLog("stderr", "json", stream=io.StringIO()),
            notify=notified(notes),
            metrics=metrics,
        ),
    )
    daemon.tick()
    fake_nvml.write(gpus(), delays={"nvmlDeviceGetMemoryInfo_v2": 1500})

    walls = []
    for _ in range(4):
        t0 = time.monotonic()
        daemon.tick()
        walls.append(time.monotonic() - t0)
    up = metrics.registry.get_sample_value(
        "vramwatch_gpu_up", {"gpu": "0", "uuid": UUID, "name": "Tesla T4"}
    )
    fake_nvml.write(gpus())
    while sampler.nvml.busy:
        time.sleep(0.02)
    sampler.close()

    assert 5 == sum(1 for n in notes if n.endswith("WATCHDOG=1"))
    assert max(walls) < 0.5 and max(walls[1:]) < 0.1
    assert 0 == up
