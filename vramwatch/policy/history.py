"""What the policy remembers between ticks (:class:`History`, its :class:`InFlight`
holds), and the scratch state one ``decide`` call builds the next history in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vramwatch.config import Config
from vramwatch.model import (
    Action,
    Event,
    Resource,
)
from vramwatch.policy.readings import Reading

# A breach that lasts is re-announced this often, so a journal reader who
# starts late still sees it, without one entry per tick.
REMINDER_NS = 300 * 10**9


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


def frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
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


class Builder:
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
            breach_since_ns=frozen(self.breach_since),
            episodes=frozen(self.episodes),
            actions_ns=frozen(self.actions_ns),
            dry_actions_ns=frozen(self.dry_actions_ns),
            unreached_ns=frozen(self.unreached),
            in_flight=frozen(self.in_flight),
            told=frozenset(self.told),
            storm_told_ns=frozen(self.storm_told),
            errors=frozen(self.errors),
            error_fields=frozen(self.error_fields),
            errors_told_ns=frozen(self.errors_told),
            unproven_since_ns=frozen(self.unproven_since),
        )


def prune_actions(b: Builder, config: Config, now: int) -> None:
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
