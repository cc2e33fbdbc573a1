"""Issue 10 where the sources meet the loop: the real Daemon, policy and Sampler
over a fixture /proc and cgroup tree and the fake NVML, with a scripted actuator.

Each test is a case the parts got wrong together: the wrong unit attributed
(item 1), an unreadable /proc entry blinding a RAM breach (item 7), RAM read as
summed VmRSS (item 11), units of two managers merged in no_candidate (item 12).
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakenvml import FakeGpu, FakeMig, FakeNvmlState, FakeProcess, gib, mib
from vramwatch import config as cfg
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import JobOutcome, Verb
from vramwatch.sampler import Sampler
from vramwatch.sources.cgroups import CgroupLayout
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

S = 10**9
GIB = 2**30
UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
USER = "/user.slice/user-1000.slice/user@1000.service"


class Actuator:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Verb]] = []

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        self.calls.append((unit, verb))
        return JobOutcome(True, "done", "ok")


class Host:
    """A fixture host: /proc/PID entries and the unit cgroups (cgroup v2 unless
    ``memory_v1``: a hybrid host whose memory controller is on v1)."""

    def __init__(self, root: Path, available_kib: int, memory_v1: bool = False) -> None:
        self.root = root
        self.proc = root / "proc"
        self.proc.mkdir()
        (self.proc / "meminfo").write_text(
            f"MemTotal: 64000000 kB\nMemAvailable: {available_kib} kB\n"
            "SwapTotal: 0 kB\nSwapFree: 0 kB\n"
        )
        cg = root / "cgroup"
        if memory_v1:
            self.tracking = cg / "systemd"
            self.memory = cg / "memory"
            self.layout = CgroupLayout("hybrid", self.tracking, cg / "unified", self.memory)
        else:
            self.tracking = self.memory = cg
            self.layout = CgroupLayout("v2", cg, cg)
        self.memory_v1 = memory_v1

    def process(
        self, pid: int, cgroup: str, anon_kib: int = 0, shmem_kib: int = 0, file_kib: int = 0
    ) -> None:
        """A process in ``cgroup`` (its cgroup directory lists it)."""
        d = self.proc / str(pid)
        d.mkdir()
        line = f"1:name=systemd:{cgroup}\n0::/\n" if self.memory_v1 else f"0::{cgroup}\n"
        (d / "cgroup").write_text(line)
        (d / "comm").write_text("python3\n")
        rss_kib = anon_kib + shmem_kib + file_kib
        (d / "statm").write_text(f"9000000 {rss_kib * 1024 // os.sysconf('SC_PAGE_SIZE')} 0 0\n")
        (d / "status").write_text(
            f"Name:\tpython3\nVmRSS:\t{rss_kib} kB\nRssAnon:\t{anon_kib} kB\n"
            f"RssFile:\t{file_kib} kB\nRssShmem:\t{shmem_kib} kB\n"
        )
        unit = self.tracking / cgroup.lstrip("/")
        unit.mkdir(parents=True, exist_ok=True)
        with (unit / "cgroup.procs").open("a") as procs:
            procs.write(f"{pid}\n")

    def memory_cgroup(self, cgroup: str, anon: int, shmem: int, file: int) -> None:
        """The unit's memory cgroup as the kernel charges it: shared memory once."""
        d = self.memory / cgroup.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        if self.memory_v1:
            (d / "memory.stat").write_text(
                f"cache {file + shmem}\nrss {anon}\nshmem {shmem}\n"
                f"total_cache {file + shmem}\ntotal_rss {anon}\ntotal_shmem {shmem}\n"
                f"total_mapped_file {file}\n"
            )
            (d / "memory.usage_in_bytes").write_text(f"{anon + shmem + file}\n")
        else:
            (d / "memory.stat").write_text(
                f"anon {anon}\nfile {file + shmem}\nkernel 4096\nshmem {shmem}\n"
                f"file_mapped {file}\n"
            )
            (d / "memory.current").write_text(f"{anon + shmem + file + 4096}\n")


def daemon(
    tmp_path: Path, text: str, host: Host, gpus: list[FakeGpu], fake_nvml: FakeNvmlState
) -> tuple[Daemon, Actuator, io.StringIO, Callable[[list[int]], None]]:
    fake_nvml.write(gpus)
    path = tmp_path / "vramwatch.toml"
    path.write_text(text)
    out = io.StringIO()
    clock = [0]
    actuator = Actuator()
    sampler = Sampler(NvmlSource(), ProcFs(host.proc, layout=host.layout))
    d = Daemon(
        path,
        cfg.load(path),
        Ports(
            sampler,
            actuator,
            EventLog("stderr", "json", stream=out),
            clock=lambda: clock[0],
            notify=lambda state: False,
        ),
    )

    def run(seconds: list[int]) -> None:
        for s in seconds:
            clock[0] = s * S
            d.tick()

    return d, actuator, out, run


def events(out: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == name]


def one_gpu(free_mib: int, *procs: tuple[int, int]) -> list[FakeGpu]:
    """A 15 GiB GPU with ``free_mib`` free, (PID, MiB) processes using part of the rest."""
    return [
        FakeGpu(
            UUID,
            mib(15360),
            base_used_bytes=mib(15360 - free_mib - sum(m for _, m in procs)),
            processes=tuple(FakeProcess(pid, mib(m)) for pid, m in procs),
        )
    ]


# item 1: the unit systemd names ------------------------------------------------------

VRAM_TENANTS = """
[gpu]
min_free_vram = "2GiB"
grace = "1s"
[[tenant]]
unit = "ollama.service"
vram = "3000MiB"
[[tenant]]
unit = "batch.service"
vram = "3000MiB"
"""


def test_a_delegated_units_payload_is_that_units_and_the_namesake_is_not_restarted(
    tmp_path: Path, fake_nvml: FakeNvmlState
) -> None:
    """/system.slice/batch.service/ollama.service is batch.service's (Delegate=yes),
    not the host's ollama.service, which is within its budget."""
    host = Host(tmp_path, 60_000_000)
    host.process(100, "/system.slice/ollama.service")
    host.process(200, "/system.slice/batch.service/ollama.service")
    gpus = one_gpu(1000, (100, 1000), (200, 9000))
    d, actuator, out, run = daemon(tmp_path, VRAM_TENANTS, host, gpus, fake_nvml)

    run([0, 1, 2])
    d.sampler.close()

    assert [("batch.service", Verb.RESTART)] == actuator.calls


SYSTEM_WIDE_TENANTS = """
[gpu]
min_free_vram = "2GiB"
grace = "1s"
[[tenant]]
unit = "user@1000.service"
vram = "3000MiB"
[[tenant]]
unit = "systemd-nspawn@c1.service"
vram = "3000MiB"
"""


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        (
            "/machine.slice/systemd-nspawn@c1.service/payload/system.slice/llm.service",
            "systemd-nspawn@c1.service",
        ),
        (USER + "/app.slice/llm.service", "user@1000.service"),
        (USER + "/init.scope", "user@1000.service"),
    ],
    ids=["nspawn payload", "user unit", "user manager"],
)
def test_a_system_tenant_that_holds_a_container_or_a_user_manager_sees_all_its_vram(
    tmp_path: Path, fake_nvml: FakeNvmlState, cgroup: str, expected: str
) -> None:
    host = Host(tmp_path, 60_000_000)
    host.process(300, cgroup)
    d, actuator, out, run = daemon(
        tmp_path, SYSTEM_WIDE_TENANTS, host, one_gpu(1000, (300, 9000)), fake_nvml
    )

    run([0, 1, 2])
    d.sampler.close()

    assert [(expected, Verb.RESTART)] == actuator.calls


# item 7: an unreadable /proc entry -----------------------------------------------------

RAM_TENANT = """
[host]
min_available_ram = "10%"
grace = "1s"
[[tenant]]
unit = "stt.service"
ram = "1GiB"
"""


@pytest.mark.parametrize("error", [errno.EACCES, errno.EIO], ids=["EACCES", "EIO"])
def test_an_unreadable_process_does_not_stop_host_ram_guarding(
    tmp_path: Path, fake_nvml: FakeNvmlState, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """hidepid=1 or running as the vramwatch user: another user's /proc/PID files
    refuse reads. The breach is still acted on, and the biggest users still listed."""
    host = Host(tmp_path, 2_000_000)  # 2 GB available of 64 GB: under the 10% floor
    host.process(100, "/system.slice/stt.service", anon_kib=5 * 2**20)
    host.memory_cgroup("/system.slice/stt.service", anon=5 * GIB, shmem=0, file=0)
    host.process(200, "/user.slice/user-1001.slice/session-4.scope", anon_kib=2**20)
    prefix = os.fspath(host.proc / "200") + "/"
    real_open = os.open

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path).startswith(prefix):
            raise OSError(error, os.strerror(error), os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    d, actuator, out, run = daemon(tmp_path, RAM_TENANT, host, one_gpu(15000), fake_nvml)

    run([0, 1, 2])
    d.sampler.close()

    assert [("stt.service", Verb.RESTART)] == actuator.calls
    assert [] == events(out, "sampling_error")


# item 11: what a unit's RAM is ---------------------------------------------------------

POOL_TENANT = """
[host]
min_available_ram = "10%"
grace = "1s"
[[tenant]]
unit = "stt.service"
ram = "1GiB"
[[tenant]]
unit = "leaky.service"
ram = "1GiB"
"""


@pytest.mark.parametrize("memory_v1", [False, True], ids=["v2", "hybrid v1 memory"])
def test_a_worker_pool_sharing_memory_and_mapping_a_model_is_within_its_budget(
    tmp_path: Path, fake_nvml: FakeNvmlState, memory_v1: bool
) -> None:
    """Four workers share a 512 MiB segment and map a 2 GiB model file: their
    summed VmRSS is 10 GiB, the unit's memory 0.52 GiB. The tenant really over
    its budget is restarted, not the pool."""
    host = Host(tmp_path, 2_000_000, memory_v1=memory_v1)
    pool = "/system.slice/stt.service"
    for pid in (100, 101, 102, 103):
        host.process(pid, pool, anon_kib=2 * 2**10, shmem_kib=512 * 2**10, file_kib=2 * 2**20)
    host.memory_cgroup(pool, anon=8 * 2**20, shmem=512 * 2**20, file=2 * GIB)
    host.process(200, "/system.slice/leaky.service", anon_kib=3 * 2**20)
    host.memory_cgroup("/system.slice/leaky.service", anon=3 * GIB, shmem=0, file=0)
    d, actuator, out, run = daemon(tmp_path, POOL_TENANT, host, one_gpu(15000), fake_nvml)

    run([0, 1, 2])
    snapshot = d.sampler.sample(d.config, 3 * S)
    d.sampler.close()

    source = "memory.stat (v1)" if memory_v1 else "memory.stat"
    assert (520 * 2**20, source) == (
        snapshot.units["stt.service"].ram_bytes,
        snapshot.units["stt.service"].ram_source,
    )
    assert [("leaky.service", Verb.RESTART)] == actuator.calls


# item 12: two managers' units of one name --------------------------------------------

WITHIN_BUDGET = """
[gpu]
min_free_vram = "2GiB"
grace = "1s"
[[tenant]]
unit = "small.service"
vram = "3000MiB"
"""


def test_no_candidate_keeps_a_user_units_vram_apart_from_the_system_units_of_its_name(
    tmp_path: Path, fake_nvml: FakeNvmlState
) -> None:
    host = Host(tmp_path, 60_000_000)
    host.process(100, "/system.slice/llm.service")
    host.process(200, USER + "/app.slice/llm.service")
    host.process(300, "/system.slice/small.service")
    gpus = one_gpu(1000, (100, 6 * 1024), (200, 7 * 1024), (300, 500))
    d, actuator, out, run = daemon(tmp_path, WITHIN_BUDGET, host, gpus, fake_nvml)

    run([0, 1, 2])
    d.sampler.close()

    (event,) = events(out, "no_candidate")
    assert [
        {"owner": "llm.service (user@1000)", "bytes": 7 * GIB},
        {"owner": "llm.service", "bytes": 6 * GIB},
    ] == event["top_users"][:2]
    assert "llm.service (user@1000) 7 GiB, llm.service 6 GiB" in event["message"]
    assert [] == actuator.calls


# issue 22, item 2: a tenant pinned to a GPU in MIG mode ----------------------------------

PARENT = "GPU-a1000000-0000-0000-0000-000000000000"
MIG0 = "MIG-a1000000-0000-0000-0000-000000000000"
MIG1 = "MIG-a1000000-0000-0000-0000-000000000001"
MIG_PINNED = """
[gpu]
min_free_vram = "10%"
grace = "1s"
[[tenant]]
unit = "whisper.service"
vram = "3GiB"
gpu = {pin}
[[tenant]]
unit = "immich-ml.service"
vram = "3GiB"
"""


@pytest.mark.parametrize("pin", ["0", f'"{PARENT}"'], ids=["index", "GPU- UUID"])
def test_a_tenant_pinned_to_a_mig_gpu_is_charged_on_all_its_mig_devices_and_restarted(
    tmp_path: Path, fake_nvml: FakeNvmlState, pin: str
) -> None:
    """The A100 in MIG mode: whisper (gpu = 0, or the A100's GPU- UUID) has 2 GiB on MIG 0
    and 2.5 GiB on MIG 1, 1.5 GiB over its 3 GiB; immich has 4 GiB on MIG 1, 1 GiB over.
    MIG 1 (40 GiB, floor 4 GiB) has 3.5 GiB free. Before: whisper read 0 B (its first MIG
    device, or no device at all for the GPU- UUID) and immich was restarted."""
    host = Host(tmp_path, 60_000_000)
    host.process(100, "/system.slice/whisper.service")
    host.process(101, "/system.slice/whisper.service")
    host.process(200, "/system.slice/immich-ml.service")
    host.process(300, "/system.slice/ollama.service")  # no tenant
    a100 = FakeGpu(
        PARENT,
        gib(80),
        "NVIDIA A100-SXM4-80GB",
        mig=(
            FakeMig(MIG0, gib(20), "MIG 2g.20gb", (FakeProcess(100, gib(2)),)),
            FakeMig(
                MIG1,
                gib(40),
                "MIG 3g.40gb",
                (
                    FakeProcess(101, mib(2560)),
                    FakeProcess(200, gib(4)),
                    FakeProcess(300, mib(30 * 1024)),
                ),
            ),
        ),
    )
    d, actuator, out, run = daemon(tmp_path, MIG_PINNED.format(pin=pin), host, [a100], fake_nvml)

    run([0, 1, 2])
    d.sampler.close()

    assert [("whisper.service", Verb.RESTART)] == actuator.calls
    assert [
        (
            "restarting whisper.service: GPU 0 MIG 1 free 3.5 GiB < floor 4 GiB for 1s; unit uses "
            "4.5 GiB VRAM, budget 3 GiB; also over budget on GPU 0 MIG 0, held until this settles"
        )
    ] == [e["message"] for e in events(out, "restart")]


# issue 22, item 8: a reserving tenant whose VRAM use the driver cannot say ---------------

RESERVE_UNKNOWN = """
[gpu]
min_free_vram = "1GiB"
grace = "1s"
[[tenant]]
unit = "llama-swap.service"
vram = "5000MiB"
reserve = true
[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
"""


def test_a_reserving_tenant_of_unknown_use_reserves_nothing_and_the_breach_is_unprovable(
    tmp_path: Path, fake_nvml: FakeNvmlState
) -> None:
    """llama-swap holds 4.5 GiB the driver reports as N/A; immich is 500 MiB over its
    budget; 2.7 GiB free. Before: llama-swap read 0 B, its whole 4.9 GiB went on the
    floor (5.9 GiB) and immich was restarted for a breach nobody could prove."""
    host = Host(tmp_path, 60_000_000)
    host.process(100, "/system.slice/llama-swap.service")
    host.process(200, "/system.slice/immich-ml.service")
    t4 = FakeGpu(
        UUID,
        mib(15360),
        # the 4.5 GiB llama-swap holds is in the GPU's used memory, not in its process's
        base_used_bytes=mib(15360 - 2800 - 3500),
        processes=(FakeProcess(100, None), FakeProcess(200, mib(3500))),
    )
    d, actuator, out, run = daemon(tmp_path, RESERVE_UNKNOWN, host, [t4], fake_nvml)

    run([0, 1, 2, 3])
    d.sampler.close()

    assert [] == actuator.calls
    assert [(mib(2800), gib(1), mib(5000), ["llama-swap.service"])] == [
        (e["free_bytes"], e["floor_bytes"], e["unproven_bytes"], e["unproven_for"])
        for e in events(out, "floor_unprovable")
    ]
