"""The loop, the signals and the sleeping; nothing else.

Each tick: sample -> decide (pure) -> re-check and act -> log. Ticks are laid
on a fixed monotonic grid (start + k * interval), so they do not drift, and a
tick that overruns skips the missed slots instead of bursting.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from vramwatch import policy
from vramwatch.acting import Acting, Release, SnapshotSource
from vramwatch.actuators import systemd
from vramwatch.actuators.commands import Hooks
from vramwatch.config import Config, ConfigError, load, run_warnings
from vramwatch.events import EventLog, event_dict, journal_fields
from vramwatch.model import Action, Actuator, Event, Snapshot
from vramwatch.once import Once
from vramwatch.sink import MetricsSink, NoMetrics
from vramwatch.state import StateError, StateStore
from vramwatch.tenants import with_tenant
from vramwatch.trend import Trends
from vramwatch.units import format_size

# Events that start the [hooks] after_action command.
HOOK_EVENTS = frozenset({"restart", "stop", "released", "release_failed", "growing"})


@dataclass(frozen=True, slots=True)
class Ports:
    """Everything the daemon reads from, acts through and reports to, as one bundle.

    The defaults are the quiet ones: no metrics (the Prometheus exporter is built by
    ``vramwatch run`` when ``[metrics]`` asks for it), no state file, the real release
    commands (replay passes its trace's ``release``).
    """

    sampler: SnapshotSource
    actuator: Actuator
    events: EventLog
    metrics: MetricsSink = field(default_factory=NoMetrics)
    clock: Callable[[], int] = time.monotonic_ns
    notify: Callable[[str], bool] = systemd.notify
    # Restart history persisted across restarts of vramwatch (storm limit, cooldown).
    state: StateStore | None = None
    release: Release | None = None


class Daemon:
    def __init__(
        self, config_path: Path, config: Config, ports: Ports, *, force_dry_run: bool = False
    ) -> None:
        self.config_path = config_path
        self.force_dry_run = force_dry_run
        self.config = self._effective(config)
        self.sampler = ports.sampler
        self.events = ports.events
        self.clock = ports.clock
        self.notify = ports.notify
        self.history = policy.History()
        self.trends = Trends()  # leak forecasts, fed the same snapshots as the policy
        self.hooks = Hooks()
        self.events.listeners.append(self._on_event)
        # The loop's own steps (sampler, policy, act, trend, hook...): each failure said
        # when it starts or changes, then once per reminder period, not on every tick.
        self._failing: defaultdict[str, Once] = defaultdict(lambda: Once(policy.REMINDER_NS))
        self.metrics = ports.metrics
        # SIGHUP re-applies the ownership check that `vramwatch run` made at start.
        self.trusted_config = True
        self.state = ports.state
        self._saved_actions: object = None
        self._state_failing = Once(changes=False)  # one warning until a save works
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        # Re-check, release, act, outcome: one action at a time, fed the watchdog meanwhile.
        self.acting = Acting(
            ports.sampler,
            ports.actuator,
            ports.events,
            ports.metrics,
            ports.clock,
            keepalive=self._keepalive,
            stop=self._stop,
            release=ports.release,
        )
        self._watchdog_ns = systemd.watchdog_interval_ns()  # WatchdogSec= / 2, read once
        self._last_keepalive_ns = 0
        self._ready = False
        # config_warning: said from the first sample (that read the GPUs) after the
        # start and after each reload, each warning once.
        self._warnings_pending = True
        self._warned: set[str] = set()

    def _effective(self, config: Config) -> Config:
        if self.force_dry_run and not config.daemon.dry_run:
            return replace(config, daemon=replace(config.daemon, dry_run=True))
        return config

    # signals -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop()

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # loop ----------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        self.events.say(
            "started",
            "info",
            started_sentence(cfg),
            config=str(self.config_path),
            dry_run=cfg.daemon.dry_run,
            tenants=len(cfg.tenants),
        )
        self.restore_state()
        next_tick = self.clock()
        while not self.stopping:
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            # The slot's time, not the wake-up time: a late wake-up of a few ms
            # must not make "breached for grace" miss by a whole interval.
            self.tick(min(next_tick, self.clock()))
            interval = self.config.daemon.interval_ns
            next_tick += interval
            now = self.clock()
            if next_tick <= now:
                # Overran: skip the slots we missed rather than run them back to back.
                next_tick += ((now - next_tick) // interval + 1) * interval
            self._sleep_until(next_tick, self._watchdog_ns)
        self.events.say("stopping", "info", "vramwatch stopping on request")
        self.notify("STOPPING=1")
        self.hooks.close()
        self.sampler.close()
        return 0

    def _keepalive(self) -> None:
        """WATCHDOG=1, at most once per half of WatchdogSec=."""
        watchdog_ns = self._watchdog_ns
        now = self.clock()
        if watchdog_ns is not None and now - self._last_keepalive_ns >= watchdog_ns:
            self._last_keepalive_ns = now
            self.notify("WATCHDOG=1")

    def _sleep_until(self, deadline_ns: int, watchdog_ns: int | None) -> None:
        while not self.stopping and not self._reload.is_set():
            now = self.clock()
            if now >= deadline_ns:
                return
            wait_ns = deadline_ns - now
            if watchdog_ns is not None:
                wait_ns = min(wait_ns, watchdog_ns)
            self._wake.wait(wait_ns / 1e9)
            self._wake.clear()
            if watchdog_ns is not None:
                self.notify("WATCHDOG=1")

    def tick(self, now_ns: int | None = None) -> None:
        """One sample -> decide -> act round at ``now_ns`` (default: the clock); never raises."""
        now = self.clock() if now_ns is None else now_ns
        try:
            snapshot = self.sampler.sample(self.config, now)
        except Exception as exc:  # noqa: BLE001 - a source bug must not kill the guard
            self._tell_ready()
            # No sample is not "still breached": every grace streak starts again.
            self.history = policy.sample_failed(self.history)
            self.metrics.sampling_failed()
            self._flush_metrics()
            if self._failing["sampler"].failed(repr(exc), now):  # once, then every 5 minutes
                self.events.say(
                    "sampling_error",
                    "error",
                    f"sampling failed: {exc!r}; skipping ticks until it works again",
                    error=repr(exc),
                    traceback=_traceback(),
                )
            return
        # Up once the first sample is in, before any action: a restart job that runs
        # for minutes must not hold READY=1 past the unit's TimeoutStartSec=.
        self._tell_ready()
        if self._failing["sampler"].worked():
            self.events.say("sampling_recovered", "info", "sampling works again")
        if self._warnings_pending:
            self._config_warnings(snapshot)
        self.metrics.observe_snapshot(self.config, snapshot)
        try:
            decision = policy.decide(self.config, snapshot, self.history)
        except Exception as exc:  # noqa: BLE001 - log it and keep guarding next tick
            self.history = policy.sample_failed(self.history)
            self._internal_error("policy", exc, now, "no action")
            return
        self._failing["policy"].worked()
        self.history = decision.history
        self.metrics.observe_readings(decision.readings)
        if self.events.debug:  # --debug: what this tick read and decided
            message, readings = tick_readings(self.config, snapshot, decision)
            self.events.say("tick", "debug", message, **readings)
        self.events.emit(with_tenant(e, snapshot) for e in decision.events)
        self.metrics.observe_events(decision.events)
        for action in decision.actions:
            try:
                self._apply(action, snapshot)
            except Exception as exc:  # noqa: BLE001 - tick never raises; the holds stay
                self._internal_error("act", exc, now, "no action")
        self._observe_trends(snapshot)
        self._reap_hooks(now)
        self._flush_metrics()
        self.save_state()
        self.notify("STATUS=" + status_line(snapshot) + "\nWATCHDOG=1")

    def _config_warnings(self, snapshot: Snapshot) -> None:
        """What run runs anyway but warns about (config.run_warnings), each once per config;
        the GPU-dependent ones wait for a sample in which NVML answered."""
        try:
            found = run_warnings(
                self.config, snapshot.gpus, snapshot.host.mem_total_bytes, self._watchdog_ns
            )
        except Exception as exc:  # noqa: BLE001 - a warning must never stop guarding
            self._internal_error("config_warning", exc, snapshot.now_ns, "no config warnings")
            return
        self._warnings_pending = snapshot.nvml_hung_ns is not None
        for warning in found:
            if warning not in self._warned:
                self._warned.add(warning)
                self.events.say(
                    "config_warning",
                    "warning",
                    f"{self.config_path}: {warning}",
                    config=str(self.config_path),
                    warning=warning,
                )

    def _observe_trends(self, snapshot: Snapshot) -> None:
        try:
            growing = self.trends.observe(self.config, snapshot)
        except Exception as exc:  # noqa: BLE001 - a forecast must never stop guarding
            self._internal_error("trend", exc, snapshot.now_ns, "no forecasts")
            return
        self._failing["trend"].worked()
        self.events.emit(with_tenant(e, snapshot) for e in growing)
        self.metrics.observe_trends(self.trends.estimates())

    def _internal_error(self, step: str, exc: Exception, now_ns: int, meanwhile: str) -> None:
        """A step of the loop raised: internal_error when it starts or changes, then
        every reminder period; the caller goes on guarding."""
        if self._failing[step].failed(repr(exc), now_ns):
            self.events.say(
                "internal_error",
                "error",
                f"{step} failed: {exc!r}; {meanwhile} until it works again",
                traceback=_traceback(),
            )

    def _on_event(self, event: Event) -> None:
        """[hooks] after_action: started in the background for actions, releases, growing.
        An event listener: never raises (it runs inside the loop's every say())."""
        argv = self.config.hooks.after_action
        if not argv or event.name not in HOOK_EVENTS:
            return
        try:
            env = {k: v for k, v in journal_fields(event_dict(event)).items() if k != "PRIORITY"}
            problem = self.hooks.start(argv, self.config.hooks.timeout_ns / 1e9, event.name, env)
        except Exception as exc:  # noqa: BLE001 - a hook must never kill the guard
            problem = f"cannot start: {exc!r}"
        if problem is not None:
            self._hook_failed(event.name, problem, "")

    def _reap_hooks(self, now_ns: int) -> None:
        try:
            ended = self.hooks.reap()
        except Exception as exc:  # noqa: BLE001 - a hook must never kill the guard
            ended = [("(reaping)", f"cannot reap hooks: {exc!r}", "")]
        for name, why, output in ended:
            if why:
                self._hook_failed(name, why, output, now_ns)
            else:
                self._failing["hook"].worked()  # it works again: the next failure is news

    def _hook_failed(self, name: str, why: str, output: str, now_ns: int | None = None) -> None:
        now = self.clock() if now_ns is None else now_ns
        if self._failing["hook"].failed(why, now):  # once per distinct failure, then reminders
            self.events.say(
                "hook_failed",
                "warning",
                f"after_action hook for {name} failed: {why}"
                + (f"; output: {output}" if output else ""),
                hook=" ".join(self.config.hooks.after_action),
                for_event=name,
                error=why,
                output=output or None,
            )

    def _tell_ready(self) -> None:
        if not self._ready:
            self._ready = True
            self.notify("READY=1")

    def _apply(self, action: Action, snapshot: Snapshot) -> None:
        """One of the tick's actions, carried out (acting.py): its history kept."""
        self.history = self.acting.apply(self.config, self.history, action, snapshot)

    def _flush_metrics(self) -> None:
        problem = self.metrics.flush()  # the textfile; a message only when it starts failing
        if problem is not None:
            self.events.say("metrics_error", "error", problem, error=problem)

    def restore_state(self) -> None:
        """Take the persisted action times (restart storms, cooldowns) into the history."""
        if self.state is None:
            return
        restored = self.state.load()
        problem: tuple[str, str, str] | None = None  # event, level, sentence
        if restored.problem is not None and restored.newer:  # a downgrade: not corruption
            problem = ("state_too_new", "error", f"restart history not read: {restored.problem}")
        elif restored.unavailable:
            # Permissions, not damage: the file is left as it is; one warning covers
            # this and the saves that will fail for the same reason.
            self._state_failing.failed(str(restored.problem))
            problem = (
                "state_unavailable",
                "warning",
                (
                    f"{restored.problem}; the restart history was not restored and will not "
                    "survive a restart of vramwatch"
                ),
            )
        elif restored.problem is not None:
            problem = ("state_corrupt", "error", f"restart history unusable: {restored.problem}")
        if problem is not None:
            self.events.say(*problem, state=str(self.state.path), error=restored.problem)
        if restored.actions_ns:
            self.history = replace(self.history, actions_ns=dict(restored.actions_ns))
            self.events.say(
                "state_restored",
                "info",
                f"restart history restored from {self.state.path}: "
                + ", ".join(f"{u} {len(t)}" for u, t in sorted(restored.actions_ns.items())),
                state=str(self.state.path),
                units=len(restored.actions_ns),
            )
        # Write at once: replaces a corrupt file and shows early if the directory is unusable.
        self._saved_actions = None
        self.save_state()

    def save_state(self) -> None:
        """Persist the action times when they changed; a failure is logged, never fatal."""
        if self.state is None or self.config.daemon.dry_run:
            return  # a dry run's "would" actions must not count against a later real run
        actions = dict(self.history.actions_ns)
        if actions == self._saved_actions:
            return
        try:
            self.state.save(actions)
        except StateError as exc:
            if self._state_failing.failed(str(exc)):
                self.events.say(
                    "state_unavailable",
                    "warning",
                    f"{exc}; the restart history will not survive a restart of vramwatch",
                    state=str(self.state.path),
                    error=str(exc),
                )
            return
        if self._state_failing.worked():
            self.events.say(
                "state_saved", "info", f"restart history saved again to {self.state.path}"
            )
        self._saved_actions = actions

    def reload(self) -> None:
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = self._effective(load(self.config_path, trusted=self.trusted_config))
            if new.daemon.bus != self.config.daemon.bus:
                # Measuring and acting must name the same manager's units: the D-Bus
                # client is bound to the bus it was started on.
                raise ConfigError(
                    self.config_path,
                    "daemon.bus",
                    f'cannot change from "{self.config.daemon.bus}" to "{new.daemon.bus}" '
                    "on reload; restart vramwatch to use another bus",
                )
        except Exception as exc:  # noqa: BLE001 - a reload must never kill the guard
            error = (
                str(exc)
                if isinstance(exc, ConfigError)
                else f"{self.config_path}: cannot load: {exc!r}"
            )
            self.events.say(
                "config_rejected",
                "error",
                f"reload rejected, keeping the running config: {error}",
                config=str(self.config_path),
                error=error,
            )
        else:
            self.config = new
            self._warnings_pending, self._warned = True, set()
            self.events.say(
                "config_reloaded",
                "info",
                reloaded_sentence(new),
                config=str(self.config_path),
                tenants=len(new.tenants),
                dry_run=new.daemon.dry_run,
            )
        self.notify("READY=1")


def tenants_text(count: int) -> str:
    """ "1 tenant", "3 tenants"."""
    return f"{count} tenant{'' if count == 1 else 's'}"


def started_sentence(config: Config) -> str:
    """The ``started`` entry's MESSAGE, the daemon's and replay's alike."""
    return (
        f"vramwatch started: {tenants_text(len(config.tenants))}, interval "
        f"{config.daemon.interval_ns / 1e9:g}s, bus {config.daemon.bus}"
        + (", DRY RUN: nothing will be restarted" if config.daemon.dry_run else "")
    )


def reloaded_sentence(config: Config) -> str:
    """The ``config_reloaded`` entry's MESSAGE."""
    return f"config reloaded: {tenants_text(len(config.tenants))}" + (
        " (dry run)" if config.daemon.dry_run else ""
    )


def status_line(snapshot: Snapshot) -> str:
    """The one line `systemctl status vramwatch` shows."""
    parts = []
    for gpu in snapshot.gpus:
        if gpu.ok:
            parts.append(f"GPU{gpu.label} free {format_size(gpu.free_bytes)}")
        else:
            parts.append(f"GPU{gpu.label} {'lost' if gpu.lost else 'error'}")
    if snapshot.nvml_error:
        parts.append("no GPU telemetry")
    if snapshot.host.ok:
        parts.append(f"RAM available {format_size(snapshot.host.mem_available_bytes)}")
    return "; ".join(parts)


def tick_readings(
    config: Config, snapshot: Snapshot, decision: policy.Decision
) -> tuple[str, dict[str, Any]]:
    """The debug ``tick`` event's sentence and fields: each floor's reading, each
    tenant's usage, the actions decided."""
    parts: list[str] = []
    gpus: list[dict[str, Any]] = []
    read = {r.key: r for r in decision.readings}
    for gpu in snapshot.gpus:
        reading = read.get(policy.gpu_key(gpu.uuid))
        floor = reading.floor_bytes if reading is not None else None
        gpus.append({"gpu": gpu.label, "free_bytes": gpu.free_bytes, "floor_bytes": floor})
        if floor is None:
            parts.append(f"{gpu.where} {gpu.error or 'unknown'}")
        else:
            parts.append(
                f"{gpu.where} free {format_size(gpu.free_bytes)}, floor {format_size(floor)}"
            )
    if snapshot.nvml_error:
        parts.append(f"no GPU telemetry: {snapshot.nvml_error}")
    host = snapshot.host
    host_floor = None
    if (host_reading := read.get(policy.RAM_KEY)) is not None:
        host_floor = host_reading.floor_bytes
        parts.append(
            f"RAM available {format_size(host.mem_available_bytes)}, "
            f"floor {format_size(host_floor)}"
        )
    usage: dict[str, dict[str, int | None]] = {}
    for tenant in config.tenants:
        used = snapshot.units.get(tenant.unit)
        vram = used.vram_bytes if used else None
        ram = used.ram_bytes if used else None
        usage[tenant.unit] = {"vram_bytes": vram, "ram_bytes": ram}
        vram_text = format_size(vram) + (
            f" of {format_size(tenant.vram_bytes)}" if tenant.vram_bytes else ""
        )
        ram_text = format_size(ram) + (
            f" of {format_size(tenant.ram_bytes)}" if tenant.ram_bytes else ""
        )
        parts.append(f"{tenant.unit} VRAM {vram_text}, RAM {ram_text}")
    actions = [f"{a.verb.value} {a.unit}" for a in decision.actions]
    n = len(actions)
    parts.append(f"{n} action{'' if n == 1 else 's'}" + (": " + ", ".join(actions) if n else ""))
    fields: dict[str, Any] = {
        "gpus": gpus,
        "available_bytes": host.mem_available_bytes,
        "floor_bytes": host_floor,
        "usage": usage,
        "actions": actions,
    }
    return "; ".join(parts), fields


def _traceback() -> str:
    """The exception being handled, its last 5 frames, for the journal entry.

    traceback (and textwrap) are imported on the first error: 0.1 MiB that a
    daemon whose sources and policy work does not carry (issue 17).
    """
    import traceback

    return traceback.format_exc(limit=5)
