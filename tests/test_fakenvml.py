"""The fake NVML library, driven through the real pynvml binding.

Most tests run in-process (the fake is preloaded, see tests/fakenvml); the
subprocess tests prove the LD_LIBRARY_PATH route and the hidden-symbol build.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pynvml
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakenvml import (
    SONAME,
    FakeGpu,
    FakeMig,
    FakeNvmlState,
    FakeProcess,
    build,
    gib,
    mib,
    render_state,
    state_error,
    subprocess_env,
)

pytest_plugins = ["tests.fakenvml.fixtures"]

UUID0 = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
UUID1 = "GPU-8f1c2a3e-0000-0000-0000-000000000001"
UUID2 = "GPU-8f1c2a3e-0000-0000-0000-000000000002"
NA_UINT = 0xFFFFFFFF
GROW_PID = 4194304

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_INSUFFICIENT_SIZE = 7


class ProcessInfoV1(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            UUID0,
            mib(15360),
            base_used_bytes=mib(512),
            processes=(
                FakeProcess(4242, mib(10700)),
                FakeProcess(4243, None, "compute,graphics"),
                FakeProcess(4244, mib(100), "graphics"),
            ),
        ),
        FakeGpu(
            UUID1,
            gib(80),
            name="NVIDIA A100-SXM4-80GB",
            reserved_bytes=mib(300),
            processes=(FakeProcess(77, gib(1), "mps"),),
        ),
    ]


@pytest.fixture
def nvml(fake_nvml: FakeNvmlState) -> Iterator[FakeNvmlState]:
    """Two GPUs written and pynvml initialized for the test."""
    fake_nvml.write(two_gpus())
    pynvml.nvmlInit()
    yield fake_nvml
    # fake_nvml's teardown resets the library even if the test left it initialized.


def gpu0() -> object:
    return pynvml.nvmlDeviceGetHandleByIndex(0)


def raw() -> ctypes.CDLL:
    return ctypes.CDLL(SONAME)


def procs(infos: list[object]) -> list[tuple[int, int | None]]:
    return [(p.pid, p.usedGpuMemory) for p in infos]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# loading


def test_preloaded_fake_is_what_the_soname_resolves_to(fake_nvml_lib: Path) -> None:
    lib = ctypes.CDLL(SONAME)
    assert hasattr(lib, "fakeNvmlReset")
    assert (fake_nvml_lib / SONAME).is_file()


def test_build_with_unrunnable_compiler_says_so(tmp_path: Path) -> None:
    from tests.fakenvml import FakeNvmlBuildError

    with pytest.raises(FakeNvmlBuildError, match="cannot run the C compiler"):
        build(tmp_path, cc=str(tmp_path / "no-such-gcc-wrapper.sh"))


def test_build_missing_compiler_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakenvml import FakeNvmlBuildError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FakeNvmlBuildError, match="gcc not found"):
        build(tmp_path / "out")


# --------------------------------------------------------------------------
# init / shutdown


def test_missing_state_file_is_driver_not_loaded(fake_nvml: FakeNvmlState) -> None:
    assert not fake_nvml.path.exists()
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


def test_injected_init_error_then_driver_appears(fake_nvml: FakeNvmlState) -> None:
    # pynvml.nvmlInit calls nvmlInitWithFlags(0); an error on nvmlInit_v2 covers it.
    fake_nvml.write(two_gpus(), errors={"nvmlInit_v2": "DRIVER_NOT_LOADED"})
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    fake_nvml.write(two_gpus())
    pynvml.nvmlInit()
    assert 2 == pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()


def test_driver_file_appears_later(fake_nvml: FakeNvmlState) -> None:
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    fake_nvml.write([FakeGpu(UUID0, mib(15360))])
    pynvml.nvmlInit()
    assert 1 == pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()


def test_init_is_reference_counted(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus())
    pynvml.nvmlInit()
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    assert 2 == pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


def test_calls_before_init_are_uninitialized_in_c(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus())
    count = ctypes.c_uint(99)
    assert NVML_ERROR_UNINITIALIZED == raw().nvmlDeviceGetCount_v2(ctypes.byref(count))
    assert 99 == count.value
    buf = ctypes.create_string_buffer(80)
    assert NVML_ERROR_UNINITIALIZED == raw().nvmlSystemGetDriverVersion(buf, 80)


def test_v1_and_v2_init_symbols(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus())
    lib = raw()
    assert NVML_SUCCESS == lib.nvmlInit()
    assert NVML_SUCCESS == lib.nvmlInit_v2()
    assert NVML_SUCCESS == lib.nvmlShutdown()
    assert NVML_SUCCESS == lib.nvmlShutdown()
    assert NVML_ERROR_UNINITIALIZED == lib.nvmlShutdown()


def test_driver_removed_after_init(nvml: FakeNvmlState) -> None:
    nvml.write([], driver_present=False)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()


# --------------------------------------------------------------------------
# system and device identity


def test_system_versions(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), driver_version="535.161.08", cuda_version=12020)
    pynvml.nvmlInit()
    assert "535.161.08" == pynvml.nvmlSystemGetDriverVersion()
    assert "12.535.161.08" == pynvml.nvmlSystemGetNVMLVersion()
    assert 12020 == pynvml.nvmlSystemGetCudaDriverVersion()
    assert 12020 == pynvml.nvmlSystemGetCudaDriverVersion_v2()
    pynvml.nvmlShutdown()


def test_count_handles_uuid_name_index(nvml: FakeNvmlState) -> None:
    assert 2 == pynvml.nvmlDeviceGetCount()
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert (UUID0, "Tesla T4", 0) == (
        pynvml.nvmlDeviceGetUUID(h0),
        pynvml.nvmlDeviceGetName(h0),
        pynvml.nvmlDeviceGetIndex(h0),
    )
    assert (UUID1, "NVIDIA A100-SXM4-80GB", 1) == (
        pynvml.nvmlDeviceGetUUID(h1),
        pynvml.nvmlDeviceGetName(h1),
        pynvml.nvmlDeviceGetIndex(h1),
    )
    by_uuid = pynvml.nvmlDeviceGetHandleByUUID(UUID1)
    assert ctypes.addressof(h1.contents) == ctypes.addressof(by_uuid.contents)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID(UUID2)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(2)


def test_v1_count_and_handle_symbols(nvml: FakeNvmlState) -> None:
    lib = raw()
    count = ctypes.c_uint()
    assert NVML_SUCCESS == lib.nvmlDeviceGetCount(ctypes.byref(count))
    assert 2 == count.value
    handle = ctypes.c_void_p()
    assert NVML_SUCCESS == lib.nvmlDeviceGetHandleByIndex(1, ctypes.byref(handle))
    expected = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert ctypes.addressof(expected.contents) == handle.value


def test_bad_arguments_are_invalid_argument(nvml: FakeNvmlState) -> None:
    lib = raw()
    index = ctypes.c_uint()
    assert NVML_ERROR_INVALID_ARGUMENT == lib.nvmlDeviceGetIndex(None, ctypes.byref(index))
    bogus = ctypes.create_string_buffer(256)
    assert NVML_ERROR_INVALID_ARGUMENT == lib.nvmlDeviceGetIndex(bogus, ctypes.byref(index))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert NVML_ERROR_INVALID_ARGUMENT == lib.nvmlDeviceGetIndex(h, None)
    assert NVML_ERROR_INVALID_ARGUMENT == lib.nvmlDeviceGetCount_v2(None)
    assert NVML_ERROR_INVALID_ARGUMENT == lib.nvmlDeviceGetComputeRunningProcesses_v3(h, None, None)
    small = ctypes.create_string_buffer(4)
    assert NVML_ERROR_INSUFFICIENT_SIZE == lib.nvmlDeviceGetUUID(h, small, 4)


def test_mig_is_not_supported(nvml: FakeNvmlState) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMigMode(h)
    assert 0 == pynvml.nvmlDeviceIsMigDeviceHandle(h).value
    assert 0 == pynvml.nvmlDeviceGetMaxMigDeviceCount(h)


def test_error_string() -> None:
    # Any loaded fake answers nvmlErrorString without init.
    fn = raw().nvmlErrorString
    fn.restype = ctypes.c_char_p
    assert b"GPU is lost" == fn(15)
    assert b"Unknown Error" == fn(12345)


# --------------------------------------------------------------------------
# memory


def test_memory_info_v1(nvml: FakeNvmlState) -> None:
    m0 = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
    used0 = mib(512) + mib(10700) + mib(100)  # "na" counts 0
    assert (mib(15360), used0, mib(15360) - used0) == (m0.total, m0.used, m0.free)
    m1 = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(1))
    used1 = mib(300) + gib(1)  # v1 used includes reserved
    assert (gib(80), used1, gib(80) - used1) == (m1.total, m1.used, m1.free)


def test_memory_info_v2(nvml: FakeNvmlState) -> None:
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    m = pynvml.nvmlDeviceGetMemoryInfo(h1, version=pynvml.nvmlMemory_v2)
    assert (pynvml.nvmlMemory_v2, gib(80), mib(300), gib(1), gib(80) - mib(300) - gib(1)) == (
        m.version,
        m.total,
        m.reserved,
        m.used,
        m.free,
    )


def test_memory_info_v2_wrong_version(nvml: FakeNvmlState) -> None:
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    wrong = (1 << 24) | ctypes.sizeof(pynvml.c_nvmlMemory_v2_t)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=wrong)


def test_free_never_negative(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(
        [FakeGpu(UUID0, mib(1000), base_used_bytes=mib(600), processes=(FakeProcess(1, mib(600)),))]
    )
    pynvml.nvmlInit()
    m = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
    assert (mib(1000), mib(1200), 0) == (m.total, m.used, m.free)
    pynvml.nvmlShutdown()


# --------------------------------------------------------------------------
# process lists


def test_compute_graphics_mps_lists(nvml: FakeNvmlState) -> None:
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    compute = [(4242, mib(10700)), (4243, None)]
    graphics = [(4243, None), (4244, mib(100))]
    assert compute == procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h0))
    assert compute == procs(pynvml.nvmlDeviceGetComputeRunningProcesses_v3(h0))
    assert compute == procs(pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h0))
    assert graphics == procs(pynvml.nvmlDeviceGetGraphicsRunningProcesses(h0))
    assert graphics == procs(pynvml.nvmlDeviceGetGraphicsRunningProcesses_v2(h0))
    assert [] == procs(pynvml.nvmlDeviceGetMPSComputeRunningProcesses(h0))
    assert [(77, gib(1))] == procs(pynvml.nvmlDeviceGetMPSComputeRunningProcesses(h1))
    assert [(77, gib(1))] == procs(pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v2(h1))
    assert [] == procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h1))
    p = pynvml.nvmlDeviceGetComputeRunningProcesses(h0)[0]
    assert (NA_UINT, NA_UINT) == (p.gpuInstanceId, p.computeInstanceId)


@pytest.mark.parametrize(
    "symbol", ["nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"]
)
def test_v1_symbol_buffer_protocol(nvml: FakeNvmlState, symbol: str) -> None:
    """The unversioned C symbols take the v1 struct (pid, usedGpuMemory)."""
    fn = getattr(raw(), symbol)
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    assert NVML_ERROR_INSUFFICIENT_SIZE == fn(h0, ctypes.byref(count), None)
    assert 2 == count.value
    one = (ProcessInfoV1 * 1)()
    count.value = 1
    assert NVML_ERROR_INSUFFICIENT_SIZE == fn(h0, ctypes.byref(count), one)
    assert 2 == count.value
    buf = (ProcessInfoV1 * 4)()
    count.value = 4
    assert NVML_SUCCESS == fn(h0, ctypes.byref(count), buf)
    assert 2 == count.value
    got = [(buf[i].pid, buf[i].usedGpuMemory) for i in range(2)]
    first = (4242, mib(10700)) if "Compute" in symbol else (4243, 2**64 - 1)
    assert first == got[0]


def test_empty_list_size_query_is_success(nvml: FakeNvmlState) -> None:
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    count = ctypes.c_uint(0)
    rc = raw().nvmlDeviceGetComputeRunningProcesses_v3(h1, ctypes.byref(count), None)
    assert (NVML_SUCCESS, 0) == (rc, count.value)


# --------------------------------------------------------------------------
# injected errors


@pytest.mark.parametrize(
    ("rule", "code", "call", "exc"),
    [
        (
            "nvmlDeviceGetComputeRunningProcesses_v3",
            "GPU_IS_LOST",
            lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(gpu0()),
            pynvml.NVMLError_GpuIsLost,
        ),
        (
            "nvmlDeviceGetMemoryInfo",
            "NVML_ERROR_UNKNOWN",
            lambda: pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)),
            pynvml.NVMLError_Unknown,
        ),
        (
            "nvmlDeviceGetMemoryInfo_v2",
            "TIMEOUT",
            lambda: pynvml.nvmlDeviceGetMemoryInfo(
                pynvml.nvmlDeviceGetHandleByIndex(0), version=pynvml.nvmlMemory_v2
            ),
            pynvml.NVMLError_Timeout,
        ),
        (
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            "NOT_SUPPORTED",
            lambda: pynvml.nvmlDeviceGetGraphicsRunningProcesses(
                pynvml.nvmlDeviceGetHandleByIndex(0)
            ),
            pynvml.NVMLError_NotSupported,
        ),
        (
            "nvmlDeviceGetHandleByIndex_v2",
            "NO_PERMISSION",
            lambda: pynvml.nvmlDeviceGetHandleByIndex(0),
            pynvml.NVMLError_NoPermission,
        ),
        (
            "nvmlDeviceGetCount_v2",
            "18",
            pynvml.nvmlDeviceGetCount,
            pynvml.NVMLError_LibRmVersionMismatch,
        ),
        (
            "nvmlDeviceGetComputeRunningProcesses_v3",
            "FUNCTION_NOT_FOUND",
            lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(gpu0()),
            pynvml.NVMLLibraryMismatchError,
        ),
    ],
)
def test_injected_error_raises_pynvml_class(
    fake_nvml: FakeNvmlState,
    rule: str,
    code: str,
    call: Callable[[], object],
    exc: type[Exception],
) -> None:
    fake_nvml.write(two_gpus(), errors={rule: code})
    pynvml.nvmlInit()
    with pytest.raises(exc) as info:
        call()
    assert exc is info.type
    fake_nvml.write(two_gpus())
    call()  # fault cleared while initialized
    pynvml.nvmlShutdown()


def test_error_for_one_gpu_only(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), errors={"nvmlDeviceGetMemoryInfo@1": "UNKNOWN"})
    pynvml.nvmlInit()
    m0 = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
    assert mib(15360) == m0.total
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(1))
    pynvml.nvmlShutdown()


def test_wildcard_loses_a_whole_gpu(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), errors={"nvmlDeviceGet*@1": "GPU_IS_LOST"})
    pynvml.nvmlInit()
    assert 2 == pynvml.nvmlDeviceGetCount()  # system calls have no GPU index
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert UUID0 == pynvml.nvmlDeviceGetUUID(h0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByUUID(UUID1)
    pynvml.nvmlShutdown()  # wildcards never match nvmlShutdown


def test_counted_error_fails_next_calls_only(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), errors={"nvmlDeviceGetMemoryInfo": "TIMEOUT 2"})
    pynvml.nvmlInit()
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    results = []
    for _ in range(3):
        try:
            results.append(pynvml.nvmlDeviceGetMemoryInfo(h0).total)
        except pynvml.NVMLError_Timeout:
            results.append("timeout")
    assert ["timeout", "timeout", mib(15360)] == results
    pynvml.nvmlShutdown()


def test_counted_init_error(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), errors={"nvmlInit": "DRIVER_NOT_LOADED 1"})
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()


def test_syntax_error_is_unknown_and_reported(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write_text("gpu GPU-x 16GiB\nproc 0 12 lots\n")
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert "fakenvml: state file line 2: bad size lots" == state_error()
    fake_nvml.write_text("gpu GPU-x 16GiB\nerror nvmlDeviceGetMemryInfo UNKNOWN\n")
    assert "fakenvml: state file line 2: unknown NVML function nvmlDeviceGetMemryInfo" == (
        state_error()
    )
    fake_nvml.write_text("gpu GPU-x 16GiB\n")
    assert "" == state_error()


# --------------------------------------------------------------------------
# the INSUFFICIENT_SIZE race


def test_small_growth_is_absorbed_by_pynvml_oversizing(fake_nvml: FakeNvmlState) -> None:
    # pynvml sizes the second buffer count*2+5, so 1 -> 1+2 processes fits.
    gpu = FakeGpu(UUID0, mib(15360), processes=(FakeProcess(4242, mib(100)),))
    fake_nvml.write([gpu], grow={"nvmlDeviceGetComputeRunningProcesses_v3": 2})
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    expected = [(4242, mib(100)), (GROW_PID, mib(1)), (GROW_PID + 1, mib(1))]
    assert expected == procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h))
    # the race is armed again by each size query
    assert expected == procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h))
    # other functions are not affected, and neither is memory info
    assert [(4242, mib(100))] == procs(pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h))
    assert mib(100) == pynvml.nvmlDeviceGetMemoryInfo(h).used
    pynvml.nvmlShutdown()


def test_large_growth_raises_insufficient_size(fake_nvml: FakeNvmlState) -> None:
    # 1 process, 1*2+5 = 7 slots offered, 1+10 needed: pynvml raises.
    gpu = FakeGpu(UUID0, mib(15360), processes=(FakeProcess(4242, mib(100)),))
    fake_nvml.write([gpu], grow={"nvmlDeviceGetComputeRunningProcesses*": 10})
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h)
    pynvml.nvmlShutdown()


def test_retry_loop_converges_on_grown_list(fake_nvml: FakeNvmlState) -> None:
    gpu = FakeGpu(UUID0, mib(15360), processes=(FakeProcess(4242, mib(100)),))
    fake_nvml.write([gpu], grow={"nvmlDeviceGetComputeRunningProcesses": 10})
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fn = raw().nvmlDeviceGetComputeRunningProcesses
    count = ctypes.c_uint(0)
    answers = []
    for _ in range(3):
        buf = (ProcessInfoV1 * max(count.value, 1))()
        rc = fn(h, ctypes.byref(count), buf if count.value else None)
        answers.append((rc, count.value))
        if rc == NVML_SUCCESS:
            break
    assert [
        (NVML_ERROR_INSUFFICIENT_SIZE, 1),
        (NVML_ERROR_INSUFFICIENT_SIZE, 11),
        (NVML_SUCCESS, 11),
    ] == answers
    # the successful fill ended the race: a fill without a size query sees 1
    big = (ProcessInfoV1 * 16)()
    count.value = 16
    assert (NVML_SUCCESS, 1) == (fn(h, ctypes.byref(count), big), count.value)
    pynvml.nvmlShutdown()


# --------------------------------------------------------------------------
# state changes while initialized


def test_state_changes_after_init_are_seen(nvml: FakeNvmlState) -> None:
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    gpus = two_gpus()
    gpus[0] = FakeGpu(UUID0, mib(15360), processes=(FakeProcess(999, mib(2000)),))
    nvml.write(gpus)
    assert [(999, mib(2000))] == procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h0))
    assert mib(2000) == pynvml.nvmlDeviceGetMemoryInfo(h0).used
    # a third GPU appears
    nvml.write([*gpus, FakeGpu(UUID2, gib(24), name="NVIDIA L4")])
    assert 3 == pynvml.nvmlDeviceGetCount()
    assert "NVIDIA L4" == pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(2))


def test_removed_gpu_handle_is_lost(nvml: FakeNvmlState) -> None:
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    nvml.write(two_gpus()[:1])
    assert 1 == pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetMemoryInfo(h1)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetUUID(h1)
    # the GPU comes back: the old handle works again
    nvml.write(two_gpus())
    assert UUID1 == pynvml.nvmlDeviceGetUUID(h1)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("GPU_IS_LOST", pynvml.NVMLError_GpuIsLost),
        ("RESET_REQUIRED", pynvml.NVMLError_ResetRequired),
    ],
)
def test_a_lost_gpu_keeps_its_index_and_fails_every_call(
    nvml: FakeNvmlState, code: str, error: type[Exception]
) -> None:
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    nvml.write([two_gpus()[0], replace(two_gpus()[1], lost=code)])

    assert 2 == pynvml.nvmlDeviceGetCount()
    assert UUID0 == pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
    calls: tuple[Callable[[], object], ...] = (
        lambda: pynvml.nvmlDeviceGetHandleByIndex(1),
        lambda: pynvml.nvmlDeviceGetHandleByUUID(UUID1),
        lambda: pynvml.nvmlDeviceGetUUID(h1),
        lambda: pynvml.nvmlDeviceGetMemoryInfo(h1),
        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h1),
    )
    for call in calls:
        with pytest.raises(error):
            call()
    # the reset is done: the same handle works again
    nvml.write(two_gpus())
    assert UUID1 == pynvml.nvmlDeviceGetUUID(h1)


def test_lost_names_a_gpu_line(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write_text(f"gpu {UUID0} 1GiB\nlost {UUID1}\n")
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert f"no gpu line for lost {UUID1}" in state_error()


def test_handle_follows_its_uuid_when_indexes_shift(nvml: FakeNvmlState) -> None:
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
    nvml.write(two_gpus()[1:])
    assert (UUID1, 0) == (pynvml.nvmlDeviceGetUUID(h1), pynvml.nvmlDeviceGetIndex(h1))
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetIndex(h0)


def test_rewrite_within_one_timestamp_tick_is_seen(nvml: FakeNvmlState) -> None:
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    seen = []
    for n in range(20):
        nvml.write([FakeGpu(UUID0, mib(1000), base_used_bytes=mib(n))])
        seen.append(pynvml.nvmlDeviceGetMemoryInfo(h0).used)
    assert [mib(n) for n in range(20)] == seen


def test_concurrent_calls_during_rewrites(nvml: FakeNvmlState) -> None:
    h0 = pynvml.nvmlDeviceGetHandleByIndex(0)
    valid = {mib(n) for n in range(100)}
    bad: list[object] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                used = pynvml.nvmlDeviceGetMemoryInfo(h0).used
                plist = pynvml.nvmlDeviceGetComputeRunningProcesses(h0)
            except pynvml.NVMLError as e:  # pragma: no cover - reported below
                bad.append(e)
                return
            if used not in valid and used != mib(512 + 10700 + 100):
                bad.append(used)
            if len(plist) > 2:
                bad.append(plist)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(100):
        nvml.write([FakeGpu(UUID0, mib(1000), processes=(FakeProcess(5, mib(n)),)), two_gpus()[1]])
    stop.set()
    for t in threads:
        t.join()
    assert [] == bad


def test_delay(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(two_gpus(), delays={"nvmlDeviceGetCount_v2": 150})
    pynvml.nvmlInit()
    start = time.monotonic()
    assert 2 == pynvml.nvmlDeviceGetCount()
    assert time.monotonic() - start >= 0.15
    pynvml.nvmlShutdown()


# --------------------------------------------------------------------------
# accounting property


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    total=st.integers(min_value=0, max_value=gib(96)),
    base=st.integers(min_value=0, max_value=gib(8)),
    reserved=st.integers(min_value=0, max_value=gib(1)),
    usages=st.lists(st.one_of(st.none(), st.integers(min_value=0, max_value=gib(40))), max_size=12),
)
def test_memory_accounting_property(
    fake_nvml: FakeNvmlState, total: int, base: int, reserved: int, usages: list[int | None]
) -> None:
    plist = tuple(FakeProcess(1000 + i, u) for i, u in enumerate(usages))
    fake_nvml.write([FakeGpu(UUID0, total, "X", base, plist, reserved)])
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        allocated = base + sum(u for u in usages if u is not None)
        m1 = pynvml.nvmlDeviceGetMemoryInfo(h)
        m2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        free = max(0, total - allocated - reserved)
        assert (total, allocated + reserved, free) == (m1.total, m1.used, m1.free)
        assert (total, reserved, allocated, free) == (m2.total, m2.reserved, m2.used, m2.free)
        expected = [(1000 + i, u) for i, u in enumerate(usages)]
        assert expected == procs(pynvml.nvmlDeviceGetComputeRunningProcesses(h))
    finally:
        pynvml.nvmlShutdown()


# --------------------------------------------------------------------------
# the Python writer


def test_render_state_text() -> None:
    text = render_state(
        [FakeGpu(UUID0, mib(16), processes=(FakeProcess(7, None, "mps"),))],
        errors={"nvmlDeviceGetMemoryInfo@0": "GPU_IS_LOST 1"},
        grow={"nvmlDeviceGetComputeRunningProcesses_v3": 2},
    )
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert [
        "driver 550.54.15",
        "cuda 12040",
        f'gpu {UUID0} 16777216 "Tesla T4"',
        "proc 0 7 na mps",
        "error nvmlDeviceGetMemoryInfo@0 GPU_IS_LOST 1",
        "grow nvmlDeviceGetComputeRunningProcesses_v3 2",
    ] == body


@pytest.mark.parametrize(
    "make",
    [
        lambda: FakeProcess(1, 0, "cuda"),
        lambda: FakeGpu("GPU has blanks", 1),
        lambda: FakeGpu(UUID0, -1),
        lambda: FakeGpu(UUID0, 1, lost="GPU IS LOST"),
        lambda: render_state([], errors={"nvmlDeviceGetMemoryInfo": "GPU IS LOST"}),
        lambda: render_state([FakeGpu(UUID0, 1), FakeGpu(UUID0, 2)]),
    ],
)
def test_writer_rejects_bad_input(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


# --------------------------------------------------------------------------
# MIG

MIG0 = "MIG-11111111-0000-0000-0000-000000000000"
MIG1 = "MIG-11111111-0000-0000-0000-000000000001"


def a100_in_mig_mode() -> list[FakeGpu]:
    return [
        FakeGpu(
            UUID0,
            gib(80),
            name="NVIDIA A100-SXM4-80GB",
            mig=(
                FakeMig(MIG0, gib(40), "MIG 3g.40gb", (FakeProcess(10, gib(30)),)),
                FakeMig(
                    MIG1,
                    gib(20),
                    "MIG 2g.20gb",
                    (FakeProcess(11, gib(5)), FakeProcess(10, gib(1))),
                ),
            ),
        )
    ]


def test_a_gpu_in_mig_mode_has_mig_devices_with_their_own_memory_and_processes(
    fake_nvml: FakeNvmlState,
) -> None:
    fake_nvml.write(a100_in_mig_mode())
    pynvml.nvmlInit()
    parent = pynvml.nvmlDeviceGetHandleByIndex(0)

    mode = pynvml.nvmlDeviceGetMigMode(parent)
    count = pynvml.nvmlDeviceGetMaxMigDeviceCount(parent)
    migs = [pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, i) for i in range(2)]
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 2)
    seen = [
        (
            pynvml.nvmlDeviceGetUUID(m),
            pynvml.nvmlDeviceGetName(m),
            pynvml.nvmlDeviceIsMigDeviceHandle(m).value,
            pynvml.nvmlDeviceGetMemoryInfo(m).total,
            pynvml.nvmlDeviceGetMemoryInfo(m).used,
            [
                (p.pid, p.usedGpuMemory, p.gpuInstanceId)
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(m)
            ],
        )
        for m in migs
    ]
    back = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migs[1])
    on_parent = [
        (p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(parent)
    ]
    parent_used = pynvml.nvmlDeviceGetMemoryInfo(parent).used
    pynvml.nvmlShutdown()

    assert ([1, 1], 7) == (mode, count)
    assert [
        (MIG0, "MIG 3g.40gb", 1, gib(40), gib(30), [(10, gib(30), 0)]),
        (MIG1, "MIG 2g.20gb", 1, gib(20), gib(6), [(11, gib(5), 1), (10, gib(1), 1)]),
    ] == seen
    assert ctypes.addressof(parent.contents) == ctypes.addressof(back.contents)
    # On the parent: every instance's processes, usage not available, once per instance.
    assert [(10, None), (11, None), (10, None)] == on_parent
    assert gib(36) == parent_used


def test_a_mig_device_of_a_lost_gpu_is_lost(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(a100_in_mig_mode())
    pynvml.nvmlInit()
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 0)
    fake_nvml.write([replace(a100_in_mig_mode()[0], lost="GPU_IS_LOST")])

    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetMemoryInfo(mig)
    pynvml.nvmlShutdown()


def test_a_mig_device_handle_is_not_a_parent(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(a100_in_mig_mode())
    pynvml.nvmlInit()
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(0), 0)

    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMigMode(mig)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(pynvml.nvmlDeviceGetHandleByIndex(0))
    pynvml.nvmlShutdown()


# --------------------------------------------------------------------------
# subprocesses (LD_LIBRARY_PATH)

SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import json, pynvml
    out = {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        print(json.dumps({"init_error": type(e).__name__}))
        raise SystemExit(0)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    out["uuid"] = pynvml.nvmlDeviceGetUUID(h)
    out["free"] = pynvml.nvmlDeviceGetMemoryInfo(h).free
    try:
        out["procs"] = [[p.pid, p.usedGpuMemory]
                        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
    except pynvml.NVMLLibraryMismatchError:
        out["procs"] = "mismatch"
    out["procs_v2"] = [[p.pid, p.usedGpuMemory]
                       for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h)]
    pynvml.nvmlShutdown()
    print(json.dumps(out))
    """
)


def run_subprocess(lib_dir: Path, state: Path) -> object:
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT],
        env=subprocess_env(lib_dir, state),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)


def test_subprocess_with_ld_library_path(fake_nvml_lib: Path, tmp_path: Path) -> None:
    state = FakeNvmlState(tmp_path / "state")
    assert {"init_error": "NVMLError_DriverNotLoaded"} == run_subprocess(fake_nvml_lib, state.path)
    state.write([FakeGpu(UUID0, mib(1000), processes=(FakeProcess(31, mib(100)),))])
    assert {
        "uuid": UUID0,
        "free": mib(900),
        "procs": [[31, mib(100)]],
        "procs_v2": [[31, mib(100)]],
    } == run_subprocess(fake_nvml_lib, state.path)


def test_subprocess_old_driver_without_v3_symbols(tmp_path: Path) -> None:
    hidden = [
        f"nvmlDevice{kind}RunningProcesses_v3"
        for kind in ("GetCompute", "GetGraphics", "GetMPSCompute")
    ]
    lib_dir = build(tmp_path / "old-driver", hide_symbols=hidden)
    state = FakeNvmlState(tmp_path / "state")
    state.write([FakeGpu(UUID0, mib(1000), processes=(FakeProcess(31, None),))])
    assert {
        "uuid": UUID0,
        "free": mib(1000),
        "procs": "mismatch",
        "procs_v2": [[31, None]],
    } == run_subprocess(lib_dir, state.path)


def test_reap_drops_exited_processes_and_frees_their_memory(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """With "reap", a process that exits releases its VRAM, as on a real driver."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        fake_nvml.write(
            [
                FakeGpu(
                    "GPU-r",
                    mib(16000),
                    processes=(FakeProcess(1, mib(5)), FakeProcess(child.pid, mib(1000))),
                )
            ],
            reap=True,
        )
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        before = [
            (p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ]
        child.kill()
        child.wait()

        after = [
            (p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ]

        assert [(1, mib(5)), (child.pid, mib(1000))] == before
        assert [(1, mib(5))] == after
        assert mib(5) == pynvml.nvmlDeviceGetMemoryInfo(handle).used
    finally:
        child.kill()
        pynvml.nvmlShutdown()


def test_procdir_files_declare_processes(fake_nvml: FakeNvmlState, tmp_path: Path) -> None:
    """A program declares its own VRAM by writing proc lines into the procdir."""
    procdir = tmp_path / "procs"
    procdir.mkdir()
    fake_nvml.write([FakeGpu("GPU-p", mib(16000))], procdir=procdir)
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        empty = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        (procdir / "77").write_text(f"proc 0 77 {mib(300)} compute\nerror * UNKNOWN\n")

        procs = [
            (p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ]

        assert [] == empty
        assert [(77, mib(300))] == procs  # other directives in a procdir file are ignored
        assert mib(300) == pynvml.nvmlDeviceGetMemoryInfo(handle).used
    finally:
        pynvml.nvmlShutdown()
