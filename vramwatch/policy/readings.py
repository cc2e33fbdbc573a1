"""What the policy reads: each floor (:class:`Reading`: free, the effective
:class:`Floor` with the budgets reserved on it, since when it is under it) and each
tenant's usage as its budget counts it. Pure, like ``decide``: metrics, status and
replay call :func:`readings` instead of working a floor out again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vramwatch.config import Config, FloorConfig, Tenant
from vramwatch.model import (
    RAM,
    VRAM,
    Action,
    GpuSample,
    Resource,
    Snapshot,
    UnitUsage,
)
from vramwatch.units import format_duration, format_size

RAM_KEY = "ram"


def gpu_key(uuid: str) -> str:
    return f"gpu:{uuid}"


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reserving tenant on one GPU (SPEC "Budgets that are guarantees")."""

    unit: str
    budget_bytes: int
    used_bytes: int  # its VRAM on that GPU; a lower bound when not ``known``
    known: bool = True  # False: part of its use could not be read (N/A, a GPU failed)

    @property
    def reserved_bytes(self) -> int:
        """Added to the floor: its unused budget, or 0 while its use is unknown, so
        that a floor is never raised on a guess (the floor is then a lower bound)."""
        return max(0, self.budget_bytes - self.used_bytes) if self.known else 0

    @property
    def unproven_bytes(self) -> int:
        """What its reserve could be while its use is unknown: at most its budget less
        the part of its use that is known."""
        return 0 if self.known else max(0, self.budget_bytes - self.used_bytes)


def _reserved_sum(reserved: tuple[Reservation, ...]) -> int:
    return sum(r.reserved_bytes for r in reserved)


@dataclass(frozen=True, slots=True)
class Floor:
    """A floor's effective size: the configured floor plus the unused budgets reserved
    on it (a GPU's). A lower bound while a reserving tenant's use is unknown: that
    reserve is left out, and is its ``unproven`` part."""

    floor_bytes: int
    reserved: tuple[Reservation, ...] = ()  # the reserving tenants on that GPU

    @property
    def reserved_bytes(self) -> int:
        return _reserved_sum(self.reserved)

    @property
    def reserved_for(self) -> list[str]:
        return [r.unit for r in self.reserved if r.reserved_bytes]

    @property
    def unproven_bytes(self) -> int:
        """Reserves left out of the floor because their tenants' use is unknown."""
        return sum(r.unproven_bytes for r in self.reserved)

    @property
    def unproven_for(self) -> list[str]:
        return [r.unit for r in self.reserved if r.unproven_bytes]

    def text(self) -> str:
        """The floor, and what it is made of when budgets are reserved on it."""
        text = f"floor {format_size(self.floor_bytes)}"
        if not self.reserved_bytes:
            return text
        base = self.floor_bytes - self.reserved_bytes
        parts = ", ".join(
            f"{r.unit}, " + ("idle" if r.used_bytes == 0 else f"uses {format_size(r.used_bytes)}")
            for r in self.reserved
            if r.reserved_bytes
        )
        return (
            f"{text} ({format_size(base)} + {format_size(self.reserved_bytes)} reserved for "
            f"{parts})"
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """One floor as the policy read it this tick: a GPU or host RAM, its free memory
    and its effective floor; ``breached_since_ns`` when free has been under the floor
    (in :attr:`Decision.readings`; None from :func:`readings`, which keeps no history)."""

    key: str
    resource: Resource
    gpu: GpuSample | None
    free_bytes: int
    floor: Floor
    settings: FloorConfig
    breached_since_ns: int | None = None

    @property
    def floor_bytes(self) -> int:
        return self.floor.floor_bytes

    @property
    def reserved(self) -> tuple[Reservation, ...]:
        return self.floor.reserved

    @property
    def reserved_bytes(self) -> int:
        return self.floor.reserved_bytes

    @property
    def unproven_bytes(self) -> int:
        return self.floor.unproven_bytes

    @property
    def below(self) -> bool:
        """Free is under the floor now (a breach once it lasts for grace)."""
        return self.free_bytes < self.floor_bytes

    def floor_text(self) -> str:
        return self.floor.text()

    def where(self) -> str:
        return self.gpu.where if self.gpu is not None else "host MemAvailable"

    def free_text(self) -> str:
        # "free" for a GPU; MemAvailable is not MemFree, so no "free" for the host.
        return f"{self.gpu.where} free" if self.gpu is not None else "host MemAvailable"

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "resource": self.resource,
            "free_bytes": self.free_bytes,
            "floor_bytes": self.floor_bytes,
        }
        if self.gpu is not None:
            fields.update(gpu_fields(self.gpu))
        if self.reserved_bytes:
            fields["reserved_bytes"] = self.reserved_bytes
            fields["reserved_for"] = self.floor.reserved_for
        if self.unproven_bytes:
            fields["unproven_bytes"] = self.unproven_bytes
            fields["unproven_for"] = self.floor.unproven_for
        return fields

    def breach_text(self, since_ns: int, now_ns: int) -> str:
        return (
            f"{self.free_text()} {format_size(self.free_bytes)} < {self.floor_text()} "
            f"for {format_duration(now_ns - since_ns)}"
        )


def use_text(used: int | None, complete: bool, what: str, budget: int) -> str:
    if used is None:
        return f"its {what} use is unknown"
    return f"uses {amount_text(used, complete)} {what}, budget {format_size(budget)}"


def where_key(snapshot: Snapshot, action: Action) -> str:
    if action.resource_key == RAM_KEY:
        return "host memory"
    return f"GPU {action.gpu}" if action.gpu is not None else action.resource_key


def tenant_used(
    config: Config | Tenant | None, snapshot: Snapshot, unit: str, resource: Resource
) -> tuple[int | None, bool]:
    """A tenant's usage as its budget counts it: a tenant pinned to one GPU (``gpu``)
    has its VRAM budget on that GPU alone. Pass the Tenant when it is at hand: finding
    it in the Config is a scan, and this runs per tenant per resource per tick."""
    usage = snapshot.units.get(unit)
    tenant = config.tenant(unit) if isinstance(config, Config) else config
    if resource != VRAM or tenant is None or tenant.gpu is None or usage is None:
        return _used(usage, resource)
    # On a GPU in MIG mode, its index or GPU- UUID is every MIG device of it: summed.
    devices = [gpu for gpu in snapshot.gpus if tenant.pinned_to(gpu)]
    if not devices:
        return 0, False  # the GPU it is pinned to is not there
    used = sum(usage.vram_by_gpu.get(gpu.uuid, 0) for gpu in devices)
    return used, usage.vram_bytes is not None and all(gpu.ok for gpu in devices)


def counted_usage(tenant: Tenant, snapshot: Snapshot, resource: Resource) -> int | None:
    """A tenant's usage as its budget counts it (its GPU alone when pinned: on a GPU in
    MIG mode, summed over its MIG devices), or None when it is not fully known. For
    status, so that it shows what the policy compares with the budget."""
    used, complete = tenant_used(tenant, snapshot, tenant.unit, resource)
    return used if complete else None


def _used(usage: UnitUsage | None, resource: Resource) -> tuple[int | None, bool]:
    """A unit's usage of a resource, and whether it is complete.

    Incomplete VRAM (a GPU could not be read, or the driver could not say a
    process's memory) is the sum of what is known: a lower bound, which can
    prove a unit over its budget but never within it.
    """
    if usage is None:
        return None, False
    used = resource.used(usage)
    if used is not None:
        return used, True
    return resource.lower_bound(usage), False


def amount_text(used: int, complete: bool) -> str:
    return ("" if complete else "at least ") + format_size(used)


def gpu_fields(gpu: GpuSample) -> dict[str, Any]:
    """Which device, for events: its index and UUID; a MIG device adds its MIG index
    and its GPU's UUID."""
    fields: dict[str, Any] = {"gpu": gpu.index, "gpu_uuid": gpu.uuid}
    if gpu.mig_index is not None:
        fields["mig"] = gpu.mig_index
        fields["parent_uuid"] = gpu.parent_uuid
    return fields


def reservations(config: Config, snapshot: Snapshot, gpu: GpuSample) -> tuple[Reservation, ...]:
    """The reserving tenants on a GPU and what each keeps free there.

    A tenant reserves on the device it is pinned to, or on the only device there is;
    pinned to a whole GPU in MIG mode, on none (``config.mig_reserve_problems``). A
    tenant whose use there is not fully known reserves nothing: unknown is never 0 B
    used, and its budget is not put on the floor on a guess.
    """
    found = []
    for tenant in config.tenants:
        if tenant.vram_bytes is None or not tenant.reserves_on(gpu, len(snapshot.gpus)):
            continue
        usage = snapshot.units.get(tenant.unit)
        used = usage.vram_by_gpu.get(gpu.uuid, 0) if usage is not None else 0
        known = usage is not None and usage.vram_bytes is not None and gpu.ok
        found.append(Reservation(tenant.unit, tenant.vram_bytes, used, known))
    return tuple(found)


def gpu_floor_of(
    config: Config,
    snapshot: Snapshot,
    gpu: GpuSample,
    reserved: tuple[Reservation, ...] | None = None,
) -> Floor | None:
    """A GPU's effective floor: min_free_vram plus the budgets reserved on it
    (``reserved``: :func:`reservations`, when the caller has them already); None while
    its total is unknown. A lower bound while a reserving tenant's use is unknown."""
    if gpu.total_bytes is None:
        return None
    if reserved is None:
        reserved = reservations(config, snapshot, gpu)
    return Floor(config.gpu.floor.resolve(gpu.total_bytes) + _reserved_sum(reserved), reserved)


def gpu_floor(
    config: Config,
    snapshot: Snapshot,
    gpu: GpuSample,
    reserved: tuple[Reservation, ...] | None = None,
) -> int | None:
    """:func:`gpu_floor_of` in bytes."""
    floor = gpu_floor_of(config, snapshot, gpu, reserved)
    return floor.floor_bytes if floor is not None else None


def host_floor_of(config: Config, snapshot: Snapshot) -> Floor | None:
    """Host RAM's floor (min_available_ram), or None while MemTotal is unknown."""
    total = snapshot.host.mem_total_bytes
    return Floor(config.host.floor.resolve(total)) if total is not None else None


def _gpu_reading(config: Config, snapshot: Snapshot, gpu: GpuSample) -> Reading | None:
    if not gpu.ok:
        return None
    assert gpu.free_bytes is not None
    floor = gpu_floor_of(config, snapshot, gpu)
    assert floor is not None
    return Reading(gpu_key(gpu.uuid), VRAM, gpu, gpu.free_bytes, floor, config.gpu)


def _host_reading(config: Config, snapshot: Snapshot) -> Reading | None:
    host = snapshot.host
    if not host.ok:
        return None
    assert host.mem_available_bytes is not None
    floor = host_floor_of(config, snapshot)
    assert floor is not None
    return Reading(RAM_KEY, RAM, None, host.mem_available_bytes, floor, config.host)


def reading_at(config: Config, snapshot: Snapshot, key: str) -> Reading | None:
    """One resource's reading in a snapshot, or None when it cannot be read."""
    if key == RAM_KEY:
        return _host_reading(config, snapshot)
    if snapshot.nvml_error is not None:
        return None
    for gpu in snapshot.gpus:
        if gpu_key(gpu.uuid) == key:
            return _gpu_reading(config, snapshot, gpu)
    return None


def readings(config: Config, snapshot: Snapshot) -> tuple[Reading, ...]:
    """Each floor that can be read in a snapshot, GPUs first and host RAM last, without
    its breach's start (that needs the history: :attr:`Decision.readings` has it)."""
    found: list[Reading] = []
    if snapshot.nvml_error is None:
        for gpu in snapshot.gpus:
            res = _gpu_reading(config, snapshot, gpu)
            if res is not None:
                found.append(res)
    host = _host_reading(config, snapshot)
    if host is not None:
        found.append(host)
    return tuple(found)


def key_text(snapshot: Snapshot, key: str) -> str:
    if key == RAM_KEY:
        return "RAM"
    for gpu in snapshot.gpus:
        if gpu_key(gpu.uuid) == key:
            return gpu.where
    return key
