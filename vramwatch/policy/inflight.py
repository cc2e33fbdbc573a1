"""One incident, one victim: the resources an action holds until they settle
(reclaimed, not_reclaimed), and what a failed, cancelled or released action leaves."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vramwatch.config import Config
from vramwatch.model import (
    Action,
    Snapshot,
)
from vramwatch.policy.history import Builder, History, InFlight, frozen
from vramwatch.policy.readings import (
    RAM_KEY,
    Reading,
    amount_text,
    key_text,
    reading_at,
    tenant_used,
    use_text,
)
from vramwatch.units import format_duration, format_size


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
        return replace(history, in_flight=frozen(in_flight))
    times = list(history.actions_ns.get(action.unit, ()))
    unreached = dict(history.unreached_ns)
    if times:
        unreached[action.unit] = times.pop()
    actions_ns = dict(history.actions_ns)
    actions_ns[action.unit] = tuple(times)
    return replace(
        history,
        in_flight=frozen(in_flight),
        actions_ns=frozen(actions_ns),
        unreached_ns=frozen(unreached),
    )


def action_cancelled(history: History, action: Action) -> History:
    """Undo an action dropped by the last-moment re-check: it never happened."""
    times = list(history.actions_ns.get(action.unit, ()))
    if times:
        times.pop()
    actions_ns = dict(history.actions_ns)
    actions_ns[action.unit] = tuple(times)
    return replace(action_failed(history, action), actions_ns=frozen(actions_ns))


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
        where = "RAM" if key == RAM_KEY else f"VRAM on {key_text(snapshot, key)}"
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
    res = reading_at(config, snapshot, key)
    if res is None:
        return "cannot be read now"
    what = flight.resource.upper()
    used, complete = tenant_used(config, snapshot, flight.unit, flight.resource)
    within = used is not None and complete and used <= flight.budget_bytes
    if cause or flight.breached:
        if res.free_bytes >= res.floor_bytes:
            return None
        before = flight.free_before_bytes
        rise = res.free_bytes - before if before is not None else 0
        if within and rise >= flight.used_before_bytes - flight.budget_bytes:
            return None
        return f"{res.free_text()} {format_size(res.free_bytes)} < {res.floor_text()}; " + use_text(
            used, complete, what, flight.budget_bytes
        )
    if within:
        return None
    return use_text(used, complete, what, flight.budget_bytes)


def forget_dry_run(b: Builder) -> None:
    """Enforcing starts with a clean slate: what a dry run would have done is forgotten."""
    b.dry_actions_ns.clear()
    for key, flight in list(b.in_flight.items()):
        if flight.dry_run:
            del b.in_flight[key]


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


def settle_in_flight(b: Builder, config: Config, snapshot: Snapshot) -> None:
    now = snapshot.now_ns
    for key, flight in sorted(b.in_flight.items()):
        timed_out = now - flight.started_ns >= config.daemon.reclaim_timeout_ns
        if flight.dry_run:
            if timed_out:
                del b.in_flight[key]
            continue
        res = b.readable.get(key)
        used, complete = tenant_used(config, snapshot, flight.unit, flight.resource)
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
    b: Builder,
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
    now_text = "unknown" if used is None else amount_text(used, complete)
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
