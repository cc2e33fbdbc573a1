"""Sampler: NVML processes attributed to units through a fixture /proc and cgroup tree."""

from __future__ import annotations

from pathlib import Path

from tests.fakenvml import FakeGpu, FakeNvmlState, FakeProcess, mib
from vramwatch import config as cfg
from vramwatch.model import Owner
from vramwatch.sampler import Sampler
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import CgroupLayout, ProcFs

UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
CONFIG = cfg.parse(
    """
[gpu]
min_free_vram = "2GiB"
[host]
min_available_ram = "50%"
[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
ram = "1GiB"
[[tenant]]
unit = "llama.service"
vram = "5000MiB"
protected = true
""",
    "/etc/vramwatch.toml",
)


def proc(root: Path, pid: int, cgroup: str, comm: str, rss_pages: int = 0) -> None:
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(f"0::{cgroup}\n")
    (d / "comm").write_text(comm + "\n")
    (d / "statm").write_text(f"1000 {rss_pages} 0 0 0 0 0\n")


def world(tmp_path: Path, available_kib: int) -> ProcFs:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(
        f"MemTotal: 1000000 kB\nMemAvailable: {available_kib} kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n"
    )
    proc(tmp_path, 4242, "/system.slice/immich-ml.service", "python3")
    proc(tmp_path, 4243, "/system.slice/immich-ml.service/worker", "foo) Z")
    proc(tmp_path, 5000, "/system.slice/llama.service", "llama-server")
    proc(tmp_path, 6000, "/system.slice/docker-abc.scope", "tritonserver", rss_pages=100_000)
    proc(
        tmp_path,
        7000,
        "/user.slice/user-1000.slice/user@1000.service/app.slice/immich-ml.service",
        "impostor",
    )
    # 9999 is exiting: NVML still lists it, its /proc entry is an empty shell (a
    # zombie whose files are gone), so it is left unattributed.
    (tmp_path / "proc" / "9999").mkdir()
    cg = tmp_path / "cgroup"
    for unit, current in (("immich-ml.service", mib(1500)), ("llama.service", mib(200))):
        (cg / "system.slice" / unit).mkdir(parents=True)
        (cg / "system.slice" / unit / "memory.current").write_text(f"{current}\n")
    (cg / "system.slice" / "immich-ml.service" / "cgroup.procs").write_text("4242\n")
    (cg / "system.slice" / "immich-ml.service" / "worker").mkdir()
    (cg / "system.slice" / "immich-ml.service" / "worker" / "cgroup.procs").write_text("4243\n")
    (cg / "system.slice" / "llama.service" / "cgroup.procs").write_text("5000\n")
    return ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", cg, cg))


def gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            UUID,
            mib(15360),
            processes=(
                FakeProcess(4242, mib(8000)),
                FakeProcess(4243, mib(2700)),
                FakeProcess(5000, mib(4000)),
                FakeProcess(6000, mib(300)),
                FakeProcess(7000, mib(100)),
                FakeProcess(9999, mib(50)),
            ),
        )
    ]


def test_tenant_vram_sums_its_processes_and_ignores_same_named_user_units(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpus())
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    immich = snap.units["immich-ml.service"]
    assert (mib(10700), {UUID: mib(10700)}, mib(1500), (4242, 4243), "memory.current") == (
        immich.vram_bytes,
        dict(immich.vram_by_gpu),
        immich.ram_bytes,
        tuple(sorted(immich.pids)),
        immich.ram_source,
    )
    assert mib(4000) == snap.units["llama.service"].vram_bytes


def test_gpu_processes_carry_their_owner_and_hostile_names(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpus())
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    owners = {p.pid: (p.name, p.owner) for p in snap.gpus[0].processes}
    assert (
        "foo) Z",
        Owner("/system.slice/immich-ml.service/worker", "immich-ml.service", "system"),
    ) == owners[4243]
    assert (
        "tritonserver",
        Owner("/system.slice/docker-abc.scope", "docker-abc.scope", "system"),
    ) == owners[6000]
    assert ("", None) == owners[9999]  # exited before /proc was read


def test_a_gpu_error_makes_every_tenant_vram_unknown(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpus(), errors={"nvmlDeviceGetComputeRunningProcesses_v3": "UNKNOWN"})
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    assert [None, None] == [u.vram_bytes for u in snap.units.values()]


def test_ram_top_is_read_only_when_the_host_floor_is_breached(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpus())
    procfs = world(tmp_path, 900_000)
    healthy = Sampler(NvmlSource(), procfs).sample(CONFIG, 0)
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 1000000 kB\nMemAvailable: 100 kB\n")

    starved = Sampler(NvmlSource(), procfs).sample(CONFIG, 1)

    assert () == healthy.ram_top
    assert ("docker-abc.scope", 100_000 * 4096) == starved.ram_top[0]
