"""``/etc/vramwatch.toml`` -> frozen :class:`Config`; every validation lives here.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vramwatch import security, unitname, units
from vramwatch.model import KEY_PREFIXES, GpuSample, TenantId, TenantKind, Verb

DEFAULT_PATH = Path("/etc/vramwatch.toml")
CONFIG_ENV = "VRAMWATCH_CONFIG"

# A config file is parsed whole; anything this big is not a config (and a
# SIGHUP must not make the daemon read a runaway file into memory).
MAX_CONFIG_BYTES = 1024 * 1024

BUSES = ("system", "user")

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


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    interval_ns: int = 2 * 10**9
    dry_run: bool = False
    bus: str = "system"
    cooldown_ns: int = 120 * 10**9
    max_restarts: int = 3
    restart_window_ns: int = 3600 * 10**9
    reclaim_timeout_ns: int = 30 * 10**9
    # Record and replay (vramwatch.trace): where the trace goes, how long and how much
    # of it is kept. None: not recording (unless `run --record FILE`).
    record: str | None = None
    record_keep_ns: int = 7 * 24 * 3600 * 10**9
    record_max_bytes: int = 1024**3


@dataclass(frozen=True, slots=True)
class FloorConfig:
    floor: Floor
    grace_ns: int


@dataclass(frozen=True, slots=True)
class Tenant:
    # The tenant's key: the unit name of a unit tenant, "container:NAME" or
    # "compose:PROJECT/SERVICE" (model.TenantId); the policy knows only this.
    unit: str
    vram_bytes: int | None = None
    ram_bytes: int | None = None
    verb: Verb = Verb.RESTART
    protected: bool = False
    # Keep the unused part of the VRAM budget free on its GPU (SPEC "Budgets that
    # are guarantees"); ``gpu`` pins the tenant, and its VRAM budget, to one GPU.
    reserve: bool = False
    gpu: int | str | None = None  # an index, or a GPU-/MIG- UUID
    # Release before restart: run this argv (no shell) and wait for the memory.
    release: tuple[str, ...] = ()
    release_timeout_ns: int = 20 * 10**9

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

    socket: str = DEFAULT_ENGINE_SOCKET
    stop_timeout_ns: int = 10 * 10**9

    @property
    def stop_timeout_s(self) -> int:
        """The API's t=, in whole seconds, rounded up."""
        return -(-self.stop_timeout_ns // 10**9)


# Sane defaults in the spirit of earlyoom (10 % of RAM available) and of the
# incidents behind vramwatch: a 16 GB card with under 1.6 GB free cannot load
# another model.
DEFAULT_GPU = FloorConfig(Floor("10%", percent=10.0), 10 * 10**9)
DEFAULT_HOST = FloorConfig(Floor("10%", percent=10.0), 10 * 10**9)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where Prometheus metrics go (vramwatch.metrics); both off by default."""

    listen_host: str | None = None  # HTTP exporter address, e.g. "127.0.0.1"
    listen_port: int | None = None
    textfile: str | None = None  # node_exporter textfile collector file (*.prom)

    @property
    def listen(self) -> str | None:
        if self.listen_host is None:
            return None
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


@dataclass(frozen=True, slots=True)
class TrendConfig:
    """[trend]: leak forecasts from the troughs of each tenant's usage (vramwatch.trend)."""

    window_ns: int = 30 * 60 * 10**9  # how far back the trend looks; 0: off
    warn_within_ns: int = 2 * 3600 * 10**9  # warn when a budget is reached within this


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """[hooks]: a command run after every action, release and growing event."""

    after_action: tuple[str, ...] = ()
    timeout_ns: int = 10 * 10**9


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
    nvml_timeout_ns: int = 3 * 10**9  # [gpu] nvml_timeout (DEFAULT_NVML_TIMEOUT_NS)
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


T = TypeVar("T")


class _Table:
    """One TOML table being read; remembers which keys were used."""

    def __init__(self, path: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.prefix = prefix
        self.data = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def get(self, name: str, kind: type[T], default: T, expected: str = "") -> T:
        """The value of ``name`` if it is a ``kind``; ``expected`` says what the key
        takes when the kind's own name would not (an array of what)."""
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = expected or _kind_name(kind)
            raise self.error(name, f"expected {wanted}, got {_describe(value)}")
        return value

    def parsed(self, name: str, parse: Callable[[str], T], default: T) -> T:
        if name not in self.data:
            self.seen.add(name)
            return default
        try:
            text = self.get(name, str, "")
        except ConfigError as exc:
            hint = _number_hint(parse, self.data[name])
            raise self.error(name, exc.problem + hint) if hint else exc from None
        try:
            return parse(text)
        except units.UnitError as exc:
            raise self.error(name, str(exc)) from None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key" + _did_you_mean(unknown[0], self.seen))


def _kind_name(kind: type) -> str:
    names = {
        str: "a string",
        bool: "true or false",
        int: "an integer",
        dict: "a table",
        list: "an array",
    }
    return names.get(kind, kind.__name__)


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


def _number_hint(parse: Callable[[str], object], value: object) -> str:
    """How to write a bare number given for a size or a duration (TOML has no units)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return ""
    if isinstance(parse, _Duration) or parse is _nvml_timeout:
        return f'; write it as "{value}s"'
    if parse is _floor:
        return f'; write it as "{value}MiB" (or a percentage such as "10%")'
    if parse in (_positive_size, _record_size):
        return f'; write it as "{value}MiB"'
    return ""


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


def _did_you_mean(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


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


def _duration_in(bounds: tuple[int, int]) -> _Duration:
    return _Duration(bounds)


def _span(ns: int) -> str:
    """A bound for an error message, in the units the config takes (no "d")."""
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


# [gpu] nvml_timeout: long enough for a slow but healthy driver (the first call
# after a GPU reset), short enough that a hung one costs one tick, not minutes.
DEFAULT_NVML_TIMEOUT_NS = 3 * 10**9
NVML_TIMEOUT_MIN_NS = 100 * 10**6
NVML_TIMEOUT_MAX_NS = 60 * 10**9


def _nvml_timeout(text: str) -> int:
    value = units.parse_duration_ns(text)
    if not NVML_TIMEOUT_MIN_NS <= value <= NVML_TIMEOUT_MAX_NS:
        raise units.UnitError(f'must be between 100ms and 60s, got "{text}"')
    return value


def _table(parent: _Table, name: str) -> _Table:
    data = parent.get(name, dict, {})
    return _Table(parent.path, parent.key(name), data)


def _daemon(table: _Table) -> DaemonConfig:
    default = DaemonConfig()
    bus = table.get("bus", str, default.bus)
    if bus not in BUSES:
        raise table.error("bus", f'expected "system" or "user", got "{bus}"')
    max_restarts = table.get("max_restarts", int, default.max_restarts)
    if max_restarts < 1:
        raise table.error("max_restarts", f"must be at least 1, got {max_restarts}")
    if max_restarts > MAX_RESTARTS_MAX:
        raise table.error("max_restarts", f"must be at most {MAX_RESTARTS_MAX}, got {max_restarts}")
    daemon = DaemonConfig(
        interval_ns=table.parsed("interval", _duration_in(INTERVAL_RANGE_NS), default.interval_ns),
        dry_run=table.get("dry_run", bool, default.dry_run),
        bus=bus,
        cooldown_ns=table.parsed("cooldown", _duration_in(COOLDOWN_RANGE_NS), default.cooldown_ns),
        max_restarts=max_restarts,
        restart_window_ns=table.parsed(
            "restart_window", _duration_in(RESTART_WINDOW_RANGE_NS), default.restart_window_ns
        ),
        reclaim_timeout_ns=table.parsed(
            "reclaim_timeout", _duration_in(RECLAIM_TIMEOUT_RANGE_NS), default.reclaim_timeout_ns
        ),
        record=table.parsed("record", _record_path, default.record),
        record_keep_ns=table.parsed(
            "record_keep", _duration_in(RECORD_KEEP_RANGE_NS), default.record_keep_ns
        ),
        record_max_bytes=table.parsed("record_max_size", _record_size, default.record_max_bytes),
    )
    table.finish()
    return daemon


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


def _trend(table: _Table) -> TrendConfig:
    default = TrendConfig()
    window = table.parsed("window", _duration_in(TREND_WINDOW_RANGE_NS), default.window_ns)
    if 0 < window < TREND_WINDOW_MIN_NS:
        raise table.error("window", 'must be at least 10s, or "0s" to turn forecasts off')
    trend = TrendConfig(
        window_ns=window,
        warn_within_ns=table.parsed(
            "warn_within", _duration_in(WARN_WITHIN_RANGE_NS), default.warn_within_ns
        ),
    )
    table.finish()
    return trend


def _floor_table(table: _Table, floor_key: str, default: FloorConfig) -> FloorConfig:
    floor = FloorConfig(
        floor=table.parsed(floor_key, _floor, default.floor),
        grace_ns=table.parsed("grace", _duration_in(GRACE_RANGE_NS), default.grace_ns),
    )
    table.finish()
    return floor


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


def _argv(table: _Table, name: str) -> tuple[str, ...]:
    """An argv list: run without a shell, so its first word is an absolute path."""
    value = table.get(
        name,
        list,
        [],
        expected='a command as a list of strings such as ["/usr/bin/curl", "-fsS", URL]',
    )
    if not value:
        if name in table.data:
            raise table.error(
                name, 'expected a command as a list, e.g. ["/usr/bin/curl", "-fsS", URL]'
            )
        return ()
    if len(value) > ARGV_MAX or not all(isinstance(v, str) for v in value):
        raise table.error(name, f"expected a list of at most {ARGV_MAX} strings")
    if any("\0" in v for v in value):
        raise table.error(name, "a NUL character cannot be passed to a command")
    if not value[0].startswith("/"):
        raise table.error(
            name,
            f'the command must be an absolute path (no shell, no PATH search), got "{value[0]}"',
        )
    return tuple(value)


def _hooks(table: _Table) -> HooksConfig:
    default = HooksConfig()
    hooks = HooksConfig(
        after_action=_argv(table, "after_action"),
        timeout_ns=table.parsed(
            "timeout", _duration_in(COMMAND_TIMEOUT_RANGE_NS), default.timeout_ns
        ),
    )
    table.finish()
    return hooks


def _metrics(table: _Table) -> MetricsConfig:
    listen = table.parsed("listen", _listen, None)
    metrics = MetricsConfig(
        listen_host=listen[0] if listen else None,
        listen_port=listen[1] if listen else None,
        textfile=table.parsed("textfile", _textfile, None),
    )
    table.finish()
    return metrics


def _socket(text: str) -> str:
    if not text.startswith("unix:///"):
        raise units.UnitError(
            'expected a Unix socket such as "unix:///run/docker.sock" or '
            f'"unix:///run/podman/podman.sock", got "{text}"'
        )
    return text


def _containers(table: _Table) -> ContainersConfig:
    default = ContainersConfig()
    containers = ContainersConfig(
        socket=table.parsed("socket", _socket, default.socket),
        stop_timeout_ns=table.parsed(
            "stop_timeout", _duration_in(STOP_TIMEOUT_RANGE_NS), default.stop_timeout_ns
        ),
    )
    table.finish()
    return containers


def validate_tenant_key(key: str) -> str | None:
    """The problem with a tenant key (a unit name, ``container:NAME``,
    ``compose:PROJECT/SERVICE``), or ``None`` when it is one."""
    ident = TenantId.from_key(key)
    if ident.kind is TenantKind.CONTAINER:
        ok = CONTAINER_NAME_RE.fullmatch(ident.name) and len(ident.name) <= CONTAINER_NAME_MAX
        return None if ok else f'"{key}" is not a container tenant'
    if ident.kind is TenantKind.COMPOSE:
        ok = COMPOSE_RE.fullmatch(ident.name) and len(ident.name) <= CONTAINER_NAME_MAX
        return None if ok else f'"{key}" is not a compose tenant'
    return unitname.tenant_problem(key)


def _tenant_key(table: _Table) -> str:
    """The one of ``unit``, ``container``, ``compose`` that names the tenant, as its key."""
    named = [k for k in ("unit", "container", "compose") if k in table.data]
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
    kind = named[0]
    name = table.get(kind, str, "")
    if kind == "unit":
        problem = unitname.tenant_problem(name)
        if problem is None and any(name.startswith(p) for p in KEY_PREFIXES.values()):
            problem = f'"{name}": the prefix "{name.split(":")[0]}:" is kept for container tenants'
    elif kind == "container":
        problem = (
            None
            if CONTAINER_NAME_RE.fullmatch(name) and len(name) <= CONTAINER_NAME_MAX
            else f'expected a container name such as "immich_machine_learning", got "{name}"'
        )
    else:
        problem = (
            None
            if COMPOSE_RE.fullmatch(name) and len(name) <= CONTAINER_NAME_MAX
            else f'expected PROJECT/SERVICE such as "immich/immich-machine-learning", got "{name}"'
        )
    if problem:
        raise table.error(kind, problem)
    return TenantId(TenantKind(kind), name).key


def _tenant(table: _Table) -> Tenant:
    unit = _tenant_key(table)
    action = table.get("action", str, "restart")
    try:
        verb = Verb(action)
    except ValueError:
        raise table.error("action", f'expected "restart" or "stop", got "{action}"') from None
    if verb is Verb.RESTART and unit.endswith(".scope") and TenantId.from_key(unit).kind == "unit":
        raise table.error("action", 'a scope cannot be restarted by systemd; use action = "stop"')
    vram = table.parsed("vram", _positive_size, None)
    reserve = table.get("reserve", bool, False)
    if reserve and vram is None:
        raise table.error("reserve", "needs a vram budget: the unused part of it is reserved")
    tenant = Tenant(
        unit=unit,
        vram_bytes=vram,
        ram_bytes=table.parsed("ram", _positive_size, None),
        verb=verb,
        protected=table.get("protected", bool, False),
        reserve=reserve,
        gpu=_gpu_ref(table),
        release=_argv(table, "release"),
        release_timeout_ns=table.parsed(
            "release_timeout", _duration_in(COMMAND_TIMEOUT_RANGE_NS), 20 * 10**9
        ),
    )
    table.finish()
    return tenant


# NVML UUIDs: "GPU-" or "MIG-" and hex digits, dashes (MIG-GPU-.../gi/ci on old drivers).
_GPU_UUID_RE = re.compile(r"(GPU|MIG)-[0-9A-Za-z/-]{1,120}")
MAX_GPU_INDEX = 63


def _gpu_ref(table: _Table) -> int | str | None:
    """``gpu``: an index (0..63) or a ``GPU-``/``MIG-`` UUID."""
    table.seen.add("gpu")
    if "gpu" not in table.data:
        return None
    value = table.data["gpu"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise table.error(
            "gpu", f'expected an index such as 0 or a UUID "GPU-...", got {_describe(value)}'
        )
    if isinstance(value, int):
        if not 0 <= value <= MAX_GPU_INDEX:
            raise table.error("gpu", f"expected an index from 0 to {MAX_GPU_INDEX}, got {value}")
        return value
    if not _GPU_UUID_RE.fullmatch(value):
        raise table.error(
            "gpu", f'expected a UUID such as "GPU-8f1c2a3e-..." or "MIG-...", got "{value}"'
        )
    return value


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
    daemon = _daemon(_table(root, "daemon"))
    gpu_table = _table(root, "gpu")
    nvml_timeout_ns = gpu_table.parsed("nvml_timeout", _nvml_timeout, DEFAULT_NVML_TIMEOUT_NS)
    gpu = _floor_table(gpu_table, "min_free_vram", DEFAULT_GPU)
    host = _floor_table(_table(root, "host"), "min_available_ram", DEFAULT_HOST)
    metrics = _metrics(_table(root, "metrics"))
    trend = _trend(_table(root, "trend"))
    hooks = _hooks(_table(root, "hooks"))
    containers = _containers(_table(root, "containers"))
    raw_tenants = root.get("tenant", list, [], expected="an array of tables ([[tenant]])")
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
    root.finish()
    return Config(
        str(path),
        daemon,
        gpu,
        host,
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
