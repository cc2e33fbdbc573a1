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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from vramwatch.config import Config, FloorConfig, Tenant
from vramwatch.model import (
    RAM,
    VRAM,
    Action,
    Event,
    GpuSample,
    Resource,
    Snapshot,
    UnitUsage,
    Verb,
)
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
    """A resource held by an action taken (or, in dry run, that would have been)
    and not yet settled. One action holds every resource its unit was over
    budget on; ``cause`` is the resource key whose breach chose it."""

    unit: str
    resource: Resource
    gpu: int | None
    started_ns: int
    used_before_bytes: int
    budget_bytes: int
    dry_run: bool
    free_before_bytes: int | None = None  # free VRAM on that GPU, or MemAvailable, when acting
    floor_bytes: int | None = None  # that resource's floor when acting
    cause: str = ""

    @property
    def breached(self) -> bool:
        """The resource was under its floor when the action was taken."""
        return (
            self.free_before_bytes is not None
            and self.floor_bytes is not None
            and self.free_before_bytes < self.floor_bytes
        )


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class History:
    """What the policy remembers between ticks."""

    breach_since_ns: Mapping[str, int] = field(default_factory=dict)
    episodes: Mapping[str, int] = field(default_factory=dict)  # key -> last announcement
    actions_ns: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # unit -> times
    # What a dry run would have done: its own cooldown and storm limit, never enforcement's.
    dry_actions_ns: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # The last attempt whose call never reached the manager (no bus), per unit: it
    # spaces attempts by cooldown but is no restart (max_restarts, restart storm).
    unreached_ns: Mapping[str, int] = field(default_factory=dict)
    in_flight: Mapping[str, InFlight] = field(default_factory=dict)  # resource key ->
    told: frozenset[tuple[str, str, str]] = frozenset()  # (key, reason, unit) this episode
    storm_told_ns: Mapping[str, int] = field(default_factory=dict)  # unit -> rate_limited logged
    errors: Mapping[str, str] = field(default_factory=dict)  # source key -> current error
    error_fields: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    errors_told_ns: Mapping[str, int] = field(default_factory=dict)  # source key -> logged
    # resource key -> since when free VRAM is under the floor that the reserves of
    # tenants of unknown use would make (a breach that cannot be proven)
    unproven_since_ns: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    history: History
    # Each floor that could be read this tick, GPUs first, host RAM last: what metrics,
    # the debug tick and status show, so none of them works a floor out again.
    readings: tuple[Reading, ...] = ()


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reserving tenant on one GPU (SPEC "Budgets that are guarantees")."""

    unit: str
    budget_bytes: int
    used_bytes: int  # its VRAM on that GPU; a lower bound when not ``known``
    known: bool = True  # False: part of its use could not be read (N/A, a GPU failed)

    @property
    def reserved_bytes(self) -> int:
        """Added to the floor: its unused budget, or 0 while its use is unknown, so
        that a floor is never raised on a guess (the floor is then a lower bound)."""
        return max(0, self.budget_bytes - self.used_bytes) if self.known else 0

    @property
    def unproven_bytes(self) -> int:
        """What its reserve could be while its use is unknown: at most its budget less
        the part of its use that is known."""
        return 0 if self.known else max(0, self.budget_bytes - self.used_bytes)


def _reserved_sum(reserved: tuple[Reservation, ...]) -> int:
    return sum(r.reserved_bytes for r in reserved)


@dataclass(frozen=True, slots=True)
class Floor:
    """A floor's effective size: the configured floor plus the unused budgets reserved
    on it (a GPU's). A lower bound while a reserving tenant's use is unknown: that
    reserve is left out, and is its ``unproven`` part."""

    floor_bytes: int
    reserved: tuple[Reservation, ...] = ()  # the reserving tenants on that GPU

    @property
    def reserved_bytes(self) -> int:
        return _reserved_sum(self.reserved)

    @property
    def reserved_for(self) -> list[str]:
        return [r.unit for r in self.reserved if r.reserved_bytes]

    @property
    def unproven_bytes(self) -> int:
        """Reserves left out of the floor because their tenants' use is unknown."""
        return sum(r.unproven_bytes for r in self.reserved)

    @property
    def unproven_for(self) -> list[str]:
        return [r.unit for r in self.reserved if r.unproven_bytes]

    def text(self) -> str:
        """The floor, and what it is made of when budgets are reserved on it."""
        text = f"floor {format_size(self.floor_bytes)}"
        if not self.reserved_bytes:
            return text
        base = self.floor_bytes - self.reserved_bytes
        parts = ", ".join(
            f"{r.unit}, " + ("idle" if r.used_bytes == 0 else f"uses {format_size(r.used_bytes)}")
            for r in self.reserved
            if r.reserved_bytes
        )
        return (
            f"{text} ({format_size(base)} + {format_size(self.reserved_bytes)} reserved for "
            f"{parts})"
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """One floor as the policy read it this tick: a GPU or host RAM, its free memory
    and its effective floor; ``breached_since_ns`` when free has been under the floor
    (in :attr:`Decision.readings`; None from :func:`readings`, which keeps no history)."""

    key: str
    resource: Resource
    gpu: GpuSample | None
    free_bytes: int
    floor: Floor
    settings: FloorConfig
    breached_since_ns: int | None = None

    @property
    def floor_bytes(self) -> int:
        return self.floor.floor_bytes

    @property
    def reserved(self) -> tuple[Reservation, ...]:
        return self.floor.reserved

    @property
    def reserved_bytes(self) -> int:
        return self.floor.reserved_bytes

    @property
    def unproven_bytes(self) -> int:
        return self.floor.unproven_bytes

    @property
    def below(self) -> bool:
        """Free is under the floor now (a breach once it lasts for grace)."""
        return self.free_bytes < self.floor_bytes

    def floor_text(self) -> str:
        return self.floor.text()

    def where(self) -> str:
        return self.gpu.where if self.gpu is not None else "host MemAvailable"

    def free_text(self) -> str:
        # "free" for a GPU; MemAvailable is not MemFree, so no "free" for the host.
        return f"{self.gpu.where} free" if self.gpu is not None else "host MemAvailable"

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "resource": self.resource,
            "free_bytes": self.free_bytes,
            "floor_bytes": self.floor_bytes,
        }
        if self.gpu is not None:
            fields.update(_gpu_fields(self.gpu))
        if self.reserved_bytes:
            fields["reserved_bytes"] = self.reserved_bytes
            fields["reserved_for"] = self.floor.reserved_for
        if self.unproven_bytes:
            fields["unproven_bytes"] = self.unproven_bytes
            fields["unproven_for"] = self.floor.unproven_for
        return fields

    def breach_text(self, since_ns: int, now_ns: int) -> str:
        return (
            f"{self.free_text()} {format_size(self.free_bytes)} < {self.floor_text()} "
            f"for {format_duration(now_ns - since_ns)}"
        )


@dataclass(frozen=True, slots=True)
class _Candidate:
    tenant: Tenant
    used_bytes: int  # a lower bound when ``complete`` is False
    budget_bytes: int
    complete: bool = True  # False: a GPU could not be read; the unit uses at least this

    @property
    def over_bytes(self) -> int:
        return self.used_bytes - self.budget_bytes


class _Builder:
    """Mutable scratch state for one ``decide`` call."""

    def __init__(self, history: History) -> None:
        self.breach_since = dict(history.breach_since_ns)
        self.episodes = dict(history.episodes)
        self.actions_ns = dict(history.actions_ns)
        self.dry_actions_ns = dict(history.dry_actions_ns)
        self.unreached = dict(history.unreached_ns)
        self.in_flight = dict(history.in_flight)
        self.told = set(history.told)
        self.storm_told = dict(history.storm_told_ns)
        self.errors = dict(history.errors)
        self.error_fields = dict(history.error_fields)
        self.errors_told = dict(history.errors_told_ns)
        self.unproven_since = dict(history.unproven_since_ns)
        self.acted: set[str] = set()  # units acted on this tick
        self.readable: dict[str, Reading] = {}  # resource key -> this tick's reading
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
            dry_actions_ns=_frozen(self.dry_actions_ns),
            unreached_ns=_frozen(self.unreached),
            in_flight=_frozen(self.in_flight),
            told=frozenset(self.told),
            storm_told_ns=_frozen(self.storm_told),
            errors=_frozen(self.errors),
            error_fields=_frozen(self.error_fields),
            errors_told_ns=_frozen(self.errors_told),
            unproven_since_ns=_frozen(self.unproven_since),
        )


def decide(config: Config, snapshot: Snapshot, history: History) -> Decision:
    """Which unit to act on, if any, and why; plus the events that explain it."""
    b = _Builder(history)
    now = snapshot.now_ns
    _track_errors(b, snapshot)
    if not config.daemon.dry_run:
        _forget_dry_run(b)
    _prune_actions(b, config, now)
    resources = _resources(config, snapshot, b)
    b.readable = {res.key: res for res in resources}
    _settle_in_flight(b, config, snapshot)
    for res in resources:
        _guard(b, config, snapshot, res)
    published = tuple(
        replace(res, breached_since_ns=b.breach_since.get(res.key)) for res in resources
    )
    return Decision(tuple(b.actions), tuple(b.events), b.history(), published)


def sample_failed(history: History) -> History:
    """A tick with no sample: every grace streak ends (unknown is not breached)."""
    return replace(history, breach_since_ns=_frozen({}))


def _flight_keys(history: History, action: Action) -> set[str]:
    """Every resource key held by the action (its cause and what its unit was over on)."""
    flight = history.in_flight.get(action.resource_key)
    if flight is None:
        return set()
    return {
        key
        for key, other in history.in_flight.items()
        if other.unit == flight.unit and other.started_ns == flight.started_ns
    }


def action_failed(history: History, action: Action, *, reached: bool = True) -> History:
    """Forget the holds of an action that systemd never accepted.

    The attempt still counts for cooldown and ``max_restarts``, so a unit whose
    restart keeps failing is not hammered. An action that systemd accepted is
    not failed, even if waiting for its job timed out: it stays in flight.

    A call that never reached the manager (``reached=False``: no bus) restarted
    nothing: it is no restart for ``max_restarts`` (a storm of them would blame
    the tenant for the bus), but the next attempt still waits for ``cooldown``.
    """
    drop = _flight_keys(history, action)
    in_flight = {k: v for k, v in history.in_flight.items() if k not in drop}
    if reached:
        return replace(history, in_flight=_frozen(in_flight))
    times = list(history.actions_ns.get(action.unit, ()))
    unreached = dict(history.unreached_ns)
    if times:
        unreached[action.unit] = times.pop()
    actions_ns = dict(history.actions_ns)
    actions_ns[action.unit] = tuple(times)
    return replace(
        history,
        in_flight=_frozen(in_flight),
        actions_ns=_frozen(actions_ns),
        unreached_ns=_frozen(unreached),
    )


def action_cancelled(history: History, action: Action) -> History:
    """Undo an action dropped by the last-moment re-check: it never happened."""
    times = list(history.actions_ns.get(action.unit, ()))
    if times:
        times.pop()
    actions_ns = dict(history.actions_ns)
    actions_ns[action.unit] = tuple(times)
    return replace(action_failed(history, action), actions_ns=_frozen(actions_ns))


def still_justified(config: Config, snapshot: Snapshot, action: Action) -> str | None:
    """Re-check an action against a fresh snapshot; the reason to cancel, or None.

    Both halves of the decision must still hold: the floor is still breached
    (another action may have brought the memory back), and the unit is still
    proven over its budget.
    """
    tenant = config.tenant(action.unit)
    if tenant is None or tenant.protected:
        return f"{action.unit} is no longer an unprotected tenant"
    res = _reading(config, snapshot, action.resource_key)
    if res is None:
        return f"{_where_key(snapshot, action)} cannot be read now"
    if res.free_bytes >= res.floor_bytes:
        return (
            f"{res.free_text()} {format_size(res.free_bytes)} is back above floor "
            f"{format_size(res.floor_bytes)}"
        )
    used, complete = _tenant_used(config, snapshot, action.unit, action.resource)
    if used is None or (used <= action.budget_bytes and not complete):
        return f"{action.unit} {action.resource.upper()} usage is now unknown"
    if used <= action.budget_bytes:
        return (
            f"{action.unit} now uses {format_size(used)} {action.resource.upper()}, "
            f"within budget {format_size(action.budget_bytes)}"
        )
    return None


@dataclass(frozen=True, slots=True)
class Released:
    """What came back after a tenant's release command, per resource the action holds
    (its in-flight keys: ``gpu:<uuid>`` for VRAM on each GPU, ``ram``)."""

    came_back: tuple[str, ...]  # resource keys
    not_back: tuple[str, ...]
    # One phrase per resource, for the message: "VRAM on GPU 0", "RAM (uses 20 GiB ...)".
    came_back_text: tuple[str, ...] = ()
    not_back_text: tuple[str, ...] = ()

    @property
    def released(self) -> bool:
        return not self.not_back


def released(config: Config, snapshot: Snapshot, action: Action, history: History) -> Released:
    """After a tenant's release command: did the memory come back (SPEC "Release before
    restart")? Every resource the action holds must: one whose floor was breached when
    acting is back above it, or the unit is within budget there with its overage
    visible as free memory; one held only because the unit was over budget there (its
    floor was fine) is back when the unit is within that budget. A release that gives
    back the VRAM and keeps the RAM is not a release."""
    flights = {key: history.in_flight[key] for key in _flight_keys(history, action)}
    if not flights:  # an action the history does not hold (yet): its cause alone
        flights = {action.resource_key: _flight_of(action)}
    back: list[str] = []
    kept: list[str] = []
    back_text: list[str] = []
    kept_text: list[str] = []
    for key, flight in sorted(flights.items()):
        why_not = _not_back(config, snapshot, key, flight, cause=key == action.resource_key)
        where = "RAM" if key == RAM_KEY else f"VRAM on {_key_text(snapshot, key)}"
        if why_not is None:
            back.append(key)
            back_text.append(where)
        else:
            kept.append(key)
            kept_text.append(f"{where} ({why_not})")
    return Released(tuple(back), tuple(kept), tuple(back_text), tuple(kept_text))


def _flight_of(action: Action) -> InFlight:
    return InFlight(
        unit=action.unit,
        resource=action.resource,
        gpu=action.gpu,
        started_ns=0,
        used_before_bytes=action.used_bytes,
        budget_bytes=action.budget_bytes,
        dry_run=False,
        free_before_bytes=action.free_bytes,
        floor_bytes=action.floor_bytes,
        cause=action.resource_key,
    )


def _not_back(
    config: Config, snapshot: Snapshot, key: str, flight: InFlight, *, cause: bool
) -> str | None:
    """Why one held resource has not come back after a release, or None when it has."""
    res = _reading(config, snapshot, key)
    if res is None:
        return "cannot be read now"
    what = flight.resource.upper()
    used, complete = _tenant_used(config, snapshot, flight.unit, flight.resource)
    within = used is not None and complete and used <= flight.budget_bytes
    if cause or flight.breached:
        if res.free_bytes >= res.floor_bytes:
            return None
        before = flight.free_before_bytes
        rise = res.free_bytes - before if before is not None else 0
        if within and rise >= flight.used_before_bytes - flight.budget_bytes:
            return None
        return (
            f"{res.free_text()} {format_size(res.free_bytes)} < {res.floor_text()}; "
            + _use_text(used, complete, what, flight.budget_bytes)
        )
    if within:
        return None
    return _use_text(used, complete, what, flight.budget_bytes)


def _use_text(used: int | None, complete: bool, what: str, budget: int) -> str:
    if used is None:
        return f"its {what} use is unknown"
    return f"uses {_usage_text(used, complete)} {what}, budget {format_size(budget)}"


def _where_key(snapshot: Snapshot, action: Action) -> str:
    if action.resource_key == RAM_KEY:
        return "host memory"
    return f"GPU {action.gpu}" if action.gpu is not None else action.resource_key


def _tenant_used(
    config: Config | Tenant | None, snapshot: Snapshot, unit: str, resource: Resource
) -> tuple[int | None, bool]:
    """A tenant's usage as its budget counts it: a tenant pinned to one GPU (``gpu``)
    has its VRAM budget on that GPU alone. Pass the Tenant when it is at hand: finding
    it in the Config is a scan, and this runs per tenant per resource per tick."""
    usage = snapshot.units.get(unit)
    tenant = config.tenant(unit) if isinstance(config, Config) else config
    if resource != VRAM or tenant is None or tenant.gpu is None or usage is None:
        return _used(usage, resource)
    # On a GPU in MIG mode, its index or GPU- UUID is every MIG device of it: summed.
    devices = [gpu for gpu in snapshot.gpus if tenant.pinned_to(gpu)]
    if not devices:
        return 0, False  # the GPU it is pinned to is not there
    used = sum(usage.vram_by_gpu.get(gpu.uuid, 0) for gpu in devices)
    return used, usage.vram_bytes is not None and all(gpu.ok for gpu in devices)


def counted_usage(tenant: Tenant, snapshot: Snapshot, resource: Resource) -> int | None:
    """A tenant's usage as its budget counts it (its GPU alone when pinned: on a GPU in
    MIG mode, summed over its MIG devices), or None when it is not fully known. For
    status, so that it shows what the policy compares with the budget."""
    used, complete = _tenant_used(tenant, snapshot, tenant.unit, resource)
    return used if complete else None


def _used(usage: UnitUsage | None, resource: Resource) -> tuple[int | None, bool]:
    """A unit's usage of a resource, and whether it is complete.

    Incomplete VRAM (a GPU could not be read, or the driver could not say a
    process's memory) is the sum of what is known: a lower bound, which can
    prove a unit over its budget but never within it.
    """
    if usage is None:
        return None, False
    used = resource.used(usage)
    if used is not None:
        return used, True
    return resource.lower_bound(usage), False


def _usage_text(used: int, complete: bool) -> str:
    return ("" if complete else "at least ") + format_size(used)


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
    if snapshot.engine_error is not None:
        # Only container tenants are blinded: their usage is unknown, units read on.
        current["engine"] = (snapshot.engine_error, {"source": "engine"})
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
    if key == "engine":
        return "the container Engine API"
    if "gpu" in fields:
        return f"GPU {fields['gpu']} ({key[4:]})"
    return f"GPU {key[4:]}"


def _forget_dry_run(b: _Builder) -> None:
    """Enforcing starts with a clean slate: what a dry run would have done is forgotten."""
    b.dry_actions_ns.clear()
    for key, flight in list(b.in_flight.items()):
        if flight.dry_run:
            del b.in_flight[key]


def _prune_actions(b: _Builder, config: Config, now: int) -> None:
    keep_ns = max(config.daemon.restart_window_ns, config.daemon.cooldown_ns)
    for table in (b.actions_ns, b.dry_actions_ns):
        for unit, times in list(table.items()):
            recent = tuple(t for t in times if now - t < keep_ns)
            if recent:
                table[unit] = recent
            else:
                del table[unit]
    for unit, at in list(b.unreached.items()):
        if now - at >= config.daemon.cooldown_ns:
            del b.unreached[unit]


def _came_back(flight: InFlight, res: Reading) -> int | None:
    """How far the resource came back since the action, or None while it has not.

    Back above the floor, or the unit's overage visible as free memory: the
    unit's own figure dropping is not enough (an orphan outside the unit, or
    a process that has not exited yet, still holds the memory).
    """
    rise = res.free_bytes - (flight.free_before_bytes or res.free_bytes)
    if res.free_bytes >= res.floor_bytes:
        return rise
    over = flight.used_before_bytes - flight.budget_bytes
    if flight.free_before_bytes is not None and over > 0 and rise >= over:
        return rise
    return None


def _settle_in_flight(b: _Builder, config: Config, snapshot: Snapshot) -> None:
    now = snapshot.now_ns
    for key, flight in sorted(b.in_flight.items()):
        timed_out = now - flight.started_ns >= config.daemon.reclaim_timeout_ns
        if flight.dry_run:
            if timed_out:
                del b.in_flight[key]
            continue
        res = b.readable.get(key)
        used, complete = _tenant_used(config, snapshot, flight.unit, flight.resource)
        within = used is not None and complete and used <= flight.budget_bytes
        rise = _came_back(flight, res) if res is not None else None
        if flight.breached:
            settled = rise is not None
        else:
            # Held only because the unit was over budget here too: settled once the
            # unit is within budget and this floor is fine.
            settled = within and res is not None and res.free_bytes >= res.floor_bytes
        if not settled and not timed_out:
            continue
        del b.in_flight[key]
        _settled_event(b, flight, res, used, complete, settled, rise, now)


def _settled_event(
    b: _Builder,
    flight: InFlight,
    res: Reading | None,
    used: int | None,
    complete: bool,
    settled: bool,
    rise: int | None,
    now: int,
) -> None:
    elapsed = format_duration(now - flight.started_ns)
    what = flight.resource.upper()
    fields: dict[str, Any] = {
        "unit": flight.unit,
        "resource": flight.resource,
        "used_bytes": used,
        "budget_bytes": flight.budget_bytes,
        "used_before_bytes": flight.used_before_bytes,
    }
    if flight.gpu is not None:
        fields["gpu"] = flight.gpu
    if res is not None:
        fields["free_bytes"] = res.free_bytes
        fields["floor_bytes"] = res.floor_bytes
    now_text = "unknown" if used is None else _usage_text(used, complete)
    if settled and res is not None:
        freed = flight.used_before_bytes - used if used is not None else None
        came = (
            f"back above floor {format_size(res.floor_bytes)}"
            if res.free_bytes >= res.floor_bytes
            else f"up {format_size(rise or 0)}"
        )
        b.event(
            "reclaimed",
            "info",
            f"{flight.unit} released "
            + (f"{format_size(freed)} {what}" if freed is not None else what)
            + f" within {elapsed}: {res.free_text()} {format_size(res.free_bytes)} {came}; "
            f"unit now {now_text}, budget {format_size(flight.budget_bytes)}",
            freed_bytes=freed,
            **fields,
        )
        return
    if used is not None and used > flight.budget_bytes:
        message = (
            f"{flight.unit} still uses {now_text} {what} {elapsed} after the action (budget "
            f"{format_size(flight.budget_bytes)}): the memory may be held outside the unit "
            "(e.g. a docker-*.scope); other tenants may now be acted on"
        )
    else:
        where = (
            f"{res.free_text()} {format_size(res.free_bytes)} still under floor "
            f"{format_size(res.floor_bytes)}"
            if res is not None
            else f"{what} still unreadable"
        )
        message = (
            f"{where} {elapsed} after acting on {flight.unit}, which now uses {now_text} "
            f"{what} (budget {format_size(flight.budget_bytes)}): the memory it held may be "
            "kept by a process outside the unit (an orphan, a docker-*.scope) or taken by "
            "another; other tenants may now be acted on"
        )
    b.event("not_reclaimed", "warning", message, **fields)


def reservations(config: Config, snapshot: Snapshot, gpu: GpuSample) -> tuple[Reservation, ...]:
    """The reserving tenants on a GPU and what each keeps free there.

    A tenant reserves on the device it is pinned to, or on the only device there is;
    pinned to a whole GPU in MIG mode, on none (``config.mig_reserve_problems``). A
    tenant whose use there is not fully known reserves nothing: unknown is never 0 B
    used, and its budget is not put on the floor on a guess.
    """
    found = []
    for tenant in config.tenants:
        if tenant.vram_bytes is None or not tenant.reserves_on(gpu, len(snapshot.gpus)):
            continue
        usage = snapshot.units.get(tenant.unit)
        used = usage.vram_by_gpu.get(gpu.uuid, 0) if usage is not None else 0
        known = usage is not None and usage.vram_bytes is not None and gpu.ok
        found.append(Reservation(tenant.unit, tenant.vram_bytes, used, known))
    return tuple(found)


def gpu_floor_of(
    config: Config,
    snapshot: Snapshot,
    gpu: GpuSample,
    reserved: tuple[Reservation, ...] | None = None,
) -> Floor | None:
    """A GPU's effective floor: min_free_vram plus the budgets reserved on it
    (``reserved``: :func:`reservations`, when the caller has them already); None while
    its total is unknown. A lower bound while a reserving tenant's use is unknown."""
    if gpu.total_bytes is None:
        return None
    if reserved is None:
        reserved = reservations(config, snapshot, gpu)
    return Floor(config.gpu.floor.resolve(gpu.total_bytes) + _reserved_sum(reserved), reserved)


def gpu_floor(
    config: Config,
    snapshot: Snapshot,
    gpu: GpuSample,
    reserved: tuple[Reservation, ...] | None = None,
) -> int | None:
    """:func:`gpu_floor_of` in bytes."""
    floor = gpu_floor_of(config, snapshot, gpu, reserved)
    return floor.floor_bytes if floor is not None else None


def host_floor_of(config: Config, snapshot: Snapshot) -> Floor | None:
    """Host RAM's floor (min_available_ram), or None while MemTotal is unknown."""
    total = snapshot.host.mem_total_bytes
    return Floor(config.host.floor.resolve(total)) if total is not None else None


def _gpu_reading(config: Config, snapshot: Snapshot, gpu: GpuSample) -> Reading | None:
    if not gpu.ok:
        return None
    assert gpu.free_bytes is not None
    floor = gpu_floor_of(config, snapshot, gpu)
    assert floor is not None
    return Reading(gpu_key(gpu.uuid), VRAM, gpu, gpu.free_bytes, floor, config.gpu)


def _host_reading(config: Config, snapshot: Snapshot) -> Reading | None:
    host = snapshot.host
    if not host.ok:
        return None
    assert host.mem_available_bytes is not None
    floor = host_floor_of(config, snapshot)
    assert floor is not None
    return Reading(RAM_KEY, RAM, None, host.mem_available_bytes, floor, config.host)


def _reading(config: Config, snapshot: Snapshot, key: str) -> Reading | None:
    """One resource's reading in a snapshot, or None when it cannot be read."""
    if key == RAM_KEY:
        return _host_reading(config, snapshot)
    if snapshot.nvml_error is not None:
        return None
    for gpu in snapshot.gpus:
        if gpu_key(gpu.uuid) == key:
            return _gpu_reading(config, snapshot, gpu)
    return None


def readings(config: Config, snapshot: Snapshot) -> tuple[Reading, ...]:
    """Each floor that can be read in a snapshot, GPUs first and host RAM last, without
    its breach's start (that needs the history: :attr:`Decision.readings` has it)."""
    found: list[Reading] = []
    if snapshot.nvml_error is None:
        for gpu in snapshot.gpus:
            res = _gpu_reading(config, snapshot, gpu)
            if res is not None:
                found.append(res)
    host = _host_reading(config, snapshot)
    if host is not None:
        found.append(host)
    return tuple(found)


def _resources(config: Config, snapshot: Snapshot, b: _Builder) -> tuple[Reading, ...]:
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


def _end_episode(b: _Builder, key: str) -> None:
    b.episodes.pop(key, None)
    b.told = {t for t in b.told if t[0] != key}


def _guard(b: _Builder, config: Config, snapshot: Snapshot, res: Reading) -> None:
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


def _unproven(b: _Builder, res: Reading, now: int) -> None:
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


def _end_unproven(b: _Builder, key: str) -> None:
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
        used, complete = _tenant_used(tenant, snapshot, tenant.unit, res.resource)
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
    vram, _ = _tenant_used(tenant, snapshot, tenant.unit, VRAM)
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
    b: _Builder, config: Config, snapshot: Snapshot, cand: _Candidate, res: Reading
) -> str | None:
    """Why this over-budget tenant may not be acted on (and log it once), or None."""
    unit = cand.tenant.unit
    now = snapshot.now_ns
    usage_text = (
        f"uses {_usage_text(cand.used_bytes, cand.complete)} {res.resource.upper()}, "
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
            f"{_key_text(snapshot, key)} (held by the action on {other})"
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


def _last_attempt(b: _Builder, unit: str, times: tuple[int, ...]) -> int | None:
    """The last action on ``unit``, or attempt that never reached the manager."""
    attempts = [*times[-1:], *([b.unreached[unit]] if unit in b.unreached else [])]
    return max(attempts) if attempts else None


def _key_text(snapshot: Snapshot, key: str) -> str:
    if key == RAM_KEY:
        return "RAM"
    for gpu in snapshot.gpus:
        if gpu_key(gpu.uuid) == key:
            return gpu.where
    return key


def _act(
    b: _Builder, config: Config, snapshot: Snapshot, res: Reading, cand: _Candidate, since: int
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
        f"{_usage_text(cand.used_bytes, cand.complete)} {res.resource.upper()}, budget "
        f"{format_size(cand.budget_bytes)}" + (" (dry run)" if dry else "")
    )
    holds = _holds(config, snapshot, tenant)
    holds[res.key] = (
        res.resource,
        res.gpu.index if res.gpu is not None else None,
        cand.used_bytes,
        cand.budget_bytes,
    )
    also = sorted(_key_text(snapshot, key) for key in holds if key != res.key)
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
    b: _Builder,
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
