"""Kernel files: reading them whole, and parsing ``/proc``'s.

The readers take a path (or a held descriptor) and return text, None when the
file or its process is gone; the parsers are pure functions of that text:
``/proc/meminfo``, ``/proc/pressure/memory``, ``/proc/uptime``,
``/proc/PID/stat`` and ``status``, ``/proc/self/mountinfo``. What a kernel
writes is trusted for its grammar, never for its contents: a value that is not
a counter is unknown, never an exception.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# /proc/uptime and /proc/PID/stat start times count in USER_HZ ticks.
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# What a file or directory of a process or cgroup that is gone raises.
GONE = (FileNotFoundError, ProcessLookupError, NotADirectoryError)

# A kernel counter in decimal: ASCII digits only (str.isdigit() takes "²", which
# int() refuses) and at most 20 of them (2**64; int() refuses over 4300 digits).
_COUNTER_RE = re.compile(r"[0-9]{1,20}")


def counter(text: str) -> int | None:
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


def read(path: Path | str, short_is_whole: bool = True) -> str | None:
    """A whole small file, or None when it (or its process) is gone.

    Raw ``os.open``/``os.read``: per GPU process per tick this is the hot path,
    and a buffered text ``open()`` costs about twice as much (bench/tick.py).
    ``short_is_whole``: a read shorter than half a page ends it (see _WHOLE_BELOW).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except GONE:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
            if short_is_whole and len(chunk) < _WHOLE_BELOW:
                break
    except GONE:
        return None  # the process exited between open and read (ESRCH)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def read_optional(path: Path | str, short_is_whole: bool = True) -> str | None:
    """A file that may be absent or refuse reads (PSI disabled: EOPNOTSUPP)."""
    try:
        return read(path, short_is_whole)
    except OSError:
        return None


def pread(fd: int) -> str:
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


def parse_meminfo(text: str, keys: frozenset[str] | None = None) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field name (only ``keys``, when given)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if keys is not None and name.strip() not in keys:
            continue
        parts = rest.split()
        value = counter(parts[0]) if parts else None
        if value is None:
            continue
        scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
        values[name.strip()] = value * scale
    return values


# The /proc/meminfo fields a HostSample holds.
MEMINFO_KEYS = frozenset(("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"))


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


def status_kib(text: str, key: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` in bytes, 0 when absent (kernel threads)."""
    at = text.find(key)
    if at < 0:
        return 0
    end = text.find("\n", at)
    fields = text[at + len(key) : end if end >= 0 else None].split()
    kib = counter(fields[0]) if fields else None  # not str.isdigit(): "²" is a digit to it
    return kib * 1024 if kib is not None else 0


def parse_rss(text: str) -> int:
    """A process's resident memory that cannot simply be dropped, from its
    ``/proc/PID/status``: ``RssAnon`` + ``RssShmem`` (no file-backed pages)."""
    return status_kib(text, "RssAnon:") + status_kib(text, "RssShmem:")


def parse_uptime_ticks(text: str) -> int | None:
    """``/proc/uptime`` in clock ticks since boot; None when it is not a number."""
    try:
        return int(float(text.split()[0]) * CLK_TCK)
    except (ValueError, IndexError, OverflowError):  # OverflowError: "inf"
        return None


def parse_start_ticks(text: str) -> int | None:
    """When a process started, in clock ticks since boot: ``/proc/PID/stat`` field 22."""
    # comm (field 2) may hold spaces and ")": the fields after it follow the last ")".
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def parse_cgroup2_mounts(text: str) -> frozenset[str]:
    """The mount points of cgroup v2 hierarchies (kernfs) in a ``mountinfo``."""
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[:1]
        if fstype == ["cgroup2"]:
            # Octal escapes (\040 for a space) as the kernel writes them.
            found.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]))
    return frozenset(found)


def cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> frozenset[str]:
    """The mount points of cgroup v2 hierarchies this process sees."""
    return parse_cgroup2_mounts(read_optional(mountinfo, short_is_whole=False) or "")
