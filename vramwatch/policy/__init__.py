"""Decide: a pure function of (config, snapshot, history) -> Decision.

No I/O and no clock: time is ``snapshot.now_ns`` (monotonic), and everything
remembered between ticks lives in the frozen :class:`History` that ``decide``
returns. This package must not import ``vramwatch.sources`` or
``vramwatch.actuators`` (a test enforces it).

Rules (SPEC.md "Decision rules"):

* a floor is breached when every sample for at least ``grace`` is under it;
  a failed sample ends the streak (unknown is not "breached");
* the victim is the tenant over its budget for that resource by the most
  bytes (for a GPU floor: among tenants with memory on that GPU) that is not
  protected, not vramwatch itself, not in cooldown and not past
  ``max_restarts`` per ``restart_window``;
* a tenant within budget, or whose usage is unknown, is never acted on; known
  VRAM on the GPUs that could be read is a lower bound that can prove a tenant
  over budget when another GPU is unknown;
* a tenant pinned to a GPU in MIG mode by its index or GPU- UUID counts its
  usage summed over all the MIG devices of that GPU;
* a reserving tenant's unused budget is added to its GPU's floor; while its use
  is unknown it adds nothing (the floor is a lower bound), and a breach only its
  reserve would make is ``floor_unprovable``, once per episode;
* one incident, one victim: an action holds every resource its unit is over
  budget on (each GPU it uses, RAM), and no other tenant is acted on for a
  held resource until it settles: "reclaimed" when the resource came back
  (free back above the floor, or the overage visible as free memory), or
  "not_reclaimed" after ``reclaim_timeout``;
* what a dry run would do never counts against enforcement: its action times
  and holds are kept apart and dropped once enforcing;
* every refusal is logged once per breach episode; ``no_candidate`` names the
  biggest users, tenants or not.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from typing import Any

from vramwatch.config import Config, Tenant
from vramwatch.model import (
    RAM,
    VRAM,
    Action,
    Event,
    GpuSample,
    Resource,
    Snapshot,
    Verb,
)
from vramwatch.policy.health import HUNG_KEY, track_errors
from vramwatch.policy.history import REMINDER_NS, Builder, History, InFlight, frozen, prune_actions
from vramwatch.policy.inflight import (
    Released,
    action_cancelled,
    action_failed,
    forget_dry_run,
    released,
    settle_in_flight,
)
from vramwatch.policy.readings import (
    RAM_KEY,
    Floor,
    Reading,
    Reservation,
    amount_text,
    counted_usage,
    gpu_floor,
    gpu_floor_of,
    gpu_key,
    host_floor_of,
    key_text,
    reading_at,
    readings,
    reservations,
    tenant_used,
    where_key,
)
from vramwatch.units import format_duration, format_size

# What the daemon, metrics, status and replay use, all importable from vramwatch.policy.
__all__ = [
    "HUNG_KEY",
    "RAM_KEY",
    "REMINDER_NS",
    "TOP_USERS",
    "UNPROVEN",
    "Decision",
    "Floor",
    "History",
    "InFlight",
    "Reading",
    "Released",
    "Reservation",
    "action_cancelled",
    "action_failed",
    "biggest_users",
    "counted_usage",
    "decide",
    "gpu_floor",
    "gpu_floor_of",
    "gpu_key",
    "host_floor_of",
    "readings",
    "released",
    "reservations",
    "sample_failed",
    "still_justified",
]


# How many of the biggest users a no_candidate warning names.
TOP_USERS = 3


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    history: History
    # Each floor that could be read this tick, GPUs first, host RAM last: what metrics,
    # the debug tick and status show, so none of them works a floor out again.
    readings: tuple[Reading, ...] = ()


@dataclass(frozen=True, slots=True)
class _Candidate:
    tenant: Tenant
    used_bytes: int  # a lower bound when ``complete`` is False
    budget_bytes: int
    complete: bool = True  # False: a GPU could not be read; the unit uses at least this

    @property
    def over_bytes(self) -> int:
        return self.used_bytes - self.budget_bytes


def decide(config: Config, snapshot: Snapshot, history: History) -> Decision:
    """Which unit to act on, if any, and why; plus the events that explain it."""
    b = Builder(history)
    now = snapshot.now_ns
    track_errors(b, snapshot)
    if not config.daemon.dry_run:
        forget_dry_run(b)
    prune_actions(b, config, now)
    resources = _resources(config, snapshot, b)
    b.readable = {res.key: res for res in resources}
    settle_in_flight(b, config, snapshot)
    for res in resources:
        _guard(b, config, snapshot, res)
    published = tuple(
        replace(res, breached_since_ns=b.breach_since.get(res.key)) for res in resources
    )
    return Decision(tuple(b.actions), tuple(b.events), b.history(), published)


def sample_failed(history: History) -> History:
    """A tick with no sample: every grace streak ends (unknown is not breached)."""
    return replace(history, breach_since_ns=frozen({}))


def still_justified(config: Config, snapshot: Snapshot, action: Action) -> str | None:
    """Re-check an action against a fresh snapshot; the reason to cancel, or None.

    Both halves of the decision must still hold: the floor is still breached
    (another action may have brought the memory back), and the unit is still
    proven over its budget.
    """
    tenant = config.tenant(action.unit)
    if tenant is None or tenant.protected:
        return f"{action.unit} is no longer an unprotected tenant"
    res = reading_at(config, snapshot, action.resource_key)
    if res is None:
        return f"{where_key(snapshot, action)} cannot be read now"
    if res.free_bytes >= res.floor_bytes:
        return (
            f"{res.free_text()} {format_size(res.free_bytes)} is back above floor "
            f"{format_size(res.floor_bytes)}"
        )
    used, complete = tenant_used(config, snapshot, action.unit, action.resource)
    if used is None or (used <= action.budget_bytes and not complete):
        return f"{action.unit} {action.resource.upper()} usage is now unknown"
    if used <= action.budget_bytes:
        return (
            f"{action.unit} now uses {format_size(used)} {action.resource.upper()}, "
            f"within budget {format_size(action.budget_bytes)}"
        )
    return None


def _resources(config: Config, snapshot: Snapshot, b: Builder) -> tuple[Reading, ...]:
    """The floors to guard this tick; a resource that cannot be read ends its streak."""
    readable = readings(config, snapshot)
    known_keys = {RAM_KEY, *(gpu_key(gpu.uuid) for gpu in snapshot.gpus)}
    readable_keys = {r.key for r in readable}
    for key in list(b.breach_since):
        if key not in readable_keys:
            # Unknown is not breached: the floor must be seen breached in every sample.
            del b.breach_since[key]
    for key in list(b.unproven_since):
        if key not in readable_keys:
            _end_unproven(b, key)
    for key in list(b.episodes):
        if key not in known_keys:
            _end_episode(b, key)  # the GPU is gone
    return readable


def _end_episode(b: Builder, key: str) -> None:
    b.episodes.pop(key, None)
    b.told = {t for t in b.told if t[0] != key}


def _guard(b: Builder, config: Config, snapshot: Snapshot, res: Reading) -> None:
    now = snapshot.now_ns
    _unproven(b, res, now)
    if res.free_bytes >= res.floor_bytes:
        b.breach_since.pop(res.key, None)
        if res.key in b.episodes:
            _end_episode(b, res.key)
            b.event(
                "floor_recovered",
                "info",
                f"{res.free_text()} {format_size(res.free_bytes)} is back above floor "
                f"{format_size(res.floor_bytes)}",
                **res.fields(),
            )
        return
    since = b.breach_since.setdefault(res.key, now)
    if now - since < res.settings.grace_ns:
        return
    last_told = b.episodes.get(res.key)
    if last_told is None or now - last_told >= REMINDER_NS:
        b.episodes[res.key] = now
        b.event(
            "floor_breached",
            "warning",
            ("" if last_told is None else "still: ") + res.breach_text(since, now),
            breached_ns=now - since,
            **res.fields(),
        )
    flight = b.in_flight.get(res.key)
    if flight is not None:
        # One incident, one victim: the resource waits for the action that holds it.
        if flight.cause not in ("", res.key) and b.tell_once(res.key, "waiting", flight.unit):
            b.event(
                "waiting",
                "info",
                f"{res.breach_text(since, now)}; waiting for the action on {flight.unit} "
                f"(also over its {res.resource.upper()} budget here) to settle before acting "
                "on another tenant" + (" (dry run)" if flight.dry_run else ""),
                unit=flight.unit,
                **res.fields(),
            )
        return
    found, unknown = _candidates(config, snapshot, res)
    candidates = [c for c in found if c.tenant.unit not in b.acted]
    for cand in candidates:
        refusal = _refusal(b, config, snapshot, cand, res)
        if refusal is None:
            _act(b, config, snapshot, res, cand, since)
            return
    _no_candidate(b, config, snapshot, res, candidates, unknown, since)


UNPROVEN = "unprovable"  # the told token of a breach only an unknown reserve would make


def _unproven(b: Builder, res: Reading, now: int) -> None:
    """floor_unprovable, once per episode: free VRAM stays (for grace) under the floor
    that the reserves of tenants of unknown use would make, but not under the floor
    that is proven. No action: the breach cannot be proven (SPEC "Budgets that are
    guarantees"); its numbers let a person judge."""
    unproven = res.unproven_bytes
    if not unproven or res.free_bytes >= res.floor_bytes + unproven:
        _end_unproven(b, res.key)
        return
    since = b.unproven_since.setdefault(res.key, now)
    if res.free_bytes < res.floor_bytes or now - since < res.settings.grace_ns:
        return  # a proven breach speaks for itself (floor_breached)
    if not b.tell_once(res.key, UNPROVEN, ""):
        return
    units = ", ".join(r.unit for r in res.reserved if r.unproven_bytes)
    b.event(
        "floor_unprovable",
        "warning",
        f"{res.free_text()} {format_size(res.free_bytes)} would be under floor "
        f"{format_size(res.floor_bytes + unproven)} for {format_duration(now - since)} only "
        f"with the {format_size(unproven)} reserved for {units}, whose VRAM use is unknown; "
        f"without it, {res.floor_text()}: no action until that use is known",
        breached_ns=now - since,
        **res.fields(),
    )


def _end_unproven(b: Builder, key: str) -> None:
    b.unproven_since.pop(key, None)
    b.told.discard((key, UNPROVEN, ""))


def _candidates(
    config: Config, snapshot: Snapshot, res: Reading
) -> tuple[list[_Candidate], list[str]]:
    """Tenants proven over their budget for this resource, most over first; and the
    tenants with a budget whose usage is not fully known and not proven over."""
    found: list[_Candidate] = []
    unknown: list[str] = []
    for tenant in config.tenants:
        budget = res.resource.budget(tenant)
        if budget is None:
            continue
        if res.gpu is not None and tenant.gpu is not None and not tenant.pinned_to(res.gpu):
            continue  # pinned to another GPU: its budget is there
        usage = snapshot.units.get(tenant.unit)
        used, complete = tenant_used(tenant, snapshot, tenant.unit, res.resource)
        if used is None or used <= budget:
            if not complete:
                unknown.append(tenant.unit)
            continue
        assert usage is not None
        if res.gpu is not None and usage.vram_by_gpu.get(res.gpu.uuid, 0) <= 0:
            continue  # over budget, but freeing it would not help this GPU
        found.append(_Candidate(tenant, used, budget, complete))
    found.sort(key=lambda c: (-c.over_bytes, c.tenant.unit))
    return found, unknown


def _holds(
    config: Config, snapshot: Snapshot, tenant: Tenant
) -> dict[str, tuple[Resource, int | None, int, int]]:
    """Every resource a tenant is proven over budget on: key -> (resource, gpu, used, budget).

    Acting on it frees all of them at once, so one action holds them all.
    """
    usage = snapshot.units.get(tenant.unit)
    holds: dict[str, tuple[Resource, int | None, int, int]] = {}
    if usage is None:
        return holds
    vram, _ = tenant_used(tenant, snapshot, tenant.unit, VRAM)
    if tenant.vram_bytes is not None and vram is not None and vram > tenant.vram_bytes:
        devices = {g.uuid: g for g in snapshot.gpus}
        for uuid, n in usage.vram_by_gpu.items():
            device = devices.get(uuid)
            if n > 0 and (tenant.gpu is None or (device is not None and tenant.pinned_to(device))):
                index = device.index if device is not None else None
                holds[gpu_key(uuid)] = (VRAM, index, vram, tenant.vram_bytes)
    ram = usage.ram_bytes
    if tenant.ram_bytes is not None and ram is not None and ram > tenant.ram_bytes:
        holds[RAM_KEY] = (RAM, None, ram, tenant.ram_bytes)
    return holds


def _refusal(
    b: Builder, config: Config, snapshot: Snapshot, cand: _Candidate, res: Reading
) -> str | None:
    """Why this over-budget tenant may not be acted on (and log it once), or None."""
    unit = cand.tenant.unit
    now = snapshot.now_ns
    usage_text = (
        f"uses {amount_text(cand.used_bytes, cand.complete)} {res.resource.upper()}, "
        f"budget {format_size(cand.budget_bytes)}"
    )
    fields = dict(
        res.fields(), unit=unit, used_bytes=cand.used_bytes, budget_bytes=cand.budget_bytes
    )
    times = b.actions_ns.get(unit, ())
    if config.daemon.dry_run:
        # A dry run simulates its own cooldown and storm limit on top of real actions.
        times = tuple(sorted(times + b.dry_actions_ns.get(unit, ())))
    held_by = {
        key: b.in_flight[key].unit
        for key in _holds(config, snapshot, cand.tenant)
        if key != res.key and key in b.in_flight and b.in_flight[key].unit != unit
    }
    if unit == snapshot.self_unit:
        reason, text = "self", f"not acting on {unit}: it is vramwatch's own unit"
    elif cand.tenant.protected:
        reason, text = "protected", f"not acting on {unit}: protected; it {usage_text}"
    elif unit in snapshot.mps_units:
        reason = "mps"
        text = (
            f"not acting on {unit}: it runs the MPS server, which holds GPU memory for its "
            f"clients (restarting it would kill them all); it {usage_text}"
        )
    elif (last := _last_attempt(b, unit, times)) is not None and (
        now - last < config.daemon.cooldown_ns
    ):
        left = config.daemon.cooldown_ns - (now - last)
        reason = "cooldown"
        text = (
            f"not acting on {unit}: in cooldown for {format_duration(left)} more; it {usage_text}"
        )
    elif len(times) >= config.daemon.max_restarts:
        window = config.daemon.restart_window_ns
        told = b.storm_told.get(unit)
        if told is None or now - told >= window:
            b.storm_told[unit] = now
            b.event(
                "rate_limited",
                "error",
                f"not acting on {unit}: already acted on {len(times)} times within "
                f"{format_duration(window)} (max_restarts = {config.daemon.max_restarts}); "
                f"restart storm, fix the unit; it {usage_text}",
                actions=len(times),
                max_restarts=config.daemon.max_restarts,
                **fields,
            )
        return "rate_limited"
    elif held_by:
        reason = "held"
        where = ", ".join(
            f"{key_text(snapshot, key)} (held by the action on {other})"
            for key, other in sorted(held_by.items())
        )
        text = (
            f"not acting on {unit} yet: it is also over budget on {where}, which must "
            f"settle first (one incident, one victim); it {usage_text}"
        )
    else:
        return None
    if b.tell_once(res.key, reason, unit):
        b.event(
            "skipped",
            "info" if reason in ("cooldown", "held") else "warning",
            text,
            reason=reason,
            **fields,
        )
    return reason


def _last_attempt(b: Builder, unit: str, times: tuple[int, ...]) -> int | None:
    """The last action on ``unit``, or attempt that never reached the manager."""
    attempts = [*times[-1:], *([b.unreached[unit]] if unit in b.unreached else [])]
    return max(attempts) if attempts else None


def _act(
    b: Builder, config: Config, snapshot: Snapshot, res: Reading, cand: _Candidate, since: int
) -> None:
    now = snapshot.now_ns
    tenant = cand.tenant
    dry = config.daemon.dry_run
    verb = tenant.verb
    doing = {Verb.RESTART: "restarting", Verb.STOP: "stopping"}[verb]
    would = {Verb.RESTART: "would restart", Verb.STOP: "would stop"}[verb]
    message = (
        f"{would if dry else doing} {tenant.unit}: {res.breach_text(since, now)}; "
        f"{'container' if tenant.id.is_container else 'unit'} uses "
        f"{amount_text(cand.used_bytes, cand.complete)} {res.resource.upper()}, budget "
        f"{format_size(cand.budget_bytes)}" + (" (dry run)" if dry else "")
    )
    holds = _holds(config, snapshot, tenant)
    holds[res.key] = (
        res.resource,
        res.gpu.index if res.gpu is not None else None,
        cand.used_bytes,
        cand.budget_bytes,
    )
    also = sorted(key_text(snapshot, key) for key in holds if key != res.key)
    fields = dict(
        res.fields(),
        unit=tenant.unit,
        used_bytes=cand.used_bytes,
        budget_bytes=cand.budget_bytes,
        over_bytes=cand.over_bytes,
        action=verb.value,
        breached_ns=now - since,
        holds=sorted(holds),
    )
    if not cand.complete:
        fields["usage_complete"] = False
    if also:
        message += f"; also over budget on {', '.join(also)}, held until this settles"
    if dry and tenant.release:
        message += f"; would first run release: {shlex.join(tenant.release)}"
    b.acted.add(tenant.unit)
    table = b.dry_actions_ns if dry else b.actions_ns
    table[tenant.unit] = table.get(tenant.unit, ()) + (now,)
    for key, (resource, gpu_index, used, budget) in holds.items():
        reading = b.readable.get(key)
        b.in_flight[key] = InFlight(
            unit=tenant.unit,
            resource=resource,
            gpu=gpu_index,
            started_ns=now,
            used_before_bytes=used,
            budget_bytes=budget,
            dry_run=dry,
            free_before_bytes=reading.free_bytes if reading is not None else None,
            floor_bytes=reading.floor_bytes if reading is not None else None,
            cause=res.key,
        )
    if dry:
        b.event(f"would_{verb.value}", "warning", message, dry_run=True, **fields)
        return
    b.actions.append(
        Action(
            unit=tenant.unit,
            verb=verb,
            resource=res.resource,
            resource_key=res.key,
            gpu=res.gpu.index if res.gpu is not None else None,
            used_bytes=cand.used_bytes,
            budget_bytes=cand.budget_bytes,
            free_bytes=res.free_bytes,
            floor_bytes=res.floor_bytes,
            message=message,
            fields=fields,
        )
    )


def biggest_users(snapshot: Snapshot, gpu: GpuSample | None) -> list[tuple[str, int]]:
    """The biggest holders of a resource, tenants or not, as (label, bytes)."""
    totals: dict[str, int] = {}
    if gpu is not None:
        for proc in gpu.processes:
            # A user unit names its manager: a user's llm.service is not the system's.
            label = proc.owner.qualified_label() if proc.owner is not None else f"pid {proc.pid}"
            totals[label] = totals.get(label, 0) + (proc.used_bytes or 0)
        if gpu.unattributed_bytes:
            totals["(unattributed)"] = gpu.unattributed_bytes
    elif snapshot.ram_top:
        totals = dict(snapshot.ram_top)
    else:
        for unit, usage in snapshot.units.items():
            if usage.ram_bytes:
                totals[unit] = usage.ram_bytes
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def _no_candidate(
    b: Builder,
    config: Config,
    snapshot: Snapshot,
    res: Reading,
    refused: list[_Candidate],
    unknown: list[str],
    since: int,
) -> None:
    if not b.tell_once(res.key, "no_candidate", ""):
        return
    top = biggest_users(snapshot, res.gpu)[:TOP_USERS]
    top_text = ", ".join(f"{label} {format_size(n)}" for label, n in top) or "nobody visible"
    if refused:
        why = "every over-budget tenant was refused (see the skipped/rate_limited entries)"
    elif unknown:
        why = (
            f"no tenant is proven over its {res.resource.upper()} budget (usage not fully "
            f"known for {', '.join(unknown)})"
        )
    else:
        why = "no tenant is over its " + res.resource.upper() + " budget"
    fields: dict[str, Any] = {"top_users": [{"owner": label, "bytes": n} for label, n in top]}
    if unknown and not refused:
        fields["unknown_tenants"] = unknown
    b.event(
        "no_candidate",
        "warning",
        f"{res.breach_text(since, snapshot.now_ns)} but {why}; biggest users: {top_text}",
        **fields,
        **res.fields(),
    )
