"""status.py: the report and its text, from literal snapshots."""

from __future__ import annotations

from vramwatch import config as cfg
from vramwatch.daemon import status_line
from vramwatch.model import GpuSample, HostSample, Snapshot
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
