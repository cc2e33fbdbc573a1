"""status.py: the report and its text, from literal snapshots."""

from __future__ import annotations

from vramwatch import config as cfg
from vramwatch.daemon import status_line
from vramwatch.model import GpuSample, HostSample, Snapshot, UnitUsage
from vramwatch.status import render_text, report

GIB = 1024**3
PARENT = "GPU-a1000000-0000-0000-0000-000000000000"
MIG0 = "MIG-a1000000-0000-0000-0000-000000000000"
MIG1 = "MIG-a1000000-0000-0000-0000-000000000001"
T4 = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
CONFIG = cfg.parse('[gpu]\nmin_free_vram = "10%"\n', "/etc/vramwatch.toml")


def snapshot(*gpus: GpuSample) -> Snapshot:
    return Snapshot(0, gpus, HostSample(64 * GIB, 32 * GIB), {})


def test_mig_devices_are_shown_under_their_gpu_each_with_its_own_floor() -> None:
    snap = snapshot(
        GpuSample(0, MIG0, "MIG 2g.20gb", 20 * GIB, 19 * GIB, GIB, parent_uuid=PARENT, mig_index=0),
        GpuSample(
            0, MIG1, "MIG 3g.40gb", 40 * GIB, 6 * GIB, 34 * GIB, parent_uuid=PARENT, mig_index=1
        ),
        GpuSample(1, T4, "Tesla T4", 15 * GIB, 5 * GIB, 10 * GIB),
    )

    text = render_text(report(CONFIG, snap, {}, None))

    assert [
        f"GPU 0 ({PARENT}): MIG mode",
        f"  MIG 0 MIG 2g.20gb ({MIG0}): free 1 GiB of 20 GiB, floor 2 GiB  BELOW FLOOR",
        f"  MIG 1 MIG 3g.40gb ({MIG1}): free 34 GiB of 40 GiB, floor 4 GiB",
        "GPU 1 Tesla T4: free 10 GiB of 15 GiB, floor 1.5 GiB",
    ] == [line for line in text.splitlines()[:7] if "unattributed" not in line]


def test_a_lost_gpu_says_lost_not_just_error() -> None:
    snap = snapshot(
        GpuSample(0, T4, "Tesla T4", None, None, None, (), "GPU_IS_LOST: GPU is lost", lost=True)
    )

    text = render_text(report(CONFIG, snap, {}, None))

    assert (
        f"GPU 0 Tesla T4 ({T4}): LOST (no enforcement; reset the GPU or reboot) "
        "GPU_IS_LOST: GPU is lost"
    ) == text.splitlines()[0]


def test_the_systemctl_status_line_names_mig_devices_and_lost_gpus_apart() -> None:
    snap = snapshot(
        GpuSample(0, MIG0, "MIG 2g.20gb", 20 * GIB, 19 * GIB, GIB, parent_uuid=PARENT, mig_index=0),
        GpuSample(
            0, MIG1, "MIG 3g.40gb", 40 * GIB, 6 * GIB, 34 * GIB, parent_uuid=PARENT, mig_index=1
        ),
        GpuSample(1, T4, "Tesla T4", None, None, None, (), "GPU_IS_LOST: GPU is lost", lost=True),
    )

    assert "GPU0:0 free 1 GiB; GPU0:1 free 34 GiB; GPU1 lost; RAM available 32 GiB" == (
        status_line(snap)
    )


PINNED = cfg.parse(
    f"""
[gpu]
min_free_vram = "10%"
[[tenant]]
unit = "whisper.service"
vram = "6GiB"
gpu = 0
[[tenant]]
unit = "frigate.service"
vram = "4GiB"
reserve = true
gpu = 0
[[tenant]]
unit = "llama-swap.service"
vram = "5GiB"
reserve = true
gpu = "{MIG1}"
""",
    "/etc/vramwatch.toml",
)


def test_a_pin_to_a_mig_gpu_shows_its_use_on_all_its_mig_devices_and_reserves_on_none() -> None:
    """whisper (gpu = 0) holds 2 GiB on each MIG device of GPU 0 and 5 GiB on GPU 1: its
    budget counts 4 GiB, not the 9 GiB that read as OVER. frigate (gpu = 0, reserving)
    names no MIG device and reserves nowhere; llama-swap reserves on MIG 1 only
    (issue 22, item 2)."""
    usage = {
        "whisper.service": UnitUsage(
            "whisper.service", 9 * GIB, {MIG0: 2 * GIB, MIG1: 2 * GIB, T4: 5 * GIB}, 0, ()
        ),
        "frigate.service": UnitUsage("frigate.service", 0, {}, 0, ()),
        "llama-swap.service": UnitUsage("llama-swap.service", 0, {}, 0, ()),
    }
    snap = Snapshot(
        0,
        (
            GpuSample(
                0, MIG0, "MIG 2g.20gb", 20 * GIB, 2 * GIB, 18 * GIB, parent_uuid=PARENT, mig_index=0
            ),
            GpuSample(
                0, MIG1, "MIG 3g.40gb", 40 * GIB, 2 * GIB, 38 * GIB, parent_uuid=PARENT, mig_index=1
            ),
            GpuSample(1, T4, "Tesla T4", 15 * GIB, 5 * GIB, 10 * GIB),
        ),
        HostSample(64 * GIB, 32 * GIB),
        usage,
    )

    rep = report(PINNED, snap, {}, None)

    assert [(2 * GIB, []), (9 * GIB, ["llama-swap.service"]), (int(1.5 * GIB), [])] == [
        (g["floor_bytes"], g["reserved_for"]) for g in rep["gpus"]
    ]
    assert [("whisper.service", 0, 4 * GIB), ("frigate.service", 0, 0)] == [
        (t["tenant"], t["gpu"], t["vram_bytes"]) for t in rep["tenants"][:2]
    ]
    assert "whisper.service" in [
        line.split()[0] for line in render_text(rep).splitlines() if "4 GiB / 6 GiB" in line
    ]


def test_a_reserve_of_unknown_use_is_left_out_of_the_floor_and_status_says_so() -> None:
    """llama-swap reserves 5 GiB on the T4 but NVML cannot say its processes' memory:
    the floor is 1.5 GiB, not 6.5 GiB, and the line says whose reserve is not counted
    (issue 22, item 8)."""
    config = cfg.parse(
        '[gpu]\nmin_free_vram = "10%"\n[[tenant]]\nunit = "llama-swap.service"\n'
        'vram = "5GiB"\nreserve = true\n',
        "/etc/vramwatch.toml",
    )
    usage = {"llama-swap.service": UnitUsage("llama-swap.service", None, {}, 0, ())}
    snap = Snapshot(
        0,
        (GpuSample(1, T4, "Tesla T4", 15 * GIB, 11 * GIB, 4 * GIB),),
        HostSample(64 * GIB, 32 * GIB),
        usage,
    )

    rep = report(config, snap, {}, None)

    assert (int(1.5 * GIB), 0, 5 * GIB, ["llama-swap.service"]) == (
        rep["gpus"][0]["floor_bytes"],
        rep["gpus"][0]["reserved_bytes"],
        rep["gpus"][0]["unproven_bytes"],
        rep["gpus"][0]["unproven_for"],
    )
    assert (
        "GPU 1 Tesla T4: free 4 GiB of 15 GiB, floor 1.5 GiB (not counted: up to 5 GiB "
        "reserved for llama-swap.service, whose VRAM use is unknown)"
    ) == render_text(rep).splitlines()[0]
