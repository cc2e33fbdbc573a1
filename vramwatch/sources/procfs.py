"""``/proc`` and cgroupfs, as the sampler reads them: host memory, PID -> owner,
per-unit PIDs and RAM.

A facade over :mod:`~vramwatch.sources.kernfs` (the kernel files and their
parsers), :mod:`~vramwatch.sources.cgroups` (the naming rule, the layout,
locating a unit) and :mod:`~vramwatch.sources.held` (cgroups held open between
ticks). Both roots are parameters so tests point them at fixture trees.
Processes exit between any two reads; a vanished PID or cgroup is skipped,
never an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from vramwatch.model import HostSample, Owner
from vramwatch.sources import cgroups
from vramwatch.sources.cgroups import CgroupLayout, Locator, UnitCgroup, parse_proc_cgroup
from vramwatch.sources.held import HeldCgroups
from vramwatch.sources.kernfs import (
    MEMINFO_KEYS,
    parse_meminfo,
    parse_psi,
    parse_rss,
    parse_start_ticks,
    parse_uptime_ticks,
    read,
    read_optional,
)

# UnitUsage.ram_source of a unit whose RAM is summed over its processes.
RSS_SOURCE = "rss-anon+shmem"
RSS_PARTIAL_SOURCE = "rss-anon+shmem (partial)"  # some of its processes were unreadable


class ProcFs:
    """Reads host and per-unit memory from a ``/proc`` root and a cgroup root."""

    def __init__(
        self,
        proc: Path = Path("/proc"),
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        layout: CgroupLayout | None = None,
    ) -> None:
        self.proc = proc
        self._proc = os.fspath(proc)  # per-PID paths as str: pathlib costs µs per join
        self.layout = layout or CgroupLayout.detect(cgroup_root)
        self._locator = Locator(self.layout.tracking)
        self._held = HeldCgroups()

    # host ----------------------------------------------------------------

    def host(self) -> HostSample:
        try:
            text = read(self.proc / "meminfo")
        except OSError as exc:  # EACCES, EIO: host RAM unknown, the GPUs still read
            return HostSample(
                None, None, error=f"cannot read {self.proc / 'meminfo'}: {exc.strerror or exc}"
            )
        if text is None:
            return HostSample(None, None, error=f"cannot read {self.proc / 'meminfo'}")
        info = parse_meminfo(text, MEMINFO_KEYS)
        if "MemTotal" not in info or "MemAvailable" not in info:
            return HostSample(None, None, error="MemTotal/MemAvailable missing from meminfo")
        psi = read_optional(self.proc / "pressure" / "memory")
        some, full = parse_psi(psi) if psi else (None, None)
        return HostSample(
            mem_total_bytes=info["MemTotal"],
            mem_available_bytes=info["MemAvailable"],
            swap_total_bytes=info.get("SwapTotal"),
            swap_free_bytes=info.get("SwapFree"),
            psi_some_avg10=some,
            psi_full_avg10=full,
        )

    # processes -----------------------------------------------------------

    def owner(self, pid: int) -> Owner | None:
        text = read(f"{self._proc}/{pid}/cgroup")
        if text is None:
            return None
        return parse_proc_cgroup(text, unified=self.layout.mode == "v2")

    def comm(self, pid: int) -> str:
        text = read(f"{self._proc}/{pid}/comm")
        return text.rstrip("\n") if text is not None else ""

    def rss_bytes(self, pid: int) -> int | None:
        """A process's resident memory that cannot simply be dropped:
        ``RssAnon`` + ``RssShmem`` of ``/proc/PID/status`` (no file-backed pages).
        None when the process is gone; 0 for a kernel thread."""
        text = read(f"{self._proc}/{pid}/status")
        return parse_rss(text) if text is not None else None

    def boot_ticks(self) -> int | None:
        """Now, in clock ticks since boot (``/proc/uptime``); None when it cannot be read."""
        text = read_optional(self.proc / "uptime")
        return parse_uptime_ticks(text) if text else None

    def start_ticks(self, pid: int) -> int | None:
        """When a process started, in clock ticks since boot (``/proc/PID/stat`` field 22)."""
        text = read(f"{self._proc}/{pid}/stat")
        return parse_start_ticks(text) if text else None

    def owner_since(self, pid: int, before_ticks: int | None) -> Owner | None:
        """The owner of a PID that NVML listed at ``before_ticks``; None when unsure.

        Between NVML's process list and this read the process can exit and its
        PID be reused by a process of another unit: a process that started at or
        after ``before_ticks`` cannot be the one NVML saw, and one whose start
        time changes during the read was replaced while we read. Either way the
        memory is not attributed (unattributed is safe; a wrong unit is not).
        """
        try:
            if before_ticks is None:  # no /proc/uptime (a fixture tree): no check
                return self.owner(pid)
            start = self.start_ticks(pid)
            if start is None or start >= before_ticks:
                return None
            owner = self.owner(pid)
            if self.start_ticks(pid) != start:
                return None
            return owner
        except OSError:
            return None  # unreadable (EACCES, EIO): unknown, never a guess

    def pids(self) -> Iterator[int]:
        try:
            entries = os.scandir(self.proc)
        except OSError:
            return
        with entries:
            for entry in entries:
                if entry.name.isdigit():
                    yield int(entry.name)

    def top_ram_owners(self) -> list[tuple[str, int]]:
        """Every owner (unit, or cgroup) with its processes' RSS (anonymous +
        shmem), biggest first; a user unit is labelled with its manager, so a
        user's ``llm.service`` and the system's stay apart.

        A full /proc scan: only called when the host floor is breached. A
        process that cannot be read (EACCES under hidepid or as an unprivileged
        user, EIO) costs only itself: it is left out, the rest is listed.
        """
        totals: dict[str, int] = {}
        for pid in self.pids():
            try:
                rss = self.rss_bytes(pid)
                owner = self.owner(pid)
            except OSError:
                continue  # unreadable (hidepid, EACCES): that process only
            if not rss or owner is None:
                continue
            label = owner.qualified_label()
            totals[label] = totals.get(label, 0) + rss
        return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))

    # units ---------------------------------------------------------------

    def hold(self, fd_budget: int) -> None:
        """Keep located units' cgroups open between ticks, within ``fd_budget``
        descriptors, when the tracking tree is a cgroup v2 hierarchy (see
        :mod:`~vramwatch.sources.held`). ``close()`` releases them all."""
        self._held.enable(self.layout, fd_budget)

    def close(self) -> None:
        """Release every held cgroup; later ticks read afresh."""
        self._held.close()

    def keep_only(self, units: set[tuple[str, str]]) -> None:
        """Release the held cgroups of units no longer asked for (a reload dropped them)."""
        self._held.keep_only(units)

    def locate_unit(
        self, unit: str, manager: str, now_ns: int, *, pids: bool = True
    ) -> UnitCgroup | None:
        """A running unit's cgroup, with what finding it read; None when it is not running.

        Through its held descriptors when held, else where it was found before,
        else by a walk of the slices (then held, within the budget). ``pids=False``:
        the caller reads the unit's RAM next (cgroup_ram()) and its PIDs only if
        that finds no memory cgroup; a held cgroup is then checked without reading
        its ``cgroup.procs``."""
        key = (unit, manager)
        found = self._held.check(key, pids)
        if found is not None:
            return found
        found = self._locator.locate(key, now_ns)
        if found is not None:
            self._held.hold(key, found)
        return found

    def forget(self, unit: str, manager: str) -> None:
        """Drop the cached location (e.g. after the unit was restarted)."""
        self._locator.forget((unit, manager))
        self._held.release((unit, manager))

    def cgroup_exists(self, cgroup: str) -> bool:
        """A cgroup (relative to the tracking root) is there now."""
        return os.path.isdir(cgroups.under(self.layout.tracking, cgroup))

    def _where(self, cgroup: str | UnitCgroup) -> UnitCgroup:
        if isinstance(cgroup, UnitCgroup):
            return cgroup
        return UnitCgroup(cgroup, cgroups.under(self.layout.tracking, cgroup))

    def unit_pids(self, cgroup: str | UnitCgroup) -> tuple[int, ...]:
        """Every PID in a unit's cgroup (as located, or a path relative to the
        tracking root) and its sub-cgroups."""
        return cgroups.unit_pids(self._where(cgroup))

    def unit_ram(self, cgroup: str | UnitCgroup, pids: Iterable[int]) -> tuple[int | None, str]:
        """A unit's RAM: its anonymous + shmem memory (SPEC), and where it came from.

        From the unit's memory cgroup where there is one: cgroup v2
        ``memory.stat`` ``anon`` + ``shmem`` (hierarchical: sub-cgroups count),
        else a cgroup v1 memory hierarchy's ``memory.stat`` ``total_rss`` +
        ``total_shmem``. Page cache and file-backed mappings (a mapped model
        file) never count: the kernel can drop them. Without a memory cgroup:
        the summed ``RssAnon`` + ``RssShmem`` of its processes, which counts
        shared memory once per process that maps it (a worker pool sharing a
        segment reads high) and misses swapped-out pages.

        A memory.stat that is there but unreadable is unknown (None, ""), not
        a fallback. A process that cannot be read is left out of the sum, which
        then says so (``RSS_PARTIAL_SOURCE``).
        """
        found = self.cgroup_ram(cgroup)
        return found if found is not None else self.rss_sum(pids)

    def cgroup_ram(self, cgroup: str | UnitCgroup) -> tuple[int | None, str] | None:
        """A unit's RAM from its memory cgroup (see unit_ram()), or None when it has none."""
        if isinstance(cgroup, UnitCgroup):
            name, text = cgroup.cgroup, cgroup.memory_stat
        else:
            name, text = cgroup, None
        if text is None and self._held.with_memory:
            try:
                text = self._held.memory_stat(name)
            except OSError:  # removed since it was located: read as without a held one
                text = None
        if text is not None:
            ram = cgroups.stat_ram(text)
            return (None, "") if ram is None else (ram, cgroups.V2_SOURCE)
        return cgroups.cgroup_ram(self.layout, name)

    def rss_sum(self, pids: Iterable[int]) -> tuple[int, str]:
        """RAM summed over processes: RssAnon + RssShmem (see unit_ram())."""
        total = 0
        unreadable = 0
        for pid in pids:
            try:
                total += self.rss_bytes(pid) or 0
            except OSError:  # EACCES (hidepid, another user's process), EIO
                unreadable += 1
        # Unreadable processes cost only themselves: the rest is a lower bound,
        # which can prove a unit over budget but is never cached as the whole.
        return total, RSS_SOURCE if not unreadable else RSS_PARTIAL_SOURCE
