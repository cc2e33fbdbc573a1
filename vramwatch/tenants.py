"""Journal fields that name a tenant (SPEC "Tenants": ``VRAMWATCH_TENANT`` on
every tenant event; ``VRAMWATCH_UNIT`` for units; ``VRAMWATCH_CONTAINER``,
``VRAMWATCH_CONTAINER_ID`` and, for a compose service, ``VRAMWATCH_COMPOSE``
for containers)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vramwatch.model import Event, Snapshot, TenantId, TenantKind, UnitUsage


def tenant_fields(key: str, usage: UnitUsage | None = None) -> dict[str, Any]:
    """The fields naming tenant ``key``; ``usage`` gives a container tenant's ids."""
    ident = TenantId.from_key(key)
    if not ident.is_container:
        return {"tenant": key, "unit": key}
    containers = usage.containers if usage is not None else ()
    names = [c.name for c in containers]
    if not names and ident.kind is TenantKind.CONTAINER:
        names = [ident.name]
    return {
        "tenant": key,
        "unit": None,  # not a unit: no VRAMWATCH_UNIT, no OBJECT_SYSTEMD_UNIT
        "compose": ident.name if ident.kind is TenantKind.COMPOSE else None,
        "container": ",".join(names) or None,
        "container_id": ",".join(c.id for c in containers) or None,
    }


def with_tenant(event: Event, snapshot: Snapshot | None) -> Event:
    """An event about a tenant (it has a ``unit`` field, the policy's tenant key),
    with the fields that name that tenant."""
    key = event.fields.get("unit")
    if not isinstance(key, str) or "tenant" in event.fields:
        return event
    usage = snapshot.units.get(key) if snapshot is not None else None
    return replace(event, fields={**event.fields, **tenant_fields(key, usage)})
