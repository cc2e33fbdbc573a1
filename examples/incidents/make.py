"""Write the traces of this project's incidents, as vramwatch would have recorded them.

    python3 -m examples.incidents.make        # from the repository's root

Each trace is what ``vramwatch run --dry-run --record`` would have written on
that host while the incident ran its course with nobody acting (dry run: the
rollout's first step); replay it with its config to see what enforcing would
have done: ``vramwatch replay examples/incidents/arena.jsonl.gz -c
examples/incidents/arena.toml``. The numbers are synthetic, shaped after the
write-ups (SPEC.md "The problem"); the assumptions are stated per incident
below. The output is deterministic: the same script writes the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from vramwatch.config import Config, load
from vramwatch.model import GpuProcess, GpuSample, HostSample, Owner, Snapshot, UnitUsage
from vramwatch.record.format import config_record, sample_record, state_record
from vramwatch.record.trace import TraceWriter

HERE = Path(__file__).resolve().parent
MIB = 1024**2
GIB = 1024**3
S = 10**9
T4_TOTAL = 15360 * MIB  # what NVML reports for a 16 GB Tesla T4
T4_UUID = "GPU-5f3a1c2e-9b7d-4e61-8a20-3c4d5e6f7a8b"
# Wall clock of each trace's first sample (UTC).
START_S = {
    "arena": 1_762_048_800,
    "worker-pool": 1_762_135_200,
    "leaking-model-server": 1_762_221_600,
}


def owner(unit: str) -> Owner:
    return Owner(f"/system.slice/{unit}", unit, "system")


def snapshot(
    now_ns: int,
    vram: dict[str, int],
    ram: dict[str, int],
    *,
    host_total: int,
    host_base: int,
    gpu: bool = True,
) -> Snapshot:
    """One T4 (when ``gpu``) and a host; each unit one process with ``vram`` and ``ram``."""
    pids = {unit: 4000 + 10 * i for i, unit in enumerate(sorted(ram))}
    gpus: tuple[GpuSample, ...] = ()
    if gpu:
        procs = tuple(
            GpuProcess(pids[u], n, "compute", u.split(".")[0][:15], owner(u))
            for u, n in sorted(vram.items())
            if n > 0
        )
        used = sum(vram.values()) + 300 * MIB  # driver and contexts
        gpus = (GpuSample(0, T4_UUID, "Tesla T4", T4_TOTAL, used, T4_TOTAL - used, procs),)
    units = {
        u: UnitUsage(
            u,
            vram.get(u, 0) if gpu else None,
            {T4_UUID: vram[u]} if gpu and vram.get(u) else {},
            ram[u],
            (pids[u],),
            "memory.stat",
        )
        for u in ram
    }
    avail = host_total - host_base - sum(ram.values())
    host = HostSample(host_total, avail, 8 * GIB, 8 * GIB)
    return Snapshot(now_ns, gpus, host, units, nvml_error=None if gpu else "no NVIDIA driver")


def write(name: str, samples: Iterator[Snapshot], directory: Path = HERE) -> Path:
    """Record ``samples`` as ``NAME.jsonl.gz`` with ``NAME.toml`` in force under --dry-run."""
    config_path = HERE / f"{name}.toml"
    config = load(config_path)
    dry = replace(config, daemon=replace(config.daemon, dry_run=True))
    out = directory / f"{name}.jsonl.gz"
    if out.exists():
        out.unlink()
    wall = [START_S[name] * S]
    writer = TraceWriter(
        out,
        7 * 86400 * S,
        1 << 30,
        wall_ns=lambda: wall[0],
        level=9,
        boot_id=lambda: f"example-{name}",
    )
    writer.segment_age_ns = 1 << 62  # one file per incident
    writer.run = f"example-{name}"
    record = config_record(dry, "start", True, _forced)
    record["path"] = f"examples/incidents/{name}.toml"
    record.update(t=wall[0] // 10**6, m=0)  # as the recorder writes it: when it started
    writer.preamble = [record, state_record({})]
    writer.open()
    for snap in samples:
        wall[0] = START_S[name] * S + snap.now_ns
        writer.write(sample_record(snap, wall[0] // 10**6, first=True), tick=True)
        writer.end_tick()
    writer.close()
    return out


def _forced(config: Config) -> Config:
    """--dry-run on top of the file, as recorded."""
    return replace(config, daemon=replace(config.daemon, dry_run=True))


def arena(rng: random.Random) -> Iterator[Snapshot]:
    """The arena that starved the LLM server on a 16 GB T4.

    Assumptions: interval 2 s, 40 minutes. llama-swap holds its 4.4 GiB model
    until minute 12, when it is swapped out (1.1 GiB left); from minute 20 it
    tries once a minute to load it back (3.3 GiB more), which fails, holding
    nothing more, while less than 3.8 GiB is free. immich-machine-learning's
    onnxruntime CUDA arena grows from 1.5 GiB by 14 MiB a tick while it indexes
    photos (from minute 5), up to 10.7 GiB, and never shrinks. frigate (1.6 GiB)
    and whisper-asr (1.2 GiB) stay flat, with allocator noise. At minute 26 an
    operator restarts immich-machine-learning by hand (its arena back to 1.5
    GiB, indexing done); the LLM server loads its model at minute 27. Host RAM
    is plentiful (64 GiB).
    """
    units: tuple[str, ...] = (
        "llama-swap.service",
        "immich-machine-learning.service",
        "frigate.service",
    )
    units += ("whisper-asr.service",)
    arena_bytes = 1536 * MIB
    llm = 4506 * MIB
    for tick in range(40 * 30):
        t = tick * 2
        if 300 <= t < 26 * 60:
            arena_bytes = min(int(10.7 * GIB), arena_bytes + 14 * MIB)
        elif t >= 26 * 60:
            arena_bytes = 1536 * MIB
        others = {
            units[2]: 1638 * MIB + rng.randrange(-1, 2) * 2 * MIB,
            units[3]: 1229 * MIB + rng.randrange(-1, 2) * 2 * MIB,
        }
        if t == 12 * 60:
            llm = 1126 * MIB
        if t >= 20 * 60 and t % 60 == 0 and llm < 4506 * MIB:
            free = T4_TOTAL - 300 * MIB - llm - arena_bytes - sum(others.values())
            if free >= 3892 * MIB:
                llm = 4506 * MIB
        vram = {units[0]: llm, units[1]: arena_bytes, **others}
        ram = {u: (3 + i) * GIB + rng.randrange(-64, 65) * MIB for i, u in enumerate(units)}
        yield snapshot(t * S, vram, ram, host_total=64 * GIB, host_base=12 * GIB)


def worker_pool(rng: random.Random) -> Iterator[Snapshot]:
    """The speech-to-text worker pool that exhausted 128 GiB of host RAM.

    Assumptions: interval 2 s, 30 minutes. whisper-asr's pool gates on VRAM
    only; from minute 4 long audio makes its workers' RSS grow by 160 MiB a
    tick from 6 GiB towards 101 GiB. The rest of the host: 14 GiB for the
    kernel, caches that cannot go and unmanaged services, llama-server 9 GiB,
    immich-machine-learning 5 GiB; MemAvailable never reads below 256 MiB (the
    box swaps). At minute 26 the kernel's global OOM killer kills the pool (RSS
    back to 2 GiB): the trace shows it because nobody acted before. The GPU is
    not part of this incident.
    """
    units = ("whisper-asr.service", "llama-server.service", "immich-machine-learning.service")
    rss = 6 * GIB
    for tick in range(30 * 30):
        t = tick * 2
        if 240 <= t < 26 * 60:
            rss = min(101 * GIB, rss + 160 * MIB)
        elif t >= 26 * 60:
            rss = 2 * GIB
        ram = {
            units[0]: rss,
            units[1]: 9 * GIB + rng.randrange(-16, 17) * MIB,
            units[2]: 5 * GIB + rng.randrange(-16, 17) * MIB,
        }
        vram = {units[0]: 3 * GIB, units[1]: 7 * GIB, units[2]: 2 * GIB}
        base = 14 * GIB
        if 128 * GIB - base - sum(ram.values()) < 256 * MIB:
            base = 128 * GIB - sum(ram.values()) - 256 * MIB
        yield snapshot(t * S, vram, ram, host_total=128 * GIB, host_base=base)


def leaking_model_server(rng: random.Random) -> Iterator[Snapshot]:
    """The model server that leaked ~500 MB of host RAM per model deploy.

    Assumptions: interval 10 s, 2.5 hours, no GPU on this host (nvml_error), 64
    GiB of RAM of which 44 GiB go to the kernel, caches and other services.
    model-server starts at 7 GiB and a model is deployed every 13 minutes
    (about 2.3 GB/hour); each deploy leaks 500 MB for good, and the request
    load adds a sawtooth of up to 1.5 GiB that is given back every few minutes
    (a garbage collector), so only the troughs show the leak. Nobody restarts it
    by hand within these 2.5 hours, and the floor (2 GiB) is not reached yet.
    """
    leak_per_deploy = 500 * 10**6
    for tick in range(int(2.5 * 360)):
        t = tick * 10
        deploys = t // (13 * 60)
        saw = int(1.5 * GIB * ((t % 240) / 240))
        ram = {
            "model-server.service": 7 * GIB + deploys * leak_per_deploy + saw,
            "feature-store.service": 4 * GIB + rng.randrange(-32, 33) * MIB,
        }
        yield snapshot(t * S, {}, ram, host_total=64 * GIB, host_base=44 * GIB, gpu=False)


INCIDENTS: dict[str, Callable[[random.Random], Iterator[Snapshot]]] = {
    "arena": arena,
    "worker-pool": worker_pool,
    "leaking-model-server": leaking_model_server,
}


def make(name: str, directory: Path = HERE) -> Path:
    return write(name, INCIDENTS[name](random.Random(name)), directory)


def main() -> None:
    for name in INCIDENTS:
        path = make(name)
        print(f"{path.relative_to(HERE.parent.parent)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
