"""systemd's unit names: the one grammar, for the cgroup tree and for tenants.

As unit-name.c has it: a name is a stem of VALID_CHARS (``[A-Za-z0-9:_.\\-]``,
plus "@" for a template or its instance) and a unit type after the last ".",
at most 255 bytes (UNIT_NAME_MAX is 256 with the NUL). ``foo@bar.service`` is
an instance of the template ``foo@.service``, which itself never runs.
"""

from __future__ import annotations

import re

# unit_type_from_string()
UNIT_TYPES = frozenset(
    (
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "timer",
        "path",
        "slice",
        "scope",
    )
)
# What a tenant runs as: the unit types vramwatch restarts or stops.
TENANT_TYPES = frozenset(("service", "scope"))
NAME_MAX = 255

# The stem (everything before the last "."; where its "@" may stand is checked
# after) and the type. The pattern only admits ASCII: characters are bytes.
_NAME_RE = re.compile(r"([A-Za-z0-9:_.\\@-]+)\.([a-z]+)")


def is_valid(name: str) -> bool:
    """systemd's ``unit_name_is_valid(name, UNIT_NAME_PLAIN | UNIT_NAME_INSTANCE)``:
    a plain or instance name of any unit type; a template is neither."""
    match = _NAME_RE.fullmatch(name)
    if match is None or match[2] not in UNIT_TYPES or len(name) > NAME_MAX:
        return False
    at = name.find("@")
    # Not first; and when there, an instance between it and the type.
    return at < 0 or 0 < at < match.end(1) - 1


def tenant_problem(name: str) -> str | None:
    """The problem with ``name`` as the unit a tenant runs as, or ``None`` when it
    is one: a plain or instance service or scope. Stricter than :func:`is_valid`:
    the part before "@" may not end with "." nor the instance hold ".@"."""
    match = _NAME_RE.fullmatch(name)
    if match is None or match[2] not in TENANT_TYPES or len(name) > NAME_MAX:
        return (
            f'expected a systemd unit name such as "llama-server.service" or "job.scope", '
            f'got "{name}"'
        )
    stem, suffix = match[1], match[2]
    prefix, at, instance = stem.partition("@")
    if at and (not prefix or prefix.endswith(".") or ".@" in instance):
        return f'"{name}" is not a valid unit name'
    if at and not instance:
        return f'"{name}" is a template; name an instance such as "{stem}1.{suffix}"'
    return None
