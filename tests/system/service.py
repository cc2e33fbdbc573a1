"""Helpers for driving vramwatch inside a booted ``Machine``: units, the journal."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from tests.system.machine import Machine, MachineError

Event = dict[str, Any]

PAYLOAD = "/mnt/vramwatch-test"
DEB_DIR = "/mnt/vramwatch-deb"
# Where the NVIDIA driver puts its NVML library on Debian (amd64).
DRIVER_LIB = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
# The fake driver's state and the directory where tenants declare their VRAM.
FAKE_DIR = "/var/lib/fakenvml"


def show(m: Machine, unit: str, *props: str) -> dict[str, str]:
    out = m.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def identity(m: Machine, unit: str) -> tuple[str, str, str]:
    """(ActiveState, MainPID, InvocationID): a restart changes the last two."""
    s = show(m, unit, "ActiveState", "MainPID", "InvocationID")
    return s["ActiveState"], s["MainPID"], s["InvocationID"]


def events(m: Machine, name: str, *match: str) -> list[Event]:
    """vramwatch's journal entries of event ``name`` (and any more FIELD=value matches)."""
    out = m.run(
        "journalctl",
        "-u",
        "vramwatch",
        f"VRAMWATCH_EVENT={name}",
        *match,
        "-o",
        "json",
        "--no-pager",
        check=False,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise MachineError(f"no {what} within {timeout:.0f}s")
        time.sleep(every)


def wait_event(m: Machine, name: str, *match: str, count: int = 1, timeout: float = 30) -> Event:
    """The ``count``-th entry of event ``name`` (the latest when there are more)."""
    found: list[Event] = wait_for(
        f"{name} entry {' '.join(match)} (#{count})",
        lambda: (e := events(m, name, *match)) and len(e) >= count and e,
        timeout,
    )
    return found[-1]


def wait_restarted(
    m: Machine, unit: str, before: tuple[str, str, str], timeout: float = 20
) -> tuple[str, str, str]:
    """The unit's identity once it is active again as a new process (the restart
    entry is logged when the job is queued, before the old process is gone)."""
    return wait_for(  # type: ignore[no-any-return]
        f"{unit} active again with a new MainPID",
        lambda: (now := identity(m, unit))[0] == "active" and now[1] != before[1] and now,
        timeout,
    )


def tenant_unit(name: str, vram_mib: int, ram_mib: int = 16) -> str:
    """A tenant service: holds ``ram_mib`` of RAM and, the first time it ever runs,
    declares ``vram_mib`` on the fake GPU 0 for its PID (after a restart it is clean)."""
    return f"""[Unit]
Description=vramwatch test tenant {name}

[Service]
Type=notify
ExecStart=/usr/bin/python3 {PAYLOAD}/tenant.py --procdir {FAKE_DIR}/procs \\
    --vram-mib {vram_mib} --vram-once {FAKE_DIR}/{name}.once --ram-mib {ram_mib}
"""


def security_exposure(m: Machine, unit: str = "vramwatch.service") -> float:
    """`systemd-analyze security UNIT` on the live unit: the overall exposure level."""
    out = m.run("systemd-analyze", "security", "--no-pager", unit).stdout
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", out)
    assert found, out
    return float(found.group(1))
