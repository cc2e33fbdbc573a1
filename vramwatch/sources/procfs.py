"""``/proc`` and cgroupfs: host memory, PID -> unit attribution, per-unit RAM.

Both roots are parameters so tests point them at fixture trees. Processes
exit between any two reads; a vanished PID or cgroup is skipped, never an
error.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vramwatch import unitname
from vramwatch.model import HostSample, Owner

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# /proc/uptime and /proc/PID/stat start times count in USER_HZ ticks.
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# UnitUsage.ram_source of a unit whose RAM is summed over its processes.
RSS_SOURCE = "rss-anon+shmem"
RSS_PARTIAL_SOURCE = "rss-anon+shmem (partial)"  # some of its processes were unreadable

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

_GONE = (FileNotFoundError, ProcessLookupError, NotADirectoryError)

# A kernel counter in decimal: ASCII digits only (str.isdigit() takes "²", which
# int() refuses) and at most 20 of them (2**64; int() refuses over 4300 digits).
_COUNTER_RE = re.compile(r"[0-9]{1,20}")


def _counter(text: str) -> int | None:
    """A decimal counter from a kernel file, or None when it is not one."""
    return int(text) if _COUNTER_RE.fullmatch(text) else None


# /proc/PID files and cgroup.procs of a unit fit in one read; bigger ones loop.
_READ_CHUNK = 65536
# A read of a procfs or cgroupfs file (seq_file) returns less than asked only at the
# end of the file, or where its buffer (a page at least) filled with whole records: a
# record is one line of cgroup.procs, or the whole of a memory.stat or /proc/PID file,
# so a read shorter than half a page is the whole file (as is any short read of a
# regular file): no second read to meet the end. A file read per tenant per tick.
# Not so where a record can be long: a mountinfo line (an overlay mount's lowerdirs)
# that does not fit in what is left of the page ends a read of any length, so
# mountinfo is read until read() returns nothing (``short_is_whole=False``).
_WHOLE_BELOW = PAGE_SIZE // 2


def _read(path: Path | str, short_is_whole: bool = True) -> str | None:
    """A whole small file, or None when it (or its process) is gone.

    Raw ``os.open``/``os.read``: per GPU process per tick this is the hot path,
    and a buffered text ``open()`` costs about twice as much (bench/tick.py).
    ``short_is_whole``: a read shorter than half a page ends it (see _WHOLE_BELOW).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except _GONE:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
            if short_is_whole and len(chunk) < _WHOLE_BELOW:
                break
    except _GONE:
        return None  # the process exited between open and read (ESRCH)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


# A cgroup.procs as the kernel writes it: one decimal PID a line.
_PIDS_RE = re.compile(r"(?:[0-9]{1,20}\n)*")


def _pids(text: str | None) -> tuple[int, ...]:
    """The PIDs of a ``cgroup.procs``; anything that is not a counter is skipped."""
    if not text:
        return ()
    if _PIDS_RE.fullmatch(text):
        return tuple(map(int, text.split()))
    return tuple(pid for p in text.split() if (pid := _counter(p)) is not None)


def _pread(fd: int) -> str:
    """A whole file held open, read again from its start (``OSError`` when it fails:
    ENODEV once a cgroup's directory is removed)."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, _READ_CHUNK, offset):
        chunks.append(chunk)
        offset += len(chunk)
        if len(chunk) < _WHOLE_BELOW:
            break
    return b"".join(chunks).decode("utf-8", errors="replace")


def _cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> frozenset[str]:
    """The mount points of cgroup v2 hierarchies (kernfs), from ``mountinfo``."""
    text = _read_optional(mountinfo, short_is_whole=False)
    found = set()
    for line in (text or "").splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[:1]
        if fstype == ["cgroup2"]:
            # Octal escapes (\040 for a space) as the kernel writes them.
            found.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]))
    return frozenset(found)


@dataclass(slots=True)
class _Held:
    """A located unit's cgroup, kept open between ticks (cgroup v2 only).

    A kernfs file read again with ``pread`` at offset 0 is regenerated, as a new
    open would give; once the cgroup is removed (the unit stopped, or restarted:
    systemd makes a new directory) every read fails with ENODEV, and a v2 cgroup
    cannot be renamed: a read that succeeds is of the cgroup at ``top`` now.
    """

    cgroup: str
    top: str
    dir_fd: int
    procs_fd: int
    stat_fd: int | None  # memory.stat, when the memory tree is the tracking tree

    def fds(self) -> tuple[int, ...]:
        return (self.dir_fd, self.procs_fd) + ((self.stat_fd,) if self.stat_fd is not None else ())


def _read_optional(path: Path | str, short_is_whole: bool = True) -> str | None:
    """A file that may be absent or refuse reads (PSI disabled: EOPNOTSUPP)."""
    try:
        return _read(path, short_is_whole)
    except OSError:
        return None


def cg_unescape(name: str) -> str:
    """Undo systemd's cg_escape(): names that start with "_" or "." or collide
    with a controller ("cpu.service") get a "_" prefix in cgroupfs."""
    return name[1:] if name.startswith("_") else name


def parse_meminfo(text: str, keys: frozenset[str] | None = None) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field name (only ``keys``, when given)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if keys is not None and name.strip() not in keys:
            continue
        parts = rest.split()
        value = _counter(parts[0]) if parts else None
        if value is None:
            continue
        scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
        values[name.strip()] = value * scale
    return values


# The /proc/meminfo fields a HostSample holds.
_MEMINFO_KEYS = frozenset(("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"))


def parse_psi(text: str) -> tuple[float | None, float | None]:
    """``some`` and ``full`` avg10 from ``/proc/pressure/memory``."""
    some = full = None
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if "avg10" not in fields:
            continue
        try:
            value = float(fields["avg10"])
        except ValueError:
            continue  # not a number: unknown, like a missing line
        if line.startswith("some"):
            some = value
        elif line.startswith("full"):
            full = value
    return some, full


def _status_kib(text: str, key: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` in bytes, 0 when absent (kernel threads)."""
    at = text.find(key)
    if at < 0:
        return 0
    end = text.find("\n", at)
    fields = text[at + len(key) : end if end >= 0 else None].split()
    kib = _counter(fields[0]) if fields else None  # not str.isdigit(): "²" is a digit to it
    return kib * 1024 if kib is not None else 0


# Line breaks of str.splitlines() other than "\n" that are ASCII (the others are not).
_ODD_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")


def _stat_fields(text: str, keys: tuple[str, ...]) -> list[int] | None:
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
            number = _counter(lines[start : end if end >= 0 else None].strip())
            if number is None:
                return None
            values.append(number)
        return values
    return _stat_fields_slow(text, keys)


def _stat_fields_slow(text: str, keys: tuple[str, ...]) -> list[int] | None:
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        number = _counter(value.strip()) if name in keys else None
        if number is not None:
            found[name] = number
    if len(found) != len(keys):
        return None
    return [found[k] for k in keys]


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
        self._located: dict[tuple[str, str], str] = {}
        self._not_found_until: dict[tuple[str, str], int] = {}
        # (path, st_nlink if known, its cgroup.procs if read) of the unit cgroup
        # locate_unit() just found there.
        self._checked: tuple[str, int | None, str | None] | None = None
        # (cgroup, its memory.stat) when locate_unit() checked a held cgroup by reading
        # its memory.stat instead of its cgroup.procs (PIDs not wanted): cgroup_ram()'s.
        self._checked_stat: tuple[str, str] | None = None
        # Located units' cgroups held open (hold()), by unit and by cgroup path.
        self._held: dict[tuple[str, str], _Held] = {}
        self._held_at: dict[str, _Held] = {}
        self._held_fds = 0
        self._fd_budget = 0
        self._holds_memory = False

    # host ----------------------------------------------------------------

    def host(self) -> HostSample:
        try:
            text = _read(self.proc / "meminfo")
        except OSError as exc:  # EACCES, EIO: host RAM unknown, the GPUs still read
            return HostSample(
                None, None, error=f"cannot read {self.proc / 'meminfo'}: {exc.strerror or exc}"
            )
        if text is None:
            return HostSample(None, None, error=f"cannot read {self.proc / 'meminfo'}")
        info = parse_meminfo(text, _MEMINFO_KEYS)
        if "MemTotal" not in info or "MemAvailable" not in info:
            return HostSample(None, None, error="MemTotal/MemAvailable missing from meminfo")
        psi = _read_optional(self.proc / "pressure" / "memory")
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
        text = _read(f"{self._proc}/{pid}/cgroup")
        if text is None:
            return None
        return parse_proc_cgroup(text, unified=self.layout.mode == "v2")

    def comm(self, pid: int) -> str:
        text = _read(f"{self._proc}/{pid}/comm")
        return text.rstrip("\n") if text is not None else ""

    def rss_bytes(self, pid: int) -> int | None:
        """A process's resident memory that cannot simply be dropped:
        ``RssAnon`` + ``RssShmem`` of ``/proc/PID/status`` (no file-backed pages).
        None when the process is gone; 0 for a kernel thread."""
        text = _read(f"{self._proc}/{pid}/status")
        if text is None:
            return None
        return _status_kib(text, "RssAnon:") + _status_kib(text, "RssShmem:")

    def boot_ticks(self) -> int | None:
        """Now, in clock ticks since boot (``/proc/uptime``); None when it cannot be read."""
        text = _read_optional(self.proc / "uptime")
        try:
            return int(float(text.split()[0]) * CLK_TCK) if text else None
        except (ValueError, IndexError, OverflowError):  # OverflowError: "inf"
            return None

    def start_ticks(self, pid: int) -> int | None:
        """When a process started, in clock ticks since boot (``/proc/PID/stat`` field 22)."""
        text = _read(f"{self._proc}/{pid}/stat")
        if not text:
            return None
        # comm (field 2) may hold spaces and ")": the fields after it follow the last ")".
        fields = text[text.rfind(")") + 2 :].split()
        try:
            return int(fields[19])
        except (ValueError, IndexError):
            return None

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
        descriptors, when the tracking tree is a cgroup v2 hierarchy: a ``pread``
        of an open ``cgroup.procs`` and ``memory.stat`` replaces a stat, two opens
        and two closes per tenant per tick. Past the budget, or on cgroup v1 (whose
        ``cgroup.procs`` read again through one descriptor may be a cached list),
        units are read afresh every tick. ``close()`` releases them all."""
        mounts = _cgroup2_mounts()
        tracking = os.path.realpath(self.layout.tracking)
        if tracking not in mounts:
            return
        self._fd_budget = fd_budget
        memory = self.layout.memory
        self._holds_memory = memory is not None and os.path.realpath(memory) == tracking

    def close(self) -> None:
        """Release every held cgroup; later ticks read afresh."""
        self._fd_budget = 0
        for key in list(self._held):
            self._release(key)

    def keep_only(self, units: set[tuple[str, str]]) -> None:
        """Release the held cgroups of units no longer asked for (a reload dropped them)."""
        for key in self._held.keys() - units:
            self._release(key)

    def _release(self, key: tuple[str, str]) -> None:
        held = self._held.pop(key, None)
        if held is None:
            return
        if self._held_at.get(held.cgroup) is held:
            del self._held_at[held.cgroup]
        if self._checked is not None and self._checked[0] == held.top:
            self._checked = None
        if self._checked_stat is not None and self._checked_stat[0] == held.cgroup:
            self._checked_stat = None
        for fd in held.fds():
            os.close(fd)
        self._held_fds -= len(held.fds())

    def _hold(self, key: tuple[str, str], cgroup: str, top: str) -> None:
        """Open a just-located unit's cgroup to be read again next ticks (best effort)."""
        if self._held_fds + 3 > self._fd_budget or cgroup in self._held_at:
            return
        opened: list[int] = []
        try:
            for name in ("", "/cgroup.procs"):
                opened.append(os.open(f"{top}{name}", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:  # gone already, out of descriptors
            for fd in opened:
                os.close(fd)
            return
        stat_fd = None
        if self._holds_memory:
            try:
                stat_fd = os.open(f"{top}/memory.stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # no memory controller there: unit_ram() reads as before
                pass
        held = _Held(cgroup, top, opened[0], opened[1], stat_fd)
        self._held[key] = self._held_at[cgroup] = held
        self._held_fds += len(held.fds())

    def _held_check(self, key: tuple[str, str], pids: bool) -> str | None:
        """A held unit's cgroup, proven there through a held descriptor (a read fails
        with ENODEV once the directory is removed, a lookup in it with ENOENT); None
        (and released) when it is gone or fails to read.

        With ``pids``: its ``cgroup.procs`` read and its link count, kept for
        unit_pids(). Without: its ``memory.stat`` read when held, kept for cgroup_ram();
        else only a lookup in it, as reading ``cgroup.procs`` costs the kernel a walk
        of its processes (tens of µs for tens of them)."""
        held = self._held[key]
        try:
            if pids:
                text = _pread(held.procs_fd)
                self._checked = (held.top, os.fstat(held.dir_fd).st_nlink, text)
            elif held.stat_fd is not None:
                self._checked_stat = (held.cgroup, _pread(held.stat_fd))
            else:
                os.stat("cgroup.procs", dir_fd=held.dir_fd)
        except OSError:  # removed (stopped, or restarted in a new directory)
            self._release(key)
            return None
        return held.cgroup

    def locate_unit(self, unit: str, manager: str, now_ns: int, *, pids: bool = True) -> str | None:
        """The cgroup path (relative to the tracking root) of a running unit.

        ``pids=False``: the caller reads the unit's RAM next (cgroup_ram()) and its PIDs
        only if that finds no memory cgroup; a held cgroup is then checked without
        reading its ``cgroup.procs``."""
        key = (unit, manager)
        self._checked = self._checked_stat = None
        if key in self._held:
            found_held = self._held_check(key, pids)
            if found_held is not None:
                return found_held
        cached = self._located.get(key)
        if cached is not None:
            path = self._under(self.layout.tracking, cached)
            try:
                st = os.stat(path)
            except (OSError, ValueError):  # as os.path.isdir: gone or unreadable is not there
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                if self._fd_budget:
                    self._hold(key, cached, path)
                # unit_pids() right after needs the link count: one stat for both.
                self._checked = (path, st.st_nlink, None)
                return cached
        self._located.pop(key, None)
        if now_ns < self._not_found_until.get(key, 0):
            return None
        found = self._walk_for(unit, manager)
        if found is None:
            self._not_found_until[key] = now_ns + LOCATE_RETRY_NS
            return None
        self._not_found_until.pop(key, None)
        self._located[key] = found
        if self._fd_budget:
            self._hold(key, found, self._under(self.layout.tracking, found))
        return found

    def forget(self, unit: str, manager: str) -> None:
        """Drop the cached location (e.g. after the unit was restarted)."""
        self._located.pop((unit, manager), None)
        self._not_found_until.pop((unit, manager), None)
        self._release((unit, manager))

    def _walk_for(self, unit: str, manager: str) -> str | None:
        """Search slices (and for a user unit, its user manager) for the unit's cgroup.

        The same rule as :func:`unit_of_cgroup_path`: only slices are descended,
        never a unit, so a sub-cgroup named ``x.service`` of a delegated unit is
        never taken for the unit ``x.service``.
        """
        root = self.layout.tracking
        stack: list[tuple[Path, bool]] = [(root, manager == "system")]
        want_manager = f"{manager}.service" if manager != "system" else None
        while stack:
            directory, inside = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (*_GONE, PermissionError):
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

    def cgroup_exists(self, cgroup: str) -> bool:
        """A cgroup (relative to the tracking root) is there now."""
        return os.path.isdir(self._under(self.layout.tracking, cgroup))

    def unit_pids(self, cgroup: str) -> tuple[int, ...]:
        """Every PID in a unit's cgroup and its sub-cgroups."""
        top = self._under(self.layout.tracking, cgroup)
        checked, self._checked = self._checked, None
        links: int | None = None
        text = None
        if checked is not None and checked[0] == top:
            links, text = checked[1], checked[2]  # text: read through a held descriptor
        if links is None:
            try:
                links = os.stat(top).st_nlink
            except OSError:
                links = None
        if links == 2:
            # A directory's link count is 2 + its subdirectories (cgroupfs, tmpfs,
            # ext4; btrfs and overlayfs say 1: walked): a unit without sub-cgroups
            # needs no directory scan, the costliest read of a tenant's tick.
            return _pids(text if text is not None else _read(f"{top}/cgroup.procs"))
        pids: list[int] = []
        for directory in self._subtree(top):
            pids.extend(_pids(_read(f"{directory}/cgroup.procs")))
        return tuple(pids)

    def unit_ram(self, cgroup: str, pids: Iterable[int]) -> tuple[int | None, str]:
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

    def cgroup_ram(self, cgroup: str) -> tuple[int | None, str] | None:
        """A unit's RAM from its memory cgroup (see unit_ram()), or None when it has none."""
        held = self._held_at.get(cgroup)
        if held is not None and held.stat_fd is not None:
            checked, self._checked_stat = self._checked_stat, None
            try:
                text = checked[1] if checked is not None and checked[0] == cgroup else None
                values = _stat_fields(text or _pread(held.stat_fd), ("anon", "shmem"))
            except OSError:  # removed since locate_unit(): read as without a held one
                values = None
            else:
                return (None, "") if values is None else (sum(values), "memory.stat")
        if self.layout.memory is not None:
            v2 = self._memory_stat(self.layout.memory, cgroup, ("anon", "shmem"))
            if v2 is not None:
                return v2 if v2[0] is None else (v2[0], "memory.stat")
        if self.layout.memory_v1 is not None:
            v1 = self._memory_stat(self.layout.memory_v1, cgroup, ("total_rss", "total_shmem"))
            if v1 is not None:
                return v1 if v1[0] is None else (v1[0], "memory.stat (v1)")
        return None

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

    def _memory_stat(
        self, root: Path, cgroup: str, keys: tuple[str, str]
    ) -> tuple[int | None, str] | None:
        """The sum of two ``memory.stat`` fields of a cgroup; None when the cgroup
        has no such file (no memory controller there), ``(None, "")`` when it
        cannot be read or lacks a field."""
        try:
            text = _read(f"{self._under(root, cgroup)}/memory.stat")
        except OSError:
            return None, ""  # there but unreadable (EACCES, EIO): unknown
        if text is None:
            return None
        values = _stat_fields(text, keys)
        if values is None:
            return None, ""
        return sum(values), ""

    @staticmethod
    def _under(root: Path, cgroup: str) -> str:
        """``root/cgroup`` as str: these joins run per tenant per tick, pathlib's cost µs."""
        return f"{os.fspath(root)}/{cgroup.lstrip('/')}"

    def _subtree(self, top: str) -> Iterator[str]:
        stack = [top]
        while stack:
            directory = stack.pop()
            yield directory
            try:
                with os.scandir(directory) as entries:
                    stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
            except (*_GONE, PermissionError):
                continue
