"""The daemon's side of recording: the :class:`Recorder` and what feeds it.

:class:`RecordingDaemon` is the daemon ``vramwatch run`` builds, recording or
not, since a reload may turn ``[daemon] record`` on. The trace's records
(:mod:`vramwatch.record.format`) and its file (:mod:`vramwatch.record.trace`) are
imported once a trace is configured: a daemon that does not record does not carry
them (issue 17).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from vramwatch.acting import SnapshotSource
from vramwatch.config import Config
from vramwatch.daemon import Daemon, Ports
from vramwatch.model import Actuator, Event, JobOutcome, Snapshot, Verb
from vramwatch.once import Once
from vramwatch.state import read_boot_id

if TYPE_CHECKING:
    from vramwatch.record.trace import TraceWriter

# After a failed write, try again this often (each retry sets the broken segment aside).
RETRY_NS = 60 * 10**9
# The daemon's entries the trace keeps (``r`` records): what a release command did,
# which replay cannot run again (vramwatch.record.format.RELEASE_EVENTS, here
# without importing the format).
RELEASE_EVENTS = frozenset({"released", "release_failed"})


class Recorder:
    """Feeds a :class:`TraceWriter` from the daemon. Never raises: a recording error is
    logged once (``record_error``) and guarding goes on; ``record_resumed`` when it works
    again."""

    def __init__(
        self,
        say: Callable[..., None],
        override: str | None = None,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        boot_id: Callable[[], str] = read_boot_id,
    ) -> None:
        self.say = say
        self.override = override
        self.wall_ns = wall_ns
        self.mono_ns = mono_ns
        self.boot_id = boot_id
        self.writer: TraceWriter | None = None
        self._config: dict[str, Any] | None = None
        self._restored: dict[str, tuple[int, ...]] | None = None
        self._in_tick = False
        self._failing = Once()  # record_error when it starts or changes; record_resumed
        self._retry_ns = 0

    def configure(
        self,
        config: Config,
        why: str,
        forced_dry_run: bool,
        effective: Callable[[Config], Config],
    ) -> None:
        """The config in force (at start, and after each reload that changed it)."""
        target = self.override or config.daemon.record
        if target is None:  # not recording, or no longer: no trace module needed
            self.close()
            self.writer = None
            return
        from vramwatch.record.format import TraceError, config_record
        from vramwatch.record.trace import TraceWriter

        target = os.path.abspath(target)  # `run --record trace.gz`: where it was started
        try:
            self._config = config_record(config, why, forced_dry_run, effective)
            # When: the start's time is the time replay gives the started entry.
            self._config.update(t=self.wall_ns() // 10**6, m=self.mono_ns())
        except Exception as exc:  # noqa: BLE001 - recording must never stop guarding
            self._fail(f"cannot record the config: {exc!r}")
            return
        if self.writer is not None and (
            Path(target) != self.writer.path
            or self.writer.keep_ns != config.daemon.record_keep_ns
            or self.writer.max_bytes != config.daemon.record_max_bytes
        ):
            self.close()
            self.writer = None
        if self.writer is None:
            self.writer = TraceWriter(
                Path(target),
                config.daemon.record_keep_ns,
                config.daemon.record_max_bytes,
                wall_ns=self.wall_ns,
                boot_id=self.boot_id,
            )
            self._failing.worked()  # a new writer: its failures are news again
        self._preamble()
        if self.writer.is_open:
            self._write(self._config)
        elif not self._failing.failing:
            # Open now: a reload before the first tick is in the trace, and a directory
            # that cannot be written is reported at start.
            try:
                self.writer.open()
            except TraceError as exc:
                self._fail(str(exc))

    def restored(self, actions_ns: Mapping[str, tuple[int, ...]]) -> None:
        """The restart history the daemon restored from its state file at start."""
        self._restored = dict(actions_ns)
        self._preamble()
        if self.writer is not None and self.writer.is_open:
            from vramwatch.record.format import state_record  # loaded with the writer

            self._write(state_record(self._restored))

    def _preamble(self) -> None:
        """The records every segment starts with: the config, and the history restored."""
        if self.writer is not None and self._config is not None:
            from vramwatch.record.format import state_record  # loaded with the writer

            restored = [] if self._restored is None else [state_record(self._restored)]
            self.writer.preamble = [self._config, *restored]

    def begin_tick(self) -> None:
        self._in_tick = True

    def end_tick(self) -> None:
        self._in_tick = False
        if self.writer is not None and self.writer.is_open:
            from vramwatch.record.format import TraceError  # loaded with the writer

            try:
                self.writer.end_tick()
            except TraceError as exc:
                self._fail(str(exc))

    def sampled(self, snapshot: Snapshot, *, recheck: bool = False) -> None:
        """A sample the daemon took: the tick's own (the first since :meth:`begin_tick`),
        or a further one, which ``recheck`` (the daemon's word to the sampler) says is the
        re-check before an action rather than a release's wait."""
        first, self._in_tick = self._in_tick and not recheck, False
        if self.writer is None:
            return
        from vramwatch.record.format import sample_record  # loaded with the writer

        try:
            wall_ms = self.wall_ns() // 10**6
            record = sample_record(snapshot, wall_ms, first=first, recheck=recheck)
        except Exception as exc:  # noqa: BLE001
            self._fail(f"cannot encode a sample: {exc!r}")
            return
        self._write(record, tick=first)

    def sample_failed(self, now_ns: int, exc: BaseException, *, recheck: bool = False) -> None:
        first, self._in_tick = self._in_tick and not recheck, False
        if self.writer is None:
            return
        from vramwatch.record.format import failure_record  # loaded with the writer

        wall_ms = self.wall_ns() // 10**6
        self._write(failure_record(now_ns, wall_ms, exc, first=first, recheck=recheck), tick=first)

    def acted(
        self,
        unit: str,
        verb: str,
        outcome: JobOutcome | None = None,
        exc: BaseException | None = None,
    ) -> None:
        if self.writer is None:
            return
        from vramwatch.record.format import answer_record  # loaded with the writer

        self._write(answer_record(unit, verb, outcome, exc))

    def event(self, event: Event) -> None:
        """An event listener: a release's result (``released``, ``release_failed``) goes
        into the trace, with every field the daemon logged. Never raises."""
        if self.writer is None or event.name not in RELEASE_EVENTS:
            return
        from vramwatch.record.format import release_record  # loaded with the writer

        try:
            record = release_record(event, self.mono_ns(), self.wall_ns() // 10**6)
        except Exception as exc:  # noqa: BLE001 - recording must never stop guarding
            self._fail(f"cannot record {event.name}: {exc!r}")
            return
        self._write(record)

    def _write(self, record: Mapping[str, Any], *, tick: bool = False) -> None:
        writer = self.writer
        if writer is None:
            return
        if self._failing.failing and not writer.is_open:
            if self.mono_ns() < self._retry_ns:
                return
            if not tick:
                return  # start again at a tick, not in the middle of one
        from vramwatch.record.format import TraceError  # loaded with the writer

        try:
            writer.write(record, tick=tick)
        except TraceError as exc:
            self._fail(str(exc))
            return
        if self._failing.worked():
            self.say(
                "record_resumed",
                "info",
                f"recording to {writer.path} works again",
                record=str(writer.path),
            )

    def _fail(self, problem: str) -> None:
        self._retry_ns = self.mono_ns() + RETRY_NS  # a retry schedule, not a reminder
        if not self._failing.failed(problem):
            return
        self.say(
            "record_error",
            "error",
            f"recording failed: {problem}; guarding goes on without recording",
            record=str(self.writer.path) if self.writer is not None else None,
            error=problem,
        )

    def close(self) -> None:
        if self.writer is None:
            return
        from vramwatch.record.format import TraceError  # loaded with the writer

        try:
            self.writer.close()
        except TraceError as exc:
            self._fail(str(exc))


@runtime_checkable
class PidsOnRequest(Protocol):
    """A sampler that reads tenants' PIDs (``UnitUsage.pids``) only while ``pids`` is
    true (:class:`~vramwatch.sampler.Sampler`): no decision uses them, the trace does."""

    pids: bool


class RecordingSampler:
    """The daemon's sampler, with every sample (and failure) written to the trace."""

    def __init__(self, inner: SnapshotSource, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder
        self._pids = isinstance(inner, PidsOnRequest) and inner.pids

    def sample(self, config: Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        if isinstance(self.inner, PidsOnRequest):
            # Recording is switched on and off by a reload ([daemon] record).
            self.inner.pids = self._pids or self.recorder.writer is not None
        try:
            snapshot = self.inner.sample(config, now_ns, recheck=recheck)
        except Exception as exc:
            self.recorder.sample_failed(now_ns, exc, recheck=recheck)
            raise
        self.recorder.sampled(snapshot, recheck=recheck)
        return snapshot

    def close(self) -> None:
        self.recorder.close()
        self.inner.close()


class RecordingActuator:
    """The daemon's actuator, with each answer written to the trace."""

    def __init__(self, inner: Actuator, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        try:
            outcome = self.inner.act(unit, verb, should_stop)
        except Exception as exc:
            self.recorder.acted(unit, verb.value, exc=exc)
            raise
        self.recorder.acted(unit, verb.value, outcome)
        return outcome


class RecordingDaemon(Daemon):
    """The daemon, recording to ``record`` (``run --record``) or ``[daemon] record``.

    Nothing about guarding changes: the sampler and the actuator are wrapped, and
    the config is recorded at start and after each reload that changed it.
    """

    def __init__(
        self,
        config_path: Path,
        config: Config,
        ports: Ports,
        *,
        record: str | None = None,
        **kwargs: Any,
    ) -> None:
        # The daemon's clock: the trace's monotonic times are the ones its samples carry.
        self.recorder = Recorder(ports.events.say, record, mono_ns=ports.clock)
        sampler = RecordingSampler(ports.sampler, self.recorder)
        actuator = RecordingActuator(ports.actuator, self.recorder)
        super().__init__(
            config_path, config, replace(ports, sampler=sampler, actuator=actuator), **kwargs
        )
        # First: a listener after it (the after_action hook) cannot keep it from the trace.
        self.events.listeners.insert(0, self.recorder.event)
        self.recorder.configure(self.config, "start", self.force_dry_run, self._effective)

    def restore_state(self) -> None:
        super().restore_state()
        self.recorder.restored(self.history.actions_ns)

    def reload(self) -> None:
        before = self.config
        super().reload()
        if self.config is not before:
            self.recorder.configure(self.config, "reload", self.force_dry_run, self._effective)

    def tick(self, now_ns: int | None = None) -> None:
        self.recorder.begin_tick()
        try:
            super().tick(now_ns)
        finally:
            self.recorder.end_tick()
