"""vramwatch's NVML source through the real pynvml against the fake driver."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakenvml import (
    FakeGpu,
    FakeMig,
    FakeNvmlState,
    FakeProcess,
    build,
    gib,
    mib,
    subprocess_env,
)
from vramwatch.model import GpuProcess, GpuSample
from vramwatch.sources import nvml
from vramwatch.sources.nvml import (
    INIT_RETRY_FIRST_NS,
    REENUMERATE_NS,
    NvmlSource,
    RawProcessLists,
)

S = 10**9
T4 = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
A10 = "GPU-00000000-1111-2222-3333-444444444444"


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            T4,
            mib(15360),
            base_used_bytes=mib(300),
            processes=(
                FakeProcess(4242, mib(10700)),
                FakeProcess(4343, None, "graphics"),
            ),
        ),
        FakeGpu(
            A10, mib(24576), name="NVIDIA A10", processes=(FakeProcess(5000, mib(2000), "mps"),)
        ),
    ]


@pytest.fixture(params=["raw", "public"])
def process_lists(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the source reads process lists: pynvml's structs unpacked at once
    (the default), and pynvml's public functions (when its internals are not there)."""
    if request.param == "public":
        monkeypatch.setattr(RawProcessLists, "create", classmethod(lambda cls: None))
    return str(request.param)


@pytest.mark.usefixtures("process_lists")
def test_samples_memory_and_every_process_kind(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus())
    source = NvmlSource()

    gpus, error = source.sample(0)
    source.close()

    assert None is error
    assert (
        GpuSample(
            0,
            T4,
            "Tesla T4",
            mib(15360),
            mib(11000),
            mib(4360),
            (
                GpuProcess(4242, mib(10700), "compute", "", None),
                GpuProcess(4343, None, "graphics", "", None),
            ),
        ),
        GpuSample(
            1,
            A10,
            "NVIDIA A10",
            mib(24576),
            mib(2000),
            mib(22576),
            (GpuProcess(5000, mib(2000), "mps", "", None),),
        ),
    ) == gpus


@pytest.mark.usefixtures("process_lists")
def test_a_process_in_two_lists_counts_once(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(
        [FakeGpu(T4, mib(15360), processes=(FakeProcess(7, mib(100), "compute,graphics"),))]
    )
    source = NvmlSource()

    gpus, _ = source.sample(0)
    source.close()

    assert (GpuProcess(7, mib(100), "compute", "", None),) == gpus[0].processes


def test_no_driver_is_reported_once_and_retried_with_backoff(fake_nvml: FakeNvmlState) -> None:
    source = NvmlSource()

    first = source.sample(0)
    fake_nvml.write(two_gpus())  # the driver appears
    too_soon = source.sample(INIT_RETRY_FIRST_NS - 1)
    later = source.sample(INIT_RETRY_FIRST_NS)
    source.close()

    assert ((), "NVIDIA driver not loaded (nvidia.ko); guarding host RAM only") == first
    assert ((), "NVIDIA driver not loaded (nvidia.ko); guarding host RAM only") == too_soon
    assert (2, None) == (len(later[0]), later[1])


@pytest.mark.usefixtures("process_lists")
def test_a_lost_gpu_is_an_error_sample_and_the_others_still_read(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), errors={"nvmlDeviceGetComputeRunningProcesses_v3@0": "GPU_IS_LOST"})
    source = NvmlSource()

    gpus, error = source.sample(0)
    fake_nvml.write(two_gpus())
    recovered, _ = source.sample(S)
    source.close()

    assert None is error
    assert gpus[0].error is not None and gpus[0].error.startswith("GPU_IS_LOST")
    assert None is gpus[1].error
    assert [None, None] == [g.error for g in recovered]


def test_unknown_and_timeout_errors_are_samples_not_exceptions(fake_nvml: FakeNvmlState) -> None:
    source = NvmlSource()
    errors = []
    for code in ("UNKNOWN", "TIMEOUT", "NO_PERMISSION"):
        fake_nvml.write(two_gpus(), errors={"nvmlDeviceGetMemoryInfo_v2": code})
        gpus, _ = source.sample(0)
        errors.append([(g.error or "").split(":")[0] for g in gpus])
    source.close()

    assert [["UNKNOWN"] * 2, ["TIMEOUT"] * 2, ["NO_PERMISSION"] * 2] == errors


def test_memory_info_falls_back_to_v1_on_an_old_driver(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), errors={"nvmlDeviceGetMemoryInfo_v2": "FUNCTION_NOT_FOUND"})
    source = NvmlSource()

    gpus, _ = source.sample(0)
    source.close()

    assert [mib(4360), mib(22576)] == [g.free_bytes for g in gpus]


@pytest.mark.usefixtures("process_lists")
def test_process_list_race_beyond_the_binding_buffer_is_retried(fake_nvml: FakeNvmlState) -> None:
    # 1 process -> the binding allocates 2*1+5 = 7 entries; 20 more appear.
    fake_nvml.write(two_gpus()[:1], grow={"nvmlDeviceGetComputeRunningProcesses_v3": 20})
    source = NvmlSource()

    gpus, _ = source.sample(0)
    source.close()

    assert None is gpus[0].error
    assert 4242 in [p.pid for p in gpus[0].processes]


def test_driver_not_loaded_after_init_resets_and_reinitialises(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus())
    source = NvmlSource()
    source.sample(0)
    fake_nvml.write(two_gpus(), errors={"nvmlDevice*": "DRIVER_NOT_LOADED"})

    broken, _ = source.sample(S)
    fake_nvml.write(two_gpus())
    healed, error = source.sample(2 * S)
    source.close()

    assert all(g.error for g in broken)
    assert (None, [None, None]) == (error, [g.error for g in healed])


OLD_DRIVER_SCRIPT = """
import json, sys
from vramwatch.sources.nvml import NvmlSource, RawProcessLists
if sys.argv[1] == "public":
    RawProcessLists.create = classmethod(lambda cls: None)
gpus, error = NvmlSource().sample(0)
print(json.dumps([[p.pid, p.used_bytes] for g in gpus for p in g.processes] + [error]))
"""


def test_an_old_driver_without_v3_process_lists_falls_back_to_v2(
    tmp_path: Path, process_lists: str
) -> None:
    lib = build(
        tmp_path / "old",
        hide_symbols=[
            "nvmlDeviceGetComputeRunningProcesses_v3",
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            "nvmlDeviceGetMPSComputeRunningProcesses_v3",
        ],
    )
    state = FakeNvmlState(tmp_path / "state")
    state.write(two_gpus())

    out = subprocess.run(
        [sys.executable, "-c", OLD_DRIVER_SCRIPT, process_lists],
        env=subprocess_env(lib, state.path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert [[4242, mib(10700)], [4343, None], [5000, mib(2000)], None] == json.loads(out)


@pytest.mark.usefixtures("process_lists")
@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        # Graphics and MPS lists a GPU does not support are empty; compute must be known.
        ({"nvmlDeviceGetGraphicsRunningProcesses_v3": "NOT_SUPPORTED"}, [[4242], [5000]]),
        ({"nvmlDeviceGetMPSComputeRunningProcesses_v3": "NOT_SUPPORTED"}, [[4242, 4343], []]),
        ({"nvmlDeviceGetComputeRunningProcesses_v3@0": "NOT_SUPPORTED"}, ["NOT_SUPPORTED", [5000]]),
        # A size race on every try: an error sample once the retries are spent.
        (
            {"nvmlDeviceGetComputeRunningProcesses_v3@0": "INSUFFICIENT_SIZE"},
            ["INSUFFICIENT_SIZE", [5000]],
        ),
        # Three races, then an answer: within the retries.
        (
            {"nvmlDeviceGetComputeRunningProcesses_v3@0": "INSUFFICIENT_SIZE 3"},
            [[4242, 4343], [5000]],
        ),
        ({"nvmlDeviceGetMPSComputeRunningProcesses_v3@1": "UNKNOWN"}, [[4242, 4343], "UNKNOWN"]),
    ],
)
def test_a_failing_process_list_is_translated_as_the_binding_would(
    fake_nvml: FakeNvmlState, errors: dict[str, str], expected: list[object]
) -> None:
    fake_nvml.write(two_gpus(), errors=errors)
    source = NvmlSource()

    gpus, error = source.sample(0)
    source.close()

    assert None is error
    assert expected == [
        g.error.split(":")[0] if g.error else [p.pid for p in g.processes] for g in gpus
    ]


def test_process_lists_are_read_without_pynvml_s_friendly_objects(
    fake_nvml: FakeNvmlState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynvml's per-process conversion (about 1 ms a tick at 512 processes) is not used."""
    import pynvml

    def refused(struct: object) -> object:
        raise AssertionError("nvmlStructToFriendlyObject called")

    monkeypatch.setattr(pynvml, "nvmlStructToFriendlyObject", refused)
    fake_nvml.write(two_gpus())
    source = NvmlSource()

    gpus, _ = source.sample(0)
    source.close()

    assert [[(4242, mib(10700)), (4343, None)], [(5000, mib(2000))]] == [
        [(p.pid, p.used_bytes) for p in g.processes] for g in gpus
    ]


def test_without_pynvml_s_internals_the_public_functions_are_used(
    fake_nvml: FakeNvmlState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast reader rests on pynvml's private function lookup: gone, it is not used."""
    import pynvml

    monkeypatch.delattr(pynvml, "_nvmlGetFunctionPointer")

    assert None is RawProcessLists.create()


def test_a_process_struct_of_another_layout_is_not_unpacked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ctypes

    import pynvml

    class Other(ctypes.Structure):
        _fields_ = [("usedGpuMemory", ctypes.c_ulonglong), ("pid", ctypes.c_ulonglong)]

    monkeypatch.setattr(pynvml, "c_nvmlProcessInfo_v2_t", Other)

    assert None is RawProcessLists.create()
    assert nvml._public_list is NvmlSource()._read_list


# --------------------------------------------------------------------------
# Each GPU on its own, by UUID (issue 10, item 6b)


def with_lost(gpus: list[FakeGpu], index: int, code: str = "GPU_IS_LOST") -> list[FakeGpu]:
    return [replace(g, lost=code) if i == index else g for i, g in enumerate(gpus)]


def summary(gpus: tuple[GpuSample, ...]) -> list[tuple[int, str, str | None]]:
    """(index, UUID, error code or None) of each sample."""
    return [(g.index, g.uuid, g.error.split(":")[0] if g.error else None) for g in gpus]


@pytest.mark.parametrize("code", ["GPU_IS_LOST", "RESET_REQUIRED"])
def test_a_lost_gpu_stays_one_error_sample_and_the_others_keep_being_sampled(
    fake_nvml: FakeNvmlState, code: str
) -> None:
    fake_nvml.write(two_gpus())
    source = NvmlSource()
    source.sample(0)
    fake_nvml.write(with_lost(two_gpus(), 1, code))

    ticks = [source.sample(t * S) for t in range(1, 5)]
    source.close()

    assert [([(0, T4, None), (1, A10, code)], None)] * 4 == [
        (summary(gpus), error) for gpus, error in ticks
    ]
    assert [mib(4360)] * 4 == [gpus[0].free_bytes for gpus, _ in ticks]
    assert [[False, True]] * 4 == [[g.lost for g in gpus] for gpus, _ in ticks]


def test_a_lost_gpu_that_comes_back_is_sampled_again(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus())
    source = NvmlSource()
    source.sample(0)
    fake_nvml.write(with_lost(two_gpus(), 1))
    source.sample(S)
    source.sample(2 * S)
    fake_nvml.write(two_gpus())  # reset done: the GPU is back

    back, error = source.sample(3 * S)
    source.close()

    assert ([(0, T4, None), (1, A10, None)], None) == (summary(back), error)
    assert mib(22576) == back[1].free_bytes


def test_a_gpu_lost_before_the_first_enumeration_costs_only_that_gpu(
    fake_nvml: FakeNvmlState,
) -> None:
    fake_nvml.write(with_lost(two_gpus(), 0))
    source = NvmlSource()

    first, error = source.sample(0)
    again, _ = source.sample(S)
    fake_nvml.write(two_gpus())
    back, _ = source.sample(2 * S)
    source.close()

    # Its UUID was never read: the GPU is known by its index until it is.
    assert ([(0, "index:0", "GPU_IS_LOST"), (1, A10, None)], None) == (summary(first), error)
    assert summary(first) == summary(again)
    assert [(0, T4, None), (1, A10, None)] == summary(back)


def test_a_gpu_whose_uuid_cannot_be_read_keeps_the_uuid_it_had(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus())
    source = NvmlSource()
    source.sample(0)
    fake_nvml.write(
        two_gpus(),
        errors={"nvmlDeviceGetMemoryInfo_v2@1": "UNKNOWN", "nvmlDeviceGetUUID@1": "UNKNOWN"},
    )

    broken, _ = source.sample(S)
    enumerated_again, _ = source.sample(2 * S)
    source.close()

    assert [(0, T4, None), (1, A10, "UNKNOWN")] == summary(broken)
    assert [(0, T4, None), (1, A10, "UNKNOWN")] == summary(enumerated_again)
    assert "enumerating GPU 1" in (enumerated_again[1].error or "")
    assert [False, False] == [g.lost for g in enumerated_again]  # UNKNOWN is not lost


def test_a_hot_added_gpu_is_sampled_from_the_next_tick(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus()[:1])
    source = NvmlSource()
    before, _ = source.sample(0)
    fake_nvml.write(two_gpus())

    after, _ = source.sample(S)
    source.close()

    assert [(0, T4, None)] == summary(before)
    assert [(0, T4, None), (1, A10, None)] == summary(after)


def test_a_hot_unplugged_gpu_is_dropped_and_the_rest_renumbered(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus())
    source = NvmlSource()
    source.sample(0)
    fake_nvml.write(two_gpus()[1:])  # GPU 0 is gone; the A10 is index 0 now

    gone, _ = source.sample(S)
    then, _ = source.sample(2 * S)
    source.close()

    assert [(0, A10, None)] == summary(gone)
    assert [(0, A10, None)] == summary(then)


def test_devices_are_enumerated_again_about_once_a_minute(fake_nvml: FakeNvmlState) -> None:
    """Index order can change without any error or count change: a periodic look fixes it."""
    fake_nvml.write(two_gpus())
    source = NvmlSource()
    source.sample(0)
    fake_nvml.write(list(reversed(two_gpus())))  # handles follow their GPU, indexes swapped

    soon, _ = source.sample(S)
    later, _ = source.sample(REENUMERATE_NS)
    source.close()

    assert [(0, T4, None), (1, A10, None)] == summary(soon)
    assert [(0, A10, None), (1, T4, None)] == summary(later)


def test_a_failing_device_count_makes_each_known_gpu_unknown_not_nvml(
    fake_nvml: FakeNvmlState,
) -> None:
    fake_nvml.write(two_gpus())
    source = NvmlSource()
    source.sample(0)
    fake_nvml.write(two_gpus(), errors={"nvmlDeviceGetCount_v2": "TIMEOUT 1"})

    failed, error = source.sample(S)
    healed, _ = source.sample(2 * S)
    source.close()

    assert ([(0, T4, "TIMEOUT"), (1, A10, "TIMEOUT")], None) == (summary(failed), error)
    assert [(0, T4, None), (1, A10, None)] == summary(healed)


def test_a_count_that_never_answered_is_retried_every_tick(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), errors={"nvmlDeviceGetCount_v2": "UNKNOWN 2"})
    source = NvmlSource()

    results = [source.sample(t * S) for t in range(3)]
    source.close()

    assert [0, 0, 2] == [len(gpus) for gpus, _ in results]
    assert [True, True, False] == [error is not None for _, error in results]


# --------------------------------------------------------------------------
# MIG (issue 11, item 3)

A100 = "GPU-a1000000-0000-0000-0000-000000000000"
MIG0 = "MIG-a1000000-0000-0000-0000-000000000000"
MIG1 = "MIG-a1000000-0000-0000-0000-000000000001"


def a100_in_mig_mode() -> list[FakeGpu]:
    return [
        FakeGpu(
            A100,
            gib(80),
            name="NVIDIA A100-SXM4-80GB",
            mig=(
                FakeMig(MIG0, gib(20), "MIG 2g.20gb", (FakeProcess(10, gib(19)),)),
                FakeMig(
                    MIG1,
                    gib(40),
                    "MIG 3g.40gb",
                    (FakeProcess(11, gib(5)), FakeProcess(10, gib(1), "compute,graphics")),
                ),
            ),
        ),
        two_gpus()[0],
    ]


def test_a_gpu_in_mig_mode_is_sampled_as_its_mig_devices(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(a100_in_mig_mode())
    source = NvmlSource()

    gpus, error = source.sample(0)
    source.close()

    assert None is error
    assert [
        (0, MIG0, "MIG 2g.20gb", A100, 0, gib(20), gib(1), [(10, gib(19))]),
        # PID 10 is in both instances: counted in each, once per instance.
        (0, MIG1, "MIG 3g.40gb", A100, 1, gib(40), gib(34), [(11, gib(5)), (10, gib(1))]),
        (1, T4, "Tesla T4", None, None, mib(15360), mib(4360), [(4242, mib(10700)), (4343, None)]),
    ] == [
        (
            g.index,
            g.uuid,
            g.name,
            g.parent_uuid,
            g.mig_index,
            g.total_bytes,
            g.free_bytes,
            [(p.pid, p.used_bytes) for p in g.processes],
        )
        for g in gpus
    ]
    assert ["0:0", "0:1", "1"] == [g.label for g in gpus]


def test_a_failing_mig_enumeration_is_one_error_sample_for_that_gpu(
    fake_nvml: FakeNvmlState,
) -> None:
    fake_nvml.write(a100_in_mig_mode(), errors={"nvmlDeviceGetMigDeviceHandleByIndex@0": "UNKNOWN"})
    source = NvmlSource()

    gpus, _ = source.sample(0)
    source.close()

    assert [(0, A100, "UNKNOWN"), (1, T4, None)] == summary(gpus)
