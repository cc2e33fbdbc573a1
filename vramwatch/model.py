"""Frozen values passed between sampling, policy and acting.

Bytes are ``int``; ``None`` means "unknown" (NVML could not say, a file was
unreadable), which the policy treats as "not proven over budget".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

RAM = "ram"
VRAM = "vram"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a process belongs to, read from ``/proc/PID/cgroup``.

    ``unit`` is the unit systemd itself names for the cgroup (the first unit
    below the slices, or inside ``user@UID.service`` the user unit), ``None``
    for a bare cgroup such as ``/``; ``manager`` is ``"system"``, or
    ``"user@UID"`` for a user unit.
    """

    cgroup: str
    unit: str | None
    manager: str

    @property
    def system_unit(self) -> str | None:
        """The system unit that holds the process: a user unit's is its user manager."""
        return self.unit if self.manager == "system" else f"{self.manager}.service"

    def unit_for(self, manager: str) -> str | None:
        """The unit of ``manager`` ("system" or "user@UID") the process counts against.

        On the system manager every process of a user manager counts against
        ``user@UID.service``; a user manager sees only its own units.
        """
        if manager == "system":
            return self.system_unit
        return self.unit if self.manager == manager else None

    def label(self) -> str:
        """The unit for people, or the cgroup when there is none."""
        return self.unit if self.unit is not None else f"cgroup {self.cgroup}"

    def qualified_label(self) -> str:
        """:meth:`label`, naming the manager of a user unit: ``llm.service (user@1000)``,
        so that a user's unit and the system's unit of the same name stay apart."""
        if self.manager == "system":
            return self.label()
        return f"{self.label()} ({self.manager})"


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    used_bytes: int | None  # None: NVML_VALUE_NOT_AVAILABLE (e.g. under MIG, Windows WDDM)
    kind: str  # "compute", "graphics" or "mps"
    name: str  # /proc/PID/comm, "" when the process is gone
    owner: Owner | None  # None: the PID vanished before /proc/PID/cgroup was read


@dataclass(frozen=True, slots=True)
class GpuSample:
    index: int
    uuid: str
    name: str
    total_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    processes: tuple[GpuProcess, ...] = ()
    error: str | None = None  # a failed or partial read: never act on it
    # GPU_IS_LOST or RESET_REQUIRED: the GPU fell off the bus or needs a reset;
    # restarting tenants cannot help, so nothing is ever enforced on it.
    lost: bool = False
    # A MIG device (a GPU instance): its GPU's UUID and its MIG index there. It
    # is guarded on its own (memory, processes, floor); ``index`` is its GPU's.
    parent_uuid: str | None = None
    mig_index: int | None = None

    @property
    def label(self) -> str:
        """The device for metrics labels and fields: ``"0"``, or ``"0:1"`` for MIG 1 on GPU 0."""
        return str(self.index) if self.mig_index is None else f"{self.index}:{self.mig_index}"

    @property
    def where(self) -> str:
        """The device for people: ``GPU 0``, or ``GPU 0 MIG 1``."""
        mig = "" if self.mig_index is None else f" MIG {self.mig_index}"
        return f"GPU {self.index}{mig}"

    @property
    def ok(self) -> bool:
        return self.error is None and self.free_bytes is not None and self.total_bytes is not None

    @property
    def attributed_bytes(self) -> int:
        return sum(p.used_bytes or 0 for p in self.processes)

    @property
    def unattributed_bytes(self) -> int | None:
        """Used memory no listed process accounts for (e.g. cudaMallocManaged), >= 0."""
        if self.used_bytes is None:
            return None
        return max(0, self.used_bytes - self.attributed_bytes)


@dataclass(frozen=True, slots=True)
class HostSample:
    mem_total_bytes: int | None
    mem_available_bytes: int | None
    swap_total_bytes: int | None = None
    swap_free_bytes: int | None = None
    psi_some_avg10: float | None = None  # /proc/pressure/memory, absent on old kernels
    psi_full_avg10: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.mem_total_bytes is not None
            and self.mem_available_bytes is not None
        )


@dataclass(frozen=True, slots=True)
class UnitUsage:
    unit: str
    vram_bytes: int | None  # summed over all GPUs; None: a GPU could not be read
    vram_by_gpu: Mapping[str, int]  # GPU UUID -> bytes attributed on that GPU
    # Anonymous + shmem memory (never page cache or file-backed mappings): from
    # the unit's memory cgroup, or summed RssAnon + RssShmem of its processes.
    ram_bytes: int | None
    pids: tuple[int, ...]
    # "memory.stat" (cgroup v2), "memory.stat (v1)", "rss-anon+shmem", "inactive",
    # or "" when unknown
    ram_source: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    now_ns: int
    gpus: tuple[GpuSample, ...]
    host: HostSample
    units: Mapping[str, UnitUsage]
    nvml_error: str | None = None  # the whole GPU side is unavailable (no driver, no library)
    self_unit: str | None = None  # vramwatch's own unit: never acted on
    # The biggest RAM holders host-wide (label, bytes), read only while the host
    # floor is breached, so no_candidate can name users that are not tenants.
    ram_top: tuple[tuple[str, int], ...] = ()
    # How long the NVML worker has been stuck in one call (None: it answered in
    # time). The GPUs are then unknown this tick; host RAM is guarded as usual.
    nvml_hung_ns: int | None = None
    # Units running an MPS server: it holds GPU memory for its clients, so
    # restarting it would kill every client; never acted on.
    mps_units: frozenset[str] = frozenset()


class Verb(StrEnum):
    RESTART = "restart"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Action:
    """Restart or stop one unit because of one resource."""

    unit: str
    verb: Verb
    resource: str  # "vram" or "ram"
    resource_key: str  # "gpu:<uuid>" or "ram"
    gpu: int | None
    used_bytes: int
    budget_bytes: int
    free_bytes: int
    floor_bytes: int
    message: str


@dataclass(frozen=True, slots=True)
class Event:
    """One decision for the journal: a stable name, a level, a sentence and numbers."""

    name: str
    level: str  # "debug", "info", "warning", "error"
    message: str
    fields: Mapping[str, Any] = field(default_factory=dict)
