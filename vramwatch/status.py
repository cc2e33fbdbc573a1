"""``vramwatch status``: one look at the host, as text or JSON.

Process names, command lines and cgroup names belong to whoever started the
process: in text output every control or formatting character is escaped
(``\\n``, ``\\x1b``, ``\\u202e``) and long values are cut, so nobody can
draw a fake line or send escape sequences to root's terminal. JSON carries
them exactly (JSON escapes control characters itself).
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any

import psutil

from vramwatch.actuators.systemd import BusError, SystemdClient
from vramwatch.config import Config
from vramwatch.model import VRAM, Owner, Snapshot
from vramwatch.policy import Floor, counted_usage, gpu_floor_of, host_floor_of, reservations
from vramwatch.sampler import Sampler, manager_for
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs
from vramwatch.units import format_size


def collect(
    config: Config, sampler: Sampler | None = None, client: SystemdClient | None = None
) -> dict[str, Any]:
    """Sample once and ask systemd for each tenant's state; a dict ready for JSON.

    Containers are named through the Engine API whenever its socket answers,
    even with no container tenant; otherwise they show as their cgroup."""
    sampler = sampler or Sampler(NvmlSource(), ProcFs(), name_containers=True)
    sampler.pids = True  # status lists each tenant's processes
    snapshot = sampler.sample(config, time.monotonic_ns())
    sampler.close()
    client = client or SystemdClient(config.daemon.bus)
    states: dict[str, dict[str, Any]] = {}
    bus_error: str | None = None
    for tenant in config.tenants:
        if tenant.id.is_container:
            usage = snapshot.units.get(tenant.unit)
            if usage is None or (snapshot.engine_error is not None and not usage.containers):
                states[tenant.unit] = {"active_state": "unknown"}
            else:
                states[tenant.unit] = {
                    "active_state": "running" if usage.containers else "not running"
                }
            continue
        if bus_error is not None:
            states[tenant.unit] = {"active_state": "unknown"}
            continue
        try:
            state = client.unit_state(tenant.unit)
        except BusError as exc:
            bus_error = exc.detail
            states[tenant.unit] = {"active_state": "unknown"}
            continue
        states[tenant.unit] = {
            "load_state": state.load_state,
            "active_state": state.active_state,
            "sub_state": state.sub_state,
            "main_pid": state.main_pid,
            "memory_max_bytes": state.memory_max,
            "memory_high_bytes": state.memory_high,
        }
    client.close()
    return report(config, snapshot, states, bus_error)


def report(
    config: Config,
    snapshot: Snapshot,
    states: dict[str, dict[str, Any]],
    bus_error: str | None,
) -> dict[str, Any]:
    manager = manager_for(config.daemon.bus)
    tenant_units = {t.unit for t in config.tenants if not t.id.is_container}
    container_keys = {t.unit for t in config.tenants if t.id.is_container}

    def is_tenant(owner: Owner | None) -> bool:
        if owner is None:
            return False
        if owner.container is not None and owner.container.tenant(container_keys):
            return True
        return owner.unit_for(manager) in tenant_units

    gpus = []
    for gpu in snapshot.gpus:
        # The floor the policy reads (with reserves), shown even while the GPU reads
        # partly (its total known, its processes not); its reserves even without a total.
        kept = reservations(config, snapshot, gpu)
        effective = gpu_floor_of(config, snapshot, gpu, kept) if gpu.total_bytes else None
        floor = effective.floor_bytes if effective is not None else None
        parts = effective or Floor(0, kept)
        others = [
            {
                "pid": p.pid,
                "name": p.name,
                "cmdline": _cmdline(p.pid),
                "used_bytes": p.used_bytes,
                "owner": p.owner.label() if p.owner else None,
                "manager": p.owner.manager if p.owner else None,
                "container": p.owner.container.name if p.owner and p.owner.container else None,
                "container_id": p.owner.container_id if p.owner else None,
                "compose": p.owner.container.compose if p.owner and p.owner.container else None,
            }
            for p in gpu.processes
            if not is_tenant(p.owner)
        ]
        gpus.append(
            {
                "index": gpu.index,
                "uuid": gpu.uuid,
                "name": gpu.name,
                "total_bytes": gpu.total_bytes,
                "used_bytes": gpu.used_bytes,
                "free_bytes": gpu.free_bytes,
                "floor_bytes": floor,
                "reserved_bytes": parts.reserved_bytes,
                "reserved_for": parts.reserved_for,
                # Reserves left out of the floor: their tenants' VRAM use is unknown.
                "unproven_bytes": parts.unproven_bytes,
                "unproven_for": parts.unproven_for,
                "below_floor": (
                    gpu.free_bytes < floor if gpu.free_bytes is not None and floor else None
                ),
                "unattributed_bytes": gpu.unattributed_bytes,
                "error": gpu.error,
                "lost": gpu.lost,
                "parent_uuid": gpu.parent_uuid,
                "mig_index": gpu.mig_index,
                "other_processes": others,
            }
        )
    host = snapshot.host
    host_effective = host_floor_of(config, snapshot) if host.mem_total_bytes else None
    host_floor = host_effective.floor_bytes if host_effective is not None else None
    tenants = []
    for tenant in config.tenants:
        usage = snapshot.units.get(tenant.unit)
        tenants.append(
            {
                "unit": tenant.unit,
                "tenant": tenant.unit,
                "kind": tenant.kind.value,
                "containers": [
                    {"name": c.name, "id": c.id, "compose": c.compose}
                    for c in (usage.containers if usage else ())
                ],
                "protected": tenant.protected,
                "action": tenant.verb.value,
                # As its budget counts it: on its GPU alone when pinned (``gpu``).
                "vram_bytes": counted_usage(tenant, snapshot, VRAM),
                "vram_budget_bytes": tenant.vram_bytes,
                "gpu": tenant.gpu,
                "ram_bytes": usage.ram_bytes if usage else None,
                "ram_source": usage.ram_source if usage else "",
                "ram_budget_bytes": tenant.ram_bytes,
                "pids": list(usage.pids) if usage else [],
                **states.get(tenant.unit, {"active_state": "unknown"}),
            }
        )
    return {
        "config": config.path,
        "dry_run": config.daemon.dry_run,
        "nvml_error": snapshot.nvml_error,
        "bus_error": bus_error,
        # Shown only when a tenant is a container: otherwise the socket is optional.
        "engine_error": snapshot.engine_error if config.has_containers else None,
        "gpus": gpus,
        "host": {
            "mem_total_bytes": host.mem_total_bytes,
            "mem_available_bytes": host.mem_available_bytes,
            "floor_bytes": host_floor,
            "below_floor": (
                host.mem_available_bytes < host_floor
                if host.mem_available_bytes is not None and host_floor is not None
                else None
            ),
            "swap_total_bytes": host.swap_total_bytes,
            "swap_free_bytes": host.swap_free_bytes,
            "psi_some_avg10": host.psi_some_avg10,
            "psi_full_avg10": host.psi_full_avg10,
            "error": host.error,
        },
        "tenants": tenants,
    }


# Enough of a command line to tell two python3 workers apart (text output).
CMDLINE_MAX = 120
# Names (comm is 15 bytes; a cgroup name up to 255) and errors, in text output.
NAME_MAX = 64
TEXT_MAX = 200
# Characters that move the cursor, change the terminal or reorder text:
# C0/C1 controls, format characters (bidi overrides), line/paragraph
# separators, surrogates, private use and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(text: str, limit: int = TEXT_MAX) -> str:
    """``text`` safe for a terminal: unsafe characters escaped, at most ``limit`` characters.

    A cut value ends in "…"; an escape is never cut in half.
    """
    pieces: list[str] = []
    length = 0
    for ch in text:
        if ch in _NAMED:
            piece = _NAMED[ch]
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            code = ord(ch)
            if code < 0x100:
                piece = f"\\x{code:02x}"
            elif code < 0x10000:
                piece = f"\\u{code:04x}"
            else:
                piece = f"\\U{code:08x}"
        else:
            piece = ch
        pieces.append(piece)
        length += len(piece)
        if length > limit:
            while length > limit - 1:
                length -= len(pieces.pop())
            return "".join(pieces) + "…"
    return "".join(pieces)


def _cmdline(pid: int) -> str:
    """The command line of a process that holds VRAM, exact ("" if it is gone)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _vs(used: int | None, limit: int | None) -> str:
    text = format_size(used)
    if limit is None:
        return f"{text} (no budget)"
    over = used is not None and used > limit
    return f"{text} / {format_size(limit)}" + ("  OVER" if over else "")


def render_text(rep: dict[str, Any]) -> str:
    """The report for people; every string that came from outside goes through printable()."""
    lines: list[str] = []
    if rep["nvml_error"]:
        lines.append(f"GPUs: {printable(rep['nvml_error'])}")
    parent = None
    for gpu in rep["gpus"]:
        name = printable(gpu["name"] or "", NAME_MAX)
        # MIG devices are listed under their GPU, each with its own floor.
        indent, title = "", f"GPU {gpu['index']}"
        if gpu.get("parent_uuid") is not None:
            if gpu["parent_uuid"] != parent:
                parent = gpu["parent_uuid"]
                lines.append(f"GPU {gpu['index']} ({printable(parent, NAME_MAX)}): MIG mode")
            indent, title = "  ", f"MIG {gpu['mig_index']}"
        if gpu["error"]:
            what = "LOST (no enforcement; reset the GPU or reboot)" if gpu["lost"] else "ERROR"
            lines.append(
                f"{indent}{title} {name} ({printable(gpu['uuid'] or '', NAME_MAX)}): "
                f"{what} {printable(gpu['error'])}"
            )
            continue
        mark = "  BELOW FLOOR" if gpu["below_floor"] else ""
        uuid = f" ({gpu['uuid']})" if indent else ""
        lines.append(
            f"{indent}{title} {name}{uuid}: free {format_size(gpu['free_bytes'])} of "
            f"{format_size(gpu['total_bytes'])}, floor {format_size(gpu['floor_bytes'])}"
            + (
                f" ({format_size(gpu['reserved_bytes'])} reserved for "
                f"{printable(', '.join(gpu['reserved_for']), NAME_MAX)})"
                if gpu.get("reserved_bytes")
                else ""
            )
            + (
                f" (not counted: up to {format_size(gpu['unproven_bytes'])} reserved for "
                f"{printable(', '.join(gpu['unproven_for']), NAME_MAX)}, whose VRAM use is "
                "unknown)"
                if gpu.get("unproven_bytes")
                else ""
            )
            + mark
        )
        if gpu["unattributed_bytes"]:
            lines.append(
                f"{indent}  unattributed (no process claims it): "
                f"{format_size(gpu['unattributed_bytes'])}"
            )
        for proc in gpu["other_processes"]:
            owner = printable(proc["owner"], NAME_MAX) if proc["owner"] else "unknown"
            lines.append(
                f"{indent}  not a tenant: pid {proc['pid']} '{printable(proc['name'], NAME_MAX)}' "
                f"{format_size(proc['used_bytes'])} in {owner}"
                + (f" ({proc['manager']})" if proc["manager"] not in (None, "system") else "")
                + (f": {printable(proc['cmdline'], CMDLINE_MAX)}" if proc["cmdline"] else "")
            )
    host = rep["host"]
    if host["error"]:
        lines.append(f"host RAM: ERROR {printable(host['error'])}")
    else:
        mark = "  BELOW FLOOR" if host["below_floor"] else ""
        lines.append(
            f"host RAM: available {format_size(host['mem_available_bytes'])} of "
            f"{format_size(host['mem_total_bytes'])}, "
            f"floor {format_size(host['floor_bytes'])}{mark}"
        )
    if rep["bus_error"]:
        lines.append(f"systemd: {printable(rep['bus_error'])} (unit states unknown)")
    if rep.get("engine_error"):
        lines.append(f"containers: {printable(rep['engine_error'])} (container tenants unknown)")
    if rep["tenants"]:
        lines.append("")
        header = f"{'TENANT':<36} {'STATE':<22} {'VRAM / BUDGET':<28} {'RAM / BUDGET':<28} RAM FROM"
        lines.append(header)
        for t in rep["tenants"]:
            state = printable(t.get("active_state", "unknown"), NAME_MAX) + (
                " (protected)" if t["protected"] else ""
            )
            lines.append(
                f"{t['unit']:<36} {state:<22} {_vs(t['vram_bytes'], t['vram_budget_bytes']):<28} "
                f"{_vs(t['ram_bytes'], t['ram_budget_bytes']):<28} {t['ram_source'] or '-'}"
            )
            for c in t.get("containers", ()):
                lines.append(
                    f"  container {c['name']} {c['id'][:12]}"
                    + (f" (compose {c['compose']})" if c["compose"] else "")
                )
    if rep["dry_run"]:
        lines.append("\n(dry run: vramwatch only logs what it would do)")
    return "\n".join(line.rstrip() for line in lines)
