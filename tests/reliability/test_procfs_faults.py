"""/proc and cgroupfs under faults: PIDs that exit or are reused between the
NVML list and the /proc read, cgroup files missing or unreadable.

A fault may make a unit's usage unknown (never acted on); it must never blind
the rest of the tick or attribute memory to the wrong unit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.fakenvml import FakeNvmlState
from tests.sources.test_sampler import CONFIG, gpus, world
from vramwatch.model import Snapshot
from vramwatch.sampler import Sampler
from vramwatch.sources.kernfs import CLK_TCK
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

MIB = 1024 * 1024
HOG = "immich-ml.service"  # pids 4242 (8000 MiB) and 4243 (2700 MiB)
LLAMA = "llama.service"  # pid 5000 (4000 MiB)
CG = "cgroup/system.slice"


def sample(fake_nvml: FakeNvmlState, procfs: ProcFs) -> Snapshot:
    fake_nvml.write(gpus())
    sampler = Sampler(NvmlSource(), procfs)
    try:
        return sampler.sample(CONFIG, 0)
    finally:
        sampler.close()


def clocked(root: Path, uptime_s: float, starts_s: dict[int, float]) -> None:
    """/proc/uptime and /proc/PID/stat start times, with a hostile comm."""
    (root / "proc" / "uptime").write_text(f"{uptime_s:.2f} 0.00\n")
    for pid, start in starts_s.items():
        fields = ["S"] + ["0"] * 18 + [str(int(start * CLK_TCK))] + ["0"] * 30
        (root / "proc" / str(pid) / "stat").write_text(f"{pid} (a) b) {' '.join(fields)}\n")


def test_a_pid_that_exited_after_the_nvml_list_is_left_unattributed(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    procfs = world(tmp_path, 900_000)
    shutil.rmtree(tmp_path / "proc" / "4242")

    snap = sample(fake_nvml, procfs)

    assert 2700 * MIB == snap.units[HOG].vram_bytes
    assert None is next(p for p in snap.gpus[0].processes if p.pid == 4242).owner


def test_a_pid_reused_by_another_unit_after_the_nvml_list_is_not_attributed_to_it(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """NVML saw pid 4242 (8000 MiB); by the /proc read 4242 is a new process of llama."""
    procfs = world(tmp_path, 900_000)
    (tmp_path / "proc" / "4242" / "cgroup").write_text(f"0::/system.slice/{LLAMA}\n")
    clocked(tmp_path, 1000.0, {4242: 1000.5, 4243: 10.0, 5000: 10.0, 6000: 10.0, 7000: 10.0})

    snap = sample(fake_nvml, procfs)

    assert 4000 * MIB == snap.units[LLAMA].vram_bytes
    assert 2700 * MIB == snap.units[HOG].vram_bytes


def test_control_an_old_process_of_the_same_pid_is_attributed(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """The reuse check above can fail: a process older than the list is believed."""
    procfs = world(tmp_path, 900_000)
    (tmp_path / "proc" / "4242" / "cgroup").write_text(f"0::/system.slice/{LLAMA}\n")
    clocked(tmp_path, 1000.0, {4242: 999.0, 4243: 10.0, 5000: 10.0, 6000: 10.0, 7000: 10.0})

    snap = sample(fake_nvml, procfs)

    assert (4000 + 8000) * MIB == snap.units[LLAMA].vram_bytes


def test_on_the_real_proc_a_process_started_after_the_list_is_not_believed() -> None:
    procfs = ProcFs()
    before = procfs.boot_ticks()
    time.sleep(2 / CLK_TCK)
    child = subprocess.Popen(["sleep", "5"])
    try:
        time.sleep(0.05)
        newer = procfs.owner_since(child.pid, before)
        older = procfs.owner_since(os.getpid(), before)
    finally:
        child.kill()
        child.wait()

    assert before is not None
    assert None is newer
    assert older is not None


def test_an_unreadable_cgroup_procs_makes_that_unit_unknown_and_nothing_else(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    procfs = world(tmp_path, 900_000)
    (tmp_path / CG / HOG / "memory.stat").unlink()
    (tmp_path / CG / HOG / "cgroup.procs").unlink()
    (tmp_path / CG / HOG / "cgroup.procs").mkdir()  # EISDIR: like EACCES or EIO

    snap = sample(fake_nvml, procfs)

    assert (None, 200 * MIB) == (snap.units[HOG].ram_bytes, snap.units[LLAMA].ram_bytes)
    assert snap.host.ok and [None] == [g.error for g in snap.gpus]


def test_an_unreadable_memory_stat_is_unknown_not_a_guess(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    procfs = world(tmp_path, 900_000)
    (tmp_path / CG / HOG / "memory.stat").unlink()
    (tmp_path / CG / HOG / "memory.stat").mkdir()

    snap = sample(fake_nvml, procfs)

    assert (None, "") == (snap.units[HOG].ram_bytes, snap.units[HOG].ram_source)
    assert 200 * MIB == snap.units[LLAMA].ram_bytes


def test_a_missing_memory_stat_falls_back_to_the_rss_of_the_units_pids(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    procfs = world(tmp_path, 900_000)
    (tmp_path / CG / HOG / "memory.stat").unlink()

    snap = sample(fake_nvml, procfs)

    assert (0, "rss-anon+shmem") == (snap.units[HOG].ram_bytes, snap.units[HOG].ram_source)


def test_a_unit_cgroup_removed_after_it_was_located_is_not_an_error(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    procfs = world(tmp_path, 900_000)
    sample(fake_nvml, procfs)  # locates and caches the cgroup
    shutil.rmtree(tmp_path / CG / HOG)

    snap = sample(fake_nvml, procfs)

    assert 0 == snap.units[HOG].ram_bytes
    assert snap.host.ok


def test_missing_meminfo_is_a_host_error_sample_and_the_gpus_still_read(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    procfs = world(tmp_path, 900_000)
    (tmp_path / "proc" / "meminfo").unlink()

    snap = sample(fake_nvml, procfs)

    assert (False, [None]) == (snap.host.ok, [g.error for g in snap.gpus])
