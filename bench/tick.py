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
Times are medians over ``--ticks`` ticks; CPU is this thread's CPU time
(``CLOCK_THREAD_CPUTIME_ID``), so it includes the fake driver's C code.
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

from tests.fakenvml import STATE_ENV, FakeGpu, FakeNvmlState, FakeProcess, build, gib, mib, preload
from vramwatch import config as cfg
from vramwatch import policy
from vramwatch.config import Config
from vramwatch.daemon import SnapshotSource

from .world import World, proc_count

BG_PER_UNIT = 50


@dataclass(frozen=True)
class Timing:
    wall_ms: float
    cpu_ms: float


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
    """Median wall and CPU ms of ``fn(now_ns)`` after two warm-up calls."""
    for _ in range(2):
        fn(time.monotonic_ns())
    walls: list[int] = []
    cpus: list[int] = []
    gc.collect()
    for _ in range(ticks):
        now = time.monotonic_ns()
        c0 = time.thread_time_ns()
        w0 = time.perf_counter_ns()
        fn(now)
        walls.append(time.perf_counter_ns() - w0)
        cpus.append(time.thread_time_ns() - c0)
    return Timing(statistics.median(walls) / 1e6, statistics.median(cpus) / 1e6)


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
    ap.add_argument("--ticks", type=int, default=30)
    ap.add_argument("--naive-ticks", type=int, default=10)
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--profile", action="store_true", help="pyinstrument vramwatch's ticks")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.tick: run as root (it creates cgroups)", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="vwbench-"))
    preload(build(work / "lib"))
    state = FakeNvmlState(work / "nvml-state")
    os.environ[STATE_ENV] = str(state.path)
    state.write([FakeGpu("GPU-bench-0", gib(80))])

    world = World()
    try:
        gpu_pool = world.spawn(max(args.gpus) * max(args.procs))
        mains = world.spawn(max(args.tenants))
        world.place("idle.service", gpu_pool)
        for i, pid in enumerate(mains):
            world.place(f"tenant-{i}.service", [pid])
        bg: list[int] = []
        print(
            "| host procs | GPUs | GPU procs/GPU | tenants | vramwatch wall ms | vramwatch CPU ms "
            "| of which NVML (fake) ms | naive wall ms | naive CPU ms | naive / vramwatch CPU |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for host in sorted(args.host):
            extra = world.spawn(host - len(bg))
            for k in range(0, len(extra), BG_PER_UNIT):
                unit = f"bg-{(len(bg) + k) // BG_PER_UNIT}.service"
                world.place(unit, extra[k : k + BG_PER_UNIT])
            bg += extra
            for gpus in args.gpus:
                for per_gpu in args.procs:
                    for tenants in args.tenants:
                        row = run_row(world, state, gpu_pool, gpus, per_gpu, tenants, args)
                        print(row, flush=True)
                        world.place("idle.service", gpu_pool[: gpus * per_gpu])
        sys.stdout.flush()
        gpus, per_gpu = max(args.gpus), 64 if 64 in args.procs else max(args.procs)
        print(worker_row(world, state, gpu_pool, gpus, per_gpu, args.ticks), flush=True)
        print(
            f"\nfake NVML: one nvmlDeviceGetCount call costs {fake_call_us():.1f} us "
            "(re-reading the state file); a tick makes 7 calls per GPU",
            flush=True,
        )
    finally:
        world.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_row(
    world: World,
    state: FakeNvmlState,
    pool: list[int],
    gpus: int,
    per_gpu: int,
    tenants: int,
    args: argparse.Namespace,
) -> str:
    from vramwatch.sampler import Sampler
    from vramwatch.sources.nvml import NvmlSource
    from vramwatch.sources.procfs import ProcFs

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
    ours = measure(ticker(Sampler(source, ProcFs()), config), args.ticks)
    if args.profile:
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False), file=sys.stderr)
    nvml = measure(source.sample, args.ticks)
    naive_cell = "| - | - | - |"
    if not args.no_naive:
        theirs = measure(ticker(NaiveSampler(source), config), args.naive_ticks)
        naive_cell = (
            f"| {theirs.wall_ms:.1f} | {theirs.cpu_ms:.1f} | {theirs.cpu_ms / ours.cpu_ms:.0f}x |"
        )
    source.close()
    return (
        f"| {procs} | {gpus} | {per_gpu} | {tenants} | {ours.wall_ms:.2f} | {ours.cpu_ms:.2f} "
        f"| {nvml.cpu_ms:.2f} {naive_cell}"
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
