"""``/etc/vramwatch.toml`` -> frozen :class:`Config`; every validation lives here.

Every key is declared once, in :data:`KEYS`: its table, its name, the TOML value it
takes and the parser that checks its range, its default and a line on what it does,
as systemd-oomd declares its ``ConfigTableItem`` entries. The parser, the unknown-key
hints, ``vramwatch check`` (which runs the parser) and the test that keeps
vramwatch.toml(5) in step all read that table. Rules that tie a key to the keys read
before it run as each is read (``Key.then``); those that tie keys across tables or to
the GPUs present are functions after the read (:func:`reserve_fit_errors`, ...).

Errors name the file, the key (``tenant[2].vram``) and what is wrong, so that
``vramwatch check`` can print them as they are.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramwatch import security, unitname, units
from vramwatch.model import KEY_PREFIXES, GpuSample, TenantId, TenantKind, Verb

DEFAULT_PATH = Path("/etc/vramwatch.toml")
CONFIG_ENV = "VRAMWATCH_CONFIG"

# A config file is parsed whole; anything this big is not a config (and a
# SIGHUP must not make the daemon read a runaway file into memory).
MAX_CONFIG_BYTES = 1024 * 1024


BUSES = ("system", "user")
VERBS = tuple(verb.value for verb in Verb)

# node_exporter's textfile collector reads only files named *.prom.
TEXTFILE_SUFFIX = ".prom"

MS = 10**6
SECOND = 10**9
HOUR = 3600 * SECOND
DAY = 24 * HOUR
# Docker's container name grammar (daemon/names: RestrictedNamePattern), and
# compose's project and service names (lower-case for projects since v2).
CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
COMPOSE_RE = re.compile(r"([a-z0-9][a-z0-9_-]*)/([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
CONTAINER_NAME_MAX = 255
# The Engine API endpoint; Podman serves the same API on its own socket.
DEFAULT_ENGINE_SOCKET = "unix:///run/docker.sock"
# t= of restart and stop: Docker's own default is 10 s. Its unit is whole
# seconds; past 10 minutes a container is not stopping, it is hung.
STOP_TIMEOUT_RANGE_NS = (0, 600 * 10**9)

# Sane ranges for every duration, as (key, lowest, highest) in ns. A value out
# of range is a typo, and some would crash the loop (Event.wait overflows far
# past a year). Below 100 ms a tick cannot finish its NVML and /proc reads;
# over an hour between samples or of grace is not guarding. A week of cooldown
# or restart window, a day to see memory reclaimed, are far past any job.
INTERVAL_RANGE_NS = (100 * MS, HOUR)
GRACE_RANGE_NS = (0, HOUR)
COOLDOWN_RANGE_NS = (0, 7 * DAY)
RESTART_WINDOW_RANGE_NS = (1, 7 * DAY)
RECLAIM_TIMEOUT_RANGE_NS = (1, DAY)
# [trend]: "0s" turns forecasts off; a window needs a few samples per bucket.
TREND_WINDOW_RANGE_NS = (0, 7 * DAY)
TREND_WINDOW_MIN_NS = 10 * 10**9
WARN_WITHIN_RANGE_NS = (1, 30 * DAY)
# A trace older than a year is no one's last week; a rotated segment is kept at least an hour.
RECORD_KEEP_RANGE_NS = (HOUR, 366 * DAY)
# Segments rotate at an eighth of the limit: below 1 MiB a segment would hold minutes.
RECORD_MAX_SIZE_MIN_BYTES = 1024 * 1024
# Commands (a tenant's release, [hooks]): a time limit, and a sane argv.
COMMAND_TIMEOUT_RANGE_NS = (10**9, 10 * 60 * 10**9)
ARGV_MAX = 64
# max_restarts per restart_window: more than this is no limit at all.
MAX_RESTARTS_MAX = 1000
# No GPU and no host holds a pebibyte; a bigger floor or budget is a typo.
MAX_SIZE_BYTES = 1024 * units.TIB
# [gpu] nvml_timeout: long enough for a slow but healthy driver (the first call
# after a GPU reset), short enough that a hung one costs one tick, not minutes.
NVML_TIMEOUT_MIN_NS = 100 * 10**6
NVML_TIMEOUT_MAX_NS = 60 * 10**9
# NVML UUIDs: "GPU-" or "MIG-" and hex digits, dashes (MIG-GPU-.../gi/ci on old drivers).
_GPU_UUID_RE = re.compile(r"(GPU|MIG)-[0-9A-Za-z/-]{1,120}")
MAX_GPU_INDEX = 63


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is the operator-facing message."""

    def __init__(self, path: Path | str, key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + problem)


@dataclass(frozen=True, slots=True)
class Floor:
    """A minimum that is either absolute bytes or a percentage of the total."""

    text: str
    bytes: int | None = None
    percent: float | None = None

    def resolve(self, total_bytes: int) -> int:
        if self.percent is not None:
            return int(total_bytes * self.percent / 100)
        assert self.bytes is not None
        return self.bytes


# Parsers: a TOML string -> a value, or units.UnitError saying what is wrong with it.


def _size_ceiling(value: int, text: str) -> int:
    if value > MAX_SIZE_BYTES:
        raise units.UnitError(f'must be at most 1024TiB (1 PiB), got "{text}"')
    return value


def _positive_size(text: str) -> int:
    value = units.parse_size(text)
    if value <= 0:
        raise units.UnitError(f'must be greater than zero, got "{text}"')
    return _size_ceiling(value, text)


class _Duration:
    """A parser for a duration within ``bounds`` (ns, inclusive)."""

    def __init__(self, bounds: tuple[int, int]) -> None:
        self.bounds = bounds

    def __call__(self, text: str) -> int:
        low, high = self.bounds
        value = units.parse_duration_ns(text)
        if value < low or value > high:
            if low == 0:
                raise units.UnitError(f'must be at most {_span(high)}, got "{text}"')
            if low == 1:
                if value <= 0:
                    raise units.UnitError(f'must be greater than zero, got "{text}"')
                raise units.UnitError(f'must be at most {_span(high)}, got "{text}"')
            raise units.UnitError(f'must be between {_span(low)} and {_span(high)}, got "{text}"')
        return value


def _span(ns: int) -> str:
    """A bound for an error message, as the config and the man page write it: whole
    days as days ("7d", "366d"), the rest as units.format_duration does ("1h")."""
    if ns > DAY and ns % DAY == 0:  # "24h" reads better than "1d"
        return f"{ns // DAY}d"
    return units.format_duration(ns)


def _floor(text: str) -> Floor:
    percent = units.parse_percent(text)
    if percent is not None:
        if not 0 < percent < 100:
            raise units.UnitError(f'a percentage must be above 0% and below 100%, got "{text}"')
        return Floor(text, percent=percent)
    try:
        size = units.parse_size(text)
    except units.UnitError:
        raise units.UnitError(
            f'expected a size such as "2GiB" or a percentage such as "10%", got "{text}"'
        ) from None
    if size <= 0:
        raise units.UnitError(f'must be greater than zero, got "{text}"')
    return Floor(text, bytes=_size_ceiling(size, text))


def _nvml_timeout(text: str) -> int:
    value = units.parse_duration_ns(text)
    if not NVML_TIMEOUT_MIN_NS <= value <= NVML_TIMEOUT_MAX_NS:
        raise units.UnitError(f'must be between 100ms and 60s, got "{text}"')
    return value


def _record_path(text: str) -> str:
    if not text.startswith("/"):
        raise units.UnitError(
            f'expected an absolute path such as "/var/lib/vramwatch/trace.jsonl.gz", got "{text}"'
        )
    if text.endswith("/") or "\0" in text:
        raise units.UnitError(f'expected a file name, got "{text}"')
    return text


def _record_size(text: str) -> int:
    size = _positive_size(text)
    if size < RECORD_MAX_SIZE_MIN_BYTES:
        raise units.UnitError(f'must be at least 1MiB, got "{text}"')
    return size


def _listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9835`` for IPv6) -> (host, port)."""
    example = 'expected an address such as "127.0.0.1:9835" or "[::1]:9835"'
    host, sep, port_text = text.rpartition(":")
    # ASCII digits only: str.isdigit() accepts "²" and "٣", which int() then refuses.
    if not sep or not host or not re.fullmatch(r"[0-9]+", port_text):
        raise units.UnitError(f'{example}, got "{text}"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise units.UnitError(f'"{host}" is not an IPv6 address') from None
    elif ":" in host or "[" in host or "]" in host:
        raise units.UnitError(f'{example} (IPv6 in brackets), got "{text}"')
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise units.UnitError(f'{example}, got "{text}"')
    # Bounded before int(): Python refuses to convert more than 4300 digits.
    port = int(port_text) if len(port_text) <= 5 else 0
    if not 1 <= port <= 65535:
        shown = port_text if len(port_text) <= 20 else port_text[:20] + "…"
        raise units.UnitError(f"the port must be 1 to 65535, got {shown}")
    return host, port


def _textfile(text: str) -> str:
    if not text.startswith("/"):
        raise units.UnitError(f'expected an absolute path, got "{text}"')
    if not text.endswith(TEXTFILE_SUFFIX) or text.endswith("/" + TEXTFILE_SUFFIX):
        raise units.UnitError(
            f'node_exporter reads only files named *{TEXTFILE_SUFFIX}, got "{text}"'
        )
    return text


def _socket(text: str) -> str:
    if not text.startswith("unix:///"):
        raise units.UnitError(
            'expected a Unix socket such as "unix:///run/docker.sock" or '
            f'"unix:///run/podman/podman.sock", got "{text}"'
        )
    return text


def _is_container_name(name: str) -> bool:
    return bool(CONTAINER_NAME_RE.fullmatch(name)) and len(name) <= CONTAINER_NAME_MAX


def _is_compose_name(name: str) -> bool:
    return bool(COMPOSE_RE.fullmatch(name)) and len(name) <= CONTAINER_NAME_MAX


def validate_tenant_key(key: str) -> str | None:
    """The problem with a tenant key (a unit name, ``container:NAME``,
    ``compose:PROJECT/SERVICE``), or ``None`` when it is one."""
    ident = TenantId.from_key(key)
    if ident.kind is TenantKind.CONTAINER:
        return None if _is_container_name(ident.name) else f'"{key}" is not a container tenant'
    if ident.kind is TenantKind.COMPOSE:
        return None if _is_compose_name(ident.name) else f'"{key}" is not a compose tenant'
    return unitname.tenant_problem(key)


def _tenant_name_problem(kind: TenantKind, name: str) -> str | None:
    """What is wrong with the name a tenant's ``unit``, ``container`` or ``compose`` gives."""
    if kind is TenantKind.CONTAINER:
        if _is_container_name(name):
            return None
        return f'expected a container name such as "immich_machine_learning", got "{name}"'
    if kind is TenantKind.COMPOSE:
        if _is_compose_name(name):
            return None
        return f'expected PROJECT/SERVICE such as "immich/immich-machine-learning", got "{name}"'
    problem = unitname.tenant_problem(name)
    if problem is None and any(name.startswith(p) for p in KEY_PREFIXES.values()):
        problem = f'"{name}": the prefix "{name.split(":")[0]}:" is kept for container tenants'
    return problem


# Reading TOML: one table at a time, each key by the kind of value it takes.


class _Table:
    """One TOML table being read, and how its keys are named in errors."""

    def __init__(self, path: Path | str, prefix: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.prefix = prefix
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def get(
        self, name: str, kind: type | tuple[type, ...], expected: str = "", hint: str = ""
    ) -> Any:
        """The value of ``name``, which must be a ``kind``; ``expected`` says what the key
        takes when the kind's own name would not (an array of what), ``hint`` how to
        write a bare number where a string belongs."""
        value = self.data[name]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            problem = f"expected {expected or _kind_name(kind)}, got {_describe(value)}"
            if hint and not isinstance(value, bool) and isinstance(value, int | float):
                if math.isfinite(value):
                    problem += f"; write it as {hint.format(value)}"
            raise self.error(name, problem)
        return value

    def table(self, name: str) -> _Table:
        """The table ``name`` of this one (empty when it is not there)."""
        data = self.get(name, dict) if name in self.data else {}
        return _Table(self.path, self.key(name), data)

    def finish(self, known: Collection[str]) -> None:
        """Refuse the first key (in sorted order) that is none of ``known``."""
        unknown = sorted(set(self.data).difference(known))
        if unknown:
            raise self.error(unknown[0], "unknown key" + _did_you_mean(unknown[0], known))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        bool: "true or false",
        int: "an integer",
        dict: "a table",
        list: "an array",
    }
    return names[kind] if isinstance(kind, type) else " or ".join(map(_kind_name, kind))


def _describe(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()  # a TOML date or time, written back as TOML
    return repr(value)


def _did_you_mean(name: str, known: Collection[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


# How a bare number given for a size or a duration is written (TOML has no units).
AS_DURATION = '"{}s"'
AS_SIZE = '"{}MiB"'
AS_FLOOR = '"{}MiB" (or a percentage such as "10%")'
ARGV_EXAMPLE = '["/usr/bin/curl", "-fsS", URL]'


def _as_is(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Value:
    """The value a key takes: its TOML type, then ``parse``, which checks its range and
    converts it (units.UnitError says what is wrong)."""

    kind: str  # what vramwatch.toml(5) calls it: "duration", "size", "boolean", ...
    toml_type: type | tuple[type, ...]
    parse: Callable[[Any], Any] = _as_is
    expected: str = ""  # what it takes, where the type's own name would not say
    number_as: str = ""  # AS_DURATION, ...: how a bare number would be written

    def read(self, table: _Table, name: str) -> Any:
        value = table.get(name, self.toml_type, self.expected, self.number_as)
        try:
            return self.parse(value)
        except units.UnitError as exc:
            raise table.error(name, str(exc)) from None


def _text(kind: str, parse: Callable[[str], Any], number_as: str = "") -> Value:
    """A string that ``parse`` reads."""
    return Value(kind, str, parse, number_as=number_as)


def _duration(bounds: tuple[int, int]) -> Value:
    return _text("duration", _Duration(bounds), AS_DURATION)


def _integer(low: int, high: int) -> Value:
    return Value("integer", int, _between(low, high))


def _between(low: int, high: int) -> Callable[[int], int]:
    def parse(value: int) -> int:
        if value < low:
            raise units.UnitError(f"must be at least {low}, got {value}")
        if value > high:
            raise units.UnitError(f"must be at most {high}, got {value}")
        return value

    return parse


def _one_of(choices: tuple[str, ...], convert: Callable[[str], Any] = str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        if value not in choices:
            said = " or ".join(f'"{choice}"' for choice in choices)
            raise units.UnitError(f'expected {said}, got "{value}"')
        return convert(value)

    return parse


def _argv(value: list[Any]) -> tuple[str, ...]:
    """An argv list: run without a shell, so its first word is an absolute path."""
    if not value:
        raise units.UnitError(f"expected a command as a list, e.g. {ARGV_EXAMPLE}")
    if len(value) > ARGV_MAX or not all(isinstance(v, str) for v in value):
        raise units.UnitError(f"expected a list of at most {ARGV_MAX} strings")
    if any("\0" in v for v in value):
        raise units.UnitError("a NUL character cannot be passed to a command")
    if not value[0].startswith("/"):
        problem = "the command must be an absolute path (no shell, no PATH search)"
        raise units.UnitError(f'{problem}, got "{value[0]}"')
    return tuple(value)


def _gpu(value: int | str) -> int | str:
    """An index (0..63) or a ``GPU-``/``MIG-`` UUID."""
    if isinstance(value, int):
        if not 0 <= value <= MAX_GPU_INDEX:
            raise units.UnitError(f"expected an index from 0 to {MAX_GPU_INDEX}, got {value}")
    elif not _GPU_UUID_RE.fullmatch(value):
        raise units.UnitError(
            f'expected a UUID such as "GPU-8f1c2a3e-..." or "MIG-...", got "{value}"'
        )
    return value


def _tenant_name(kind: TenantKind) -> Callable[[str], str]:
    """The name a tenant of this kind goes by -> the tenant's key (model.TenantId)."""

    def parse(name: str) -> str:
        problem = _tenant_name_problem(kind, name)
        if problem:
            raise units.UnitError(problem)
        return TenantId(kind, name).key

    return parse


FLAG = Value("boolean", bool)
SIZE = _text("size", _positive_size, AS_SIZE)
FLOOR = _text("size or percentage", _floor, AS_FLOOR)
COMMAND = Value(
    "list of strings",
    list,
    _argv,
    expected=f"a command as a list of strings such as {ARGV_EXAMPLE}",
)
GPU_REF = Value("integer or string", (int, str), _gpu, 'an index such as 0 or a UUID "GPU-..."')


# A rule on a key and the keys read before it (values by field): what is wrong, or None.
Rule = Callable[[Mapping[str, Any]], str | None]


def _scope_restart(values: Mapping[str, Any]) -> str | None:
    unit = values["unit"]
    scope = unit.endswith(".scope") and TenantId.from_key(unit).kind is TenantKind.UNIT
    if values["verb"] is Verb.RESTART and scope:
        return 'a scope cannot be restarted by systemd; use action = "stop"'
    return None


def _reserve_needs_vram(values: Mapping[str, Any]) -> str | None:
    if values["reserve"] and values["vram_bytes"] is None:
        return "needs a vram budget: the unused part of it is reserved"
    return None


def _trend_window(values: Mapping[str, Any]) -> str | None:
    if 0 < values["window_ns"] < TREND_WINDOW_MIN_NS:
        return 'must be at least 10s, or "0s" to turn forecasts off'
    return None


@dataclass(frozen=True, slots=True)
class Key:
    """One key of vramwatch.toml, as systemd-oomd's ``ConfigTableItem`` declares one
    (section, name, parser and its range, destination), with its default and help."""

    table: str  # "daemon", ...; "tenant" for the keys of each [[tenant]]
    name: str
    field: str  # the attribute of the table's dataclass that it sets
    value: Value  # the kind of value it takes; its parser holds the range
    default: object  # as written in TOML ("2s", false, 3); None: it has none
    help: str  # one line; vramwatch.toml(5) says the rest
    then: Rule | None = None  # checked once it and the keys above it are read

    @property
    def path(self) -> str:
        return f"{self.table}.{self.name}"


# Every key, by table, in the order each table is read (a file with two mistakes is
# told about the first). The dataclasses below take their defaults from here.
# fmt: off
KEYS: tuple[Key, ...] = (
    # Key(table, name, field it sets, the value it takes (its parser holds the range),
    #     default as TOML writes it, help[, a rule on it and the keys above it])
    Key("daemon", "bus", "bus", _text("string", _one_of(BUSES)),
        "system", "the systemd manager whose units are tenants"),
    Key("daemon", "max_restarts", "max_restarts", _integer(1, MAX_RESTARTS_MAX),
        3, "actions per unit within restart_window; past it, none (a restart storm)"),
    Key("daemon", "interval", "interval_ns", _duration(INTERVAL_RANGE_NS),
        "2s", "sampling period"),
    Key("daemon", "dry_run", "dry_run", FLAG,
        False, "decide and log would_restart or would_stop, never act"),
    Key("daemon", "cooldown", "cooldown_ns", _duration(COOLDOWN_RANGE_NS),
        "2m", "no second action on the same unit within this"),
    Key("daemon", "restart_window", "restart_window_ns", _duration(RESTART_WINDOW_RANGE_NS),
        "1h", "the window of max_restarts"),
    Key("daemon", "reclaim_timeout", "reclaim_timeout_ns", _duration(RECLAIM_TIMEOUT_RANGE_NS),
        "30s", "after an action, how long to wait for the memory to come back"),
    Key("daemon", "record", "record", _text("path", _record_path),
        None, "record every sample to this trace, for vramwatch replay"),
    Key("daemon", "record_keep", "record_keep_ns", _duration(RECORD_KEEP_RANGE_NS),
        "7d", "rotated trace segments older than this are deleted"),
    Key("daemon", "record_max_size", "record_max_bytes", _text("size", _record_size, AS_SIZE),
        "1GiB", "the most the trace and its rotated segments take on disk"),

    # Floors in the spirit of earlyoom (10 % of RAM available) and of the incidents
    # behind vramwatch: a 16 GB card with under 1.6 GB free cannot load another model.
    Key("gpu", "nvml_timeout", "nvml_timeout_ns", _text("duration", _nvml_timeout, AS_DURATION),
        "3s", "how long one sample waits for NVML"),
    Key("gpu", "min_free_vram", "floor", FLOOR,
        "10%", "floor on free VRAM, for every GPU"),
    Key("gpu", "grace", "grace_ns", _duration(GRACE_RANGE_NS),
        "10s", "the floor must be breached in every sample for this long"),

    Key("host", "min_available_ram", "floor", FLOOR,
        "10%", "floor on MemAvailable"),
    Key("host", "grace", "grace_ns", _duration(GRACE_RANGE_NS),
        "10s", "the floor must be breached in every sample for this long"),

    Key("metrics", "listen", "listen", _text("address", _listen),
        None, "serve /metrics over HTTP at this address"),
    Key("metrics", "textfile", "textfile", _text("absolute path ending in .prom", _textfile),
        None, "write the metrics to this file for node_exporter's textfile collector"),

    Key("trend", "window", "window_ns", _duration(TREND_WINDOW_RANGE_NS),
        "30m", 'how far back the trend looks; "0s" turns forecasts off', _trend_window),
    Key("trend", "warn_within", "warn_within_ns", _duration(WARN_WITHIN_RANGE_NS),
        "2h", "warn when a budget will be reached within this"),

    Key("hooks", "after_action", "after_action", COMMAND,
        None, "run after every action, release and growing entry"),
    Key("hooks", "timeout", "timeout_ns", _duration(COMMAND_TIMEOUT_RANGE_NS),
        "10s", "the hook's time limit"),

    Key("containers", "socket", "socket", _text("string", _socket),
        DEFAULT_ENGINE_SOCKET, "the Engine API socket (Docker's or Podman's)"),
    Key("containers", "stop_timeout", "stop_timeout_ns", _duration(STOP_TIMEOUT_RANGE_NS),
        "10s", "t= of restart and stop: how long a container may take to exit"),

    # Each [[tenant]] is named by exactly one of unit, container, compose (TENANT_NAMES).
    Key("tenant", "unit", "unit", _text("string", _tenant_name(TenantKind.UNIT)),
        None, "the systemd unit it runs as, a .service or a .scope"),
    Key("tenant", "container", "unit", _text("string", _tenant_name(TenantKind.CONTAINER)),
        None, "a Docker or Podman container, by name"),
    Key("tenant", "compose", "unit", _text("string", _tenant_name(TenantKind.COMPOSE)),
        None, "every container of a docker compose service, as PROJECT/SERVICE"),
    Key("tenant", "action", "verb", _text("string", _one_of(VERBS, Verb)),
        "restart", "what is done to it: restart or stop", _scope_restart),
    Key("tenant", "vram", "vram_bytes", SIZE,
        None, "VRAM budget, summed over all GPUs"),
    Key("tenant", "reserve", "reserve", FLAG,
        False, "keep the unused part of its VRAM budget free on its GPU", _reserve_needs_vram),
    Key("tenant", "ram", "ram_bytes", SIZE,
        None, "RAM budget: anonymous and shared memory"),
    Key("tenant", "protected", "protected", FLAG,
        False, "watched and reported, never acted on"),
    Key("tenant", "gpu", "gpu", GPU_REF,
        None, "the GPU it runs on: an index or a GPU-/MIG- UUID"),
    Key("tenant", "release", "release", COMMAND,
        None, "run before a restart; no restart when the memory comes back"),
    Key("tenant", "release_timeout", "release_timeout_ns", _duration(COMMAND_TIMEOUT_RANGE_NS),
        "20s", "the time limit of the release command and of the wait for the memory"),
)
# fmt: on


# The tables in the order they are read ("tenant": each [[tenant]]), and their keys.
TABLES: dict[str, tuple[Key, ...]] = {
    table: tuple(key for key in KEYS if key.table == table)
    for table in dict.fromkeys(key.table for key in KEYS)
}
# A tenant is named by exactly one of these keys (the others are then not there).
TENANT_NAMES = ("unit", "container", "compose")


def _initial(key: Key) -> Any:
    """The value a key has when the file does not set it: its default, read as if the
    file said it (so a default is in its own range), or None (no command: ())."""
    if key.default is None:
        return () if key.value is COMMAND else None
    return key.value.read(_Table("vramwatch.config.KEYS", "", {key.name: key.default}), key.name)


# Each key's value when the file does not set it, by path ("daemon.interval"): the
# dataclasses' defaults.
DEFAULTS: dict[str, Any] = {key.path: _initial(key) for key in KEYS}


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """[daemon]; each default is its key's (DEFAULTS), as are those of the tables below."""

    interval_ns: int = DEFAULTS["daemon.interval"]
    dry_run: bool = DEFAULTS["daemon.dry_run"]
    bus: str = DEFAULTS["daemon.bus"]
    cooldown_ns: int = DEFAULTS["daemon.cooldown"]
    max_restarts: int = DEFAULTS["daemon.max_restarts"]
    restart_window_ns: int = DEFAULTS["daemon.restart_window"]
    reclaim_timeout_ns: int = DEFAULTS["daemon.reclaim_timeout"]
    # Record and replay (vramwatch.record): where the trace goes, how long and how much
    # of it is kept. None: not recording (unless `run --record FILE`).
    record: str | None = DEFAULTS["daemon.record"]
    record_keep_ns: int = DEFAULTS["daemon.record_keep"]
    record_max_bytes: int = DEFAULTS["daemon.record_max_size"]


@dataclass(frozen=True, slots=True)
class FloorConfig:
    floor: Floor
    grace_ns: int


@dataclass(frozen=True, slots=True)
class Tenant:
    # The tenant's key: the unit name of a unit tenant, "container:NAME" or
    # "compose:PROJECT/SERVICE" (model.TenantId); the policy knows only this.
    unit: str
    vram_bytes: int | None = DEFAULTS["tenant.vram"]
    ram_bytes: int | None = DEFAULTS["tenant.ram"]
    verb: Verb = DEFAULTS["tenant.action"]
    protected: bool = DEFAULTS["tenant.protected"]
    # Keep the unused part of the VRAM budget free on its GPU (SPEC "Budgets that
    # are guarantees"); ``gpu`` pins the tenant, and its VRAM budget, to one GPU.
    reserve: bool = DEFAULTS["tenant.reserve"]
    gpu: int | str | None = DEFAULTS["tenant.gpu"]  # an index, or a GPU-/MIG- UUID
    # Release before restart: run this argv (no shell) and wait for the memory.
    release: tuple[str, ...] = DEFAULTS["tenant.release"]
    release_timeout_ns: int = DEFAULTS["tenant.release_timeout"]

    def budget(self, resource: str) -> int | None:
        return self.vram_bytes if resource == "vram" else self.ram_bytes

    def pinned_to(self, gpu: GpuSample) -> bool:
        """Whether this tenant is pinned to this device. A MIG device carries its GPU's
        index, so ``gpu`` as that index or as the GPU's own UUID means every MIG device
        of that GPU (SPEC "Budgets that are guarantees"); a MIG- UUID means one."""
        return self.gpu is not None and self.gpu in (gpu.index, gpu.uuid, gpu.parent_uuid)

    def reserves_on(self, gpu: GpuSample, devices: int) -> bool:
        """Whether this tenant's unused budget is kept free on this device: the one it is
        pinned to, or the only one there is (``devices``: how many the host shows).
        Pinned to a whole GPU in MIG mode, it reserves on none of its MIG devices: the
        room must be on one of them, and which one is not said (:func:`mig_reserve_problems`)."""
        if not self.reserve or self.vram_bytes is None:
            return False
        if self.gpu is None:
            return devices == 1
        return self.gpu == gpu.uuid or (gpu.parent_uuid is None and self.gpu == gpu.index)

    @property
    def key(self) -> str:
        return self.unit

    @property
    def id(self) -> TenantId:
        return TenantId.from_key(self.unit)

    @property
    def kind(self) -> TenantKind:
        return self.id.kind


@dataclass(frozen=True, slots=True)
class ContainersConfig:
    """How container tenants are reached: the Engine API (Docker or Podman)."""

    socket: str = DEFAULTS["containers.socket"]
    stop_timeout_ns: int = DEFAULTS["containers.stop_timeout"]

    @property
    def stop_timeout_s(self) -> int:
        """The API's t=, in whole seconds, rounded up."""
        return -(-self.stop_timeout_ns // 10**9)


DEFAULT_GPU = FloorConfig(DEFAULTS["gpu.min_free_vram"], DEFAULTS["gpu.grace"])
DEFAULT_HOST = FloorConfig(DEFAULTS["host.min_available_ram"], DEFAULTS["host.grace"])


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where Prometheus metrics go (vramwatch.metrics); both off by default."""

    listen_host: str | None = None  # HTTP exporter address, e.g. "127.0.0.1"
    listen_port: int | None = None
    # node_exporter textfile collector file (*.prom)
    textfile: str | None = DEFAULTS["metrics.textfile"]

    @property
    def listen(self) -> str | None:
        if self.listen_host is None:
            return None
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


@dataclass(frozen=True, slots=True)
class TrendConfig:
    """[trend]: leak forecasts from the troughs of each tenant's usage (vramwatch.trend)."""

    window_ns: int = DEFAULTS["trend.window"]
    warn_within_ns: int = DEFAULTS["trend.warn_within"]


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """[hooks]: a command run after every action, release and growing event."""

    after_action: tuple[str, ...] = DEFAULTS["hooks.after_action"]
    timeout_ns: int = DEFAULTS["hooks.timeout"]


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    daemon: DaemonConfig
    gpu: FloorConfig
    host: FloorConfig
    tenants: tuple[Tenant, ...]
    metrics: MetricsConfig = MetricsConfig()
    trend: TrendConfig = TrendConfig()
    hooks: HooksConfig = HooksConfig()
    nvml_timeout_ns: int = DEFAULTS["gpu.nvml_timeout"]
    containers: ContainersConfig = ContainersConfig()

    def tenant(self, unit: str) -> Tenant | None:
        """The tenant with this key (a unit name, ``container:NAME``, ``compose:P/S``)."""
        for tenant in self.tenants:
            if tenant.unit == unit:
                return tenant
        return None

    @property
    def has_containers(self) -> bool:
        """Some tenant is a container: only then is the Engine API socket opened."""
        return any(t.kind is not TenantKind.UNIT for t in self.tenants)


def default_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_PATH)


def _read(table: _Table, keys: tuple[Key, ...]) -> dict[str, Any]:
    """The table's values by field, each key read as the table declares it, in order;
    then no key may be left that the table does not know."""
    values: dict[str, Any] = {}
    for key in keys:
        if key.name in table.data:
            values[key.field] = key.value.read(table, key.name)
        else:
            # setdefault: the tenant's name keys share one field, which the one given sets.
            values.setdefault(key.field, DEFAULTS[key.path])
        problem = key.then(values) if key.then else None
        if problem:
            raise table.error(key.name, problem)
    table.finish([key.name for key in keys])
    return values


def _section(root: _Table, name: str) -> dict[str, Any]:
    return _read(root.table(name), TABLES[name])


def _metrics(values: dict[str, Any]) -> MetricsConfig:
    host, port = values.pop("listen") or (None, None)
    return MetricsConfig(host, port, **values)


def _tenant(table: _Table) -> Tenant:
    named = [name for name in TENANT_NAMES if name in table.data]
    if not named:
        raise table.error(
            "unit",
            'missing: every tenant needs the systemd unit it runs as (or "container" or '
            '"compose" for a container)',
        )
    if len(named) > 1:
        raise table.error(
            named[1],
            f"a tenant is named by exactly one of unit, container, "
            f'compose; this one has both "{named[0]}" and "{named[1]}"',
        )
    return Tenant(**_read(table, TABLES["tenant"]))


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's message with its keys in TOML's words: ``[tenant.x]``, not
    ``('tenant', 'x')``."""
    import ast
    import json

    def key(match: re.Match[str]) -> str:
        parts = ast.literal_eval(match["key"])
        return ".".join(p if _BARE_KEY_RE.fullmatch(p) else json.dumps(p) for p in parts)

    message = _DECLARE_TWICE_RE.sub(lambda m: f"Cannot declare [{key(m)}] twice", str(exc))
    return _KEY_TUPLE_RE.sub(key, message)


_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_QUOTED = r"""(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
_KEY_TUPLE = rf"\({_QUOTED}(?:, {_QUOTED})*,?\)"
_KEY_TUPLE_RE = re.compile(rf"(?P<key>{_KEY_TUPLE})")
_DECLARE_TWICE_RE = re.compile(rf"Cannot declare (?P<key>{_KEY_TUPLE}) twice")


# The last line of defence, never expected to fire (the config fuzzer checks
# that it does not): an exception a validator forgot still becomes a
# ConfigError, so check prints no traceback and run exits 78.
UNEXPECTED = "cannot be read as a config: {error}; this is a bug in vramwatch, please report it"


def parse(text: str, path: Path | str = "<config>") -> Config:
    """Parse and validate TOML text; raise :class:`ConfigError` on any mistake."""
    try:
        return _parse(text, Path(path))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - see UNEXPECTED
        raise ConfigError(path, None, UNEXPECTED.format(error=repr(exc))) from None


def _parse(text: str, path: Path) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {_toml_error(exc)}") from None
    except RecursionError:
        raise ConfigError(path, None, "not valid TOML: nested too deeply") from None
    root = _Table(path, "", data)
    daemon = DaemonConfig(**_section(root, "daemon"))
    gpu = _section(root, "gpu")
    nvml_timeout_ns = gpu.pop("nvml_timeout_ns")
    host = _section(root, "host")
    metrics = _metrics(_section(root, "metrics"))
    trend = TrendConfig(**_section(root, "trend"))
    hooks = HooksConfig(**_section(root, "hooks"))
    containers = ContainersConfig(**_section(root, "containers"))
    raw_tenants = (
        root.get("tenant", list, expected="an array of tables ([[tenant]])")
        if "tenant" in data
        else []
    )
    tenants: list[Tenant] = []
    for i, raw in enumerate(raw_tenants):
        key = f"tenant[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(path, key, f"expected a table ([[tenant]]), got {_describe(raw)}")
        tenant = _tenant(_Table(path, key, raw))
        for j, other in enumerate(tenants):
            if other.unit == tenant.unit:
                ident = tenant.id
                raise ConfigError(
                    path,
                    f"{key}.{ident.kind.value}",
                    f'"{ident.name}" is already configured as tenant[{j}]',
                )
        tenants.append(tenant)
    root.finish(TABLES)
    return Config(
        str(path),
        daemon,
        FloorConfig(**gpu),
        FloorConfig(**host),
        tuple(tenants),
        metrics,
        trend,
        hooks,
        nvml_timeout_ns,
        containers,
    )


def load(path: Path | str, *, trusted: bool = False) -> Config:
    """Read and validate a config file.

    ``trusted``: refuse a file (or directory) that anybody but root or the
    user running vramwatch could write (see :mod:`vramwatch.security`).
    """
    path = Path(path)
    try:
        if trusted:
            fd = security.open_config(path)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except security.Untrusted as exc:
        raise ConfigError(path, None, f"refusing an untrusted config: {exc}") from None
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file (write one, see vramwatch.toml(5))") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"larger than {MAX_CONFIG_BYTES} bytes; not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not UTF-8 text (byte {exc.start})") from None
    return parse(text, path)


def budget_fit_warnings(config: Config, gpu_totals_bytes: list[int]) -> list[str]:
    """Warnings when the VRAM budgets cannot fit the GPUs that are present."""
    budgets = sum(t.vram_bytes or 0 for t in config.tenants)
    if not gpu_totals_bytes or budgets == 0:
        return []
    usable = sum(total - config.gpu.floor.resolve(total) for total in gpu_totals_bytes)
    if budgets <= usable:
        return []
    return [
        (
            f"VRAM budgets sum to {units.format_size(budgets)} but the {len(gpu_totals_bytes)} "
            f"GPU(s) present leave {units.format_size(usable)} above the "
            f"min_free_vram floor ({config.gpu.floor.text}): tenants within budget can still "
            "breach the floor, and then vramwatch can only warn"
        )
    ]


def reserve_fit_errors(config: Config, gpus: Sequence[GpuSample]) -> list[str]:
    """Why the reserving tenants cannot be honoured on the devices present (those whose
    total is known): each device's floor plus the budgets reserved on it must fit it,
    with more than one device a reserving tenant must say which (``gpu``), and on a GPU
    in MIG mode it must name a MIG device (:func:`mig_reserve_problems`)."""
    problems: list[str] = []
    reserving = [(i, t) for i, t in enumerate(config.tenants) if t.reserve]
    if not reserving or not gpus:
        return problems
    mig = any(g.parent_uuid is not None for g in gpus)
    for number, tenant in reserving:
        if tenant.gpu is None and len(gpus) > 1:
            problems.append(
                f"tenant[{number}].gpu: {tenant.unit} reserves VRAM and {len(gpus)} GPUs are "
                "present: say which one (an index or a GPU-/MIG- UUID"
                + ("; on a GPU in MIG mode, a MIG- UUID)" if mig else ")")
            )
        elif tenant.gpu is not None and not any(tenant.pinned_to(g) for g in gpus):
            problems.append(f"tenant[{number}].gpu: no GPU {tenant.gpu} is present")
    problems += mig_reserve_problems(config, gpus)
    for gpu in gpus:
        on_it = [t for _, t in reserving if t.reserves_on(gpu, len(gpus))]
        reserved = sum(t.vram_bytes or 0 for t in on_it)
        if gpu.total_bytes is None:
            continue
        floor = config.gpu.floor.resolve(gpu.total_bytes)
        if on_it and floor + reserved > gpu.total_bytes:
            problems.append(
                f"{gpu.where}: min_free_vram ({units.format_size(floor)}) plus the budgets "
                f"reserved on it ({units.format_size(reserved)} for "
                f"{', '.join(t.unit for t in on_it)}) exceed its "
                f"{units.format_size(gpu.total_bytes)}"
            )
    return problems


def mig_reserve_problems(config: Config, gpus: Sequence[GpuSample]) -> list[str]:
    """Reserving tenants pinned to a whole GPU in MIG mode (its index or GPU- UUID): the
    room must be kept on one MIG device, named by its MIG- UUID, so nothing is reserved
    for them. ``check`` refuses these; ``run`` says them as config_warning."""
    problems = []
    for number, tenant in enumerate(config.tenants):
        if not tenant.reserve or tenant.gpu is None:
            continue
        whole = [g for g in gpus if g.parent_uuid is not None and tenant.pinned_to(g)]
        if not whole or any(g.uuid == tenant.gpu for g in whole):
            continue
        problems.append(
            f"tenant[{number}].gpu: {tenant.unit} reserves VRAM on GPU {whole[0].index}, "
            f"which is in MIG mode: name one of its MIG devices by its UUID "
            f"({', '.join(g.uuid for g in whole)}); until then nothing is reserved for it"
        )
    return problems


def gpu_pin_problems(config: Config, gpus: list[tuple[int, str, str | None]]) -> list[str]:
    """Tenants pinned (``gpu``) to a GPU that is not among ``gpus`` (index, UUID, and
    the parent GPU's UUID for a MIG device): their VRAM is never counted, so they
    are never acted on for VRAM. Nothing when no GPU is visible: the config may be
    meant for another host. Reserving tenants are left to :func:`reserve_fit_errors`."""
    if not gpus:
        return []
    known: set[int | str] = set()
    for index, uuid, parent in gpus:
        known.update(ref for ref in (index, uuid, parent) if ref is not None)
    present = ", ".join(dict.fromkeys(f"GPU {i} {parent or uuid}" for i, uuid, parent in gpus))
    return [
        f"tenant[{number}].gpu: no GPU {tenant.gpu} is present ({present}): "
        f"{tenant.unit} would never be acted on for VRAM"
        for number, tenant in enumerate(config.tenants)
        if tenant.gpu is not None and tenant.gpu not in known and not tenant.reserve
    ]


def floor_warnings(
    config: Config, gpu_totals_bytes: list[int | None], mem_total_bytes: int | None
) -> list[str]:
    """Warnings for floors at or above what exists: such a floor is breached on every tick.

    ``gpu_totals_bytes`` by GPU index (``None``: unknown). Percentages are
    always below the total (the parser keeps them under 100 %).
    """
    warnings = []
    host_floor = config.host.floor.bytes
    if host_floor is not None and mem_total_bytes and host_floor >= mem_total_bytes:
        warnings.append(
            f"host.min_available_ram {config.host.floor.text} is at or above this host's "
            f"MemTotal ({units.format_size(mem_total_bytes)}): MemAvailable is always under "
            "it, so every tick is a breach"
        )
    gpu_floor = config.gpu.floor.bytes
    for index, total in enumerate(gpu_totals_bytes):
        if gpu_floor is not None and total and gpu_floor >= total:
            warnings.append(
                f"gpu.min_free_vram {config.gpu.floor.text} is at or above GPU {index}'s "
                f"memory ({units.format_size(total)}): its free VRAM is always under it, so "
                "every tick is a breach"
            )
    return warnings


def watchdog_warnings(config: Config, watchdog_ns: int | None) -> list[str]:
    """Waits in the loop longer than ``watchdog_ns`` (systemd's keep-alive interval, half
    of ``WatchdogSec=``; None: no watchdog). vramwatch feeds the watchdog while such a
    wait is within its own limit, but the loop acts on nothing else meanwhile."""
    if watchdog_ns is None:
        return []
    waits = [("gpu.nvml_timeout", config.nvml_timeout_ns, "a hung driver holds the loop")]
    waits += [
        (f"tenant[{i}].release_timeout", t.release_timeout_ns, f"{t.unit}'s release holds the loop")
        for i, t in enumerate(config.tenants)
        if t.release
    ]
    if config.has_containers:
        stop = config.containers.stop_timeout_ns
        waits.append(("containers.stop_timeout", stop, "a container's restart holds the loop"))
    return [
        f"{key} {_span(ns)} is longer than half of the unit's WatchdogSec= "
        f"({_span(2 * watchdog_ns)}): {what} up to that long; vramwatch keeps the "
        "watchdog fed meanwhile but acts on nothing else; lower it, or raise WatchdogSec="
        for key, ns, what in waits
        if ns > watchdog_ns
    ]


def run_warnings(
    config: Config,
    gpus: Sequence[GpuSample],
    mem_total_bytes: int | None,
    watchdog_ns: int | None,
) -> list[str]:
    """What ``vramwatch run`` says (config_warning) about a config it runs all the same,
    at start and after each reload. run never refuses what an earlier release accepted:
    its exit 78 with ``RestartPreventExitStatus=78`` would leave the host unguarded.

    ``gpus``: the devices sampled (a device whose total is unknown counts as absent);
    ``watchdog_ns``: as in :func:`watchdog_warnings`.
    """
    present = [gpu for gpu in gpus if gpu.total_bytes is not None]
    # A pin that matches no GPU here is an error for check but only a warning for run:
    # the config may be shared by hosts, and guarding the rest must go on.
    pins = gpu_pin_problems(config, [(g.index, g.uuid, g.parent_uuid) for g in gpus])
    return (
        pins
        + floor_warnings(config, [gpu.total_bytes for gpu in gpus], mem_total_bytes)
        + [
            f"{problem}; vramwatch check refuses this, and run cannot keep this "
            "reservation as configured"
            for problem in reserve_fit_errors(config, present)
        ]
        + watchdog_warnings(config, watchdog_ns)
    )
