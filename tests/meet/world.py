"""A small host that moves, for tests where the parts meet.

The real :class:`~vramwatch.daemon.Daemon`, the real policy and the real
:class:`~vramwatch.sampler.Sampler` with its real :class:`ProcFs` run over
this world: a fixture ``/proc`` and cgroup v2 tree written from a model of
processes, and a Python GPU source that reports the same processes. The
actuator acts on the model: a restart kills the unit's processes (their
memory comes back) and starts a small new one, unless the script says the job
timed out, the bus dropped, the call raised, or the old process outlived the
restart as an orphan. Faults: a GPU that cannot be read, a sampler that
raises, an unreadable host.

Every figure the daemon sees comes from the model, so a test can ask the
model for the truth at the moment an action is taken.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vramwatch import config as cfg
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import GpuProcess, GpuSample, JobOutcome, Verb
from vramwatch.sampler import Sampler
from vramwatch.sources.cgroups import CgroupLayout
from vramwatch.sources.procfs import ProcFs

MIB = 1024 * 1024
GIB = 1024 * MIB
S = 10**9
PAGE = 4096

GPU_TOTAL = 16 * GIB
HOST_TOTAL = 64 * GIB
# Memory no process of the model holds (kernel, page cache that cannot go):
# MemAvailable is HOST_TOTAL - HOST_BASE - the processes' RAM.
HOST_BASE = 8 * GIB
GPU_BASE = 300 * MIB  # driver and context overhead on each GPU

# What a restart starts: a fresh process of the unit, small.
FRESH_VRAM = 100 * MIB
FRESH_RAM = 200 * MIB


def uuid_of(index: int) -> str:
    return f"GPU-{index:08d}-0000-0000-0000-000000000000"


def mig_uuid(index: int, mig: int) -> str:
    """MIG device ``mig`` of GPU ``index`` (a GPU in MIG mode is guarded as its slices)."""
    return f"MIG-{index:08d}-{mig:04d}-0000-0000-000000000000"


@dataclass(frozen=True)
class Device:
    """What NVML guards: a whole GPU, or one MIG slice of a GPU in MIG mode."""

    index: int
    uuid: str
    total: int
    parent_uuid: str | None = None
    mig_index: int | None = None


@dataclass
class Proc:
    pid: int
    cgroup: str  # where the process lives; an orphan lives outside its old unit
    vram: dict[str, int]  # device UUID (GPU- or MIG-) -> bytes
    ram: int
    # NVML says usedGpuMemory is not available for it (N/A): its VRAM is unknown.
    vram_unknown: bool = False


@dataclass
class Call:
    """One call the actuator received, with the truth at that moment."""

    unit: str
    verb: Verb
    now_ns: int
    result: str
    over: frozenset[str]  # resource keys the unit was over budget on (truth)
    breached: frozenset[str]  # resource keys under their floor (truth)


@dataclass
class World:
    root: Path
    gpu_count: int = 1
    # GPU index -> how many MIG slices it is split into (each an equal share of it).
    mig: Mapping[int, int] = field(default_factory=dict)
    procs: dict[int, Proc] = field(default_factory=dict)
    gpu_errors: dict[int, str] = field(default_factory=dict)  # index -> NVML error
    sampler_raises: bool = False
    host_unreadable: bool = False
    next_pid: int = 1000

    def __post_init__(self) -> None:
        self.proc_dir = self.root / "proc"
        self.cgroup_dir = self.root / "cgroup"
        self.proc_dir.mkdir(parents=True, exist_ok=True)
        self.cgroup_dir.mkdir(parents=True, exist_ok=True)
        self.sync()

    # the model ------------------------------------------------------------------

    @staticmethod
    def cgroup_of(unit: str) -> str:
        return f"/system.slice/{unit}"

    @property
    def devices(self) -> list[Device]:
        found = []
        for i in range(self.gpu_count):
            slices = self.mig.get(i, 0)
            if not slices:
                found.append(Device(i, uuid_of(i), GPU_TOTAL))
                continue
            found.extend(
                Device(i, mig_uuid(i, m), GPU_TOTAL // slices, uuid_of(i), m) for m in range(slices)
            )
        return found

    def device(self, uuid: str) -> Device:
        return next(d for d in self.devices if d.uuid == uuid)

    def spawn(self, unit: str, vram: Mapping[Any, int] | None = None, ram: int = 0) -> int:
        """A process of ``unit`` using ``vram`` (GPU index or device UUID -> bytes) and ``ram``."""
        return self.spawn_in(self.cgroup_of(unit), vram, ram)

    def spawn_in(self, cgroup: str, vram: Mapping[Any, int] | None = None, ram: int = 0) -> int:
        """A process in ``cgroup`` (a container's scope, a user's scope, any cgroup)."""
        pid = self.next_pid
        self.next_pid += 1
        by_uuid = {(uuid_of(i) if isinstance(i, int) else i): n for i, n in (vram or {}).items()}
        self.procs[pid] = Proc(pid, cgroup, by_uuid, ram)
        self.sync()
        return pid

    def unit_pids(self, unit: str) -> list[int]:
        return [p.pid for p in self.procs.values() if p.cgroup == self.cgroup_of(unit)]

    def unit_vram(self, unit: str) -> int:
        return sum(
            sum(p.vram.values()) for p in self.procs.values() if p.cgroup == self.cgroup_of(unit)
        )

    def unit_ram(self, unit: str) -> int:
        return sum(p.ram for p in self.procs.values() if p.cgroup == self.cgroup_of(unit))

    def grow(self, unit: str, gpu: int | str | None = None, vram: int = 0, ram: int = 0) -> None:
        """Grow the unit's first process (spawn one if it has none); ``gpu``: an index
        or a device UUID."""
        pids = self.unit_pids(unit)
        if not pids:
            where: dict[int | str, int] = {gpu: max(0, vram)} if gpu is not None else {}
            self.spawn(unit, where, max(0, ram))
            return
        p = self.procs[pids[0]]
        if gpu is not None:
            key = uuid_of(gpu) if isinstance(gpu, int) else gpu
            p.vram[key] = max(0, p.vram.get(key, 0) + vram)
        p.ram = max(0, p.ram + ram)
        self.sync()

    def release_marker(self, unit: str) -> Path:
        """A release command touches this file; the unit then gives its VRAM back (only
        on the GPUs whose indexes the file lists, when it lists any). Its RAM stays."""
        return self.root / f"released-{unit}"

    def absorb_releases(self) -> None:
        """A release marker's content says what the unit gives back: empty or ``vram``
        its VRAM, GPU indexes its VRAM on those GPUs, ``ram`` its RAM, ``all`` both,
        ``none`` nothing."""
        for marker in self.root.glob("released-*"):
            unit = marker.name.removeprefix("released-")
            words = marker.read_text().split() or ["vram"]
            # GPU indexes: the VRAM on those GPUs only.
            only = [uuid_of(int(w)) for w in words if w.isdigit()]
            for pid in self.unit_pids(unit):
                p = self.procs[pid]
                if only:
                    p.vram = {u: n for u, n in p.vram.items() if u not in only}
                if "vram" in words or "all" in words:
                    p.vram = {}
                if "ram" in words or "all" in words:
                    p.ram = 0
            marker.unlink()
            self.sync()

    def device_free(self, uuid: str) -> int:
        used = GPU_BASE + sum(p.vram.get(uuid, 0) for p in self.procs.values())
        return max(0, self.device(uuid).total - used)

    def gpu_free(self, index: int) -> int:
        return self.device_free(uuid_of(index))

    def mem_available(self) -> int:
        return max(0, HOST_TOTAL - HOST_BASE - sum(p.ram for p in self.procs.values()))

    def restart(self, unit: str, *, orphan: bool = False) -> None:
        """What systemd's restart does to the model: the old processes go, a new one starts.

        ``orphan``: the old processes outlive the unit (they left its cgroup, as a
        double-forked child does) and keep their memory.
        """
        for pid in self.unit_pids(unit):
            if orphan:
                self.procs[pid].cgroup = "/system.slice"  # no unit owns it any more
            else:
                del self.procs[pid]
        self.spawn(unit, {0: FRESH_VRAM} if self.gpu_count else {}, FRESH_RAM)

    def stop(self, unit: str) -> None:
        for pid in self.unit_pids(unit):
            del self.procs[pid]
        self.sync()

    # the truth, as a check sees it ------------------------------------------------

    def over_keys(self, config: cfg.Config, unit: str) -> frozenset[str]:
        tenant = config.tenant(unit)
        keys: set[str] = set()
        if tenant is None:
            return frozenset()
        if tenant.vram_bytes is not None and self.unit_vram(unit) > tenant.vram_bytes:
            for p in self.procs.values():
                if p.cgroup == self.cgroup_of(unit):
                    keys.update(f"gpu:{u}" for u, n in p.vram.items() if n > 0)
        if tenant.ram_bytes is not None and self.unit_ram(unit) > tenant.ram_bytes:
            keys.add("ram")
        return frozenset(keys)

    def breached_keys(self, config: cfg.Config) -> frozenset[str]:
        keys: set[str] = set()
        for dev in self.devices:
            if self.device_free(dev.uuid) < config.gpu.floor.resolve(dev.total):
                keys.add(f"gpu:{dev.uuid}")
        if self.mem_available() < config.host.floor.resolve(HOST_TOTAL):
            keys.add("ram")
        return frozenset(keys)

    # the fixture tree ------------------------------------------------------------------

    def sync(self) -> None:
        """Write the model as /proc and a cgroup v2 tree (memory.stat: anon, shmem, file)."""
        shutil.rmtree(self.proc_dir)
        self.proc_dir.mkdir()
        if not self.host_unreadable:
            kib = 1024
            (self.proc_dir / "meminfo").write_text(
                f"MemTotal: {HOST_TOTAL // kib} kB\nMemFree: {self.mem_available() // kib} kB\n"
                f"MemAvailable: {self.mem_available() // kib} kB\n"
                "SwapTotal: 0 kB\nSwapFree: 0 kB\n"
            )
        units: dict[str, list[Proc]] = {}
        for p in self.procs.values():
            d = self.proc_dir / str(p.pid)
            d.mkdir()
            (d / "cgroup").write_text(f"0::{p.cgroup}\n")
            (d / "comm").write_text("python3\n")
            pages = p.ram // PAGE
            (d / "statm").write_text(f"{pages * 2} {pages} 0 0 0 {pages} 0\n")
            kib = p.ram // 1024
            (d / "status").write_text(
                f"Name:\tpython3\nVmRSS:\t{kib} kB\nRssAnon:\t{kib} kB\n"
                "RssFile:\t0 kB\nRssShmem:\t0 kB\n"
            )
            units.setdefault(p.cgroup, []).append(p)
        shutil.rmtree(self.cgroup_dir)
        (self.cgroup_dir / "system.slice").mkdir(parents=True)
        (self.cgroup_dir / "cgroup.controllers").write_text("memory\n")
        for cgroup, procs in units.items():
            if cgroup == "/system.slice":
                continue  # orphans: no unit of their own
            d = self.cgroup_dir / cgroup.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            ram = sum(p.ram for p in procs)
            (d / "cgroup.procs").write_text("".join(f"{p.pid}\n" for p in procs))
            (d / "memory.current").write_text(f"{ram}\n")
            (d / "memory.stat").write_text(f"anon {ram}\nfile 0\nshmem 0\n")

    # the parts -----------------------------------------------------------------------

    def procfs(self) -> ProcFs:
        return ProcFs(self.proc_dir, layout=CgroupLayout("v2", self.cgroup_dir, self.cgroup_dir))


class WorldGpus:
    """The GPU source: what NVML would say of the model."""

    def __init__(self, world: World) -> None:
        self.world = world

    def sample(self, now_ns: int) -> tuple[tuple[GpuSample, ...], str | None]:
        w = self.world
        w.absorb_releases()
        if w.sampler_raises:
            raise ValueError("sampler fault injected by the test")
        samples = []
        for i in range(w.gpu_count):
            if i in w.gpu_errors:
                uuid = uuid_of(i)
                samples.append(
                    GpuSample(i, uuid, "Tesla T4", None, None, None, (), w.gpu_errors[i])
                )
                continue
            for dev in w.devices:
                if dev.index != i:
                    continue
                procs = tuple(
                    GpuProcess(
                        p.pid, None if p.vram_unknown else p.vram[dev.uuid], "compute", "", None
                    )
                    for p in w.procs.values()
                    if p.vram.get(dev.uuid, 0) > 0
                )
                free = w.device_free(dev.uuid)
                samples.append(
                    GpuSample(
                        i,
                        dev.uuid,
                        "A100" if dev.mig_index is not None else "Tesla T4",
                        dev.total,
                        dev.total - free,
                        free,
                        procs,
                        parent_uuid=dev.parent_uuid,
                        mig_index=dev.mig_index,
                    )
                )
        return tuple(samples), None

    def close(self) -> None:
        pass


class WorldActuator:
    """systemd as far as the model goes: results come from a script, default "done".

    Script entries: ``done``, ``orphan`` (done, but the old process outlives the unit
    with its memory), ``timeout`` and ``disconnected`` (accepted, the job's end not
    seen; the restart happens later, at ``finish_pending``), ``refused`` (never
    accepted: NoSuchUnit), ``raise`` (the client raised).
    """

    def __init__(self, world: World, clock: Callable[[], int]) -> None:
        self.world = world
        self.clock = clock
        self.script: list[str] = []
        self.calls: list[Call] = []
        self.pending: list[tuple[str, Verb]] = []
        self.daemon: Daemon | None = None

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        result = self.script.pop(0) if self.script else "done"
        config = self.daemon.config if self.daemon is not None else None
        over = self.world.over_keys(config, unit) if config else frozenset()
        breached = self.world.breached_keys(config) if config else frozenset()
        self.calls.append(Call(unit, verb, self.clock(), result, over, breached))
        if result == "raise":
            raise ValueError("I/O operation on closed epoll object")
        if result == "refused":
            return JobOutcome(False, "org.freedesktop.systemd1.NoSuchUnit", "no such unit")
        if result in ("timeout", "disconnected"):
            self.pending.append((unit, verb))
            return JobOutcome(False, result, f"job {result}", accepted=True)
        self._do(unit, verb, orphan=result == "orphan")
        return JobOutcome(True, "done", "job done", accepted=True)

    def finish_pending(self) -> None:
        """The jobs whose end was not seen finish now."""
        for unit, verb in self.pending:
            self._do(unit, verb, orphan=False)
        self.pending.clear()

    def _do(self, unit: str, verb: Verb, orphan: bool) -> None:
        if verb is Verb.STOP:
            self.world.stop(unit)
        else:
            self.world.restart(unit, orphan=orphan)


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


@dataclass
class Bed:
    """The real daemon, policy and sampler over a world, with a scripted systemd."""

    world: World
    daemon: Daemon
    actuator: WorldActuator
    clock: Clock
    out: io.StringIO
    config_path: Path

    def tick_at(self, seconds: float) -> None:
        self.clock.now = int(seconds * S)
        self.daemon.tick()

    def ticks(self, seconds: Iterable[float]) -> None:
        for s in seconds:
            self.tick_at(s)

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def named(self, name: str) -> list[dict[str, object]]:
        return [e for e in self.events() if e["event"] == name]

    def names(self) -> list[object]:
        return [e["event"] for e in self.events()]

    def acted(self) -> list[str]:
        return [c.unit for c in self.actuator.calls]

    def reload(self, text: str) -> None:
        self.config_path.write_text(text)
        self.daemon.reload()


def make_bed(
    tmp_path: Path,
    config_text: str,
    *,
    gpus: int = 1,
    mig: Mapping[int, int] | None = None,
    notifier: Callable[[str], bool] = lambda state: False,
    state: object = None,
) -> Bed:
    world = World(tmp_path / "host", gpu_count=gpus, mig=dict(mig or {}))
    path = tmp_path / "vramwatch.toml"
    path.write_text(config_text)
    clock = Clock()
    actuator = WorldActuator(world, clock)
    out = io.StringIO()
    sampler = Sampler(WorldGpus(world), world.procfs())
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            sampler,
            actuator,
            EventLog("stderr", "json", stream=out),
            clock=clock,
            notify=notifier,
            state=state,  # type: ignore[arg-type]
        ),
    )
    actuator.daemon = daemon
    return Bed(world, daemon, actuator, clock, out, path)
