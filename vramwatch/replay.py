"""Replay: the real daemon loop, policy and trend estimator over a recorded trace.

``vramwatch replay FILE`` feeds each recorded tick's sample to a
:class:`~vramwatch.daemon.Daemon` whose sampler and actuator are the trace, so
every decision comes out in the journal's own words and event names, stamped
with the trace's times. Nothing is acted on and no command is run:

* with the recorded config (no ``-c``), the re-check before each action uses
  the re-check sample the daemon took, and each action's result is the one
  systemd gave, so the replay logs what the daemon logged;
* with another config (``-c FILE``), an action the daemon never took has no
  re-check sample and no result in the trace: it is taken as done, at once
  and successfully. Hooks do not run.

Release commands never run. A release the daemon ran is in the trace (format
2) with the entry it logged: with the recorded config it is replayed as it
was; with another config it stands for that config's release when it is the
same command for the same tenant and resource in the same tick. Any other
release is taken as not freed, and replay says so (``release_failed``, "not
replayed"). A format 1 trace holds no releases: with its recorded config a
release is inferred from what followed (a restart, or none).

A trace holds several runs of vramwatch. With the recorded config each run
starts from the restart history it restored; with another config the action
times carry from one run to the next as the state file would carry them:
within one boot as they are, across a reboot by the wall clock
(:func:`vramwatch.state.restored_time`), and none older than
``restart_window`` and ``cooldown``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vramwatch import policy
from vramwatch.config import Config, ConfigError, load
from vramwatch.daemon import Daemon, Ports, started_sentence, tenants_text
from vramwatch.events import EventLog
from vramwatch.metrics import Metrics
from vramwatch.model import RAM, VRAM, Action, Event, JobOutcome, Snapshot, Verb
from vramwatch.state import MAX_TIMES_PER_UNIT, restored_time
from vramwatch.tenants import tenant_fields
from vramwatch.trace import (
    VERSION,
    Damage,
    TraceError,
    TraceReader,
    check_header,
    decode_snapshot,
    is_rotated_name,
    recorded_config,
    segments,
)
from vramwatch.units import format_duration

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78

ACTION_EVENTS = frozenset({"restart", "stop", "would_restart", "would_stop", "released"})
# A plot of more points than this shows nothing more: keep every n-th tick.
MAX_PLOT_POINTS = 20_000
# A gap between two ticks longer than this many intervals is vramwatch not running:
# it does not count as time under a floor.
GAP_INTERVALS = 3


class RecordedError(Exception):
    """An exception the daemon met while recording, raised again with the same repr."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Stamped:
    """One event of the replay, at the trace's time."""

    wall_ms: int
    mono_ns: int
    event: Event

    def time_text(self) -> str:
        return iso(self.wall_ms)


def iso(wall_ms: int) -> str:
    when = dt.datetime.fromtimestamp(wall_ms / 1000, tz=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{wall_ms % 1000:03d}Z"


class _Sink(EventLog):
    """Collects the daemon's events with the current trace time."""

    def __init__(self, out: Callable[[Event], None]) -> None:  # no structlog: nothing printed
        self.listeners = []
        self.target = "replay"
        self.format = "replay"
        self._out = out

    def one(self, event: Event) -> None:
        self._out(event)


class _QuietMetrics(Metrics):
    """Metrics nobody reads: replay skips their cost."""

    def observe_snapshot(self, config: Config, snapshot: Snapshot) -> None:
        return None

    def observe_events(self, events: Iterable[Event]) -> None:
        return None

    def observe_trends(self, estimates: Iterable[Any]) -> None:
        return None

    def flush(self) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class _Release:
    """A release's result as the trace has it (an ``r`` record)."""

    record: Mapping[str, Any]

    @property
    def tenant(self) -> object:
        fields = self.record["f"]
        return fields.get("tenant") or fields.get("unit")


class _Source:
    """The trace as the daemon's sampler: the tick's sample, then its re-check samples
    (and, with the recorded config, the releases among them, in the order they came)."""

    def __init__(self) -> None:
        self.tick: Snapshot | str | None = None
        self.extras: deque[Snapshot | str | _Release] = deque()
        self.served = False

    def load(self, tick: Snapshot | str, extras: Iterable[Snapshot | str | _Release]) -> None:
        self.tick, self.extras, self.served = tick, deque(extras), False

    def sample(self, config: Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        item: Snapshot | str | _Release | None
        if not self.served:
            self.served = True
            item = self.tick
        elif self.extras and not isinstance(self.extras[0], _Release):
            item = self.extras.popleft()
        else:
            # No re-check sample in the trace (an action the daemon did not take):
            # the tick's own sample, so the action goes ahead.
            item = self.tick
        if isinstance(item, str):
            raise RecordedError(item)
        assert isinstance(item, Snapshot)
        return item

    def take_release(self, tenant: str) -> Mapping[str, Any] | None:
        """The tenant's next recorded release, with the samples its wait took before it."""
        for n, item in enumerate(self.extras):
            if isinstance(item, _Release) and item.tenant == tenant:
                for _ in range(n + 1):
                    self.extras.popleft()
                return item.record
        return None

    def close(self) -> None:
        return None


class _Actuator:
    """The trace as systemd: the recorded answer, or "done" when there is none."""

    def __init__(self) -> None:
        self.answers: deque[Mapping[str, Any]] = deque()
        self.calls: list[tuple[str, Verb]] = []

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        self.calls.append((unit, verb))
        if self.answers and self.answers[0].get("unit") == unit:
            answer = self.answers.popleft()
            if "raise" in answer:
                raise RecordedError(str(answer["raise"]))
            return JobOutcome(
                bool(answer.get("ok")),
                str(answer.get("result", "done")),
                str(answer.get("detail", "")),
                accepted=bool(answer.get("accepted", True)),
            )
        return JobOutcome(True, "done", "replayed: taken as done", accepted=True)


class ReplayDaemon(Daemon):
    """The daemon with the trace for its sampler and actuator: no I/O, no hooks, no
    release commands, no state file."""

    def __init__(
        self,
        config: Config,
        forced_dry_run: bool,
        out: Callable[[Event], None],
        *,
        recorded: bool = True,
        version: int = VERSION,
        moved: Callable[[int], None] = lambda wall_ms: None,
    ):
        self.source = _Source()
        self.answers = _Actuator()
        self.now_ns = 0
        self.recorded = recorded  # replaying with the config the trace was recorded with
        self.version = version  # the trace format of this run
        self.releases: list[_Release] = []  # the tick's releases (another config)
        self.moved = moved  # the trace's wall time moved on (ms), within a tick
        super().__init__(
            Path(config.path),
            config,
            Ports(
                self.source,
                self.answers,
                _Sink(out),
                metrics=_QuietMetrics(),
                clock=lambda: self.now_ns,
                notify=lambda _state: False,
                state=None,
                release=self._release,  # the trace's; release commands never run here
            ),
            force_dry_run=forced_dry_run,
        )

    def _on_event(self, event: Event) -> None:
        return None  # hooks do not run in replay

    def _release(self, action: Action, *_args: Any, **_kwargs: Any) -> bool:
        """The release's result as the trace has it; release commands never run here."""
        record = self._recorded_release(action)
        if record is None:
            return self._unrecorded_release(action)
        name, fields = str(record["e"]), record["f"]
        if name not in ("released", "release_failed") or not isinstance(fields, Mapping):
            raise ValueError(f"not a release's entry: {name!r}")
        self.now_ns = int(record["m"])
        self.moved(int(record["t"]))  # logged when the release ended, not at the tick
        self.events.emit(
            [Event(name, str(record.get("lv", "warning")), str(record["msg"]), dict(fields))]
        )
        return name == "released"

    def _recorded_release(self, action: Action) -> Mapping[str, Any] | None:
        if self.recorded:
            return self.source.take_release(action.unit)
        # Another config: the daemon's release stands for this one when it is the same
        # command, for the same tenant and resource, at the same moment.
        tenant = self.config.tenant(action.unit)
        argv = tenant.release if tenant is not None else ()
        commands = {" ".join(argv), shlex.join(argv)}
        for n, release in enumerate(self.releases):
            fields = release.record["f"]
            if (
                release.tenant == action.unit
                and fields.get("resource") == action.resource
                and fields.get("gpu") == action.gpu
                and fields.get("command") in commands
            ):
                del self.releases[n]
                return release.record
        return None

    def _unrecorded_release(self, action: Action) -> bool:
        """A release the trace does not hold: say what replay takes it as."""
        tenant = self.config.tenant(action.unit)
        tick = self.source.tick
        fields: dict[str, Any] = dict(
            tenant_fields(
                action.unit, tick.units.get(action.unit) if isinstance(tick, Snapshot) else None
            ),
            resource=action.resource,
            gpu=action.gpu,
            command=" ".join(tenant.release) if tenant is not None else None,
        )
        if self.recorded and self.version < 2:
            if not any(a.get("unit") == action.unit for a in self.answers.answers):
                self.events.say(
                    "released",
                    "warning",
                    f"released {action.unit} without a restart (inferred: this trace, of "
                    "format 1, does not record releases, and no restart followed)",
                    **fields,
                )
                return True
            why = "this trace, of format 1, does not record releases; a restart followed"
        else:
            why = f"the trace holds no release of {action.unit} at this moment"
        verb = "stopping" if action.verb is Verb.STOP else "restarting"
        self.events.say(
            "release_failed",
            "warning",
            f"release of {action.unit} not replayed ({why}): taken as not freed; {verb} it instead",
            error=f"not replayed: {why}",
            **fields,
        )
        return False

    def _flush_metrics(self) -> None:
        return None


@dataclass
class Series:
    """What --plot draws, one point per kept tick."""

    wall_ms: list[int] = field(default_factory=list)
    gpu: dict[int, list[tuple[int | None, int | None]]] = field(default_factory=dict)
    host: list[tuple[int | None, int | None]] = field(default_factory=list)
    tenants: dict[str, dict[str, list[int | None]]] = field(default_factory=dict)
    budgets: dict[str, dict[str, int | None]] = field(default_factory=dict)
    stride: int = 1
    seen: int = 0


@dataclass
class Result:
    """What one replay of a trace with one config gave."""

    label: str
    events: list[Stamped] = field(default_factory=list)
    under_ns: dict[str, int] = field(default_factory=dict)  # "GPU 0", "host RAM" -> ns
    ticks: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    damage: list[Damage] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    series: Series | None = None

    def summary(self) -> dict[str, Any]:
        actions: dict[str, dict[str, int]] = {}
        breaches: dict[str, int] = {}
        cancelled: dict[str, int] = {}
        for s in self.events:
            e = s.event
            unit = str(e.fields.get("unit", ""))
            if e.name in ACTION_EVENTS:
                per = actions.setdefault(unit, {})
                per[e.name] = per.get(e.name, 0) + 1
            elif e.name == "action_cancelled":
                cancelled[unit] = cancelled.get(unit, 0) + 1
            elif e.name == "floor_breached" and not e.message.startswith("still: "):
                where = _where(e.fields)
                breaches[where] = breaches.get(where, 0) + 1
        return {
            "ticks": self.ticks,
            "from": iso(self.first_ms) if self.first_ms is not None else None,
            "to": iso(self.last_ms) if self.last_ms is not None else None,
            "actions": {u: dict(sorted(a.items())) for u, a in sorted(actions.items())},
            "cancelled": dict(sorted(cancelled.items())),
            "breaches": dict(sorted(breaches.items())),
            "under_floor_s": {k: v / 1e9 for k, v in sorted(self.under_ns.items())},
        }


def _where(fields: Mapping[str, Any]) -> str:
    if fields.get("resource") == VRAM and fields.get("gpu") is not None:
        return f"GPU {fields['gpu']}"
    return "host RAM" if fields.get("resource") == RAM else "GPU"


class _Run:
    """One pass over the trace with one config (None: the recorded ones)."""

    def __init__(
        self,
        label: str,
        config: Config | None,
        window: tuple[int | None, int | None],
        plot: bool,
    ) -> None:
        self.fixed = config
        self.window = window
        self.result = Result(label, series=Series() if plot else None)
        self.daemon: ReplayDaemon | None = None
        self.run_id: object = None
        self.new_run = True
        self.wall_ms = 0
        self.last_tick: tuple[int, int] | None = None  # (mono, interval) of the last tick
        self.under: list[str] = []
        self.version = VERSION  # the trace format of the run being replayed
        self.boot: str | None = None  # its boot id (format 2)
        self.prev: tuple[int, int, str | None] | None = None  # last tick: mono, wall ms, boot
        # Another config: the last run's action times, carried at the next run's first tick.
        self.carry: tuple[Mapping[str, tuple[int, ...]], int, int, str | None] | None = None
        # The started entry, until the first tick tells its monotonic time: (index, wall ms).
        self.start: tuple[int, int] | None = None

    # events -------------------------------------------------------------------

    def _in_window(self, wall_ms: int) -> bool:
        start, end = self.window
        return (start is None or wall_ms >= start) and (end is None or wall_ms <= end)

    def out(self, event: Event) -> None:
        if self.daemon is None or not self._in_window(self.wall_ms):
            return
        self.result.events.append(Stamped(self.wall_ms, self.daemon.now_ns, event))

    def _moved(self, wall_ms: int) -> None:
        self.wall_ms = wall_ms

    def _started(self, config: Config, forced: bool, mono_ns: int | None) -> None:
        old = self.daemon
        self.daemon = ReplayDaemon(
            config,
            forced,
            self.out,
            recorded=self.fixed is None,
            version=self.version,
            moved=self._moved,
        )
        self.carry = None
        if self.fixed is not None and old is not None and self.prev is not None:
            # As the state file would: real action times outlive a restart of vramwatch,
            # on the next run's clock (taken at its first tick).
            self.carry = (dict(old.history.actions_ns), *self.prev)
        self.last_tick = None
        self.start = None
        if mono_ns is not None:
            self.daemon.now_ns = mono_ns
        before = len(self.result.events)
        cfg = self.daemon.config
        self.out(
            Event(
                "started",
                "info",
                started_sentence(cfg),
                {"config": cfg.path, "dry_run": cfg.daemon.dry_run, "tenants": len(cfg.tenants)},
            )
        )
        if mono_ns is None and len(self.result.events) > before:
            self.start = (before, self.wall_ms)

    def _carry_over(self, now: int) -> None:
        """The last run's action times on this run's clock: within one boot as they are,
        after a reboot by the wall clock (as the state file carries them); then only those
        the policy still counts (restart_window, cooldown)."""
        assert self.carry is not None and self.daemon is not None
        actions, last_mono, last_wall_ms, last_boot = self.carry
        self.carry = None
        if self.boot and last_boot:
            same_boot = self.boot == last_boot
        else:  # format 1 has no boot id: the monotonic clock never goes back within a boot
            same_boot = now >= last_mono
        wall_now, last_wall = self.wall_ms * 10**6, last_wall_ms * 10**6
        daemon = self.daemon.config.daemon
        keep_ns = max(daemon.restart_window_ns, daemon.cooldown_ns)
        carried: dict[str, tuple[int, ...]] = {}
        for unit, times in actions.items():
            moved = sorted(
                restored_time(t, last_wall - (last_mono - t), same_boot, now, wall_now)
                for t in times
            )[-MAX_TIMES_PER_UNIT:]
            recent = tuple(t for t in moved if now - t < keep_ns)
            if recent:
                carried[unit] = recent
        self.daemon.history = replace(self.daemon.history, actions_ns=carried)

    # records ------------------------------------------------------------------

    def header(self, record: Mapping[str, Any], path: Path) -> None:
        version = check_header(record, path)  # TraceError: a newer format
        run = record.get("run")
        if run != self.run_id:
            self.run_id = run
            self.new_run = True
            self.version = version
            boot = record.get("boot")
            self.boot = boot if isinstance(boot, str) and boot else None
            # The run's start, when its config record does not say (format 1).
            self.wall_ms = int(record.get("t", self.wall_ms))
            if self.fixed is not None:
                self._started(self.fixed, False, None)
                self.new_run = False

    def config(self, record: Mapping[str, Any]) -> None:
        mono = record.get("m")
        mono_ns = int(mono) if mono is not None else None
        if self.fixed is not None:
            if mono_ns is not None and self.start is not None and record.get("why") == "start":
                self._stamp_start(mono_ns)
            return
        self.wall_ms = int(record.get("t", self.wall_ms))
        config = recorded_config(record)  # ConfigError: the trace lacks it
        forced = bool(record.get("forced_dry_run"))
        if self.daemon is None or self.new_run:
            self._started(config, forced, mono_ns)
            self.new_run = False
            return
        effective = self.daemon._effective(config)
        if record.get("why") != "reload":
            return  # a new segment repeats the config in force
        self.daemon.config = effective
        if mono_ns is not None:
            self.daemon.now_ns = mono_ns
        self.out(
            Event(
                "config_reloaded",
                "info",
                f"config reloaded: {tenants_text(len(config.tenants))}"
                + (" (dry run)" if effective.daemon.dry_run else ""),
                {
                    "config": config.path,
                    "tenants": len(config.tenants),
                    "dry_run": effective.daemon.dry_run,
                },
            )
        )

    def state(self, record: Mapping[str, Any]) -> None:
        if self.fixed is not None or self.daemon is None or self.last_tick is not None:
            return  # only at the start of a run, and only what this run restored
        raw = record.get("a", {})
        actions = {str(u): tuple(int(t) for t in times) for u, times in raw.items()}
        self.daemon.history = replace(self.daemon.history, actions_ns=actions)

    def _stamp_start(self, mono_ns: int) -> None:
        assert self.start is not None
        index, _ = self.start
        self.start = None
        self.result.events[index] = replace(self.result.events[index], mono_ns=mono_ns)

    def tick(self, group: list[Mapping[str, Any]]) -> None:
        daemon = self.daemon
        if daemon is None:
            return
        first = group[0]
        now = int(first["m"])
        wall_ms = self.wall_ms = int(first["t"])
        if self.start is not None:  # format 1: the start's monotonic time, by the wall clock
            self._stamp_start(now - max(0, wall_ms - self.start[1]) * 10**6)
        if self.carry is not None:
            self._carry_over(now)
        self.prev = (now, wall_ms, self.boot)
        tick: Snapshot | str
        if first["k"] == "s":
            tick = decode_snapshot(now, first)
        else:
            tick = str(first.get("err", "sampling failed"))
        extras: list[Snapshot | str | _Release] = []
        answers: list[Mapping[str, Any]] = []
        releases: list[_Release] = []
        for rec in group[1:]:
            if rec["k"] == "r":
                releases.append(_Release(rec))
        if self.fixed is None:
            for rec in group[1:]:
                if rec["k"] == "x":
                    extras.append(decode_snapshot(int(rec["m"]), rec))
                elif rec["k"] == "xf":
                    extras.append(str(rec.get("err", "sampling failed")))
                elif rec["k"] == "r":
                    extras.append(_Release(rec))
                elif rec["k"] == "a":
                    answers.append(rec)
        daemon.source.load(tick, extras)
        daemon.answers.answers = deque(answers)
        daemon.releases = releases
        daemon.now_ns = now
        daemon.tick(now)
        self.wall_ms = wall_ms  # a release moved it on; the sample is the tick's
        if isinstance(tick, Snapshot):
            self._observe(daemon.config, tick)
        else:
            self.last_tick = None

    def _observe(self, config: Config, snap: Snapshot) -> None:
        r = self.result
        interval = config.daemon.interval_ns
        under: list[str] = []
        gpu_points: dict[int, tuple[int | None, int | None]] = {}
        for gpu in snap.gpus:
            floor = policy.gpu_floor(config, snap, gpu) if snap.nvml_error is None else None
            free = gpu.free_bytes if gpu.ok else None
            gpu_points[gpu.index] = (free, floor)
            if free is not None and floor is not None and free < floor:
                under.append(f"GPU {gpu.index}")
        host = snap.host
        host_floor = None
        if host.ok and host.mem_total_bytes is not None:
            host_floor = config.host.floor.resolve(host.mem_total_bytes)
        avail = host.mem_available_bytes if host.ok else None
        if avail is not None and host_floor is not None and avail < host_floor:
            under.append("host RAM")
        in_window = self._in_window(self.wall_ms)
        if self.last_tick is not None and in_window:
            last_mono, last_interval = self.last_tick
            gap = snap.now_ns - last_mono
            if 0 < gap <= GAP_INTERVALS * last_interval:
                for where in self.under:
                    r.under_ns[where] = r.under_ns.get(where, 0) + gap
        self.last_tick = (snap.now_ns, interval)
        self.under = under
        if not in_window:
            return
        r.ticks += 1
        r.first_ms = self.wall_ms if r.first_ms is None else r.first_ms
        r.last_ms = self.wall_ms
        for where in under:
            r.under_ns.setdefault(where, 0)
        s = r.series
        if s is None:
            return
        s.seen += 1
        if (s.seen - 1) % s.stride:
            return
        s.wall_ms.append(self.wall_ms)
        for index, point in gpu_points.items():
            s.gpu.setdefault(index, [(None, None)] * (len(s.wall_ms) - 1)).append(point)
        s.host.append((avail, host_floor))
        for tenant in config.tenants:
            usage = snap.units.get(tenant.unit)
            per = s.tenants.setdefault(tenant.unit, {VRAM: [], RAM: []})
            for resource in (VRAM, RAM):
                values = per[resource]
                values.extend([None] * (len(s.wall_ms) - 1 - len(values)))
                used = None
                if usage is not None:
                    used = usage.vram_bytes if resource == VRAM else usage.ram_bytes
                values.append(used)
            s.budgets[tenant.unit] = {VRAM: tenant.vram_bytes, RAM: tenant.ram_bytes}
        for series in s.gpu.values():
            series.extend([(None, None)] * (len(s.wall_ms) - len(series)))
        if len(s.wall_ms) > MAX_PLOT_POINTS:
            _thin(s)


def _thin(s: Series) -> None:
    """Keep every other point, and from now on every 2n-th tick."""
    s.wall_ms = s.wall_ms[::2]
    s.host = s.host[::2]
    s.gpu = {k: v[::2] for k, v in s.gpu.items()}
    s.tenants = {u: {r: v[::2] for r, v in per.items()} for u, per in s.tenants.items()}
    s.stride *= 2


def replay(
    paths: list[Path],
    config: Config | None = None,
    *,
    label: str = "recorded",
    window: tuple[int | None, int | None] = (None, None),
    plot: bool = False,
) -> Result:
    """Run the daemon over the traces in ``paths`` (in order) with ``config``, or with
    the recorded configs when it is None. Raises TraceError, ConfigError."""
    run = _Run(label, config, window, plot)
    group: list[Mapping[str, Any]] = []
    group_line = 0  # the line of the group's first record
    for path in paths:
        reader = TraceReader(path, live=path == paths[-1] and not is_rotated_name(path))
        try:
            for record in reader:
                kind = record["k"]
                if kind in ("x", "xf", "r", "a"):
                    if group:
                        group.append(record)
                    continue
                if group:
                    _tick(run, reader, group, group_line)
                    group = []
                    if reader.damage is not None:
                        break
                try:
                    if kind in ("s", "sf"):
                        end = window[1]
                        if end is not None and int(record["t"]) > end:
                            return run.result  # past --to: nothing more is printed
                        group, group_line = [record], reader.lines
                    elif kind == "h":
                        run.header(record, reader.path)
                    elif kind == "c":
                        run.config(record)
                    elif kind == "st":
                        run.state(record)
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                    reader.damage = Damage(
                        reader.path, reader.lines, 0, f"a record of the wrong shape ({exc!r})"
                    )
                    break
            if group and reader.damage is None:
                _tick(run, reader, group, group_line)
            group = []
        finally:
            if reader.damage is not None:
                run.result.damage.append(reader.damage)
            elif reader.unfinished:
                run.result.unfinished.append(path)
    return run.result


def _tick(run: _Run, reader: TraceReader, group: list[Mapping[str, Any]], line: int) -> None:
    try:
        run.tick(group)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        reader.damage = Damage(reader.path, line, 0, f"a record of the wrong shape ({exc!r})")


# -- output -------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def event_json(s: Stamped, label: str | None = None) -> dict[str, Any]:
    e = s.event
    out: dict[str, Any] = {"timestamp": s.time_text(), "level": e.level, "event": e.name}
    out["message"] = e.message
    if label is not None:
        out["config"] = label
    out.update({k: _jsonable(v) for k, v in e.fields.items() if v is not None})
    out["mono_ns"] = s.mono_ns
    return out


def summary_text(summaries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The summary as rows; one column per config."""
    rows: list[tuple[str, list[str]]] = []
    units = sorted({u for _, s in summaries for u in s["actions"]})
    for unit in units:
        cells = []
        for _, s in summaries:
            per = s["actions"].get(unit, {})
            cells.append(", ".join(f"{n} {name}" for name, n in per.items()) or "0")
        rows.append((f"actions on {unit}", cells))
    cancelled = sorted({u for _, s in summaries for u in s["cancelled"]})
    for unit in cancelled:
        rows.append(
            (f"cancelled on {unit}", [str(s["cancelled"].get(unit, 0)) for _, s in summaries])
        )
    wheres = sorted({w for _, s in summaries for w in (*s["breaches"], *s["under_floor_s"])})
    for where in wheres:
        rows.append(
            (f"breaches of {where} floor", [str(s["breaches"].get(where, 0)) for _, s in summaries])
        )
    for where in wheres:
        rows.append(
            (
                f"time under {where} floor",
                [
                    format_duration(int(s["under_floor_s"].get(where, 0) * 1e9))
                    for _, s in summaries
                ],
            )
        )
    if not units:
        rows.insert(0, ("actions", ["none"] * len(summaries)))
    width = max([len(r[0]) for r in rows] + [7])
    cols = [
        max([len(label)] + [len(r[1][i]) for r in rows]) for i, (label, _) in enumerate(summaries)
    ]
    lines = []
    first = summaries[0][1]
    span = (
        f"{first['ticks']} samples, {first['from']} .. {first['to']}"
        if first["ticks"]
        else "no samples"  # an empty trace has no first or last time
    )
    lines.append(f"summary ({span}):")
    if len(summaries) > 1:
        lines.append(
            "  "
            + " " * width
            + "  "
            + "  ".join(n.ljust(c) for (n, _), c in zip(summaries, cols, strict=True))
        )
    for name, cells in rows:
        lines.append(
            "  "
            + name.ljust(width)
            + "  "
            + "  ".join(v.ljust(c) for v, c in zip(cells, cols, strict=True))
        )
    return [line.rstrip() for line in lines]


def print_one(result: Result, as_json: bool, out: Any) -> None:
    for s in result.events:
        if as_json:
            print(json.dumps(event_json(s)), file=out)
        else:
            print(f"{s.time_text()} {s.event.name}: {s.event.message}", file=out)
    if as_json:
        print(json.dumps({"summary": result.summary()}), file=out)
    else:
        print("", file=out)
        for line in summary_text([(result.label, result.summary())]):
            print(line, file=out)


def print_compare(a: Result, b: Result, as_json: bool, out: Any) -> None:
    """Both configs' decisions in time order: once when they agree, each labelled when not."""
    merged = _merge(a, b)
    for _when, label, s in merged:
        if as_json:
            print(json.dumps(event_json(s, label)), file=out)
        else:
            print(f"{s.time_text()} [{label}] {s.event.name}: {s.event.message}", file=out)
    summaries = [(a.label, a.summary()), (b.label, b.summary())]
    if as_json:
        print(json.dumps({"summary": dict(summaries)}), file=out)
    else:
        print("", file=out)
        for line in summary_text(summaries):
            print(line, file=out)


def _merge(a: Result, b: Result) -> list[tuple[int, str, Stamped]]:
    def key(s: Stamped) -> tuple[int, str, str]:
        return (s.mono_ns, s.event.name, s.event.message)

    rest: dict[tuple[int, str, str], list[Stamped]] = {}
    for s in b.events:
        rest.setdefault(key(s), []).append(s)
    merged: list[tuple[int, int, str, Stamped]] = []
    for i, s in enumerate(a.events):
        same = rest.get(key(s))
        if same:
            same.pop(0)
            merged.append((s.wall_ms, i, "both", s))
        else:
            merged.append((s.wall_ms, i, a.label, s))
    left = [s for items in rest.values() for s in items]
    order = {id(s): j for j, s in enumerate(b.events)}
    for s in left:
        merged.append((s.wall_ms, len(a.events) + order[id(s)], b.label, s))
    merged.sort(key=lambda m: (m[0], m[1]))
    return [(w, label, s) for w, _, label, s in merged]


def parse_time(text: str) -> int:
    """--from/--to: an ISO 8601 time (local time when no zone is given) -> wall ms."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f'expected a time such as "2026-12-02T06:00:00Z" or "2026-12-02 07:00", got "{text}"'
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp() * 1000)


def cmd_replay(args: argparse.Namespace) -> int:
    """``vramwatch replay``: exit 0, 1 (unreadable or damaged trace), 2 (usage), 78 (config)."""
    try:
        start = parse_time(args.start) if args.start else None
        end = parse_time(args.end) if args.end else None
    except ValueError as exc:
        print(f"vramwatch: replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configs: list[Path] = args.replay_configs or []
    if len(configs) > 2:
        print("vramwatch: replay: at most two configs (-c A -c B) to compare", file=sys.stderr)
        return EXIT_USAGE
    if args.plot is not None:
        if Path(args.plot).suffix.lower() not in (".png", ".svg"):
            print(
                f"vramwatch: replay: --plot: expected a .png or .svg file, got {args.plot}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        from vramwatch import plot

        problem = plot.available()
        if problem is not None:
            print(f"vramwatch: replay: --plot: {problem}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        paths = segments(Path(args.trace))
        loaded = [(p.name, load(p)) for p in configs]
        if len({name for name, _ in loaded}) < len(loaded):
            loaded = [(str(p), c) for p, (_, c) in zip(configs, loaded, strict=True)]
        window = (start, end)
        plotting = args.plot is not None
        if not loaded:
            results = [replay(paths, None, label="recorded", window=window, plot=plotting)]
        else:
            results = [replay(paths, c, label=n, window=window, plot=plotting) for n, c in loaded]
    except TraceError as exc:
        print(f"vramwatch: replay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ConfigError as exc:
        print(f"vramwatch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if len(results) == 1:
        print_one(results[0], args.json, sys.stdout)
    else:
        print_compare(results[0], results[1], args.json, sys.stdout)
    status = EXIT_OK
    for path in results[0].unfinished:
        print(
            f"vramwatch: replay: note: {path} is still being written (or its writer was "
            "stopped without closing it): replayed up to its last complete tick",
            file=sys.stderr,
        )
    for damage in results[0].damage:
        print(f"vramwatch: replay: {damage}", file=sys.stderr)
        status = EXIT_FAILURE
    if args.plot is not None:
        from vramwatch import plot

        try:
            plot.draw(results, Path(args.plot))
        except OSError as exc:
            print(
                f"vramwatch: replay: --plot: cannot write {args.plot}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(f"vramwatch: replay: plot written to {args.plot}", file=sys.stderr)
    return status
