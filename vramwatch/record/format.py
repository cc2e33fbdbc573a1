"""The trace's records: their shapes, their versions, and one record as one line.

A trace (:mod:`vramwatch.record.trace`) is JSON lines, one record per line. Each
record is a JSON object whose ``"k"`` says which:

``h``   segment header: format version (``v``), run id (one per start of
        vramwatch), segment number, wall time, the kernel's boot id (``boot``)
``c``   the config in force: its TOML text as loaded, its path, whether
        ``--dry-run`` forced dry run, when (``t``, and ``m`` at start and reload);
        written at start, after each reload that changed it, and at the top of
        every segment
``st``  the restart history restored from the state file at start
``s``   the sample a tick decided on (``m``: its monotonic ns, ``t``: wall ms)
``sf``  a tick whose sample failed (``err``: the exception's repr)
``x``   a further sample in the same tick (``xf``: such a sample failed): with
        ``rc``, the re-check before an action; without, a release command's wait
``r``   a release command's result: the ``released`` or ``release_failed``
        entry the daemon logged (``e``, ``lv``, ``msg``, ``f``: name, level,
        message, fields)
``a``   what the actuator answered to an action (or the exception it raised)

Versions (SPEC "Files vramwatch writes"): format 2 added ``r``, ``boot`` and the
start's ``t`` and ``m``; format 3 added ``rc``, the flag the daemon gives the
sampler for its re-check (before it, an ``x`` was either, told apart by its place
in the tick only). This version reads formats 1 to 3; a trace of a newer format
is refused with a clear message (:func:`check_header`), never read wrongly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramwatch.config import MAX_CONFIG_BYTES, Config, ConfigError, parse
from vramwatch.model import (
    ContainerInfo,
    Event,
    GpuProcess,
    GpuSample,
    HostSample,
    Owner,
    Snapshot,
    UnitUsage,
)

if TYPE_CHECKING:
    from vramwatch.model import JobOutcome

VERSION = 3
# The oldest format this version reads.
OLDEST = 1
# The first format whose x and xf records say which was the re-check (``rc``).
RECHECK_SINCE = 3

# Record kinds ("k").
HEADER = "h"
CONFIG = "c"
STATE = "st"
SAMPLE = "s"
SAMPLE_FAILED = "sf"
EXTRA = "x"
EXTRA_FAILED = "xf"
RELEASE = "r"
ANSWER = "a"
# What a tick holds after its own sample (s or sf), in the order it came.
IN_TICK = frozenset({EXTRA, EXTRA_FAILED, RELEASE, ANSWER})
# The daemon's entries a release record holds.
RELEASE_EVENTS = frozenset({"released", "release_failed"})

# Records are trees of plain values: no cycle check (a third of json.dumps' time here).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


class TraceError(Exception):
    """A trace that cannot be written or read; ``str()`` says which file and why."""


# -- one record, one line -----------------------------------------------------------


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One record as one line of the trace (UTF-8, newline-terminated)."""
    return (_ENCODER.encode(record) + "\n").encode("utf-8")


def decode_line(raw: bytes) -> dict[str, Any]:
    """One line of the trace (without its newline) as a record; ValueError saying why
    it is not one."""
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not a JSON record") from None
    if not isinstance(record, dict) or not isinstance(record.get("k"), str):
        raise ValueError("not a trace record")
    return record


# -- the records the recorder writes ------------------------------------------------


def header_record(run: str, segment: int, wall_ms: int, boot: str) -> dict[str, Any]:
    return {"k": HEADER, "v": VERSION, "run": run, "seg": segment, "t": wall_ms, "boot": boot}


def carried_config(record: Mapping[str, Any], wall_ms: int) -> dict[str, Any]:
    """A config record repeated at the top of a later segment: the same config, carried
    on, at the segment's time."""
    carried = {k: v for k, v in record.items() if k != "m"}
    carried.update(why="segment", t=wall_ms)
    return carried


def state_record(actions_ns: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    return {"k": STATE, "a": {unit: list(times) for unit, times in actions_ns.items()}}


def sample_record(
    snapshot: Snapshot, wall_ms: int, *, first: bool, recheck: bool = False
) -> dict[str, Any]:
    """A tick's own sample (``first``), or a further one: the re-check before an action
    when ``recheck`` (what the daemon told the sampler)."""
    record = encode_snapshot(snapshot)
    record["k"] = SAMPLE if first else EXTRA
    record["m"] = snapshot.now_ns
    record["t"] = wall_ms
    if recheck:
        record["rc"] = True
    return record


def failure_record(
    now_ns: int, wall_ms: int, exc: BaseException, *, first: bool, recheck: bool = False
) -> dict[str, Any]:
    """A sample that failed: the tick's own (``first``) or a further one."""
    record: dict[str, Any] = {"k": SAMPLE_FAILED if first else EXTRA_FAILED}
    record.update(m=now_ns, t=wall_ms, err=repr(exc))
    if recheck:
        record["rc"] = True
    return record


def answer_record(
    unit: str, verb: str, outcome: JobOutcome | None, exc: BaseException | None
) -> dict[str, Any]:
    record: dict[str, Any] = {"k": ANSWER, "unit": unit, "verb": verb}
    if exc is not None:
        record["raise"] = repr(exc)
    elif outcome is not None:
        record.update(
            ok=bool(outcome.ok),
            result=str(outcome.result),
            detail=str(outcome.detail),
            accepted=bool(outcome.accepted),
        )
    return record


def release_record(event: Event, mono_ns: int, wall_ms: int) -> dict[str, Any]:
    """A release's result: the entry the daemon logged, every field of it."""
    return {
        "k": RELEASE,
        "m": mono_ns,
        "t": wall_ms,
        "e": event.name,
        "lv": event.level,
        "msg": _plain(event.message),
        "f": _plain(dict(event.fields)),
    }


def is_recheck(record: Mapping[str, Any]) -> bool:
    """Whether an ``x`` or ``xf`` record was the re-check before an action (formats
    from :data:`RECHECK_SINCE` on; before, no record says)."""
    return record.get("rc") is True


def _plain(value: Any) -> Any:
    """``value`` as JSON that UTF-8 can carry: strings with their unencodable parts
    replaced, anything that is not JSON as its ``str()``."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {_plain(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return _plain(str(value))


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
    record: dict[str, Any] = {"k": CONFIG, "why": why, "path": config.path, "forced_dry_run": False}
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
