"""Frozen values passed between sampling, policy and acting.

Bytes are ``int``; ``None`` means "unknown" (NVML could not say, a file was
unreadable), which the policy treats as "not proven over budget".
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar, assert_never

_T = TypeVar("_T")


class Budgeted(Protocol):
    """What has a budget per resource: a tenant (config.Tenant)."""

    @property
    def vram_bytes(self) -> int | None: ...

    @property
    def ram_bytes(self) -> int | None: ...


class Resource(StrEnum):
    """What a floor guards and a budget bounds. Its value is the word the journal,
    metrics and traces use ("vram", "ram"); each member says which usage and budget
    fields are its own, so that a new resource cannot silently read as another."""

    VRAM = "vram"
    RAM = "ram"

    def used(self, usage: UnitUsage) -> int | None:
        """The unit's whole use of it, or None when not all of it could be read."""
        return self.pick(vram=usage.vram_bytes, ram=usage.ram_bytes)

    def lower_bound(self, usage: UnitUsage) -> int | None:
        """What is known of a use that is not fully known: VRAM on the GPUs that
        could be read (it can prove a unit over budget, never within); of any other
        resource, nothing (unknown is never a guess)."""
        return sum(usage.vram_by_gpu.values()) if self is Resource.VRAM else None

    def budget(self, tenant: Budgeted) -> int | None:
        """The tenant's budget for it, or None when it has none."""
        return self.pick(vram=tenant.vram_bytes, ram=tenant.ram_bytes)

    def pick(self, *, vram: _T, ram: _T) -> _T:
        """Its own of one value per resource. A new resource is a new argument, so
        mypy names every place that has not said what it is for that resource."""
        match self:
            case Resource.VRAM:
                return vram
            case Resource.RAM:
                return ram
        assert_never(self)


RAM = Resource.RAM
VRAM = Resource.VRAM


class TenantKind(StrEnum):
    """What a tenant is, and so which actuator acts on it (SPEC "Tenants")."""

    UNIT = "unit"  # a systemd unit, acted on over D-Bus
    CONTAINER = "container"  # one Docker/Podman container, by name, over the Engine API
    COMPOSE = "compose"  # every container of a compose service (PROJECT/SERVICE)


# A container tenant's key is "container:NAME", a compose tenant's
# "compose:PROJECT/SERVICE"; a unit tenant's key is its unit name. The config
# refuses unit names with these prefixes, so a key alone says its kind.
KEY_PREFIXES = {TenantKind.CONTAINER: "container:", TenantKind.COMPOSE: "compose:"}


@dataclass(frozen=True, slots=True)
class TenantId:
    """A tenant as a value: its kind, its name (unit name, container name or
    PROJECT/SERVICE) and, for units, the manager that runs it. ``key`` is the
    string the policy, the state file, events and metrics name it by."""

    kind: TenantKind
    name: str
    manager: str = "system"

    @property
    def key(self) -> str:
        return KEY_PREFIXES.get(self.kind, "") + self.name

    @classmethod
    def from_key(cls, key: str, manager: str = "system") -> TenantId:
        for kind, prefix in KEY_PREFIXES.items():
            if key.startswith(prefix):
                return cls(kind, key[len(prefix) :], "engine")
        return cls(TenantKind.UNIT, key, manager)

    @property
    def is_container(self) -> bool:
        return self.kind is not TenantKind.UNIT


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A running container as the Engine API names it."""

    id: str  # 64 hex digits
    name: str  # without the leading "/"
    project: str | None = None  # com.docker.compose.project
    service: str | None = None  # com.docker.compose.service

    @property
    def compose(self) -> str | None:
        """``PROJECT/SERVICE`` when compose started it."""
        if self.project is None or self.service is None:
            return None
        return f"{self.project}/{self.service}"

    def tenant_keys(self) -> tuple[str, ...]:
        """The keys of the tenants it can belong to: by name first, then by service."""
        keys = [TenantId(TenantKind.CONTAINER, self.name).key]
        if self.compose is not None:
            keys.append(TenantId(TenantKind.COMPOSE, self.compose).key)
        return tuple(keys)

    def tenant(self, keys: Collection[str]) -> str | None:
        """The one configured tenant (of the container and compose ``keys``) it counts
        against: the tenant that names it, else its compose service's. So a compose
        tenant's members are the containers of its service that no other tenant
        names. Sampling, acting and ``status`` all ask this, and only this."""
        for key in self.tenant_keys():
            if key in keys:
                return key
        return None

    def label(self) -> str:
        """For people: ``container immich_ml (compose immich/ml)``."""
        text = f"container {self.name}"
        return text + (f" (compose {self.compose})" if self.compose else "")


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
    # A container's processes. From /proc: the id a component of the cgroup path
    # looks like (docker-<id>.scope, /docker/<id>, libpod-<id>.scope), a candidate
    # only, as any user can name a scope so. In a Snapshot: set only where the
    # Engine API confirms that the process is in that container's own cgroup (or
    # below it), with what the API calls the container; None everywhere else.
    container_id: str | None = None
    container: ContainerInfo | None = None

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
        """The unit (or container) for people, or the cgroup when there is none."""
        if self.container is not None:
            return self.container.label()
        if self.container_id is not None:
            return f"container {self.container_id[:12]}"
        return self.unit if self.unit is not None else f"cgroup {self.cgroup}"

    def qualified_label(self) -> str:
        """:meth:`label`, naming the manager of a user unit: ``llm.service (user@1000)``,
        so that a user's unit and the system's unit of the same name stay apart."""
        if self.manager == "system" or self.container_id is not None:
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
    # Its processes, for `status` and the trace: read only when the sampler is asked
    # for them (Sampler.pids) or sums RAM over them; () otherwise (no decision uses them).
    pids: tuple[int, ...]
    # "memory.stat" (cgroup v2), "memory.stat (v1)", "rss-anon+shmem", "inactive",
    # or "" when unknown
    ram_source: str = ""
    # A container or compose tenant: its running containers (the Engine API's view).
    containers: tuple[ContainerInfo, ...] = ()


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
    # The Engine API could not be asked (only read when a tenant is a container):
    # container tenants' usage is then unknown, units are unaffected.
    engine_error: str | None = None


class Verb(StrEnum):
    RESTART = "restart"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Action:
    """Restart or stop one unit because of one resource."""

    unit: str
    verb: Verb
    resource: Resource
    resource_key: str  # "gpu:<uuid>" or "ram"
    gpu: int | None
    used_bytes: int
    budget_bytes: int
    free_bytes: int
    floor_bytes: int
    message: str
    # The journal fields of the decision (over_bytes, breached_ns, holds, the GPU's
    # ids...): the entry of the action taken carries what its dry-run twin would.
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Event:
    """One decision for the journal: a stable name, a level, a sentence and numbers."""

    name: str
    level: str  # "debug", "info", "warning", "error"
    message: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What became of one action (any actuator's answer).

    ``accepted`` says whether systemd queued a job (``RestartUnit`` returned
    a job path). An accepted job runs on in systemd whatever happens to
    vramwatch's wait for it: with ``result`` "timeout" (still running after
    the job timeout), "disconnected" (the bus dropped while waiting),
    "interrupted" (vramwatch is stopping) or "unknown" (a bug while waiting),
    the action is still in flight. ``accepted=False`` means systemd did not
    confirm a job: refused ("org.freedesktop.systemd1.NoSuchUnit", ...), or
    the bus dropped before the reply ("disconnected": it may or may not have
    been queued). ``ok`` implies ``accepted``.
    """

    ok: bool
    result: str  # the job result ("done", "failed", "timeout", ...) or an error name
    detail: str  # one sentence for the journal
    duration_s: float = 0.0
    # systemd accepted the job (returned its path): it runs, or ran, even if waiting
    # for its result timed out or the bus dropped.
    accepted: bool = False
    # The call reached the manager (False: "connect", the bus could not be reached, so
    # nothing was sent): an attempt that never reached it is not a restart.
    reached: bool = True

    def __post_init__(self) -> None:
        if self.ok and not self.accepted:
            # A job that finished "done" was accepted; spares callers saying so twice.
            object.__setattr__(self, "accepted", True)


class Actuator(Protocol):
    """Acts on one tenant, by its key: the systemd client, the container actuator and
    the router between them (``vramwatch.actuators``) all take this call."""

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome: ...
