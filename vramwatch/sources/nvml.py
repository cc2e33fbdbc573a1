"""NVML through NVIDIA's own binding: the only module that imports ``pynvml``.

Every call goes through :meth:`NvmlSource._call`, so error translation lives in
one place. "Unknown" is a value: a driver that cannot say a process's memory
gives ``None``; a GPU that fails gives a :class:`GpuSample` with ``error`` set;
no driver at all gives ``nvml_error`` and the daemon guards host RAM only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynvml

from vramwatch.model import GpuProcess, GpuSample

# Retry a failed nvmlInit (no driver yet, driver being upgraded) with backoff,
# so a driver that appears later is picked up without restarting vramwatch.
INIT_RETRY_FIRST_NS = 2 * 10**9
INIT_RETRY_MAX_NS = 60 * 10**9

# Process-list entry points, newest first: drivers older than the binding lack
# the _v3 symbols (the binding then raises FunctionNotFound / LibraryMismatch).
_PROCESS_LISTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "compute",
        ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2"),
    ),
    (
        "graphics",
        ("nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v2"),
    ),
    (
        "mps",
        (
            "nvmlDeviceGetMPSComputeRunningProcesses_v3",
            "nvmlDeviceGetMPSComputeRunningProcesses_v2",
        ),
    ),
)

# The binding sizes its buffer at 2n+5 once; when more processes than that
# appear between its two calls it raises INSUFFICIENT_SIZE: ask again.
LIST_RACE_RETRIES = 3

# Errors after which a handle is not trusted any more: re-enumerate devices.
_REACQUIRE = {"GPU_IS_LOST", "UNINITIALIZED", "INVALID_ARGUMENT", "NOT_FOUND", "RESET_REQUIRED"}
# Errors that mean the driver as a whole is unusable: shut down and re-init.
_REINIT = {"DRIVER_NOT_LOADED", "LIB_RM_VERSION_MISMATCH", "UNINITIALIZED"}


class NvmlFailure(Exception):
    """An NVML call failed; ``code`` is the NVML error name without ``NVML_ERROR_``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


_ERROR_NAMES: dict[int, str] = {
    value: name.removeprefix("NVML_ERROR_")
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the binding; turn every failure into :class:`NvmlFailure`."""
    try:
        return fn(*args, **kwargs)
    except pynvml.NVMLError as exc:
        code = _ERROR_NAMES.get(exc.value, str(exc.value))
        raise NvmlFailure(code, f"{code}: {exc}") from None
    except pynvml.NVMLLibraryMismatchError as exc:
        raise NvmlFailure("FUNCTION_NOT_FOUND", str(exc)) from None


def describe_init_failure(failure: NvmlFailure) -> str:
    """Operator wording for the common reasons NVML is missing."""
    if failure.code == "LIBRARY_NOT_FOUND":
        return "cannot load libnvidia-ml.so.1: no NVIDIA driver; guarding host RAM only"
    if failure.code == "DRIVER_NOT_LOADED":
        return "NVIDIA driver not loaded (nvidia.ko); guarding host RAM only"
    if failure.code == "LIB_RM_VERSION_MISMATCH":
        return (
            "NVML library and kernel driver versions differ (driver upgraded without a "
            "reboot?); guarding host RAM only"
        )
    if failure.code == "NO_PERMISSION":
        return "no permission to open /dev/nvidia*; guarding host RAM only"
    return f"NVML init failed ({failure.detail}); guarding host RAM only"


@dataclass(slots=True)
class _Device:
    index: int
    uuid: str
    name: str
    handle: Any


class NvmlSource:
    """Samples every GPU's memory and processes; survives any NVML failure."""

    def __init__(self) -> None:
        self._initialised = False
        self._devices: list[_Device] | None = None
        self._init_error: str | None = None
        self._next_init_ns = 0
        self._backoff_ns = INIT_RETRY_FIRST_NS
        self._memory_v2 = True

    def sample(self, now_ns: int) -> tuple[tuple[GpuSample, ...], str | None]:
        """Every GPU as a sample (``error`` set on failure), or the reason NVML is unusable."""
        if not self._ensure_init(now_ns):
            return (), self._init_error
        devices = self._ensure_devices()
        if devices is None:
            return (), self._init_error
        samples = tuple(self._sample_device(dev) for dev in devices)
        errors = {s.error.split(":")[0] for s in samples if s.error}
        if errors & _REINIT:
            self._reset(now_ns)
        elif errors & _REACQUIRE:
            self._devices = None  # re-enumerate next tick: index order may change
        return samples, None

    def close(self) -> None:
        if self._initialised:
            try:
                _call(pynvml.nvmlShutdown)
            except NvmlFailure:
                pass
            self._initialised = False
            self._devices = None

    def _ensure_init(self, now_ns: int) -> bool:
        if self._initialised:
            return True
        if now_ns < self._next_init_ns:
            return False
        try:
            _call(pynvml.nvmlInit)
        except NvmlFailure as failure:
            self._init_error = describe_init_failure(failure)
            self._next_init_ns = now_ns + self._backoff_ns
            self._backoff_ns = min(self._backoff_ns * 2, INIT_RETRY_MAX_NS)
            return False
        self._initialised = True
        self._init_error = None
        self._backoff_ns = INIT_RETRY_FIRST_NS
        return True

    def _reset(self, now_ns: int) -> None:
        self.close()
        self._next_init_ns = now_ns  # try again at once on the next tick

    def _ensure_devices(self) -> list[_Device] | None:
        if self._devices is not None:
            return self._devices
        try:
            count = _call(pynvml.nvmlDeviceGetCount)
            devices = []
            for index in range(count):
                handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
                uuid = _call(pynvml.nvmlDeviceGetUUID, handle)
                name = _call(pynvml.nvmlDeviceGetName, handle)
                devices.append(_Device(index, _text(uuid), _text(name), handle))
        except NvmlFailure as failure:
            self._init_error = f"cannot enumerate GPUs: {failure.detail}"
            if failure.code in _REINIT:
                self.close()
            return None
        self._devices = devices
        return devices

    def _sample_device(self, dev: _Device) -> GpuSample:
        try:
            total, used, free = self._memory(dev.handle)
            processes = self._processes(dev.handle)
        except NvmlFailure as failure:
            return GpuSample(dev.index, dev.uuid, dev.name, None, None, None, (), failure.detail)
        return GpuSample(dev.index, dev.uuid, dev.name, total, used, free, processes)

    def _memory(self, handle: Any) -> tuple[int, int, int]:
        if self._memory_v2:
            try:
                info = _call(pynvml.nvmlDeviceGetMemoryInfo, handle, version=pynvml.nvmlMemory_v2)
                return int(info.total), int(info.used), int(info.free)
            except NvmlFailure as failure:
                if failure.code not in {"FUNCTION_NOT_FOUND", "ARGUMENT_VERSION_MISMATCH"}:
                    raise
                self._memory_v2 = False  # an old driver: memory info v1 from now on
        info = _call(pynvml.nvmlDeviceGetMemoryInfo, handle)
        return int(info.total), int(info.used), int(info.free)

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        seen: dict[int, GpuProcess] = {}
        for kind, names in _PROCESS_LISTS:
            for proc in self._process_list(handle, names, optional=kind != "compute"):
                pid = int(proc.pid)
                used = None if proc.usedGpuMemory is None else int(proc.usedGpuMemory)
                if pid in seen:
                    # A process can be both compute and graphics: count it once, keep
                    # the figure we know.
                    earlier = seen[pid]
                    if earlier.used_bytes is None and used is not None:
                        seen[pid] = GpuProcess(pid, used, earlier.kind, "", None)
                    continue
                seen[pid] = GpuProcess(pid, used, kind, "", None)
        return tuple(seen.values())

    def _process_list(self, handle: Any, names: tuple[str, ...], optional: bool) -> list[Any]:
        i = 0
        races = 0
        while i < len(names):
            try:
                return list(_call(getattr(pynvml, names[i]), handle))
            except NvmlFailure as failure:
                if failure.code == "INSUFFICIENT_SIZE" and races < LIST_RACE_RETRIES:
                    races += 1  # processes appeared between the size query and the fill
                    continue
                if failure.code == "FUNCTION_NOT_FOUND" and i + 1 < len(names):
                    i += 1  # an older driver: try the previous struct version
                    continue
                if failure.code == "NOT_SUPPORTED" and optional:
                    return []  # e.g. MPS lists on GPUs without MPS; compute must be known
                raise
        return []


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
