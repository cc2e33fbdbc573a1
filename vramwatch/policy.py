"""Decide: a pure function of (config, snapshot, history) -> Decision.

No I/O and no clock: time is ``snapshot.now_ns`` (monotonic), and everything
remembered between ticks lives in the frozen :class:`History` that ``decide``
returns. This module must not import ``vramwatch.sources`` or
``vramwatch.systemd`` (a test enforces it).

Rules (SPEC.md "Decision rules"):

* a floor is breached when every sample for at least ``grace`` is under it;
  a failed sample ends the streak (unknown is not "breached");
* the victim is the tenant over its budget for that resource by the most
  bytes (for a GPU floor: among tenants with memory on that GPU) that is not
  protected, not vramwatch itself, not in cooldown and not past
  ``max_restarts`` per ``restart_window``;
* a tenant within budget, or whose usage is unknown, is never acted on;
* one action per resource in flight, until the unit's usage is back within
  budget ("reclaimed") or ``reclaim_timeout`` passes ("not_reclaimed");
* every refusal is logged once per breach episode; ``no_candidate`` names the
  biggest users, tenants or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from vramwatch.config import Config, FloorConfig, Tenant
from vramwatch.model import RAM, VRAM, Action, Event, GpuSample, Snapshot, Verb
from vramwatch.units import format_duration, format_size

# A breach that lasts is re-announced this often, so a journal reader who
# starts late still sees it, without one entry per tick.
REMINDER_NS = 300 * 10**9

# How many of the biggest users a no_candidate warning names.
TOP_USERS = 3

RAM_KEY = "ram"


def gpu_key(uuid: str) -> str:
    return f"gpu:{uuid}"


@dataclass(frozen=True, slots=True)
class InFlight:
    """An action taken (or, in dry run, that would have been) and not yet settled."""

    unit: str
    resource: str
    gpu: int | None
    started_ns: int
    used_before_bytes: int
    budget_bytes: int
    dry_run: bool


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class History:
    """What the policy remembers between ticks."""

    breach_since_ns: Mapping[str, int] = field(default_factory=dict)
    episodes: Mapping[str, int] = field(default_factory=dict)  # key -> last announcement
    actions_ns: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # unit -> times
    in_flight: Mapping[str, InFlight] = field(default_factory=dict)  # resource key ->
    told: frozenset[tuple[str, str, str]] = frozenset()  # (key, reason, unit) this episode
    storm_told_ns: Mapping[str, int] = field(default_factory=dict)  # unit -> rate_limited logged
    errors: Mapping[str, str] = field(default_factory=dict)  # source key -> current error
    error_fields: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    errors_told_ns: Mapping[str, int] = field(default_factory=dict)  # source key -> logged


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    history: History


@dataclass(frozen=True, slots=True)
class _Resource:
    """One floor to guard this tick: a GPU or host RAM."""

    key: str
    resource: str
    gpu: GpuSample | None
    free_bytes: int
    floor_bytes: int
    settings: FloorConfig

    def where(self) -> str:
        return self.gpu.where if self.gpu is not None else "host MemAvailable"

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "resource": self.resource,
            "free_bytes": self.free_bytes,
            "floor_bytes": self.floor_bytes,
        }
        if self.gpu is not None:
            fields.update(_gpu_fields(self.gpu))
        return fields

    def breach_text(self, since_ns: int, now_ns: int) -> str:
        # "free" for a GPU; MemAvailable is not MemFree, so no "free" for the host.
        what = f"{self.gpu.where} free" if self.gpu is not None else "host MemAvailable"
        return (
            f"{what} {format_size(self.free_bytes)} < floor "
            f"{format_size(self.floor_bytes)} for {format_duration(now_ns - since_ns)}"
        )


@dataclass(frozen=True, slots=True)
class _Candidate:
    tenant: Tenant
    used_bytes: int
    budget_bytes: int

    @property
    def over_bytes(self) -> int:
        return self.used_bytes - self.budget_bytes


class _Builder:
    """Mutable scratch state for one ``decide`` call."""

    def __init__(self, history: History) -> None:
        self.breach_since = dict(history.breach_since_ns)
        self.episodes = dict(history.episodes)
        self.actions_ns = dict(history.actions_ns)
        self.in_flight = dict(history.in_flight)
        self.told = set(history.told)
        self.storm_told = dict(history.storm_told_ns)
        self.errors = dict(history.errors)
        self.error_fields = dict(history.error_fields)
        self.errors_told = dict(history.errors_told_ns)
        self.acted: set[str] = set()  # units acted on this tick
        self.actions: list[Action] = []
        self.events: list[Event] = []

    def event(self, name: str, level: str, message: str, **fields: Any) -> None:
        self.events.append(Event(name, level, message, fields))

    def tell_once(self, key: str, reason: str, unit: str) -> bool:
        """True the first time (key, reason, unit) comes up in this breach episode."""
        token = (key, reason, unit)
        if token in self.told:
            return False
        self.told.add(token)
        return True

    def history(self) -> History:
        return History(
            breach_since_ns=_frozen(self.breach_since),
            episodes=_frozen(self.episodes),
            actions_ns=_frozen(self.actions_ns),
            in_flight=_frozen(self.in_flight),
            told=frozenset(self.told),
            storm_told_ns=_frozen(self.storm_told),
            errors=_frozen(self.errors),
            error_fields=_frozen(self.error_fields),
            errors_told_ns=_frozen(self.errors_told),
        )


def decide(config: Config, snapshot: Snapshot, history: History) -> Decision:
    """Which unit to act on, if any, and why; plus the events that explain it."""
    b = _Builder(history)
    now = snapshot.now_ns
    _track_errors(b, snapshot)
    _prune_actions(b, config, now)
    _settle_in_flight(b, config, snapshot)
    for res in _resources(config, snapshot, b):
        _guard(b, config, snapshot, res)
    return Decision(tuple(b.actions), tuple(b.events), b.history())


def action_failed(history: History, action: Action) -> History:
    """Forget the in-flight record of an action that did not happen.

    The attempt still counts for cooldown and ``max_restarts``, so a unit whose
    restart keeps failing is not hammered.
    """
    in_flight = {k: v for k, v in history.in_flight.items() if k != action.resource_key}
    return replace(history, in_flight=_frozen(in_flight))


def action_cancelled(history: History, action: Action) -> History:
    """Undo an action dropped by the last-moment re-check: it never happened."""
    times = list(history.actions_ns.get(action.unit, ()))
    if times:
        times.pop()
    actions_ns = dict(history.actions_ns)
    actions_ns[action.unit] = tuple(times)
    return replace(action_failed(history, action), actions_ns=_frozen(actions_ns))


def still_justified(config: Config, snapshot: Snapshot, action: Action) -> str | None:
    """Re-check an action against a fresh snapshot; the reason to cancel, or None."""
    tenant = config.tenant(action.unit)
    if tenant is None or tenant.protected:
        return f"{action.unit} is no longer an unprotected tenant"
    usage = snapshot.units.get(action.unit)
    used = (
        None
        if usage is None
        else (usage.vram_bytes if action.resource == VRAM else usage.ram_bytes)
    )
    if used is None:
        return f"{action.unit} {action.resource.upper()} usage is now unknown"
    if used <= action.budget_bytes:
        return (
            f"{action.unit} now uses {format_size(used)} {action.resource.upper()}, "
            f"within budget {format_size(action.budget_bytes)}"
        )
    return None


def _track_errors(b: _Builder, snapshot: Snapshot) -> None:
    """sampling_error when a source starts failing or fails differently; sampling_recovered."""
    current: dict[str, tuple[str, dict[str, Any]]] = {}
    if snapshot.nvml_error is not None:
        current["nvml"] = (snapshot.nvml_error, {"resource": VRAM})
    hung = _track_hung(b, snapshot)
    for gpu in snapshot.gpus:
        if hung:
            break  # every GPU is unknown because NVML is stuck: nvml_hung says it once
        if gpu.error is not None:
            fields: dict[str, Any] = {"resource": VRAM, **_gpu_fields(gpu)}
            if gpu.lost:
                fields["lost"] = True
            current[gpu_key(gpu.uuid)] = (gpu.error, fields)
    if snapshot.host.error is not None:
        current["host"] = (snapshot.host.error, {"resource": RAM})
    for key, (error, fields) in sorted(current.items()):
        if fields.get("lost"):
            _track_lost(b, key, error, fields)
            continue
        told = b.errors_told.get(key)
        changed = b.errors.get(key) != error
        # A lasting fault of one GPU or of host memory is repeated like a lasting breach.
        remind = key != "nvml" and told is not None and snapshot.now_ns - told >= REMINDER_NS
        if changed or remind:
            b.errors[key] = error
            b.error_fields[key] = fields
            b.errors_told[key] = snapshot.now_ns
            if key == "nvml":
                # No driver is a state of the host, not a fault of vramwatch: say it once.
                b.event("sampling_error", "warning", error, error=error, **fields)
                continue
            b.event(
                "sampling_error",
                "error",
                ("still: " if not changed else "")
                + f"cannot read {_source_name(key, fields)}: {error}; no action on it until it "
                "reads cleanly again",
                error=error,
                **fields,
            )
    for key in sorted(set(b.errors) - set(current)):
        if key == HUNG_KEY:
            continue
        if key.startswith("gpu:") and (snapshot.nvml_error is not None or hung):
            continue  # NVML as a whole is down: nothing can be said of this GPU yet
        del b.errors[key]
        b.errors_told.pop(key, None)
        fields = dict(b.error_fields.pop(key, {}))
        b.event(
            "sampling_recovered",
            "info",
            f"{_source_name(key, fields)} reads cleanly again",
            **fields,
        )


def _track_lost(b: _Builder, key: str, error: str, fields: dict[str, Any]) -> None:
    """A lost GPU (GPU_IS_LOST, RESET_REQUIRED) is said once: restarting tenants cannot
    bring it back, nothing is enforced on it, and a person must reset the GPU or reboot."""
    if b.error_fields.get(key, {}).get("lost"):
        b.errors[key] = error  # still lost; the wording of NVML's error may vary
        return
    b.errors[key] = error
    b.error_fields[key] = fields
    b.errors_told[key] = 0
    b.event(
        "gpu_lost",
        "error",
        f"{_source_name(key, fields)} is lost ({error}): no VRAM enforcement on it until it "
        "reads cleanly again; it needs a GPU reset or a reboot (check dmesg for Xid errors)",
        error=error,
        **fields,
    )


HUNG_KEY = "nvml_hung"


def _track_hung(b: _Builder, snapshot: Snapshot) -> bool:
    """nvml_hung when an NVML call misses its deadline, then reminders; recovered when it
    answers. True while it is stuck (every GPU in the snapshot is then unknown)."""
    hung_ns = snapshot.nvml_hung_ns
    now = snapshot.now_ns
    if hung_ns is None:
        if HUNG_KEY in b.errors:
            del b.errors[HUNG_KEY]
            b.errors_told.pop(HUNG_KEY, None)
            since = int(b.error_fields.pop(HUNG_KEY, {}).get("since_ns", now))
            b.event(
                "sampling_recovered",
                "info",
                f"NVML answers again after {format_duration(now - since)}; GPUs guarded again",
                resource=VRAM,
                hung_ns=now - since,
            )
        return False
    told = b.errors_told.get(HUNG_KEY)
    if told is None or now - told >= REMINDER_NS:
        b.errors[HUNG_KEY] = "hung"
        b.error_fields.setdefault(HUNG_KEY, {"since_ns": now - hung_ns})
        b.errors_told[HUNG_KEY] = now
        b.event(
            "nvml_hung",
            "error",
            ("still: " if told is not None else "")
            + f"NVML has not answered for {format_duration(hung_ns)}: every GPU is unknown "
            "and GPU sampling is skipped until it answers; host RAM is still guarded",
            resource=VRAM,
            hung_ns=hung_ns,
            gpus=len(snapshot.gpus),
        )
    return True


def _gpu_fields(gpu: GpuSample) -> dict[str, Any]:
    """Which device, for events: its index and UUID; a MIG device adds its MIG index
    and its GPU's UUID."""
    fields: dict[str, Any] = {"gpu": gpu.index, "gpu_uuid": gpu.uuid}
    if gpu.mig_index is not None:
        fields["mig"] = gpu.mig_index
        fields["parent_uuid"] = gpu.parent_uuid
    return fields


def _source_name(key: str, fields: Mapping[str, Any]) -> str:
    if key == "nvml":
        return "NVML"
    if key == "host":
        return "host memory"
    if "mig" in fields:
        return f"GPU {fields['gpu']} MIG {fields['mig']} ({key[4:]})"
    if "gpu" in fields:
        return f"GPU {fields['gpu']} ({key[4:]})"
    return f"GPU {key[4:]}"


def _prune_actions(b: _Builder, config: Config, now: int) -> None:
    keep_ns = max(config.daemon.restart_window_ns, config.daemon.cooldown_ns)
    for unit, times in list(b.actions_ns.items()):
        recent = tuple(t for t in times if now - t < keep_ns)
        if recent:
            b.actions_ns[unit] = recent
        else:
            del b.actions_ns[unit]


def _settle_in_flight(b: _Builder, config: Config, snapshot: Snapshot) -> None:
    now = snapshot.now_ns
    for key, flight in sorted(b.in_flight.items()):
        usage = snapshot.units.get(flight.unit)
        used: int | None
        if usage is None:
            used = None
        else:
            used = usage.vram_bytes if flight.resource == VRAM else usage.ram_bytes
        elapsed = format_duration(now - flight.started_ns)
        fields: dict[str, Any] = {
            "unit": flight.unit,
            "resource": flight.resource,
            "used_bytes": used,
            "budget_bytes": flight.budget_bytes,
            "used_before_bytes": flight.used_before_bytes,
        }
        if flight.gpu is not None:
            fields["gpu"] = flight.gpu
        if flight.dry_run:
            if now - flight.started_ns >= config.daemon.reclaim_timeout_ns:
                del b.in_flight[key]
            continue
        if used is not None and used <= flight.budget_bytes:
            del b.in_flight[key]
            freed = flight.used_before_bytes - used
            b.event(
                "reclaimed",
                "info",
                f"{flight.unit} released {format_size(freed)} {flight.resource.upper()} "
                f"within {elapsed}: now {format_size(used)}, budget "
                f"{format_size(flight.budget_bytes)}",
                freed_bytes=freed,
                **fields,
            )
        elif now - flight.started_ns >= config.daemon.reclaim_timeout_ns:
            del b.in_flight[key]
            b.event(
                "not_reclaimed",
                "warning",
                f"{flight.unit} still uses {format_size(used)} {flight.resource.upper()} "
                f"{elapsed} after the action (budget {format_size(flight.budget_bytes)}): the "
                "memory may be held outside the unit (e.g. a docker-*.scope); other tenants "
                "may now be acted on",
                **fields,
            )


def _resources(config: Config, snapshot: Snapshot, b: _Builder) -> Iterable[_Resource]:
    """The floors to guard this tick; a resource that cannot be read ends its streak."""
    readable: list[_Resource] = []
    known_keys: set[str] = {RAM_KEY}
    for gpu in snapshot.gpus:
        key = gpu_key(gpu.uuid)
        known_keys.add(key)
        if gpu.ok and snapshot.nvml_error is None:
            assert gpu.total_bytes is not None and gpu.free_bytes is not None
            floor = config.gpu.floor.resolve(gpu.total_bytes)
            readable.append(_Resource(key, VRAM, gpu, gpu.free_bytes, floor, config.gpu))
    host = snapshot.host
    if host.ok:
        assert host.mem_total_bytes is not None and host.mem_available_bytes is not None
        floor = config.host.floor.resolve(host.mem_total_bytes)
        readable.append(_Resource(RAM_KEY, RAM, None, host.mem_available_bytes, floor, config.host))
    readable_keys = {r.key for r in readable}
    for key in list(b.breach_since):
        if key not in readable_keys:
            # Unknown is not breached: the floor must be seen breached in every sample.
            del b.breach_since[key]
    for key in list(b.episodes):
        if key not in known_keys:
            _end_episode(b, key)  # the GPU is gone
    return readable


def _end_episode(b: _Builder, key: str) -> None:
    b.episodes.pop(key, None)
    b.told = {t for t in b.told if t[0] != key}


def _guard(b: _Builder, config: Config, snapshot: Snapshot, res: _Resource) -> None:
    now = snapshot.now_ns
    if res.free_bytes >= res.floor_bytes:
        b.breach_since.pop(res.key, None)
        if res.key in b.episodes:
            _end_episode(b, res.key)
            what = f"{res.where()} free" if res.gpu is not None else res.where()
            b.event(
                "floor_recovered",
                "info",
                f"{what} {format_size(res.free_bytes)} is back above floor "
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
    if res.key in b.in_flight:
        return  # one action per resource until reclaimed or reclaim_timeout
    candidates = [c for c in _candidates(config, snapshot, res) if c.tenant.unit not in b.acted]
    for cand in candidates:
        refusal = _refusal(b, config, snapshot, cand, res)
        if refusal is None:
            _act(b, config, snapshot, res, cand, since)
            return
    _no_candidate(b, config, snapshot, res, candidates, since)


def _candidates(config: Config, snapshot: Snapshot, res: _Resource) -> list[_Candidate]:
    """Tenants over their budget for this resource, most over first."""
    found: list[_Candidate] = []
    for tenant in config.tenants:
        budget = tenant.budget(res.resource)
        usage = snapshot.units.get(tenant.unit)
        if budget is None or usage is None:
            continue
        used = usage.vram_bytes if res.resource == VRAM else usage.ram_bytes
        if used is None or used <= budget:
            continue
        if res.gpu is not None and usage.vram_by_gpu.get(res.gpu.uuid, 0) <= 0:
            continue  # over budget, but freeing it would not help this GPU
        found.append(_Candidate(tenant, used, budget))
    found.sort(key=lambda c: (-c.over_bytes, c.tenant.unit))
    return found


def _refusal(
    b: _Builder, config: Config, snapshot: Snapshot, cand: _Candidate, res: _Resource
) -> str | None:
    """Why this over-budget tenant may not be acted on (and log it once), or None."""
    unit = cand.tenant.unit
    now = snapshot.now_ns
    usage_text = (
        f"uses {format_size(cand.used_bytes)} {res.resource.upper()}, "
        f"budget {format_size(cand.budget_bytes)}"
    )
    fields = dict(
        res.fields(), unit=unit, used_bytes=cand.used_bytes, budget_bytes=cand.budget_bytes
    )
    times = b.actions_ns.get(unit, ())
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
    elif times and now - times[-1] < config.daemon.cooldown_ns:
        left = config.daemon.cooldown_ns - (now - times[-1])
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
    else:
        return None
    if b.tell_once(res.key, reason, unit):
        b.event(
            "skipped", "info" if reason == "cooldown" else "warning", text, reason=reason, **fields
        )
    return reason


def _act(
    b: _Builder, config: Config, snapshot: Snapshot, res: _Resource, cand: _Candidate, since: int
) -> None:
    now = snapshot.now_ns
    tenant = cand.tenant
    dry = config.daemon.dry_run
    verb = tenant.verb
    doing = {Verb.RESTART: "restarting", Verb.STOP: "stopping"}[verb]
    would = {Verb.RESTART: "would restart", Verb.STOP: "would stop"}[verb]
    message = (
        f"{would if dry else doing} {tenant.unit}: {res.breach_text(since, now)}; unit uses "
        f"{format_size(cand.used_bytes)} {res.resource.upper()}, budget "
        f"{format_size(cand.budget_bytes)}" + (" (dry run)" if dry else "")
    )
    fields = dict(
        res.fields(),
        unit=tenant.unit,
        used_bytes=cand.used_bytes,
        budget_bytes=cand.budget_bytes,
        over_bytes=cand.over_bytes,
        action=verb.value,
        breached_ns=now - since,
    )
    b.acted.add(tenant.unit)
    b.actions_ns[tenant.unit] = b.actions_ns.get(tenant.unit, ()) + (now,)
    b.in_flight[res.key] = InFlight(
        unit=tenant.unit,
        resource=res.resource,
        gpu=res.gpu.index if res.gpu is not None else None,
        started_ns=now,
        used_before_bytes=cand.used_bytes,
        budget_bytes=cand.budget_bytes,
        dry_run=dry,
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
        )
    )


def biggest_users(snapshot: Snapshot, gpu: GpuSample | None) -> list[tuple[str, int]]:
    """The biggest holders of a resource, tenants or not, as (label, bytes)."""
    totals: dict[str, int] = {}
    if gpu is not None:
        for proc in gpu.processes:
            label = proc.owner.label() if proc.owner is not None else f"pid {proc.pid}"
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
    b: _Builder,
    config: Config,
    snapshot: Snapshot,
    res: _Resource,
    refused: list[_Candidate],
    since: int,
) -> None:
    if not b.tell_once(res.key, "no_candidate", ""):
        return
    top = biggest_users(snapshot, res.gpu)[:TOP_USERS]
    top_text = ", ".join(f"{label} {format_size(n)}" for label, n in top) or "nobody visible"
    if refused:
        why = "every over-budget tenant was refused (see the skipped/rate_limited entries)"
    else:
        why = "no tenant is over its " + res.resource.upper() + " budget"
    b.event(
        "no_candidate",
        "warning",
        f"{res.breach_text(since, snapshot.now_ns)} but {why}; biggest users: {top_text}",
        top_users=[{"owner": label, "bytes": n} for label, n in top],
        **res.fields(),
    )
