"""The obvious alternative: scan every process with psutil each tick.

It builds the same :class:`Snapshot` as :class:`vramwatch.sampler.Sampler`
(same NVML source, same decide), but finds each tenant's RAM and PIDs, and
each GPU process's unit, by reading every process on the host: what a
watchdog written in an afternoon does. The difference in cost is the price
of attributing through cgroups instead.
"""

from __future__ import annotations

import psutil

from vramwatch.config import Config
from vramwatch.model import GpuProcess, GpuSample, HostSample, Owner, Snapshot, UnitUsage
from vramwatch.sampler import manager_for
from vramwatch.sources.cgroups import parse_proc_cgroup
from vramwatch.sources.worker import GpuSource


class NaiveSampler:
    def __init__(self, gpus: GpuSource) -> None:
        self.gpus = gpus

    def sample(self, config: Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        memory = psutil.virtual_memory()
        host = HostSample(memory.total, memory.available)
        owners: dict[int, Owner] = {}
        names: dict[int, str] = {}
        ram: dict[tuple[str | None, str], int] = {}
        pids: dict[tuple[str | None, str], list[int]] = {}
        for proc in psutil.process_iter(["name", "memory_info"]):
            try:
                with open(f"/proc/{proc.pid}/cgroup", encoding="utf-8") as handle:
                    owner = parse_proc_cgroup(handle.read())
            except (FileNotFoundError, ProcessLookupError):
                continue
            info = proc.info
            if owner is None or info["memory_info"] is None:
                continue
            owners[proc.pid] = owner
            names[proc.pid] = info["name"] or ""
            key = (owner.unit, owner.manager)
            ram[key] = ram.get(key, 0) + info["memory_info"].rss
            pids.setdefault(key, []).append(proc.pid)
        raw, nvml_error = self.gpus.sample(now_ns)
        gpus = tuple(
            GpuSample(
                g.index,
                g.uuid,
                g.name,
                g.total_bytes,
                g.used_bytes,
                g.free_bytes,
                tuple(
                    GpuProcess(p.pid, p.used_bytes, p.kind, names.get(p.pid, ""), owners.get(p.pid))
                    for p in g.processes
                ),
                g.error,
            )
            for g in raw
        )
        manager = manager_for(config.daemon.bus)
        units: dict[str, UnitUsage] = {}
        for tenant in config.tenants:
            by_gpu: dict[str, int] = {}
            for gpu in gpus:
                for p in gpu.processes:
                    o = p.owner
                    if o is not None and o.unit == tenant.unit and o.manager == manager:
                        by_gpu[gpu.uuid] = by_gpu.get(gpu.uuid, 0) + (p.used_bytes or 0)
            key = (tenant.unit, manager)
            units[tenant.unit] = UnitUsage(
                unit=tenant.unit,
                vram_bytes=sum(by_gpu.values()),
                vram_by_gpu=by_gpu,
                ram_bytes=ram.get(key, 0),
                pids=tuple(pids.get(key, ())),
                ram_source="rss",
            )
        return Snapshot(now_ns=now_ns, gpus=gpus, host=host, units=units, nvml_error=nvml_error)

    def close(self) -> None:
        self.gpus.close()
