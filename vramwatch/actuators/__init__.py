"""Acting on tenants: an actuator per kind of tenant, behind :class:`vramwatch.model.Actuator`.

The policy names a tenant by its key only; :class:`Router` sends a unit's
action to systemd (:mod:`vramwatch.actuators.systemd`) and a container's or
compose service's to the Engine API (:mod:`vramwatch.actuators.containers`).
Release commands and after_action hooks run through
:mod:`vramwatch.actuators.commands`.
"""

from __future__ import annotations

from collections.abc import Callable

from vramwatch.model import Actuator, JobOutcome, TenantId, Verb


class Router:
    """Chooses the actuator by the tenant's kind; the policy never knows which."""

    def __init__(self, units: Actuator, containers: Actuator) -> None:
        self.units = units
        self.containers = containers

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        target = self.containers if TenantId.from_key(unit).is_container else self.units
        return target.act(unit, verb, should_stop)
