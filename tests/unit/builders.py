"""Literal snapshots shared by the loop, log-volume and metrics tests."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import vramwatch
from vramwatch.model import GpuProcess, GpuSample, HostSample, Owner, Snapshot, UnitUsage

MIB = 1024 * 1024
S = 10**9
UUID = "GPU-0"
GPU_MIB = 15360
PACKAGE = Path(vramwatch.__file__).parent


def one_gpu(
    now_ns: int,
    *,
    hog_mib: int = 0,
    free_mib: int = 1000,
    error: str | None = None,
    unit: str = "hog.service",
) -> Snapshot:
    """One 15360 MiB GPU on which ``unit`` (PID 100) uses ``hog_mib``; a 64 GiB host."""
    owner = Owner(f"/system.slice/{unit}", unit, "system")
    if error is not None:
        gpu = GpuSample(0, UUID, "Tesla T4", GPU_MIB * MIB, None, None, (), error)
        usage = UnitUsage(unit, None, {}, 0, ())
    else:
        gpu = GpuSample(
            0,
            UUID,
            "Tesla T4",
            GPU_MIB * MIB,
            (GPU_MIB - free_mib) * MIB,
            free_mib * MIB,
            (GpuProcess(100, hog_mib * MIB, "compute", "hog", owner),),
        )
        usage = UnitUsage(unit, hog_mib * MIB, {UUID: hog_mib * MIB}, 0, (100,))
    return Snapshot(now_ns, (gpu,), HostSample(64 << 30, 32 << 30), {unit: usage})


def emitted_event_names() -> set[str]:
    """Every event name the package emits: policy's b.event(...) and the loop's say(...)."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"event", "say"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return names


def notified(into: list[str]) -> Callable[[str], bool]:
    """An sd_notify stand-in that keeps what it was sent."""

    def notify(state: str) -> bool:
        into.append(state)
        return True

    return notify
