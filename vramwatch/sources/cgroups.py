"""cgroupfs: which unit or container a cgroup belongs to, and a unit's cgroup.

- The naming rule: systemd's ``cg_path_get_unit()`` over a cgroup path, and
  the container runtimes' scope names; ``/proc/PID/cgroup`` -> :class:`Owner`.
- The layout: cgroup v2, hybrid or v1 (:class:`CgroupLayout`).
- Locating a running unit's cgroup (:class:`Locator`): a walk of the slices,
  remembered; it returns a :class:`UnitCgroup`, a value that carries what
  finding it read, so what is read next never depends on what was called before.
- A cgroup's PIDs (``cgroup.procs``) and its RAM (``memory.stat``).

Cgroups are removed between any two reads: a vanished one is skipped, never an
error.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from vramwatch import unitname
from vramwatch.model import Owner
from vramwatch.sources.kernfs import GONE, counter, read

_USER_MANAGER_RE = re.compile(r"user@(\d+)\.service")

# A container's cgroup, by runtime and cgroup driver (a path component):
#   docker-<id>.scope   Docker, systemd driver (v1 and v2; rootless under user.slice)
#   libpod-<id>.scope   Podman, systemd driver (machine.slice, or user.slice rootless)
#   libpod-<id>         Podman, cgroupfs driver (/libpod_parent/libpod-<id>)
#   <id>                Docker, cgroupfs driver (/docker/<id>)
# "libpod-conmon-<id>.scope" is Podman's monitor, not the container: no match.
_CONTAINER_COMPONENT_RE = re.compile(r"(?:docker-|libpod-)?([0-9a-f]{64})(?:\.scope)?")

# Re-walking the cgroup tree to find a unit that is not running costs a
# directory scan per slice: do it at most this often per unit.
LOCATE_RETRY_NS = 10 * 10**9

# A unit as the sampler asks for it: (unit name, its manager: "system" or "user@UID").
UnitKey = tuple[str, str]


# the naming rule ------------------------------------------------------------


def cg_unescape(name: str) -> str:
    """Undo systemd's cg_escape(): names that start with "_" or "." or collide
    with a controller ("cpu.service") get a "_" prefix in cgroupfs."""
    return name[1:] if name.startswith("_") else name


def _is_slice(component: str) -> bool:
    name = cg_unescape(component)
    return name.endswith(".slice") and "@" not in name and unitname.is_valid(name)


def _unit_of(parts: list[str]) -> tuple[str | None, int]:
    """systemd's ``cg_path_get_unit()`` over path components: skip the slices;
    the first component after them is the unit (when it is a valid unit name
    and no slice), owning everything below it. Returns the unit and the index
    of the component after it."""
    i = 0
    while i < len(parts) and _is_slice(parts[i]):
        i += 1
    if i == len(parts):
        return None, i
    name = cg_unescape(parts[i])
    if not unitname.is_valid(name) or name.endswith(".slice"):
        return None, i
    return name, i + 1


def unit_of_cgroup_path(path: str) -> tuple[str | None, str]:
    """The unit systemd names for a cgroup path, and that unit's manager.

    systemd's rule (``cg_path_get_unit``, ``cg_path_get_user_unit``): skip the
    slices, the first unit after them owns every cgroup below it, whatever those
    are called (``/system.slice/batch.service/ollama.service`` is batch.service:
    a ``Delegate=yes`` unit's payload is its own). Only when that unit is
    ``user@UID.service`` is the rule applied once more below it, naming the
    user unit: ``/user.slice/user-1000.slice/user@1000.service/app.slice/x.service``
    gives ``("x.service", "user@1000")``. A process of the user manager that no
    user unit can be named for belongs to the system unit ``user@UID.service``.
    """
    parts = [p for p in path.split("/") if p]
    unit, rest = _unit_of(parts)
    if unit is None:
        return None, "system"
    match = _USER_MANAGER_RE.fullmatch(unit)
    if match is not None:
        user_unit, _ = _unit_of(parts[rest:])
        if user_unit is not None:
            return user_unit, f"user@{match[1]}"
    return unit, "system"


def container_of_cgroup_path(path: str) -> tuple[str, str] | None:
    """The container a cgroup path looks like it belongs to: (the 64-hex id of its
    first container-like component, the path up to that component), or None.

    ``/system.slice/docker-<id>.scope``, ``/docker/<id>``,
    ``/machine.slice/libpod-<id>.scope/container`` (Podman's nested cgroup)
    and the rootless forms under ``user@UID.service`` all look like one. A
    candidate only: any local user can name a scope ``docker-<id>.scope``, so
    a process is a container's only when the Engine API confirms it (see
    :meth:`vramwatch.sources.containers.Catalog.confirm`).
    """
    parts = path.split("/")
    for i, part in enumerate(parts):
        match = _CONTAINER_COMPONENT_RE.fullmatch(part)
        if match is not None:
            return match[1], "/".join(parts[: i + 1]) or "/"
    return None


def container_cgroup(path: str, ident: str) -> str | None:
    """A container's own cgroup from its main process's cgroup ``path``: the path up
    to the component that names ``ident`` (Podman's payload sits one level below
    ``libpod-<id>.scope``); None when no component names it."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        match = _CONTAINER_COMPONENT_RE.fullmatch(part)
        if match is not None and match[1] == ident:
            return "/".join(parts[: i + 1]) or "/"
    return None


def user_manager_uid(path: str) -> int | None:
    """The UID whose ``user@UID.service`` holds the cgroup ``path``; None for none."""
    for part in path.split("/"):
        match = _USER_MANAGER_RE.fullmatch(part)
        if match is not None:
            return int(match[1])
    return None


def parse_proc_cgroup(text: str, unified: bool = False) -> Owner | None:
    """``/proc/PID/cgroup`` -> Owner, read from the hierarchy systemd tracks units in.

    ``unified``: the host is cgroup v2 (systemd tracks units in ``0::``) even if
    a ``name=systemd`` v1 hierarchy is mounted somewhere (as LXC and old
    systemd containers do; its line then says ``/`` for everyone). Otherwise
    ``name=systemd`` wins over ``0::``.

    On a hybrid host systemd tracks units in the ``name=systemd`` hierarchy, and
    the v2 line is only ``0::/`` or a mirror of it.
    """
    v1 = v2 = None
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "name=systemd":
            v1 = path
        elif hier == "0" and controllers == "":
            v2 = path
    if unified:
        found = v2 if v2 is not None else v1
    else:
        found = v1 if v1 is not None else v2
    if found is None:
        return None
    # A path ending " (deleted)" means the cgroup was removed while the process lived.
    path = found.removesuffix(" (deleted)")
    unit, manager = unit_of_cgroup_path(path)
    container = container_of_cgroup_path(path)
    return Owner(
        cgroup=path,
        unit=unit,
        manager=manager,
        container_id=container[0] if container is not None else None,
    )


# the layout -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where units live: ``tracking`` is the hierarchy that mirrors units;
    ``memory`` is the cgroup v2 tree where a unit's ``memory.stat`` may be read;
    ``memory_v1`` the cgroup v1 memory controller's hierarchy, if mounted."""

    mode: str  # "v2", "hybrid" or "v1"
    tracking: Path
    memory: Path | None
    memory_v1: Path | None = None

    @classmethod
    def detect(cls, root: Path = Path("/sys/fs/cgroup")) -> CgroupLayout:
        if (root / "cgroup.controllers").exists():
            return cls("v2", root, root)
        unified = root / "unified"
        if (root / "systemd").is_dir():
            # Hybrid: the unified tree exists but the memory controller usually
            # stays on v1, where a unit has a cgroup only with memory accounting
            # on; probe both per unit.
            mode = "hybrid" if unified.is_dir() else "v1"
            memory_v1 = root / "memory" if (root / "memory").is_dir() else None
            return cls(mode, root / "systemd", unified if unified.is_dir() else None, memory_v1)
        return cls("v2", root, root)


def under(root: Path, cgroup: str) -> str:
    """``root/cgroup`` as str: these joins run per tenant per tick, pathlib's cost µs."""
    return f"{os.fspath(root)}/{cgroup.lstrip('/')}"


# a unit's cgroup ------------------------------------------------------------


class UnitCgroup(NamedTuple):
    """A running unit's cgroup, as :meth:`Locator.locate` (or a held descriptor)
    found it this tick, with what finding it read: :func:`unit_pids` and the RAM
    readers use these rather than read them again. A tuple, not a dataclass:
    one is made per tenant per tick."""

    cgroup: str  # relative to the tracking root, as Owner.cgroup
    path: str  # its directory
    links: int | None = None  # the directory's link count, when it was stat'ed
    procs: str | None = None  # its cgroup.procs, when read through a held descriptor
    memory_stat: str | None = None  # its memory.stat, the same


class Locator:
    """Finds running units' cgroups in the tracking tree, and remembers where."""

    def __init__(self, tracking: Path) -> None:
        self.tracking = tracking
        # Where each unit was found last, as last returned (the same value again
        # while its link count stays: no allocation per tenant per tick).
        self._located: dict[UnitKey, UnitCgroup] = {}
        self._not_found_until: dict[UnitKey, int] = {}

    def locate(self, key: UnitKey, now_ns: int) -> UnitCgroup | None:
        """The cgroup of a running unit; None when it is not running. Where it was
        found before is checked with one stat; a unit not found is looked for again
        at most every ``LOCATE_RETRY_NS``."""
        last = self._located.get(key)
        if last is not None:
            try:
                st = os.stat(last.path)
            except (OSError, ValueError):  # as os.path.isdir: gone or unreadable is not there
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                # unit_pids() needs the link count: one stat for both.
                if st.st_nlink != last.links:
                    last = self._located[key] = UnitCgroup(last.cgroup, last.path, st.st_nlink)
                return last
            del self._located[key]
        if now_ns < self._not_found_until.get(key, 0):
            return None
        found = self._walk_for(*key)
        if found is None:
            self._not_found_until[key] = now_ns + LOCATE_RETRY_NS
            return None
        self._not_found_until.pop(key, None)
        located = self._located[key] = UnitCgroup(found, under(self.tracking, found))
        return located

    def forget(self, key: UnitKey) -> None:
        """Drop what is remembered of a unit (e.g. after it was restarted)."""
        self._located.pop(key, None)
        self._not_found_until.pop(key, None)

    def _walk_for(self, unit: str, manager: str) -> str | None:
        """Search slices (and for a user unit, its user manager) for the unit's cgroup.

        The same rule as :func:`unit_of_cgroup_path`: only slices are descended,
        never a unit, so a sub-cgroup named ``x.service`` of a delegated unit is
        never taken for the unit ``x.service``.
        """
        root = self.tracking
        stack: list[tuple[Path, bool]] = [(root, manager == "system")]
        want_manager = f"{manager}.service" if manager != "system" else None
        while stack:
            directory, inside = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (*GONE, PermissionError):
                continue
            for entry in entries:
                name = entry.name
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if inside and cg_unescape(name) == unit:
                    return "/" + str(Path(entry.path).relative_to(root))
                if _is_slice(name):
                    stack.append((Path(entry.path), inside))
                elif not inside and want_manager is not None and name == want_manager:
                    stack.append((Path(entry.path), True))
                elif (
                    not inside
                    and want_manager is not None
                    and not unitname.is_valid(cg_unescape(name))
                ):
                    # Test beds and containers put the user manager under a plain
                    # directory; keep looking for it there.
                    stack.append((Path(entry.path), inside))
        return None


# cgroup.procs ---------------------------------------------------------------

# A cgroup.procs as the kernel writes it: one decimal PID a line.
_PIDS_RE = re.compile(r"(?:[0-9]{1,20}\n)*")


def parse_procs(text: str | None) -> tuple[int, ...]:
    """The PIDs of a ``cgroup.procs``; anything that is not a counter is skipped."""
    if not text:
        return ()
    if _PIDS_RE.fullmatch(text):
        return tuple(map(int, text.split()))
    return tuple(pid for p in text.split() if (pid := counter(p)) is not None)


def unit_pids(where: UnitCgroup) -> tuple[int, ...]:
    """Every PID in a cgroup and its sub-cgroups."""
    top = where.path
    links = where.links
    if links is None:
        try:
            links = os.stat(top).st_nlink
        except OSError:
            links = None
    if links == 2:
        # A directory's link count is 2 + its subdirectories (cgroupfs, tmpfs,
        # ext4; btrfs and overlayfs say 1: walked): a unit without sub-cgroups
        # needs no directory scan, the costliest read of a tenant's tick.
        text = where.procs
        return parse_procs(text if text is not None else read(f"{top}/cgroup.procs"))
    pids: list[int] = []
    for directory in _subtree(top):
        pids.extend(parse_procs(read(f"{directory}/cgroup.procs")))
    return tuple(pids)


def _subtree(top: str) -> Iterator[str]:
    stack = [top]
    while stack:
        directory = stack.pop()
        yield directory
        try:
            with os.scandir(directory) as entries:
                stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except (*GONE, PermissionError):
            continue


# memory.stat ----------------------------------------------------------------

# The fields of a memory.stat that are a cgroup's RAM (SPEC: anonymous + shmem),
# and the ram_source each gives. v1's are hierarchical (sub-cgroups count) as v2's are.
V2_RAM = ("anon", "shmem")
V1_RAM = ("total_rss", "total_shmem")
V2_SOURCE = "memory.stat"
V1_SOURCE = "memory.stat (v1)"

# Line breaks of str.splitlines() other than "\n" that are ASCII (the others are not).
_ODD_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")


def stat_fields(text: str, keys: tuple[str, ...]) -> list[int] | None:
    """The values of ``keys`` in a cgroup ``memory.stat``; None when one is missing."""
    if text.isascii() and not any(c in text for c in _ODD_BREAKS):
        # Lines end only at "\n" (a kernel's memory.stat): find the few lines wanted
        # among its ~60 (one file per tenant per tick) instead of splitting them all.
        lines = "\n" + text
        values: list[int] = []
        for key in keys:
            head = f"\n{key} "
            at = lines.find(head)
            if at < 0:
                return None
            if lines.find(head, at + 1) >= 0:
                return _stat_fields_slow(text, keys)  # the key twice: the last valid one wins
            start = at + len(head)
            end = lines.find("\n", start)
            number = counter(lines[start : end if end >= 0 else None].strip())
            if number is None:
                return None
            values.append(number)
        return values
    return _stat_fields_slow(text, keys)


def _stat_fields_slow(text: str, keys: tuple[str, ...]) -> list[int] | None:
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        number = counter(value.strip()) if name in keys else None
        if number is not None:
            found[name] = number
    if len(found) != len(keys):
        return None
    return [found[k] for k in keys]


def stat_ram(text: str) -> int | None:
    """A cgroup v2 ``memory.stat``'s ``anon`` + ``shmem``; None when one is missing."""
    values = stat_fields(text, V2_RAM)
    return None if values is None else sum(values)


def memory_stat(root: Path, cgroup: str, keys: tuple[str, str]) -> tuple[int | None, str] | None:
    """The sum of two ``memory.stat`` fields of a cgroup; None when the cgroup
    has no such file (no memory controller there), ``(None, "")`` when it
    cannot be read or lacks a field."""
    try:
        text = read(f"{under(root, cgroup)}/memory.stat")
    except OSError:
        return None, ""  # there but unreadable (EACCES, EIO): unknown
    if text is None:
        return None
    values = stat_fields(text, keys)
    if values is None:
        return None, ""
    return sum(values), ""


def cgroup_ram(layout: CgroupLayout, cgroup: str) -> tuple[int | None, str] | None:
    """A cgroup's RAM from its ``memory.stat`` in the layout's memory trees (v2 first),
    and where it came from; None when it has none, ``(None, "")`` when unreadable."""
    if layout.memory is not None:
        v2 = memory_stat(layout.memory, cgroup, V2_RAM)
        if v2 is not None:
            return v2 if v2[0] is None else (v2[0], V2_SOURCE)
    if layout.memory_v1 is not None:
        v1 = memory_stat(layout.memory_v1, cgroup, V1_RAM)
        if v1 is not None:
            return v1 if v1[0] is None else (v1[0], V1_SOURCE)
    return None
