"""Cost per tick: sample + attribute + decide, as the host grows.

    $(./scripts/bootstrap)/bin/python -m bench.tick      # as root; full grid, ~6 min
    /opt/vramwatch-venv/bin/python -m bench.tick --gpus 1 --procs 4 --tenants 2 \\
        --host 10 --ticks 3 --naive-ticks 2               # a smoke run

Runs in this process, with the real pynvml over the fake libnvidia-ml.so.1
and the real ``/proc`` and cgroupfs: every GPU process is a real sleeping
process placed in a unit cgroup (see :mod:`bench.world`). Each row runs
vramwatch's :class:`Sampler` and the naive psutil scan (:mod:`bench.naive`)
on the same host, with the same ``decide``.

GPU processes are ``--procs`` per GPU, each a distinct process (the worst case
for attribution): 7 in 8 belong to a tenant (round robin), the rest to other
units. Every tenant also has one process of its own. ``--host`` sleeping
processes in other units (50 a unit) are added on top of what the host runs.
Times are medians over ``--ticks`` ticks; CPU is this process's CPU time
(``CLOCK_PROCESS_CPUTIME_ID``: the loop's thread and the NVML worker thread),
so it includes pynvml and the fake driver's C code, which the row also
measures apart (NVML alone, and the fake driver's C calls alone).

``--layout``: ``host`` is the machine's own cgroup layout. ``v2`` puts the
units in the cgroup v2 hierarchy (on a hybrid host, the one mounted at
``/sys/fs/cgroup/unified``: ``/proc/PID/cgroup``'s ``0::`` line, the units'
``cgroup.procs``) and reads their ``memory.stat`` from a fixture tree with a
kernel's v2 ``memory.stat`` text, since on a hybrid host the memory controller
is bound to v1 and the v2 tree has no ``memory.stat``. The row after the table
says what a kernel-made ``memory.stat`` costs against the fixture's.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakenvml import STATE_ENV, FakeGpu, FakeNvmlState, FakeProcess, build, gib, mib, preload
from vramwatch import config as cfg
from vramwatch import policy
from vramwatch.acting import SnapshotSource
from vramwatch.config import Config
from vramwatch.sampler import raise_open_files_limit
from vramwatch.sources.procfs import ProcFs

from .world import World, proc_count

BG_PER_UNIT = 50


@dataclass(frozen=True)
class Timing:
    wall_ms: float
    cpu_ms: float  # every thread of this process


# A cgroup v2 memory.stat as Linux 6.x writes it (the fields, in order).
V2_MEMORY_STAT_FIELDS = (
    "anon file kernel kernel_stack pagetables sec_pagetables percpu sock vmalloc shmem "
    "zswap zswapped file_mapped file_dirty file_writeback swapcached anon_thp file_thp "
    "shmem_thp inactive_anon active_anon inactive_file active_file unevictable "
    "slab_reclaimable slab_unreclaimable slab workingset_refault_anon "
    "workingset_refault_file workingset_activate_anon workingset_activate_file "
    "workingset_restore_anon workingset_restore_file workingset_nodereclaim pgscan "
    "pgsteal pgscan_kswapd pgscan_direct pgscan_khugepaged pgsteal_kswapd pgsteal_direct "
    "pgsteal_khugepaged pgfault pgmajfault pgrefill pgactivate pgdeactivate pglazyfree "
    "pglazyfreed zswpin zswpout zswpwb thp_fault_alloc thp_collapse_alloc "
    "thp_swpout thp_swpout_fallback"
).split()


def config_for(tenants: int) -> Config:
    lines = [
        '[daemon]\nbus = "system"\n',
        '[gpu]\nmin_free_vram = "1GiB"\ngrace = "10s"\n',
        '[host]\nmin_available_ram = "1MiB"\n',
    ]
    for i in range(tenants):
        lines.append(f'[[tenant]]\nunit = "tenant-{i}.service"\nvram = "40GiB"\nram = "8GiB"\n')
    return cfg.parse("\n".join(lines), "<bench>")


def measure(fn: Callable[[int], object], ticks: int) -> Timing:
    """Median wall and CPU ms of ``fn(now_ns)`` after two warm-up calls. CPU is the
    process's (the NVML worker thread's too): nothing else runs in it meanwhile."""
    for _ in range(2):
        fn(time.monotonic_ns())
    walls: list[int] = []
    cpus: list[int] = []
    gc.collect()
    for _ in range(ticks):
        now = time.monotonic_ns()
        c0 = time.process_time_ns()
        w0 = time.perf_counter_ns()
        fn(now)
        walls.append(time.perf_counter_ns() - w0)
        cpus.append(time.process_time_ns() - c0)
    return Timing(statistics.median(walls) / 1e6, statistics.median(cpus) / 1e6)


def fake_driver(gpus: int) -> Callable[[int], object]:
    """The fake driver's C code alone, called as a tick calls it: the device count,
    then per GPU memory info v2 and three process lists (a size query, then the fill)."""
    import ctypes

    import pynvml

    count = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetCount_v2")
    memory = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo_v2")
    lists = [
        pynvml._nvmlGetFunctionPointer(f"nvmlDevice{name}RunningProcesses_v3")
        for name in ("GetCompute", "GetGraphics", "GetMPSCompute")
    ]
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(gpus)]
    info = pynvml.c_nvmlMemory_v2_t()
    buffer = (pynvml.c_nvmlProcessInfo_v3_t * 2048)()

    def calls(now_ns: int) -> None:
        n = ctypes.c_uint(0)
        count(ctypes.byref(n))
        for handle in handles:
            info.version = pynvml.nvmlMemory_v2
            memory(handle, ctypes.byref(info))
            for fn in lists:
                n = ctypes.c_uint(0)
                fn(handle, ctypes.byref(n), None)
                n = ctypes.c_uint(len(buffer))
                fn(handle, ctypes.byref(n), buffer)

    return calls


def v2_memory_tree(world: World, root: Path) -> None:
    """Each unit's memory.stat, as a v2 kernel writes it, in a fixture tree."""
    text = "".join(f"{name} {4096 * (i + 1)}\n" for i, name in enumerate(V2_MEMORY_STAT_FIELDS))
    for unit in world.units:
        directory = root / world.slice / unit
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "memory.stat").write_text(text)


def read_us(path: str, reads: int = 2000) -> float:
    """Median CPU us of opening and reading a whole file (as kernfs.read does)."""
    cpus: list[int] = []
    for _ in range(reads):
        c0 = time.thread_time_ns()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        while os.read(fd, 65536):
            pass
        os.close(fd)
        cpus.append(time.thread_time_ns() - c0)
    return statistics.median(cpus) / 1e3


def ticker(sampler: SnapshotSource, config: Config) -> Callable[[int], object]:
    history = policy.History()

    def tick(now_ns: int) -> object:
        nonlocal history
        snapshot = sampler.sample(config, now_ns)
        decision = policy.decide(config, snapshot, history)
        history = decision.history
        return decision

    return tick


def fake_call_us(calls: int = 2000) -> float:
    """Median-ish cost of the cheapest NVML call: mostly the fake re-reading its state file."""
    import pynvml

    pynvml.nvmlInit()
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    return (time.perf_counter_ns() - t0) / calls / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap.add_argument("--gpus", type=ints, default=[1, 4, 8])
    ap.add_argument("--procs", type=ints, default=[16, 64, 256], help="GPU processes per GPU")
    ap.add_argument("--tenants", type=ints, default=[10, 100])
    ap.add_argument("--host", type=ints, default=[300, 5000], help="extra sleeping processes")
    ap.add_argument("--layout", choices=["host", "v2", "both"], default="host")
    ap.add_argument("--ticks", type=int, default=30)
    ap.add_argument("--naive-ticks", type=int, default=10)
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--profile", action="store_true", help="pyinstrument vramwatch's ticks")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.tick: run as root (it creates cgroups)", file=sys.stderr)
        return 1
    raise_open_files_limit()  # as `vramwatch run` does: a pidfd for every GPU process

    work = Path(tempfile.mkdtemp(prefix="vwbench-"))
    preload(build(work / "lib"))
    state = FakeNvmlState(work / "nvml-state")
    os.environ[STATE_ENV] = str(state.path)
    state.write([FakeGpu("GPU-bench-0", gib(80))])
    layouts = ["host", "v2"] if args.layout == "both" else [args.layout]
    print(
        "| layout | host procs | GPUs | GPU procs/GPU | tenants | tick wall ms | tick CPU ms "
        "| pynvml + fake driver ms | of which fake driver ms | vramwatch own CPU ms "
        "| naive wall ms | naive CPU ms | naive / vramwatch CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    notes: list[str] = []
    try:
        for layout in layouts:
            notes += run_layout(layout, work, state, args)
        print("\n".join(notes), flush=True)
        print(
            f"\nfake NVML: one nvmlDeviceGetCount call costs {fake_call_us():.1f} us "
            "(re-reading the state file); a tick makes 7 calls per GPU",
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_layout(
    layout: str, work: Path, state: FakeNvmlState, args: argparse.Namespace
) -> list[str]:
    """The grid on one layout; returns the lines to print after the table."""
    from vramwatch.sources.cgroups import CgroupLayout
    from vramwatch.sources.procfs import ProcFs

    host_layout = CgroupLayout.detect()
    memory = work / f"memory-{layout}"
    if layout == "v2" and host_layout.mode != "v2":
        if host_layout.memory is None:
            raise SystemExit("bench.tick: no cgroup v2 hierarchy mounted for --layout v2")
        world = World(CgroupLayout("v2", host_layout.memory, memory))
    else:
        world = World(host_layout)
    name = f"v2 ({world.layout.tracking})" if layout == "v2" else host_layout.mode
    notes: list[str] = []
    try:
        gpu_pool = world.spawn(max(args.gpus) * max(args.procs))
        mains = world.spawn(max(args.tenants))
        world.place("idle.service", gpu_pool)
        for i, pid in enumerate(mains):
            world.place(f"tenant-{i}.service", [pid])
        bg: list[int] = []
        for host in sorted(args.host):
            extra = world.spawn(host - len(bg))
            for k in range(0, len(extra), BG_PER_UNIT):
                unit = f"bg-{(len(bg) + k) // BG_PER_UNIT}.service"
                world.place(unit, extra[k : k + BG_PER_UNIT])
            bg += extra
            for gpus in args.gpus:
                for per_gpu in args.procs:
                    for tenants in args.tenants:
                        procfs = ProcFs(layout=world.layout)
                        if world.layout.memory == memory:
                            v2_memory_tree(world, memory)
                        row = run_row(world, state, gpu_pool, gpus, per_gpu, tenants, procfs, args)
                        print(f"| {name} {row}", flush=True)
                        world.place("idle.service", gpu_pool[: gpus * per_gpu])
        gpus, per_gpu = max(args.gpus), 64 if 64 in args.procs else max(args.procs)
        notes.append(worker_row(world, state, gpu_pool, gpus, per_gpu, args.ticks))
        if world.layout.memory == memory:
            notes.append(memory_stat_note(world, memory))
    finally:
        world.close()
        shutil.rmtree(memory, ignore_errors=True)
    return notes


def memory_stat_note(world: World, fixture: Path) -> str:
    """What reading a kernel-made memory.stat costs against the fixture file."""
    unit = next(iter(sorted(world.units)))
    ours = read_us(f"{fixture}/{world.slice}/{unit}/memory.stat")
    kernel = Path("/sys/fs/cgroup/memory")
    if not (kernel / "memory.stat").exists():
        return f"\nv2 memory.stat: the fixture file reads in {ours:.1f} us"
    # A kernel-made memory.stat of a leaf cgroup of ours, in the v1 memory hierarchy.
    probe = kernel / f"{world.slice}-probe"
    probe.mkdir()
    try:
        made = read_us(f"{probe}/memory.stat")
    finally:
        probe.rmdir()
    return (
        f"\nv2 layout: a unit's memory.stat read from the fixture costs {ours:.1f} us CPU; "
        f"a kernel-made one (cgroup v1 memory controller, {kernel}) {made:.1f} us: the v2 rows "
        "read one per tenant per tick"
    )


def nvml_own(gpus: int) -> Callable[[int], object]:
    """vramwatch's own NVML code (sources/nvml.py) alone: the NVML source with every
    pynvml answer replayed from memory, recorded from the fake on the first tick."""
    import pynvml

    from vramwatch.sources.nvml import NvmlSource

    source = NvmlSource()
    source.sample(time.monotonic_ns())
    lists: dict[tuple[int, tuple[str, ...]], list[Any]] = {}
    memories: dict[int, tuple[int, int, int]] = {}
    real_list, real_memory = source._process_list, source._memory

    def process_list(handle: Any, names: tuple[str, ...], optional: bool) -> list[Any]:
        key = (id(handle), names)
        if key not in lists:
            lists[key] = real_list(handle, names, optional)
        return lists[key]

    def memory(handle: Any) -> tuple[int, int, int]:
        if id(handle) not in memories:
            memories[id(handle)] = real_memory(handle)
        return memories[id(handle)]

    setattr(source, "_process_list", process_list)  # noqa: B010
    setattr(source, "_memory", memory)  # noqa: B010
    source.sample(time.monotonic_ns())
    real_count = pynvml.nvmlDeviceGetCount

    def tick(now_ns: int) -> object:
        setattr(pynvml, "nvmlDeviceGetCount", lambda: gpus)  # noqa: B010
        try:
            return source.sample(now_ns)
        finally:
            setattr(pynvml, "nvmlDeviceGetCount", real_count)  # noqa: B010

    return tick


def run_row(
    world: World,
    state: FakeNvmlState,
    pool: list[int],
    gpus: int,
    per_gpu: int,
    tenants: int,
    procfs: ProcFs,
    args: argparse.Namespace,
) -> str:
    from vramwatch.sampler import Sampler
    from vramwatch.sources.nvml import NvmlSource

    from .naive import NaiveSampler

    fake: list[FakeGpu] = []
    for g in range(gpus):
        pids = pool[g * per_gpu : (g + 1) * per_gpu]
        fake.append(
            FakeGpu(
                f"GPU-bench-{g}",
                gib(80),
                processes=tuple(FakeProcess(pid, mib(64)) for pid in pids),
            )
        )
        for j, pid in enumerate(pids):
            n = g * per_gpu + j
            unit = f"other-{n % 5}.service" if n % 8 == 7 else f"tenant-{n % tenants}.service"
            world.place(unit, [pid])
    state.write(fake)
    config = config_for(tenants)
    procs = proc_count()

    source = NvmlSource()
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0001)
        profiler.start()
    sampler = Sampler(source, procfs)
    ours = measure(ticker(sampler, config), args.ticks)
    if args.profile:
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False), file=sys.stderr)
    sampler.close()
    source = NvmlSource()
    nvml = measure(source.sample, args.ticks)
    driver = measure(fake_driver(gpus), args.ticks)
    own_nvml = measure(nvml_own(gpus), args.ticks)
    binding = nvml.cpu_ms - own_nvml.cpu_ms  # pynvml and the fake driver
    naive_cell = "| - | - | - |"
    if not args.no_naive:
        theirs = measure(ticker(NaiveSampler(source), config), args.naive_ticks)
        naive_cell = (
            f"| {theirs.wall_ms:.1f} | {theirs.cpu_ms:.1f} | {theirs.cpu_ms / ours.cpu_ms:.0f}x |"
        )
    source.close()
    return (
        f"| {procs} | {gpus} | {per_gpu} | {tenants} | {ours.wall_ms:.2f} | {ours.cpu_ms:.2f} "
        f"| {binding:.2f} | {driver.cpu_ms:.2f} | {ours.cpu_ms - binding:.2f} {naive_cell}"
    )


def worker_row(
    world: World, state: FakeNvmlState, pool: list[int], gpus: int, per_gpu: int, ticks: int
) -> str:
    """What running NVML on the worker thread (with its deadline) adds to a tick: the
    same GPU sample called directly and handed to the worker, wall time (the worker's
    CPU is another thread's)."""
    from vramwatch.sources.nvml import NvmlSource
    from vramwatch.sources.worker import DeadlineGpuSource

    fake = [
        FakeGpu(
            f"GPU-bench-{g}",
            gib(80),
            processes=tuple(
                FakeProcess(pid, mib(64)) for pid in pool[g * per_gpu : (g + 1) * per_gpu]
            ),
        )
        for g in range(gpus)
    ]
    state.write(fake)
    source = NvmlSource()
    worker = DeadlineGpuSource(source)
    for _ in range(3):
        source.sample(time.monotonic_ns())
        worker.sample(time.monotonic_ns(), 3 * 10**9)
    # Paired, alternating calls: the load of the machine changes both alike.
    direct: list[int] = []
    extra: list[int] = []
    gc.collect()
    for _ in range(max(ticks, 10) * 10):
        t0 = time.perf_counter_ns()
        source.sample(time.monotonic_ns())
        t1 = time.perf_counter_ns()
        worker.sample(time.monotonic_ns(), 3 * 10**9)
        t2 = time.perf_counter_ns()
        direct.append(t1 - t0)
        extra.append((t2 - t1) - (t1 - t0))
    worker.close()
    # The hand-off alone: a source that returns at once.
    null = DeadlineGpuSource(_NullGpus())
    handoff = measure(lambda now: null.sample(now, 3 * 10**9), 1000)
    null.close()
    return (
        f"\nNVML worker thread, {gpus} GPUs x {per_gpu} processes: the GPU sample takes "
        f"{statistics.median(direct) / 1e6:.3f} ms wall called directly; handing it to the "
        f"worker adds {statistics.median(extra) / 1e6:+.3f} ms per tick (median of "
        f"{len(extra)} paired calls; the hand-off alone {handoff.wall_ms:.3f} ms)"
    )


class _NullGpus:
    def sample(self, now_ns: int) -> tuple[tuple[()], None]:
        return (), None

    def close(self) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
