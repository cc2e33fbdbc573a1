"""What the sampler keeps between ticks, and when it must read again."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakenvml import FakeGpu, FakeNvmlState, FakeProcess, mib
from vramwatch import config as cfg
from vramwatch import sampler as sampler_module
from vramwatch.sampler import IDENTITY_TTL_NS, RSS_RELAXED_NS, Sampler
from vramwatch.sources.cgroups import CgroupLayout, parse_proc_cgroup
from vramwatch.sources.kernfs import PAGE_SIZE
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
S = 10**9


def own_unit() -> str | None:
    owner = parse_proc_cgroup(Path(f"/proc/{os.getpid()}/cgroup").read_text())
    return owner.unit if owner else None


def test_an_exited_gpu_process_is_not_attributed_from_memory(fake_nvml: FakeNvmlState) -> None:
    """Its pidfd turns readable on exit: the cached identity is dropped at once."""
    child = subprocess.Popen(["sleep", "60"])
    time.sleep(0.05)  # older than the NVML list by more than one clock tick (10 ms)
    fake_nvml.write([FakeGpu(UUID, mib(16000), processes=(FakeProcess(child.pid, mib(100)),))])
    sampler = Sampler(NvmlSource(), ProcFs())
    config = cfg.parse("", "<test>")
    try:
        first = sampler.sample(config, 0).gpus[0].processes[0]
        child.kill()
        child.wait()

        second = sampler.sample(config, S).gpus[0].processes[0]  # NVML still lists it

        assert ("sleep", True) == (first.name, first.owner is not None)
        assert ("", None) == (second.name, second.owner)
    finally:
        child.kill()
        sampler.close()


def test_a_live_gpu_process_is_read_once_and_again_after_the_ttl(
    fake_nvml: FakeNvmlState, monkeypatch: object
) -> None:
    child = subprocess.Popen(["sleep", "60"])
    time.sleep(0.05)  # older than the NVML list by more than one clock tick (10 ms)
    fake_nvml.write([FakeGpu(UUID, mib(16000), processes=(FakeProcess(child.pid, mib(100)),))])
    procfs = ProcFs()
    reads: list[int] = []
    real_owner = procfs.owner

    def counting_owner(pid: int):  # type: ignore[no-untyped-def]
        reads.append(pid)
        return real_owner(pid)

    procfs.owner = counting_owner  # type: ignore[method-assign]
    sampler = Sampler(NvmlSource(), procfs)
    config = cfg.parse("", "<test>")
    try:
        reads.clear()  # the sampler reads its own cgroup once at start
        for t in (0, 1, 2, IDENTITY_TTL_NS // S + 1):
            sampler.sample(config, t * S)

        assert [child.pid, child.pid] == reads
    finally:
        child.kill()
        child.wait()
        sampler.close()


def v1_world(tmp_path: Path, pids: list[int], rss_pages: int, available_kib: int) -> ProcFs:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "meminfo").write_text(f"MemTotal: 1000000 kB\nMemAvailable: {available_kib} kB\n")
    unit = tmp_path / "systemd" / "system.slice" / "stt.service"
    unit.mkdir(parents=True, exist_ok=True)
    (unit / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    for pid in pids:
        (proc / str(pid)).mkdir(exist_ok=True)
        kib = rss_pages * PAGE_SIZE // 1024  # anonymous; the mapped file never counts
        (proc / str(pid) / "status").write_text(
            f"RssAnon:\t{kib} kB\nRssFile:\t50000 kB\nRssShmem:\t0 kB\n"
        )
    return ProcFs(proc, layout=CgroupLayout("v1", tmp_path / "systemd", None))


CONFIG = cfg.parse(
    '[host]\nmin_available_ram = "10%"\n[[tenant]]\nunit = "stt.service"\nram = "1GiB"\n', "<t>"
)


class NoGpu:
    def sample(self, now_ns: int) -> tuple[tuple[()], str]:
        return (), "no driver"

    def close(self) -> None:
        pass


def ram(sampler: Sampler, now_ns: int) -> int | None:
    return sampler.sample(CONFIG, now_ns).units["stt.service"].ram_bytes


def test_summed_rss_is_reused_only_far_from_the_floor_and_for_the_same_pids(
    tmp_path: Path,
) -> None:
    sampler = Sampler(NoGpu(), v1_world(tmp_path, [10, 11], 100, available_kib=900_000))
    first = ram(sampler, 0)
    v1_world(tmp_path, [10, 11], 200, available_kib=900_000)  # the same processes grew
    relaxed = ram(sampler, S)
    later = ram(sampler, RSS_RELAXED_NS + S)
    v1_world(tmp_path, [10, 11, 12], 200, available_kib=900_000)  # a new process
    new_pid = ram(sampler, RSS_RELAXED_NS + 2 * S)
    v1_world(tmp_path, [10, 11, 12], 300, available_kib=150_000)  # near the 10% floor
    near_floor = ram(sampler, RSS_RELAXED_NS + 3 * S)

    assert [200, 200, 400, 600, 900] == [
        None if n is None else n // PAGE_SIZE for n in (first, relaxed, later, new_pid, near_floor)
    ]


def test_gpu_processes_past_the_open_files_limit_are_still_attributed(
    fake_nvml: FakeNvmlState,
) -> None:
    """A pidfd per GPU process must not use up the descriptors the /proc reads need:
    at a soft limit of 64, all 80 GPU processes still get their owner."""
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(80)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sampler: Sampler | None = None
    try:
        time.sleep(0.05)  # older than the NVML list by more than one clock tick (10 ms)
        listed = tuple(FakeProcess(c.pid, mib(10)) for c in children)
        fake_nvml.write([FakeGpu(UUID, mib(16000), processes=listed)])
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        sampler = Sampler(NvmlSource(), ProcFs())
        config = cfg.parse("", "<test>")

        first = sampler.sample(config, 0).gpus[0].processes
        second = sampler.sample(config, S).gpus[0].processes

        assert (80, 80) == (
            sum(p.owner is not None for p in first),
            sum(p.owner is not None for p in second),
        )
    finally:
        if sampler is not None:
            sampler.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for child in children:
            child.kill()
            child.wait()


def test_run_raises_the_soft_open_files_limit_to_the_hard_one() -> None:
    """systemd gives services a soft limit of 1024 under a hard one of 524288."""
    script = (
        "import resource\n"
        "from vramwatch.sampler import raise_open_files_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "raise_open_files_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout

    assert "True\n" == out


def test_more_exited_gpu_processes_than_one_epoll_batch_are_all_dropped(
    fake_nvml: FakeNvmlState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """epoll hands out exited pidfds a batch at a time: the tick asks until none is
    left, so no exited process keeps its identity for a later one with its PID."""
    monkeypatch.setattr(sampler_module, "EXITED_BATCH", 2)
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(5)]
    time.sleep(0.05)  # older than the NVML list by more than one clock tick (10 ms)
    procs = tuple(FakeProcess(c.pid, mib(100)) for c in children)
    fake_nvml.write([FakeGpu(UUID, mib(16000), processes=procs)])
    sampler = Sampler(NvmlSource(), ProcFs())
    config = cfg.parse("", "<test>")
    try:
        first = sampler.sample(config, 0).gpus[0].processes
        for child in children:
            child.kill()
            child.wait()

        second = sampler.sample(config, S).gpus[0].processes  # NVML still lists them

        assert [True] * 5 == [p.owner is not None for p in first]
        assert [None] * 5 == [p.owner for p in second]
    finally:
        for child in children:
            child.kill()
        sampler.close()
