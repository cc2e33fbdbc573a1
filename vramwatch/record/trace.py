"""Record: every sample the daemon decides on, to a compact, rotated trace.

Format: JSON lines, one record per line, gzip-compressed. gzip rather than
zstd because Python 3.11's standard library has zlib and no zstd (that arrives
in 3.14): no new dependency, and ``zcat trace.jsonl.gz | jq`` works on any
host. The stream is sync-flushed after every tick, so a trace that is still
being written, or whose writer was killed, reads up to its last complete tick.

Records (``"k"`` says which):

``h``   segment header: format version (``v``), run id (one per start of
        vramwatch), segment number, wall time, the kernel's boot id (``boot``)
``c``   the config in force: its TOML text as loaded, its path, whether
        ``--dry-run`` forced dry run, when (``t``, and ``m`` at start and reload);
        written at start, after each reload that changed it, and at the top of
        every segment
``st``  the restart history restored from the state file at start
``s``   the sample a tick decided on (``m``: its monotonic ns, ``t``: wall ms)
``sf``  a tick whose sample failed (``err``: the exception's repr)
``x``   a further sample in the same tick: the re-check before an action, or a
        release command's wait (``xf``: such a sample failed)
``r``   a release command's result: the ``released`` or ``release_failed``
        entry the daemon logged (``e``, ``lv``, ``msg``, ``f``: name, level,
        message, fields)
``a``   what the actuator answered to an action (or the exception it raised)

Versions (SPEC "Files vramwatch writes"): format 2 added ``r``, ``boot`` and the
start's ``t`` and ``m``. This version reads formats 1 and 2; a trace of a newer
format is refused with a clear message (:func:`check_header`), never read wrongly.

Files (SPEC "Files vramwatch writes"): each segment is created with a random
name (``O_CREAT|O_EXCL|O_NOFOLLOW``) in the target's directory, its header
written and ``fsync``ed, then renamed over the target; later records are
appended through that descriptor, never by opening a name again. A segment
rotates when it reaches an eighth of ``record_max_size`` or an hour of age,
to ``NAME-YYYYMMDDTHHMMSSZ.REST`` (``trace-20261202T060000Z.jsonl.gz``);
rotated segments older than ``record_keep`` go, then the oldest until all of
them fit ``record_max_size``.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vramwatch.config import MAX_CONFIG_BYTES, Config, ConfigError, parse
from vramwatch.files import Staged, UnsafeWrite
from vramwatch.model import (
    ContainerInfo,
    GpuProcess,
    GpuSample,
    HostSample,
    Owner,
    Snapshot,
    UnitUsage,
)
from vramwatch.state import read_boot_id

VERSION = 2
# The oldest format this version reads.
OLDEST = 1
# A segment spans at most this long, so record_keep deletes in steps of an hour.
SEGMENT_AGE_NS = 3600 * 10**9
# A segment is at most this share of record_max_size, so the size limit deletes in steps.
SEGMENT_SHARE = 8
# fsync the active segment this often (and at every rotation and at the end): a
# crash loses at most this much, and a tick does not wait for the disk.
FSYNC_EVERY_NS = 60 * 10**9
# Compression level 3: in bench/record.py (4 GPUs, 20 tenants) level 6 wrote
# 414 B a tick for 0.11 ms of CPU, level 3 627 B for 0.06 ms, level 1 726 B for
# 0.056 ms. Level 3 keeps a day near 27 MB (the budget is 50 MB) and halves
# the compression's share of the 0.3 ms a tick may cost.
LEVEL = 3
# Reading: how much compressed data is fed at once; a damaged spot is named to this.
READ_CHUNK = 64 * 1024
# Where a chunk is damaged it is fed again in steps this small, to read up to the spot.
SMALL_STEP = 256
# A line longer than this is not a record (a 4-GPU, 20-tenant sample is ~6 KiB).
MAX_LINE_BYTES = 16 * 1024 * 1024
_STAMP = "%Y%m%dT%H%M%SZ"
# Records are trees of plain values: no cycle check (a third of json.dumps' time here).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


class TraceError(Exception):
    """A trace that cannot be written or read; ``str()`` says which file and why."""


# -- snapshots as JSON ------------------------------------------------------------
#
# Positional lists keep a 4-GPU, 20-tenant sample small before compression. The
# fields each list holds are named here, and tests/unit/test_trace.py checks
# that they are every field of the model, so a field added to the model and
# forgotten here fails a test instead of replaying silently without it.

GPU_FIELDS = ("index", "uuid", "name", "total_bytes", "used_bytes", "free_bytes", "processes")
GPU_OPTIONAL = ("error", "lost", "parent_uuid", "mig_index")
PROCESS_FIELDS = ("pid", "used_bytes", "kind", "name", "owner")
OWNER_FIELDS = ("cgroup", "unit", "manager", "container_id", "container")
HOST_FIELDS = (
    "mem_total_bytes",
    "mem_available_bytes",
    "swap_total_bytes",
    "swap_free_bytes",
    "psi_some_avg10",
    "psi_full_avg10",
    "error",
)
UNIT_FIELDS = (
    "unit",
    "vram_bytes",
    "vram_by_gpu",
    "ram_bytes",
    "pids",
    "ram_source",
    "containers",
)
SNAPSHOT_FIELDS = (
    "now_ns",
    "gpus",
    "host",
    "units",
    "nvml_error",
    "self_unit",
    "ram_top",
    "nvml_hung_ns",
    "mps_units",
    "engine_error",
)


def _container(info: ContainerInfo | None) -> list[Any] | None:
    return None if info is None else [info.id, info.name, info.project, info.service]


def _uncontainer(raw: Any) -> ContainerInfo | None:
    if raw is None:
        return None
    cid, name, project, service = raw
    return ContainerInfo(_str(cid), _str(name), _opt_str(project), _opt_str(service))


def encode_snapshot(snap: Snapshot) -> dict[str, Any]:
    """A snapshot as a JSON-ready dict (``now_ns`` goes in the record's ``m``).

    Owners are listed once (``o``) and named by position; a tenant's VRAM per GPU
    names the GPU by its position in ``g``: both would otherwise repeat the same
    long strings many times a tick (bench/record.py: half the bytes and the CPU).
    """
    owners: dict[tuple[Any, ...], int] = {}
    gpus = []
    positions = {}
    for n, g in enumerate(snap.gpus):
        positions[g.uuid] = n
        procs = []
        for p in g.processes:
            o = p.owner
            if o is None:
                ref = None
            else:
                key: tuple[Any, ...] = (o.cgroup, o.unit, o.manager)
                if o.container_id is not None:
                    key += (o.container_id, tuple(_container(o.container) or ()) or None)
                ref = owners.get(key)
                if ref is None:
                    ref = owners[key] = len(owners)
            procs.append([p.pid, p.used_bytes, p.kind, p.name, ref])
        row: list[Any] = [g.index, g.uuid, g.name, g.total_bytes, g.used_bytes, g.free_bytes, procs]
        extra = [g.error, g.lost, g.parent_uuid, g.mig_index]
        while extra and extra[-1] in (None, False):
            extra.pop()  # the usual case costs nothing
        row.extend(extra)
        gpus.append(row)
    units = {}
    for name, u in snap.units.items():
        by_gpu = [[positions.get(uuid, uuid), n] for uuid, n in u.vram_by_gpu.items()]
        row = [u.vram_bytes, by_gpu, u.ram_bytes, list(u.pids), u.ram_source]
        if u.unit != name or u.containers:
            row.append(u.unit)
        if u.containers:
            row.append([_container(c) for c in u.containers])
        units[name] = row
    h = snap.host
    out: dict[str, Any] = {
        "g": gpus,
        "o": [
            [*key[:3], *([key[3], list(key[4]) if key[4] else None] if len(key) > 3 else [])]
            for key in owners
        ],
        "h": [
            h.mem_total_bytes,
            h.mem_available_bytes,
            h.swap_total_bytes,
            h.swap_free_bytes,
            h.psi_some_avg10,
            h.psi_full_avg10,
            h.error,
        ],
        "u": units,
    }
    if snap.nvml_error is not None:
        out["ne"] = snap.nvml_error
    if snap.self_unit is not None:
        out["su"] = snap.self_unit
    if snap.ram_top:
        out["rt"] = [[label, n] for label, n in snap.ram_top]
    if snap.nvml_hung_ns is not None:
        out["nh"] = snap.nvml_hung_ns
    if snap.mps_units:
        out["mps"] = sorted(snap.mps_units)
    if snap.engine_error is not None:
        out["ee"] = snap.engine_error
    return out


def _owner(raw: Any) -> Owner:
    cgroup, unit, manager = raw[:3]
    container_id = _opt_str(raw[3]) if len(raw) > 3 else None
    container = _uncontainer(raw[4]) if len(raw) > 4 else None
    return Owner(_str(cgroup), _opt_str(unit), _str(manager), container_id, container)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def decode_snapshot(now_ns: int, raw: Mapping[str, Any]) -> Snapshot:
    """The inverse of :func:`encode_snapshot`; ValueError (or TypeError) on a bad shape."""
    owners = [_owner(o) for o in raw.get("o", ())]
    gpus = []
    for row in raw["g"]:
        index, uuid, name, total, used, free, procs = row[:7]
        error = row[7] if len(row) > 7 else None
        lost = bool(row[8]) if len(row) > 8 else False
        parent = _opt_str(row[9]) if len(row) > 9 else None
        mig = _opt_int(row[10]) if len(row) > 10 else None
        gpus.append(
            GpuSample(
                _int(index),
                _str(uuid),
                _str(name),
                _opt_int(total),
                _opt_int(used),
                _opt_int(free),
                tuple(
                    GpuProcess(
                        _int(pid),
                        _opt_int(pu),
                        _str(kind),
                        _str(pname),
                        None if ref is None else owners[_int(ref)],
                    )
                    for pid, pu, kind, pname, ref in procs
                ),
                _opt_str(error),
                lost,
                parent,
                mig,
            )
        )
    total, avail, swap_total, swap_free, psi_some, psi_full, herror = raw["h"]
    host = HostSample(
        _opt_int(total),
        _opt_int(avail),
        _opt_int(swap_total),
        _opt_int(swap_free),
        _opt_float(psi_some),
        _opt_float(psi_full),
        _opt_str(herror),
    )
    units = {}
    for key, row in raw["u"].items():
        vram, by_gpu, ram, pids, source = row[:5]
        unit = row[5] if len(row) > 5 else key
        members = tuple(c for c in (_uncontainer(r) for r in row[6]) if c) if len(row) > 6 else ()
        units[_str(key)] = UnitUsage(
            _str(unit),
            _opt_int(vram),
            {
                (gpus[where].uuid if isinstance(where, int) else _str(where)): _int(n)
                for where, n in by_gpu
            },
            _opt_int(ram),
            tuple(_int(p) for p in pids),
            _str(source),
            members,
        )
    return Snapshot(
        now_ns=now_ns,
        gpus=tuple(gpus),
        host=host,
        units=units,
        nvml_error=_opt_str(raw.get("ne")),
        self_unit=_opt_str(raw.get("su")),
        ram_top=tuple((_str(label), _int(n)) for label, n in raw.get("rt", ())),
        nvml_hung_ns=_opt_int(raw.get("nh")),
        mps_units=frozenset(_str(u) for u in raw.get("mps", ())),
        engine_error=_opt_str(raw.get("ee")),
    )


def check_header(record: Mapping[str, Any], path: Path) -> int:
    """The format version of a segment header; TraceError when it is newer than this
    version reads (ValueError when it is not a version at all: damage)."""
    version = record.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < OLDEST:
        raise ValueError(f"a segment header with no format version ({version!r})")
    if version > VERSION:
        raise TraceError(
            f"{path}: written by a newer vramwatch (trace format {version}; this version "
            f"reads formats {OLDEST} to {VERSION}): replay it with that version or a newer one"
        )
    return version


def config_record(
    config: Config, why: str, forced_dry_run: bool, effective: Callable[[Config], Config]
) -> dict[str, Any]:
    """The config in force as a record: the file's text when it still parses to it.

    The text is read again from ``config.path``; if the file changed since it was
    loaded (it no longer gives the config in force), the record says so instead,
    and replaying that stretch needs ``-c``.
    """
    record: dict[str, Any] = {"k": "c", "why": why, "path": config.path, "forced_dry_run": False}
    record["forced_dry_run"] = forced_dry_run
    try:
        with open(config.path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        text = raw.decode("utf-8")
        same = effective(parse(text, config.path)) == config
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        record["text"] = None
        record["problem"] = f"could not read the config again: {exc}"
        return record
    if not same:
        record["text"] = None
        record["problem"] = "the file changed after it was loaded"
        return record
    record["text"] = text
    return record


def recorded_config(record: Mapping[str, Any]) -> Config:
    """The config a ``c`` record holds (with ``--dry-run`` applied when it was forced)."""
    text = record.get("text")
    path = str(record.get("path", "<trace>"))
    if not isinstance(text, str):
        raise ConfigError(
            path,
            None,
            "the trace does not hold this config ("
            + str(record.get("problem", "not recorded"))
            + "); replay with -c FILE",
        )
    config = parse(text, path)
    if record.get("forced_dry_run") and not config.daemon.dry_run:
        config = replace(config, daemon=replace(config.daemon, dry_run=True))
    return config


# -- writing ------------------------------------------------------------------------


def split_name(path: Path) -> tuple[str, str]:
    """``trace.jsonl.gz`` -> (``trace``, ``.jsonl.gz``): where a rotation stamp goes."""
    stem, dot, rest = path.name.partition(".")
    return (stem, dot + rest) if stem else (path.name, "")


def rotated_pattern(path: Path) -> re.Pattern[str]:
    stem, rest = split_name(path)
    return re.compile(re.escape(stem) + r"-(\d{8}T\d{6}Z)(?:-(\d+))?" + re.escape(rest))


def rotated_segments(path: Path) -> list[Path]:
    """The rotated segments of the trace ``path``, oldest first."""
    pattern = rotated_pattern(path)
    found: list[tuple[str, int, Path]] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match is not None:
            found.append((match[1], int(match[2] or 0), path.parent / name))
    return [p for _, _, p in sorted(found)]


class TraceWriter:
    """One trace file and its rotated segments; raises :class:`TraceError`."""

    def __init__(
        self,
        path: Path,
        keep_ns: int,
        max_bytes: int,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        level: int = LEVEL,
        segment_age_ns: int = SEGMENT_AGE_NS,
        boot_id: Callable[[], str] = read_boot_id,
    ) -> None:
        self.path = path
        self.segment_age_ns = segment_age_ns
        self.keep_ns = keep_ns
        self.max_bytes = max_bytes
        self.wall_ns = wall_ns
        self.level = level
        self.run = os.urandom(8).hex()
        self.boot = boot_id()  # one boot per process
        self.segment = 0
        self.preamble: list[dict[str, Any]] = []  # repeated at the top of every segment
        self._fd: int | None = None
        self._z: Any = None
        self._bytes = 0
        self._started_ns = 0
        self._synced_ns = 0
        self._pending = False

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Set aside what is at the target (a previous run's segment) and start a segment."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise TraceError(f"{self.path}: {exc.strerror or exc}") from None
        if info is not None and not _is_link(info):
            if not _is_regular(info):
                raise TraceError(f"{self.path}: exists and is not a regular file")
            self._set_aside(info.st_mtime_ns)
        self._start_segment()

    def _set_aside(self, when_ns: int) -> None:
        stem, rest = split_name(self.path)
        stamp = time.strftime(_STAMP, time.gmtime(when_ns / 1e9))
        n = 0
        while True:
            name = f"{stem}-{stamp}{'' if n == 0 else f'-{n}'}{rest}"
            target = self.path.parent / name
            if not os.path.lexists(target):
                break
            n += 1
        try:
            os.rename(self.path, target)  # renames a link itself, never what it points at
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TraceError(f"{self.path}: cannot rotate: {exc.strerror or exc}") from None

    def _start_segment(self) -> None:
        try:
            staged = Staged(self.path, 0o640)
        except UnsafeWrite as exc:
            raise TraceError(f"{self.path}: cannot create a segment: {exc}") from None
        self._fd = staged.fd
        self._z = zlib.compressobj(self.level, zlib.DEFLATED, 31)  # 31: a gzip stream
        self._bytes = 0
        now = self.wall_ns()
        self._started_ns = now
        self._synced_ns = now
        self.segment += 1
        try:
            self._put(
                {
                    "k": "h",
                    "v": VERSION,
                    "run": self.run,
                    "seg": self.segment,
                    "t": now // 10**6,
                    "boot": self.boot,
                }
            )
            for record in self.preamble:
                if record.get("k") == "c" and self.segment > 1:
                    # The same config, carried on, at the segment's time.
                    record = {k: v for k, v in record.items() if k != "m"}
                    record.update(why="segment", t=now // 10**6)
                self._put(record)
            self._flush()
        except OSError as exc:
            self._fd = None
            self._z = None
            staged.discard()
            raise TraceError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        try:
            staged.publish()  # the header is on disk before the name is
        except UnsafeWrite as exc:
            self._fd = None
            self._z = None
            raise TraceError(f"{self.path}: cannot write: {exc}") from None

    def _abandon(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None
        self._z = None

    def _put(self, record: Mapping[str, Any]) -> None:
        line = _ENCODER.encode(record) + "\n"
        self._write(self._z.compress(line.encode("utf-8")))
        self._pending = True

    def _flush(self) -> None:
        if self._pending:
            self._write(self._z.flush(zlib.Z_SYNC_FLUSH))
            self._pending = False

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._bytes += n

    def write(self, record: Mapping[str, Any], *, tick: bool = False) -> None:
        """Append one record; ``tick``: it starts a tick (the only place a segment rotates)."""
        try:
            if self._fd is None:
                self.open()
            elif tick:
                self._flush()  # the previous tick, complete, before anything else
                now = self.wall_ns()
                if (
                    self._bytes >= self.max_bytes // SEGMENT_SHARE
                    or now - self._started_ns >= self.segment_age_ns
                ):
                    self.rotate()
                elif now - self._synced_ns >= FSYNC_EVERY_NS:
                    assert self._fd is not None
                    os.fsync(self._fd)
                    self._synced_ns = now
            self._put(record)
        except OSError as exc:
            self._abandon()
            raise TraceError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def end_tick(self) -> None:
        """The tick is complete: make it readable (a sync flush, no fsync)."""
        if self._fd is None:
            return
        try:
            self._flush()
        except OSError as exc:
            self._abandon()
            raise TraceError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def rotate(self) -> None:
        self._finish()
        self._set_aside(self.wall_ns())
        self._start_segment()
        self.prune()

    def _finish(self) -> None:
        if self._fd is None:
            return
        try:
            self._pending = False
            self._write(self._z.flush(zlib.Z_FINISH))
            os.fsync(self._fd)
        finally:
            self._abandon()

    def close(self) -> None:
        try:
            self._finish()
        except OSError as exc:
            raise TraceError(f"{self.path}: cannot finish: {exc.strerror or exc}") from None

    def prune(self) -> None:
        """Delete rotated segments older than keep, then the oldest beyond max_bytes."""
        now = self.wall_ns()
        pattern = rotated_pattern(self.path)
        segments = []
        for seg in rotated_segments(self.path):
            match = pattern.fullmatch(seg.name)
            assert match is not None
            try:
                info = os.lstat(seg)
            except OSError:
                continue
            if not _is_regular(info):
                continue
            when = _stamp_ns(match[1])
            segments.append((seg, when, info.st_size))
        try:
            total = os.lstat(self.path).st_size
        except OSError:
            total = 0
        total += sum(size for _, _, size in segments)
        for seg, when, size in segments:  # oldest first
            if now - when > self.keep_ns or total > self.max_bytes:
                try:
                    os.unlink(seg)  # unlinks a name, never follows it
                except FileNotFoundError:
                    pass
                total -= size


def _is_link(info: os.stat_result) -> bool:
    import stat

    return stat.S_ISLNK(info.st_mode)


def _is_regular(info: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(info.st_mode)


def _stamp_ns(stamp: str) -> int:
    import calendar

    return calendar.timegm(time.strptime(stamp, _STAMP)) * 10**9


# -- reading ------------------------------------------------------------------------


@dataclass
class Damage:
    """Where a trace stopped being readable."""

    path: Path
    line: int  # the first line not read (1-based)
    offset: int  # compressed bytes read before the damage
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.path}: damaged at line {self.line}"
            + (f" (near byte {self.offset})" if self.offset > 0 else "")
            + ": "
            f"{self.problem}; replayed what comes before"
        )


class TraceReader:
    """The records of one segment, in order; stops at damage and says where."""

    def __init__(self, path: Path, *, live: bool = False) -> None:
        """``live``: the trace's current segment, which may still be being written, so
        no gzip end is no damage (a rotated segment always has one)."""
        self.path = path
        self.live = live
        self.damage: Damage | None = None
        self.unfinished = False  # no gzip end: still being written, or its writer died
        self.lines = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            handle = open(self.path, "rb")
        except OSError as exc:
            raise TraceError(f"{self.path}: {exc.strerror or exc}") from None
        with handle:
            z = zlib.decompressobj(31)
            tail = b""
            offset = 0
            while True:
                try:
                    chunk = handle.read(READ_CHUNK)
                except OSError as exc:
                    self._damaged(offset, f"read error: {exc.strerror or exc}")
                    return
                if not chunk:
                    break
                saved = z.copy()
                try:
                    pieces = [(z.decompress(chunk), len(chunk))]
                    problem = None
                except zlib.error:
                    # Again in small steps from where the chunk began: every record
                    # before the damaged spot is still read, and the spot is named.
                    z, pieces, problem = saved, [], "corrupt compressed data"
                    for start in range(0, len(chunk), SMALL_STEP):
                        piece = chunk[start : start + SMALL_STEP]
                        try:
                            pieces.append((z.decompress(piece), len(piece)))
                        except zlib.error as exc:
                            problem = f"corrupt compressed data ({exc})"
                            break
                for data, size in pieces:
                    offset += size
                    tail += data
                    *lines, tail = tail.split(b"\n")
                    for raw in lines:
                        record = self._record(raw, offset)
                        if record is None:
                            return
                        yield record
                if problem is not None:
                    self._damaged(offset, problem)
                    return
                if z.eof and z.unused_data:
                    self._damaged(offset - len(z.unused_data), "data after the end of the trace")
                    return
                if len(tail) > MAX_LINE_BYTES:
                    self._damaged(offset, "a line too long to be a record")
                    return
            try:
                tail += z.flush()
            except zlib.error:
                pass
            if tail:
                self._damaged(offset, "truncated in the middle of a record")
                return
            if not z.eof:
                if not self.live:
                    self._damaged(offset, "ends early (truncated)")
                    return
                self.unfinished = True

    def _record(self, raw: bytes, offset: int) -> dict[str, Any] | None:
        self.lines += 1
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self.lines -= 1
            self._damaged(offset, "not a JSON record")
            return None
        if not isinstance(record, dict) or not isinstance(record.get("k"), str):
            self.lines -= 1
            self._damaged(offset, "not a trace record")
            return None
        return record

    def _damaged(self, offset: int, problem: str) -> None:
        self.damage = Damage(self.path, self.lines + 1, offset, problem)


def segments(path: Path) -> list[Path]:
    """What ``replay FILE`` reads: FILE's rotated segments, oldest first, then FILE.

    A rotated segment given by name is read alone.
    """
    if not os.path.lexists(path) and not rotated_segments(path):
        raise TraceError(f"{path}: no such file")
    if path.parent != Path("") and is_rotated_name(path):
        return [path]
    found = rotated_segments(path)
    if os.path.lexists(path):
        found.append(path)
    return found


def is_rotated_name(path: Path) -> bool:
    return re.search(r"-\d{8}T\d{6}Z(?:-\d+)?(\.|$)", path.name) is not None


# -- recording from the daemon -----------------------------------------------------
