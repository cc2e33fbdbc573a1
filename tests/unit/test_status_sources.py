"""`vramwatch status` report and text: where a tenant's RAM was read, and which
GPU processes belong to no tenant under systemd's attribution rule (issue 10)."""

from __future__ import annotations

from vramwatch import config as cfg
from vramwatch.model import GpuProcess, GpuSample, HostSample, Owner, Snapshot, UnitUsage
from vramwatch.status import render_text, report

MIB = 2**20
USER = "/user.slice/user-1000.slice/user@1000.service"
CONFIG = cfg.parse(
    """
[[tenant]]
unit = "llm.service"
ram = "1GiB"
[[tenant]]
unit = "user@1000.service"
vram = "3000MiB"
""",
    "/etc/vramwatch.toml",
)


def snapshot() -> Snapshot:
    procs = (
        GpuProcess(
            10,
            100 * MIB,
            "compute",
            "a",
            Owner(USER + "/app.slice/x.service", "x.service", "user@1000"),
        ),
        GpuProcess(
            20,
            200 * MIB,
            "compute",
            "b",
            Owner("/system.slice/llm.service", "llm.service", "system"),
        ),
        GpuProcess(
            30,
            300 * MIB,
            "compute",
            "c",
            Owner("/system.slice/other.service", "other.service", "system"),
        ),
    )
    gpu = GpuSample(0, "GPU-0", "Tesla T4", 15360 * MIB, 600 * MIB, 14760 * MIB, procs)
    units = {
        "llm.service": UnitUsage(
            "llm.service", 200 * MIB, {"GPU-0": 200 * MIB}, 520 * MIB, (20,), "memory.stat (v1)"
        ),
        "user@1000.service": UnitUsage(
            "user@1000.service",
            100 * MIB,
            {"GPU-0": 100 * MIB},
            9 * MIB,
            (10,),
            "rss-anon+shmem (partial)",
        ),
    }
    return Snapshot(0, (gpu,), HostSample(64 << 30, 32 << 30), units)


def test_status_names_where_each_tenants_ram_was_read() -> None:
    text = render_text(report(CONFIG, snapshot(), {}, None))

    rows = {line.split()[0]: line for line in text.splitlines() if line.endswith(")")}
    assert rows["llm.service"].endswith(" memory.stat (v1)")
    assert rows["user@1000.service"].endswith(" rss-anon+shmem (partial)")


def test_status_counts_a_user_managers_processes_as_its_system_tenants() -> None:
    """A user unit's GPU process belongs to the system tenant user@1000.service: it is
    not listed as "not a tenant"; another unit is."""
    rep = report(CONFIG, snapshot(), {}, None)

    assert [(30, "other.service", "system")] == [
        (p["pid"], p["owner"], p["manager"]) for p in rep["gpus"][0]["other_processes"]
    ]
