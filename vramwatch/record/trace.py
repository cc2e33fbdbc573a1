"""The trace file: its segments, their rotation and pruning, and reading them back.

Format: JSON lines (:mod:`vramwatch.record.format` says what each record holds),
gzip-compressed. gzip rather than zstd because Python 3.11's standard library has
zlib and no zstd (that arrives in 3.14): no new dependency, and
``zcat trace.jsonl.gz | jq`` works on any host. The stream is sync-flushed after
every tick, so a trace that is still being written, or whose writer was killed,
reads up to its last complete tick.

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

import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramwatch.files import Staged, UnsafeWrite
from vramwatch.record.format import (
    CONFIG,
    TraceError,
    carried_config,
    decode_line,
    encode_line,
    header_record,
)
from vramwatch.state import read_boot_id

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
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return [path.parent / name for name, _ in _rotated(path, names)]


def _rotated(path: Path, names: list[str]) -> list[tuple[str, str]]:
    """Which of ``names`` are rotated segments of the trace ``path``: (name, stamp),
    oldest first."""
    pattern = rotated_pattern(path)
    found: list[tuple[str, int, str]] = []
    for name in names:
        match = pattern.fullmatch(name)
        if match is not None:
            found.append((match[1], int(match[2] or 0), name))
    return [(name, stamp) for stamp, _, name in sorted(found)]


class TraceWriter:
    """One trace file and its rotated segments; raises :class:`TraceError`.

    The directory is opened once, when the trace is: every segment is created, set
    aside and pruned through that descriptor (SPEC "Files vramwatch writes"), so a
    directory renamed or replaced by a link under a running writer redirects nothing.
    """

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
        self._dir_fd: int | None = None
        self._z: Any = None
        self._bytes = 0
        self._started_ns = 0
        self._synced_ns = 0
        self._pending = False

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Open the directory, set aside what is at the target (a previous run's segment)
        and start a segment. On failure nothing stays open: the next try opens the
        directory again by its name (it may have been made anew)."""
        try:
            self._open()
        except TraceError:
            self._abandon()
            raise

    def _open(self) -> None:
        try:
            self._dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise TraceError(
                f"{self.path}: cannot create a segment: {exc.strerror or exc}"
            ) from None
        try:
            info = os.stat(self.path.name, dir_fd=self._dir_fd, follow_symlinks=False)
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
            if not self._exists(name):
                break
            n += 1
        try:
            # Renames a link itself, never what it points at.
            os.rename(self.path.name, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TraceError(f"{self.path}: cannot rotate: {exc.strerror or exc}") from None

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _start_segment(self) -> None:
        try:
            staged = Staged(self.path, 0o640, dir_fd=self._dir_fd)
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
            self._put(header_record(self.run, self.segment, now // 10**6, self.boot))
            for record in self.preamble:
                if record.get("k") == CONFIG and self.segment > 1:
                    record = carried_config(record, now // 10**6)
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

    def _close_segment(self) -> None:
        _close(self._fd)
        self._fd = None
        self._z = None

    def _abandon(self) -> None:
        """Close the segment and the directory, which the next :meth:`open` opens again
        by its name."""
        self._close_segment()
        _close(self._dir_fd)
        self._dir_fd = None

    def _put(self, record: Mapping[str, Any]) -> None:
        self._write(self._z.compress(encode_line(record)))
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
        """End this segment, set it aside under its time and start the next; then prune.
        A failure leaves nothing open."""
        try:
            self._finish()
            self._set_aside(self.wall_ns())
            self._start_segment()
            self.prune()
        except (OSError, TraceError):
            self._abandon()
            raise

    def _finish(self) -> None:
        if self._fd is None:
            return
        try:
            self._pending = False
            self._write(self._z.flush(zlib.Z_FINISH))
            os.fsync(self._fd)
        finally:
            self._close_segment()

    def close(self) -> None:
        try:
            self._finish()
        except OSError as exc:
            raise TraceError(f"{self.path}: cannot finish: {exc.strerror or exc}") from None
        finally:
            self._abandon()

    def prune(self) -> None:
        """Delete rotated segments older than keep, then the oldest beyond max_bytes."""
        if self._dir_fd is None:
            return  # not open: no directory to prune in
        now = self.wall_ns()
        segments = []
        for name, stamp in _rotated(self.path, os.listdir(self._dir_fd)):
            try:
                info = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if not _is_regular(info):
                continue
            segments.append((name, _stamp_ns(stamp), info.st_size))
        try:
            total = os.stat(self.path.name, dir_fd=self._dir_fd, follow_symlinks=False).st_size
        except OSError:
            total = 0
        total += sum(size for _, _, size in segments)
        for name, when, size in segments:  # oldest first
            if now - when > self.keep_ns or total > self.max_bytes:
                try:
                    os.unlink(name, dir_fd=self._dir_fd)  # unlinks a name, never follows it
                except FileNotFoundError:
                    pass
                total -= size


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


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
        try:
            record = decode_line(raw)
        except ValueError as exc:
            self._damaged(offset, str(exc))
            return None
        self.lines += 1
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
