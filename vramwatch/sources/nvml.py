"""NVML through NVIDIA's own binding: the only module that imports ``pynvml``.

Every call goes through :meth:`NvmlSource._call`, so error translation lives in
one place. "Unknown" is a value: a driver that cannot say a process's memory
gives ``None``; a GPU that fails gives a :class:`GpuSample` with ``error`` set;
no driver at all gives ``nvml_error`` and the daemon guards host RAM only.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynvml

from vramwatch.model import GpuProcess, GpuSample
from vramwatch.units import format_size

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

# Devices are enumerated again at least this often, so a hot-added GPU or one
# that came back after a reset is guarded without restarting vramwatch.
REENUMERATE_NS = 60 * 10**9
# Errors that mean the GPU itself is gone until a reset or reboot (it fell off
# the bus, Xid 79; or it needs a reset): the sample is marked lost.
LOST = {"GPU_IS_LOST", "RESET_REQUIRED"}
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


# usedGpuMemory when the driver cannot say (NVML_VALUE_NOT_AVAILABLE as unsigned long long).
NOT_AVAILABLE = 2**64 - 1


class RawProcessLists:
    """NVML's process lists as ``(pid, usedGpuMemory or None)`` pairs, through pynvml's
    own function pointers and its own ``c_nvmlProcessInfo_v2_t`` array, read in one
    ``struct`` unpack: pynvml's ``nvmlDevice*RunningProcesses_v2/_v3`` build a friendly
    object per process field by field (``nvmlStructToFriendlyObject``), which cost about
    1 ms a tick at 512 processes (docs/benchmarks.md).

    The calls are the binding's own: a size query, then a fill of 2n+5 entries; any
    other answer raises the binding's ``NVMLError`` (``INSUFFICIENT_SIZE`` when more
    processes appeared than that, ``FUNCTION_NOT_FOUND`` for a missing symbol). It
    relies on two private names of pynvml: :meth:`create` returns None when they
    are gone or differ, and the source then calls the public functions.
    """

    def __init__(self, lookup: Callable[[str], Any], info: type[ctypes.Structure]) -> None:
        self._lookup = lookup
        self._info = info
        fields = {field[0]: field[1] for field in info._fields_}
        pid_at = info.pid.offset
        used_at = info.usedGpuMemory.offset
        size = ctypes.sizeof(info)
        if (
            fields.get("pid") is not ctypes.c_uint
            or fields.get("usedGpuMemory") is not ctypes.c_ulonglong
            or not pid_at + 4 <= used_at <= size - 8
        ):
            raise TypeError(f"unexpected layout of {info.__name__}: {info._fields_}")
        # Native byte order, no implicit padding: the offsets are ctypes' own.
        self._layout = struct.Struct(f"={pid_at}xI{used_at - pid_at - 4}xQ{size - used_at - 8}x")

    @classmethod
    def create(cls) -> RawProcessLists | None:
        """The reader over this pynvml, or None when its internals are not as expected."""
        lookup = getattr(pynvml, "_nvmlGetFunctionPointer", None)
        info = getattr(pynvml, "c_nvmlProcessInfo_v2_t", None)
        if not callable(lookup) or not isinstance(info, type):
            return None
        try:
            return cls(lookup, info)
        except (TypeError, AttributeError):
            return None

    def read(self, name: str, handle: Any) -> list[tuple[int, int | None]]:
        """The list ``name`` (a ``_v2`` or ``_v3`` entry point) of one device."""
        fn = self._lookup(name)
        count = ctypes.c_uint(0)
        ret = fn(handle, ctypes.byref(count), None)
        if ret == pynvml.NVML_SUCCESS:
            return []  # no process
        if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
            raise pynvml.NVMLError(ret)
        count.value = count.value * 2 + 5  # room for processes that start meanwhile
        infos = (self._info * count.value)()
        ret = fn(handle, ctypes.byref(count), infos)
        if ret != pynvml.NVML_SUCCESS:
            raise pynvml.NVMLError(ret)
        data = ctypes.string_at(infos, self._layout.size * count.value)
        return [
            (pid, None if used == NOT_AVAILABLE else used)
            for pid, used in self._layout.iter_unpack(data)
        ]


def _public_list(name: str, handle: Any) -> list[tuple[int, int | None]]:
    """The list ``name`` through pynvml's public function (its friendly objects)."""
    return [
        (int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
        for p in getattr(pynvml, name)(handle)
    ]


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
    uuid: str  # "index:N" when not even the UUID could be read
    name: str
    handle: Any  # None: this GPU could not be enumerated (``error`` says why)
    error: str | None = None
    lost: bool = False
    parent_uuid: str | None = None  # a MIG device: its GPU
    mig_index: int | None = None

    def sample(self, *figures: Any, error: str | None = None, lost: bool = False) -> GpuSample:
        """A sample of this device: (total, used, free, processes), or an error."""
        total, used, free, processes = figures or (None, None, None, ())
        return GpuSample(
            self.index,
            self.uuid,
            self.name,
            total,
            used,
            free,
            processes,
            error,
            lost=lost,
            parent_uuid=self.parent_uuid,
            mig_index=self.mig_index,
        )


def unreadable_uuid(index: int) -> str:
    """The key of a GPU whose UUID cannot be read and was never known."""
    return f"index:{index}"


class NvmlSource:
    """Samples every GPU's memory and processes; survives any NVML failure.

    Each GPU is enumerated and sampled on its own and known by its UUID: a GPU
    that fails (lost, needs a reset, times out) is one error sample, every
    other GPU reads as usual. Devices are enumerated again after any error,
    when the device count changes (hot-add, hot-unplug) and every
    ``REENUMERATE_NS``, so a GPU that comes back is guarded again.
    """

    def __init__(self) -> None:
        self._initialised = False
        self._devices: list[_Device] | None = None
        self._count = -1
        self._next_enum_ns = 0
        self._stale = False
        # Index -> UUID and name from the last enumeration that read them: a GPU
        # that fails enumeration keeps its identity (and a GPU that comes back,
        # its sampling_error/recovered pair) across re-enumerations and re-inits.
        self._known: dict[int, tuple[str, str]] = {}
        self._init_error: str | None = None
        self._next_init_ns = 0
        self._backoff_ns = INIT_RETRY_FIRST_NS
        self._memory_v2 = True
        # GpuProcess values of the last sample and of the one being taken, by
        # (pid, used, kind): equal values are handed out again.
        self._made: dict[tuple[int, int | None, str], GpuProcess] = {}
        self._making: dict[tuple[int, int | None, str], GpuProcess] = {}
        raw = RawProcessLists.create()
        self._read_list = raw.read if raw is not None else _public_list

    def sample(self, now_ns: int) -> tuple[tuple[GpuSample, ...], str | None]:
        """Every GPU as a sample (``error`` set on failure), or the reason NVML is unusable."""
        if not self._ensure_init(now_ns):
            return (), self._init_error
        try:
            count = int(_call(pynvml.nvmlDeviceGetCount))
        except NvmlFailure as failure:
            return self._count_failed(now_ns, failure)
        if (
            self._devices is None
            or self._stale
            or count != self._count
            or now_ns >= self._next_enum_ns
        ):
            self._enumerate(count, now_ns)
        assert self._devices is not None
        self._making = {}
        samples = tuple(self._sample_device(dev) for dev in self._devices)
        self._made = self._making  # keep only this sample's values
        errors = {s.error.split(":")[0] for s in samples if s.error}
        if errors & _REINIT:
            self._reset(now_ns)
        elif errors:
            self._stale = True  # handles may be stale, a lost GPU may come back: look again
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

    def _count_failed(
        self, now_ns: int, failure: NvmlFailure
    ) -> tuple[tuple[GpuSample, ...], str | None]:
        """No device count: every GPU known so far is unknown this tick, each on its own."""
        if failure.code in _REINIT:
            self._reset(now_ns)
        else:
            self._stale = True
        if not self._known:
            return (), f"cannot enumerate GPUs: {failure.detail}"
        error = f"{failure.detail} (counting GPUs)"
        return tuple(
            GpuSample(index, uuid, name, None, None, None, (), error)
            for index, (uuid, name) in sorted(self._known.items())
        ), None

    def _enumerate(self, count: int, now_ns: int) -> None:
        gpus = [self._enumerate_one(index) for index in range(count)]
        readable = {dev.uuid for dev, _ in gpus if dev.handle is not None}
        for dev, _ in gpus:
            if dev.handle is None and dev.uuid in readable:
                dev.uuid = unreadable_uuid(dev.index)  # its old UUID moved to another index
        self._known = {dev.index: (dev.uuid, dev.name) for dev, _ in gpus}
        # A GPU in MIG mode is guarded as its MIG devices: each has its own memory,
        # processes and floor; the parent's per-process usage is not available.
        devices = [d for dev, migs in gpus for d in (migs if migs is not None else [dev])]
        self._devices = devices
        self._count = count
        self._stale = False
        self._next_enum_ns = now_ns + REENUMERATE_NS

    def _enumerate_one(self, index: int) -> tuple[_Device, list[_Device] | None]:
        """GPU ``index`` and, when it is in MIG mode, its MIG devices (else None)."""
        uuid, name = self._known.get(index, (unreadable_uuid(index), ""))
        try:
            handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
            uuid = _text(_call(pynvml.nvmlDeviceGetUUID, handle))
            name = _text(_call(pynvml.nvmlDeviceGetName, handle))
            migs = self._mig_devices(index, uuid, handle)
        except NvmlFailure as failure:
            error = f"{failure.detail} (enumerating GPU {index})"
            return _Device(index, uuid, name, None, error, failure.code in LOST), None
        return _Device(index, uuid, name, handle), migs

    def _mig_devices(self, index: int, parent_uuid: str, handle: Any) -> list[_Device] | None:
        """The MIG devices of a GPU in MIG mode, or None for a GPU not in MIG mode."""
        try:
            current, _pending = _call(pynvml.nvmlDeviceGetMigMode, handle)
        except NvmlFailure as failure:
            if failure.code in {"NOT_SUPPORTED", "FUNCTION_NOT_FOUND"}:
                return None  # no MIG on this GPU (or this driver)
            raise
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return None
        devices = []
        for mig_index in range(int(_call(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle))):
            try:
                mig = _call(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, mig_index)
            except NvmlFailure as failure:
                if failure.code == "NOT_FOUND":
                    continue  # no instance in this slot
                raise
            uuid = _text(_call(pynvml.nvmlDeviceGetUUID, mig))
            name = _text(_call(pynvml.nvmlDeviceGetName, mig))
            devices.append(_Device(index, uuid, name, mig, None, False, parent_uuid, mig_index))
        return devices

    def _sample_device(self, dev: _Device) -> GpuSample:
        if dev.handle is None:
            return dev.sample(error=dev.error, lost=dev.lost)
        try:
            total, used, free = self._memory(dev.handle)
            processes = self._processes(dev.handle)
        except NvmlFailure as failure:
            return dev.sample(error=failure.detail, lost=failure.code in LOST)
        too_big = [p for p in processes if p.used_bytes is not None and p.used_bytes > total]
        if too_big:
            # Garbage (a binding/driver mismatch): never attribute any of this list.
            p = too_big[0]
            return dev.sample(
                error=f"BAD_SAMPLE: PID {p.pid} reportedly holds {format_size(p.used_bytes)} "
                f"on a {format_size(total)} GPU (NVML library and driver mismatched?)"
            )
        return dev.sample(total, used, free, processes)

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
            for pid, used in self._process_list(handle, names, optional=kind != "compute"):
                if pid in seen:
                    # A process can be both compute and graphics: count it once, keep
                    # the figure we know.
                    earlier = seen[pid]
                    if earlier.used_bytes is None and used is not None:
                        seen[pid] = self._process(pid, used, earlier.kind)
                    continue
                seen[pid] = self._process(pid, used, kind)
        return tuple(seen.values())

    def _process(self, pid: int, used: int | None, kind: str) -> GpuProcess:
        """``GpuProcess(pid, used, kind, "", None)``: the value of the last sample when
        it is equal (GpuProcess is frozen), as most processes' figures do not change."""
        key = (pid, used, kind)
        made = self._made.get(key)
        if made is None:
            made = GpuProcess(pid, used, kind, "", None)
        self._making[key] = made
        return made

    def _process_list(
        self, handle: Any, names: tuple[str, ...], optional: bool
    ) -> list[tuple[int, int | None]]:
        """(pid, used bytes or None) of one list, from the newest entry point the driver has."""
        i = 0
        races = 0
        while i < len(names):
            try:
                return _call(self._read_list, names[i], handle)  # type: ignore[no-any-return]
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
