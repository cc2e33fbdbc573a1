"""Sampler: NVML processes attributed to units through a fixture /proc and cgroup tree."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fakenvml import FakeGpu, FakeNvmlState, FakeProcess, mib
from vramwatch import config as cfg
from vramwatch.model import Owner
from vramwatch.sampler import Sampler
from vramwatch.sources.cgroups import CgroupLayout
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

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
    """A process whose anonymous memory is ``rss_pages`` 4 KiB pages."""
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(f"0::{cgroup}\n")
    (d / "comm").write_text(comm + "\n")
    (d / "status").write_text(f"RssAnon:\t{rss_pages * 4} kB\nRssFile:\t9000 kB\nRssShmem:\t0 kB\n")


def memory_stat(anon: int, shmem: int = 0, file: int = 0) -> str:
    return f"anon {anon}\nfile {file}\nshmem {shmem}\nfile_mapped {file}\n"


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
    for unit, anon in (("immich-ml.service", mib(1500)), ("llama.service", mib(200))):
        (cg / "system.slice" / unit).mkdir(parents=True)
        (cg / "system.slice" / unit / "memory.stat").write_text(memory_stat(anon, 0, mib(4000)))
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
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000), pids=True)

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    immich = snap.units["immich-ml.service"]
    assert (mib(10700), {UUID: mib(10700)}, mib(1500), (4242, 4243), "memory.stat") == (
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


SYSTEM_WIDE = cfg.parse(
    """
[[tenant]]
unit = "user@1000.service"
vram = "3000MiB"
[[tenant]]
unit = "systemd-nspawn@c1.service"
vram = "3000MiB"
[[tenant]]
unit = "ollama.service"
vram = "3000MiB"
""",
    "/etc/vramwatch.toml",
)
USER_MANAGER = "/user.slice/user-1000.slice/user@1000.service"
NSPAWN = "/machine.slice/systemd-nspawn@c1.service"


def test_a_system_tenant_owns_everything_below_its_cgroup(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """Issue 10, item 1: user@1000.service and an nspawn container on the system bus
    count every process below them (user units, the container's own services);
    a delegated payload named like another tenant is never that tenant's."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 1000000 kB\nMemAvailable: 900000 kB\n")
    cg = tmp_path / "cgroup"
    placed = {
        10: USER_MANAGER + "/init.scope",
        11: USER_MANAGER + "/app.slice/llm.service",
        12: USER_MANAGER + "/app.slice/llm.service/runner",
        20: NSPAWN + "/payload/system.slice/ollama.service",
        30: "/system.slice/ollama.service",
    }
    for pid, cgroup in placed.items():
        proc(tmp_path, pid, cgroup, "python3", rss_pages=pid)
        (cg / cgroup.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (cg / cgroup.lstrip("/") / "cgroup.procs").write_text(f"{pid}\n")
    (cg / USER_MANAGER.lstrip("/") / "memory.stat").write_text(memory_stat(mib(700), mib(100)))
    fake_nvml.write(
        [
            FakeGpu(
                UUID,
                mib(15360),
                processes=tuple(
                    FakeProcess(pid, mib(n))
                    for pid, n in ((10, 1), (11, 1000), (12, 2000), (20, 4000), (30, 100))
                ),
            )
        ]
    )
    sampler = Sampler(
        NvmlSource(), ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", cg, cg)), pids=True
    )

    snap = sampler.sample(SYSTEM_WIDE, 0)
    sampler.close()

    actual = {
        unit: (u.vram_bytes, tuple(sorted(u.pids)), u.ram_bytes, u.ram_source)
        for unit, u in snap.units.items()
    }
    assert {
        "user@1000.service": (mib(3001), (10, 11, 12), mib(800), "memory.stat"),
        "systemd-nspawn@c1.service": (mib(4000), (20,), 20 * 4096, "rss-anon+shmem"),
        "ollama.service": (mib(100), (30,), 30 * 4096, "rss-anon+shmem"),
    } == actual


def test_an_unreadable_process_costs_only_itself_in_the_biggest_ram_users(
    fake_nvml: FakeNvmlState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10, item 7: under hidepid=1 another user's /proc/PID files refuse reads."""
    fake_nvml.write(gpus())
    procfs = world(tmp_path, 100)  # the host floor is breached: the biggest users are read
    (tmp_path / "proc" / "4242" / "status").write_text("RssAnon:\t1000 kB\nRssShmem:\t0 kB\n")
    refused = os.fspath(tmp_path / "proc" / "6000") + "/"
    real_open = os.open

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path).startswith(refused):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    sampler = Sampler(NvmlSource(), procfs)

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    assert (("immich-ml.service", 1000 * 1024),) == snap.ram_top
    assert mib(1500) == snap.units["immich-ml.service"].ram_bytes


# --------------------------------------------------------------------------
# A tenant's PIDs are read only when wanted (issue 17: tick cost)

TWO_TENANTS = cfg.parse(
    '[[tenant]]\nunit = "a.service"\nram = "1GiB"\n[[tenant]]\nunit = "b.service"\nram = "1GiB"\n',
    "<test>",
)


def pids_world(tmp_path: Path) -> Path:
    """a.service has a memory cgroup and a cgroup.procs that cannot be read (a
    directory); b.service has no memory cgroup: its RAM is its process's."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 1000000 kB\nMemAvailable: 900000 kB\n")
    cg = tmp_path / "cgroup"
    a, b = cg / "system.slice" / "a.service", cg / "system.slice" / "b.service"
    (a / "cgroup.procs").mkdir(parents=True)
    (a / "memory.stat").write_text(memory_stat(mib(700), mib(100)))
    b.mkdir(parents=True)
    (b / "cgroup.procs").write_text("20\n")
    proc(tmp_path, 20, "/system.slice/b.service", "python3", rss_pages=256)
    return cg


@pytest.mark.parametrize("held", [False, True])
def test_a_tenant_s_pids_are_not_read_when_its_memory_cgroup_gives_its_ram(
    fake_nvml: FakeNvmlState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: bool
) -> None:
    """No decision uses a tenant's PIDs: the daemon's tick reads cgroup.procs only to
    sum RAM over processes (b.service), never where memory.stat gives it (a.service),
    whether its cgroup is read afresh or through held descriptors."""
    cg = pids_world(tmp_path)
    if held:  # the fixture tree taken for a cgroup v2 mount: its files are held open
        monkeypatch.setattr("vramwatch.sources.held.cgroup2_mounts", lambda: frozenset({str(cg)}))
    fake_nvml.write([FakeGpu(UUID, mib(15360))])
    sampler = Sampler(NvmlSource(), ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", cg, cg)))

    snaps = [sampler.sample(TWO_TENANTS, t * 10**9) for t in range(3)]
    sampler.close()

    assert [
        {
            "a.service": ((), mib(800), "memory.stat"),
            "b.service": ((20,), mib(1), "rss-anon+shmem"),
        }
    ] * 3 == [
        {unit: (u.pids, u.ram_bytes, u.ram_source) for unit, u in snap.units.items()}
        for snap in snaps
    ]


def test_pids_wanted_are_read_and_a_cgroup_procs_that_cannot_be_is_unknown_ram(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """The control for the test above: asked for PIDs (status, recording), the sampler
    reads a.service's cgroup.procs, which fails: that tenant's RAM is unknown."""
    cg = pids_world(tmp_path)
    fake_nvml.write([FakeGpu(UUID, mib(15360))])
    sampler = Sampler(
        NvmlSource(), ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", cg, cg)), pids=True
    )

    snap = sampler.sample(TWO_TENANTS, 0)
    sampler.close()

    assert {"a.service": ((), None, ""), "b.service": ((20,), mib(1), "rss-anon+shmem")} == {
        unit: (u.pids, u.ram_bytes, u.ram_source) for unit, u in snap.units.items()
    }


def test_status_lists_every_tenant_s_pids(fake_nvml: FakeNvmlState, tmp_path: Path) -> None:
    """`status` asks the sampler for PIDs, whatever sampler it is given."""
    from vramwatch.actuators.systemd import BusError
    from vramwatch.status import collect

    class NoBus:
        def unit_state(self, unit: str) -> Any:
            raise BusError("no bus", "no bus")

        def close(self) -> None:
            pass

    cg = pids_world(tmp_path)
    (cg / "system.slice" / "a.service" / "cgroup.procs").rmdir()
    (cg / "system.slice" / "a.service" / "cgroup.procs").write_text("10\n11\n")
    fake_nvml.write([FakeGpu(UUID, mib(15360))])
    sampler = Sampler(NvmlSource(), ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", cg, cg)))

    report = collect(TWO_TENANTS, sampler, NoBus())  # type: ignore[arg-type]

    assert {"a.service": [10, 11], "b.service": [20]} == {
        t["unit"]: t["pids"] for t in report["tenants"]
    }
