"""One :class:`Snapshot` from the sources: GPUs, host memory, tenant units.

Attribution: a GPU process belongs to the unit named in ``/proc/PID/cgroup``;
a tenant's VRAM is the sum over its processes on every GPU, and is unknown
(``None``) when any GPU could not be read or the driver could not say a
process's memory: a partial sample must never make a tenant look over budget
or under it.
"""

from __future__ import annotations

import os
from typing import Protocol

from vramwatch.config import Config
from vramwatch.model import GpuProcess, GpuSample, HostSample, Snapshot, UnitUsage
from vramwatch.sources.procfs import ProcFs

# How many of the biggest RAM holders a breached host floor reports.
RAM_TOP = 5


class GpuSource(Protocol):
    def sample(self, now_ns: int) -> tuple[tuple[GpuSample, ...], str | None]: ...

    def close(self) -> None: ...


def manager_for(bus: str) -> str:
    """The manager whose units the config names: ``system`` or ``user@UID``."""
    return "system" if bus == "system" else f"user@{os.getuid()}"


class Sampler:
    def __init__(self, gpus: GpuSource, procfs: ProcFs) -> None:
        self.gpus = gpus
        self.procfs = procfs
        own = procfs.owner(os.getpid())
        self.self_unit = own.unit if own is not None else None

    def sample(self, config: Config, now_ns: int) -> Snapshot:
        host = self.procfs.host()
        # Any PID that starts after this instant is not the one NVML lists (PID reuse).
        before_ticks = self.procfs.boot_ticks()
        raw_gpus, nvml_error = self.gpus.sample(now_ns)
        gpus = tuple(self._attribute(gpu, before_ticks) for gpu in raw_gpus)
        manager = manager_for(config.daemon.bus)
        vram_known = nvml_error is None and all(g.error is None for g in gpus)
        vram = _vram_by_unit(gpus, manager)
        units: dict[str, UnitUsage] = {}
        for tenant in config.tenants:
            by_gpu, unknown = vram.get(tenant.unit, ({}, False))
            units[tenant.unit] = self._unit(
                tenant.unit, manager, by_gpu, unknown or not vram_known, now_ns
            )
        ram_top: tuple[tuple[str, int], ...] = ()
        if self._host_below_floor(config, host):
            ram_top = tuple(self.procfs.top_ram_owners()[:RAM_TOP])
        return Snapshot(
            now_ns=now_ns,
            gpus=gpus,
            host=host,
            units=units,
            nvml_error=nvml_error,
            self_unit=self.self_unit,
            ram_top=ram_top,
        )

    def close(self) -> None:
        self.gpus.close()

    def _attribute(self, gpu: GpuSample, before_ticks: int | None) -> GpuSample:
        if gpu.error is not None:
            return gpu
        procs = tuple(
            GpuProcess(
                p.pid,
                p.used_bytes,
                p.kind,
                self._comm(p.pid),
                self.procfs.owner_since(p.pid, before_ticks),
            )
            for p in gpu.processes
        )
        return GpuSample(
            gpu.index, gpu.uuid, gpu.name, gpu.total_bytes, gpu.used_bytes, gpu.free_bytes, procs
        )

    def _unit(
        self, unit: str, manager: str, by_gpu: dict[str, int], unknown: bool, now_ns: int
    ) -> UnitUsage:
        cgroup = self.procfs.locate_unit(unit, manager, now_ns)
        if cgroup is None:
            pids: tuple[int, ...] = ()
            ram: int | None = 0  # not running: no cgroup, no memory
            source = "inactive"
        else:
            try:
                pids = self.procfs.unit_pids(cgroup)
                ram, source = self.procfs.unit_ram(cgroup, pids)
            except OSError:
                # One unreadable cgroup must not blind the whole tick: this unit's
                # RAM is unknown (never acted on), every other reading stands.
                pids, ram, source = (), None, ""
        return UnitUsage(
            unit=unit,
            vram_bytes=None if unknown else sum(by_gpu.values()),
            vram_by_gpu=by_gpu,
            ram_bytes=ram,
            pids=pids,
            ram_source=source,
        )

    def _comm(self, pid: int) -> str:
        try:
            return self.procfs.comm(pid)
        except OSError:
            return ""

    @staticmethod
    def _host_below_floor(config: Config, host: HostSample) -> bool:
        if not host.ok:
            return False
        assert host.mem_total_bytes is not None and host.mem_available_bytes is not None
        return host.mem_available_bytes < config.host.floor.resolve(host.mem_total_bytes)


def _vram_by_unit(
    gpus: tuple[GpuSample, ...], manager: str
) -> dict[str, tuple[dict[str, int], bool]]:
    """Each unit of ``manager``'s VRAM per GPU UUID, and whether any of it is unknown.

    One pass over every GPU process, so a tick costs O(processes + tenants),
    not O(processes x tenants).
    """
    found: dict[str, tuple[dict[str, int], bool]] = {}
    for gpu in gpus:
        for proc in gpu.processes:
            owner = proc.owner
            if owner is None or owner.unit is None or owner.manager != manager:
                continue
            by_gpu, unknown = found.setdefault(owner.unit, ({}, False))
            if proc.used_bytes is None:
                found[owner.unit] = (by_gpu, True)  # NVML_VALUE_NOT_AVAILABLE: never read as zero
                continue
            by_gpu[gpu.uuid] = by_gpu.get(gpu.uuid, 0) + proc.used_bytes
    return found
