"""Acting on tenants: one :class:`Actuator` protocol, an actuator per kind of tenant.

The policy names a tenant by its key only; :class:`Router` sends a unit's
action to systemd (``vramwatch.systemd``) and a container's or compose
service's to the Engine API (:mod:`vramwatch.actuators.containers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vramwatch.model import TenantId, Verb
from vramwatch.systemd import JobOutcome


class Actuator(Protocol):
    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome: ...


class Router:
    """Chooses the actuator by the tenant's kind; the policy never knows which."""

    def __init__(self, units: Actuator, containers: Actuator) -> None:
        self.units = units
        self.containers = containers

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        target = self.containers if TenantId.from_key(unit).is_container else self.units
        return target.act(unit, verb, should_stop)
