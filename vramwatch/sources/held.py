"""Located units' cgroups held open between ticks (cgroup v2 only).

A ``pread`` of an open ``cgroup.procs`` and ``memory.stat`` replaces a stat, two
opens and two closes per tenant per tick. A kernfs file read again with
``pread`` at offset 0 is regenerated, as a new open would give; once the cgroup
is removed (the unit stopped, or restarted: systemd makes a new directory)
every read fails with ENODEV, and a v2 cgroup cannot be renamed: a read that
succeeds is of the cgroup that was held, there now.

Not on cgroup v1, whose ``cgroup.procs`` read again through one descriptor may
be a cached list; nor past a budget of descriptors: those units are read afresh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vramwatch.sources.cgroups import CgroupLayout, UnitCgroup, UnitKey
from vramwatch.sources.kernfs import cgroup2_mounts, pread


@dataclass(slots=True)
class _Held:
    """One unit's cgroup, open."""

    found: UnitCgroup  # as located, with nothing read: what a lookup in it proves
    dir_fd: int
    procs_fd: int
    stat_fd: int | None  # memory.stat, when the memory tree is the tracking tree

    def fds(self) -> tuple[int, ...]:
        return (self.dir_fd, self.procs_fd) + ((self.stat_fd,) if self.stat_fd is not None else ())


class HeldCgroups:
    """Units' cgroups kept open, by unit and by cgroup, within a descriptor budget
    (none until :meth:`enable`)."""

    def __init__(self) -> None:
        self._by_unit: dict[UnitKey, _Held] = {}
        self._by_cgroup: dict[str, _Held] = {}
        self._fds = 0
        self._budget = 0
        # Whether a held cgroup's memory.stat is held too (the memory tree is the
        # tracking tree): else memory_stat() never has one.
        self.with_memory = False

    def enable(self, layout: CgroupLayout, fd_budget: int) -> None:
        """Hold located units' cgroups from now on, within ``fd_budget``
        descriptors, when the layout's tracking tree is a cgroup v2 mount."""
        tracking = os.path.realpath(layout.tracking)
        if tracking not in cgroup2_mounts():
            return
        self._budget = fd_budget
        memory = layout.memory
        self.with_memory = memory is not None and os.path.realpath(memory) == tracking

    def hold(self, key: UnitKey, where: UnitCgroup) -> None:
        """Open a just-located unit's cgroup to be read again next ticks (best effort)."""
        if self._fds + 3 > self._budget or where.cgroup in self._by_cgroup:
            return
        opened: list[int] = []
        try:
            for name in ("", "/cgroup.procs"):
                opened.append(os.open(f"{where.path}{name}", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:  # gone already, out of descriptors
            for fd in opened:
                os.close(fd)
            return
        stat_fd = None
        if self.with_memory:
            try:
                stat_fd = os.open(f"{where.path}/memory.stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # no memory controller there: its RAM reads as before
                pass
        held = _Held(UnitCgroup(where.cgroup, where.path), opened[0], opened[1], stat_fd)
        self._by_unit[key] = self._by_cgroup[where.cgroup] = held
        self._fds += len(held.fds())

    def check(self, key: UnitKey, pids: bool) -> UnitCgroup | None:
        """A held unit's cgroup, proven there through a held descriptor (a read fails
        with ENODEV once the directory is removed, a lookup in it with ENOENT); None
        when it is not held, or (and then released) gone or failing to read.

        With ``pids``: its ``cgroup.procs`` read and its link count, for unit_pids().
        Without: its ``memory.stat`` read when held, for its RAM; else only a lookup
        in it, as reading ``cgroup.procs`` costs the kernel a walk of its processes
        (tens of µs for tens of them)."""
        held = self._by_unit.get(key)
        if held is None:
            return None
        found = held.found
        try:
            if pids:
                text = pread(held.procs_fd)
                links = os.fstat(held.dir_fd).st_nlink
                return UnitCgroup(found.cgroup, found.path, links, text)
            if held.stat_fd is not None:
                return UnitCgroup(found.cgroup, found.path, memory_stat=pread(held.stat_fd))
            os.stat("cgroup.procs", dir_fd=held.dir_fd)
        except OSError:  # removed (stopped, or restarted in a new directory)
            self.release(key)
            return None
        return found

    def memory_stat(self, cgroup: str) -> str | None:
        """The ``memory.stat`` of a held cgroup, read again; None when none is held
        (``OSError`` when the read fails: removed since)."""
        held = self._by_cgroup.get(cgroup)
        if held is None or held.stat_fd is None:
            return None
        return pread(held.stat_fd)

    def release(self, key: UnitKey) -> None:
        held = self._by_unit.pop(key, None)
        if held is None:
            return
        cgroup = held.found.cgroup
        if self._by_cgroup.get(cgroup) is held:
            del self._by_cgroup[cgroup]
        for fd in held.fds():
            os.close(fd)
        self._fds -= len(held.fds())

    def keep_only(self, keys: set[UnitKey]) -> None:
        """Release the cgroups of units no longer asked for (a reload dropped them)."""
        for key in self._by_unit.keys() - keys:
            self.release(key)

    def close(self) -> None:
        """Release every held cgroup; hold no more."""
        self._budget = 0
        for key in list(self._by_unit):
            self.release(key)
