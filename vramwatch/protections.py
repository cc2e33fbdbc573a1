"""Which kernel-level protections the tenants lack, for ``vramwatch check``.

vramwatch acts after a floor has been breached for ``grace``; the kernel can
act sooner and inside the unit. A tenant with a RAM budget whose unit sets
neither ``MemoryMax=`` nor ``MemoryHigh=`` can take the whole host down
before vramwatch's next sample (the 101 GB speech-to-text incident). The
limits are read from the running manager over D-Bus; this is advice, so a
bus that cannot be reached is reported, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from vramwatch import units
from vramwatch.actuators.systemd import BusError, UnitState
from vramwatch.config import Config

# The suggested hard limit leaves the tenant room above its budget, so that
# vramwatch (which restarts cleanly) acts before the kernel's OOM killer.
SUGGESTED_MAX_FACTOR = 1.25


class UnitReader(Protocol):
    def unit_state(self, unit: str) -> UnitState: ...


def _systemd_size(n_bytes: int) -> str:
    # systemd's M suffix is 1024**2 bytes.
    return f"{math.ceil(n_bytes / units.MIB)}M"


def advice(config: Config, states: Mapping[str, UnitState]) -> list[str]:
    """One sentence per missing protection, in config order; pure."""
    found: list[str] = []
    for tenant in config.tenants:
        state = states.get(tenant.unit)
        if state is None:
            continue
        if state.load_state != "loaded":
            found.append(
                f"{tenant.unit}: the {config.daemon.bus} manager has no such unit "
                f"(LoadState={state.load_state}); vramwatch can report it but not act on it"
            )
            continue
        if tenant.ram_bytes is None or not tenant.unit.endswith(".service"):
            continue
        budget = units.format_size(tenant.ram_bytes)
        if state.memory_max is None and state.memory_high is None:
            found.append(
                f"{tenant.unit}: RAM budget {budget} but no MemoryMax= or MemoryHigh= on the "
                "unit: nothing stops it before vramwatch's next sample; e.g. "
                f"systemctl set-property {tenant.unit} "
                f"MemoryMax={_systemd_size(int(tenant.ram_bytes * SUGGESTED_MAX_FACTOR))}"
            )
        elif state.memory_max is not None and state.memory_max < tenant.ram_bytes:
            found.append(
                f"{tenant.unit}: MemoryMax={units.format_size(state.memory_max)} is below its "
                f"RAM budget {budget}: the kernel's OOM killer acts inside the unit first"
            )
    return found


def read_states(config: Config, reader: UnitReader) -> tuple[dict[str, UnitState], str | None]:
    """Each tenant's unit state, or the bus problem that stopped the reading."""
    states: dict[str, UnitState] = {}
    for tenant in config.tenants:
        if tenant.id.is_container:
            continue  # not a unit: systemd knows nothing of it
        try:
            states[tenant.unit] = reader.unit_state(tenant.unit)
        except BusError as exc:
            if exc.name.startswith("org.freedesktop.systemd1."):
                continue  # about this unit only (e.g. an invalid name): the rest can be read
            return states, exc.detail
    return states, None
