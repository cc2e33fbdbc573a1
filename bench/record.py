"""What recording costs: bytes on disk per day and CPU per tick.

    $(./scripts/bootstrap)/bin/python -m bench.record              # a full day, ~1 min
    /opt/vramwatch-venv/bin/python -m bench.record --ticks 2000    # a smoke run

The host is synthetic and moves the way a real one does (assumptions, stated):

* 4 GPUs of 80 GiB; 20 tenants, each with 1 to 3 GPU processes spread over the
  GPUs and 2 to 4 processes in all; 6 more GPU processes of units that are not
  tenants (the worst case for the trace: every process is written each tick);
* every tenant's RAM (anonymous + shmem, page granular) changes every tick;
  each GPU process's memory changes in 2 MiB steps in one tick out of five (a
  CUDA caching allocator holds its blocks), and a tenant restarts (new PIDs)
  about once an hour;
* GPU free/used and MemAvailable follow from the processes, PSI moves.

The snapshots go through the daemon's own recorder (:class:`Recorder`: encode,
JSON, gzip, sync flush per tick) into a real file; CPU is this thread's CPU
time spent inside the recorder, per tick. The target is a day in <= 50 MB and
<= 0.3 ms CPU per tick.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from vramwatch.config import parse
from vramwatch.model import GpuProcess, GpuSample, HostSample, Owner, Snapshot, UnitUsage
from vramwatch.record.recorder import Recorder
from vramwatch.record.trace import rotated_segments

GIB = 1024**3
MIB = 1024**2
PAGE = 4096
S = 10**9
DAY_TICKS = 43_200  # a day at a 2 s interval
GPUS = 4
TENANTS = 20
GPU_TOTAL = 80 * GIB
HOST_TOTAL = 512 * GIB


class Host:
    """A deterministic, moving 4-GPU, 20-tenant host."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.next_pid = 10_000
        self.units = [f"tenant-{i:02d}-inference.service" for i in range(TENANTS)]
        self.procs: dict[str, list[list[int]]] = {}  # unit -> [pid, gpu, vram, ram]
        for n, unit in enumerate(self.units):
            self._spawn(unit, n)
        self.others = [
            [self._pid(), self.rng.randrange(GPUS), self.rng.randrange(200, 2000) * MIB]
            for _ in range(6)
        ]

    def _pid(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def _spawn(self, unit: str, n: int) -> None:
        count = 2 + n % 3
        on_gpu = 1 + n % 3
        self.procs[unit] = [
            [
                self._pid(),
                (n + k) % GPUS if k < on_gpu else -1,
                self.rng.randrange(500, 6000) * MIB if k < on_gpu else 0,
                self.rng.randrange(200, 4000) * MIB,
            ]
            for k in range(count)
        ]

    def step(self) -> None:
        for n, unit in enumerate(self.units):
            if self.rng.random() < 1 / 1800:
                self._spawn(unit, n)  # a restart: new PIDs
                continue
            for p in self.procs[unit]:
                p[3] = max(PAGE, p[3] + self.rng.randrange(-256, 257) * PAGE)
                if p[1] >= 0 and self.rng.random() < 0.2:
                    p[2] = max(0, p[2] + self.rng.randrange(-8, 9) * 2 * MIB)

    def snapshot(self, now_ns: int) -> Snapshot:
        gpus = []
        by_unit_gpu: dict[str, dict[str, int]] = {}
        for g in range(GPUS):
            uuid = f"GPU-{g:08x}-1111-2222-3333-444455556666"
            procs = []
            for unit, plist in self.procs.items():
                owner = Owner(f"/system.slice/{unit}", unit, "system")
                for pid, gpu, vram, _ram in plist:
                    if gpu == g:
                        procs.append(GpuProcess(pid, vram, "compute", "python3", owner))
                        per = by_unit_gpu.setdefault(unit, {})
                        per[uuid] = per.get(uuid, 0) + vram
            for pid, gpu, vram in self.others:
                if gpu == g:
                    owner = Owner("/system.slice/jupyter.service", "jupyter.service", "system")
                    procs.append(GpuProcess(pid, vram, "compute", "python3", owner))
            used = sum(p.used_bytes or 0 for p in procs) + 600 * MIB
            gpus.append(
                GpuSample(
                    g,
                    uuid,
                    "NVIDIA A100-SXM4-80GB",
                    GPU_TOTAL,
                    used,
                    GPU_TOTAL - used,
                    tuple(procs),
                )
            )
        units = {}
        ram_total = 0
        for unit, plist in self.procs.items():
            ram = sum(p[3] for p in plist)
            ram_total += ram
            per = by_unit_gpu.get(unit, {})
            units[unit] = UnitUsage(
                unit, sum(per.values()), per, ram, tuple(p[0] for p in plist), "memory.stat"
            )
        avail = HOST_TOTAL - 40 * GIB - ram_total
        host = HostSample(
            HOST_TOTAL,
            avail,
            8 * GIB,
            8 * GIB - self.rng.randrange(0, 64) * MIB,
            round(self.rng.random() * 2, 2),
            0.0,
        )
        return Snapshot(now_ns, tuple(gpus), host, units, self_unit="vramwatch.service")


def config_text(trace: Path) -> str:
    text = f'[daemon]\nrecord = "{trace}"\nrecord_max_size = "1GiB"\n'
    for i in range(TENANTS):
        text += f'[[tenant]]\nunit = "tenant-{i:02d}-inference.service"\nvram = "12GiB"\n'
    return text


def measure(ticks: int, directory: Path) -> tuple[int, list[float]]:
    """Record ``ticks`` ticks; (bytes on disk, CPU ms per tick)."""
    trace = directory / "trace.jsonl.gz"
    config_path = directory / "vramwatch.toml"
    config_path.write_text(config_text(trace))
    config = parse(config_path.read_text(), config_path)
    wall = [1_764_655_200 * S]
    recorder = Recorder(lambda *a, **k: print("record error:", a), wall_ns=lambda: wall[0])
    recorder.configure(config, "start", False, lambda c: c)
    host = Host()
    cpu_ms: list[float] = []
    clock = time.CLOCK_THREAD_CPUTIME_ID
    for tick in range(ticks):
        host.step()
        snap = host.snapshot(tick * 2 * S)
        start = time.clock_gettime_ns(clock)
        recorder.begin_tick()
        recorder.sampled(snap)
        recorder.end_tick()
        cpu_ms.append((time.clock_gettime_ns(clock) - start) / 1e6)
        wall[0] += 2 * S
    recorder.close()
    files = [*rotated_segments(trace), trace]
    return sum(os.path.getsize(f) for f in files), cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=DAY_TICKS, help="default: a day at 2 s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size, cpu = measure(args.ticks, Path(tmp))
    per_day = size * DAY_TICKS / args.ticks
    cpu.sort()
    print(f"ticks recorded:        {args.ticks} (4 GPUs, {TENANTS} tenants, 2 s interval)")
    print(f"on disk:               {size / 1e6:.1f} MB, {size / args.ticks:.0f} B per tick")
    print(f"a day at 2 s:          {per_day / 1e6:.1f} MB (target <= 50 MB)")
    print(
        f"CPU per tick:          median {statistics.median(cpu):.3f} ms, "
        f"p99 {cpu[int(len(cpu) * 0.99)]:.3f} ms, mean {statistics.fmean(cpu):.3f} ms "
        "(target <= 0.3 ms)"
    )


if __name__ == "__main__":
    main()
