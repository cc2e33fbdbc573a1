"""Replay: the real daemon loop, policy and trend estimator over a recorded trace.

``vramwatch replay FILE`` feeds each recorded tick's sample to a
:class:`~vramwatch.daemon.Daemon` whose sampler and actuator are the trace, so
every decision comes out in the journal's own words and event names, stamped
with the trace's times. Nothing is acted on and no command is run:

* with the recorded config (no ``-c``), the re-check before each action uses
  the re-check sample the daemon took (marked as such since format 3; in formats
  1 and 2, the tick's next further sample), and each action's result is the one
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

import datetime as dt
import shlex
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vramwatch import policy
from vramwatch.config import Config
from vramwatch.daemon import Daemon, Ports, started_sentence, tenants_text
from vramwatch.events import EventLog
from vramwatch.model import RAM, VRAM, Action, Event, JobOutcome, Snapshot, Verb
from vramwatch.record.format import (
    ANSWER,
    CONFIG,
    EXTRA,
    EXTRA_FAILED,
    HEADER,
    IN_TICK,
    RECHECK_SINCE,
    RELEASE,
    SAMPLE,
    SAMPLE_FAILED,
    STATE,
    VERSION,
    check_header,
    decode_snapshot,
    is_recheck,
    recorded_config,
)
from vramwatch.record.trace import Damage, TraceReader, is_rotated_name
from vramwatch.sink import NoMetrics
from vramwatch.state import MAX_TIMES_PER_UNIT, restored_time
from vramwatch.tenants import tenant_fields

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


@dataclass(frozen=True, slots=True)
class _Release:
    """A release's result as the trace has it (an ``r`` record)."""

    record: Mapping[str, Any]

    @property
    def tenant(self) -> object:
        fields = self.record["f"]
        return fields.get("tenant") or fields.get("unit")


@dataclass(frozen=True, slots=True)
class _Extra:
    """A further sample of the tick as the trace has it (an ``x`` or ``xf`` record):
    the snapshot, or the failure's repr; ``recheck``: the daemon's re-check before an
    action (format 3; before, never set)."""

    sample: Snapshot | str
    recheck: bool


class _Source:
    """The trace as the daemon's sampler: the tick's sample, then its further samples
    (and, with the recorded config, the releases among them, in the order they came)."""

    def __init__(self) -> None:
        self.tick: Snapshot | str | None = None
        self.extras: deque[_Extra | _Release] = deque()
        self.served = False
        self.by_flag = True  # the trace says which sample was the re-check (format 3)

    def load(
        self, tick: Snapshot | str, extras: Iterable[_Extra | _Release], *, by_flag: bool
    ) -> None:
        self.tick, self.extras, self.served, self.by_flag = tick, deque(extras), False, by_flag

    def sample(self, config: Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        item: Snapshot | str | None
        if not self.served:
            self.served = True
            item = self.tick
        elif recheck and self.by_flag:
            item = self._recheck()
        elif self.extras and isinstance(head := self.extras[0], _Extra):
            # Formats 1 and 2 do not say: the next further sample, in the order taken.
            self.extras.popleft()
            item = head.sample
        else:
            item = self.tick  # none: as _recheck says
        if isinstance(item, str):
            raise RecordedError(item)
        assert isinstance(item, Snapshot)
        return item

    def _recheck(self) -> Snapshot | str | None:
        """The tick's next recorded re-check; with none in the trace (an action the
        daemon did not take), the tick's own sample, so the action goes ahead."""
        for n, extra in enumerate(self.extras):
            if isinstance(extra, _Extra) and extra.recheck:
                del self.extras[n]
                return extra.sample
        return self.tick

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
                metrics=NoMetrics(),  # nobody reads them; nor is prometheus_client loaded
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
    breaches: dict[str, int] = field(default_factory=dict)  # floor -> breaches begun
    ticks: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    damage: list[Damage] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    series: Series | None = None


HOST_FLOOR = "host RAM"


def gpu_floor_name(index: int) -> str:
    return f"GPU {index}"


def floor_name(fields: Mapping[str, Any]) -> str:
    """The floor an event is about, as the summary and the plot name it."""
    if fields.get("resource") == VRAM and fields.get("gpu") is not None:
        return gpu_floor_name(fields["gpu"])
    return HOST_FLOOR if fields.get("resource") == RAM else "GPU"


def _floor_key(fields: Mapping[str, Any]) -> str | None:
    """The policy's key of the floor an event names (policy.History.episodes)."""
    if fields.get("resource") == RAM:
        return policy.RAM_KEY
    uuid = fields.get("gpu_uuid")
    return policy.gpu_key(uuid) if isinstance(uuid, str) else None


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
        # The floors whose breach the policy had announced before this tick.
        self.announced: Mapping[str, int] = {}

    # events -------------------------------------------------------------------

    def _in_window(self, wall_ms: int) -> bool:
        start, end = self.window
        return (start is None or wall_ms >= start) and (end is None or wall_ms <= end)

    def out(self, event: Event) -> None:
        if self.daemon is None or not self._in_window(self.wall_ms):
            return
        self.result.events.append(Stamped(self.wall_ms, self.daemon.now_ns, event))
        if event.name == "floor_breached" and _floor_key(event.fields) not in self.announced:
            # A breach the policy had not announced before this tick: a new one (the
            # others are its reminders while it lasts).
            where = floor_name(event.fields)
            self.result.breaches[where] = self.result.breaches.get(where, 0) + 1

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
        if first["k"] == SAMPLE:
            tick = decode_snapshot(now, first)
        else:
            tick = str(first.get("err", "sampling failed"))
        extras: list[_Extra | _Release] = []
        answers: list[Mapping[str, Any]] = []
        releases: list[_Release] = []
        for rec in group[1:]:
            if rec["k"] == RELEASE:
                releases.append(_Release(rec))
        if self.fixed is None:
            for rec in group[1:]:
                if rec["k"] == EXTRA:
                    extras.append(_Extra(decode_snapshot(int(rec["m"]), rec), is_recheck(rec)))
                elif rec["k"] == EXTRA_FAILED:
                    extras.append(_Extra(str(rec.get("err", "sampling failed")), is_recheck(rec)))
                elif rec["k"] == RELEASE:
                    extras.append(_Release(rec))
                elif rec["k"] == ANSWER:
                    answers.append(rec)
        daemon.source.load(tick, extras, by_flag=self.version >= RECHECK_SINCE)
        daemon.answers.answers = deque(answers)
        daemon.releases = releases
        daemon.now_ns = now
        self.announced = daemon.history.episodes
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
                under.append(gpu_floor_name(gpu.index))
        host = snap.host
        host_floor = None
        if host.ok and host.mem_total_bytes is not None:
            host_floor = config.host.floor.resolve(host.mem_total_bytes)
        avail = host.mem_available_bytes if host.ok else None
        if avail is not None and host_floor is not None and avail < host_floor:
            under.append(HOST_FLOOR)
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
                if kind in IN_TICK:
                    if group:
                        group.append(record)
                    continue
                if group:
                    _tick(run, reader, group, group_line)
                    group = []
                    if reader.damage is not None:
                        break
                try:
                    if kind in (SAMPLE, SAMPLE_FAILED):
                        end = window[1]
                        if end is not None and int(record["t"]) > end:
                            return run.result  # past --to: nothing more is printed
                        group, group_line = [record], reader.lines
                    elif kind == HEADER:
                        run.header(record, reader.path)
                    elif kind == CONFIG:
                        run.config(record)
                    elif kind == STATE:
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
