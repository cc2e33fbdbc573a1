"""One decided action, carried out: re-check -> release -> act -> outcome.

The policy chose the tenant and the daemon's loop hands each action here once.
Each step is one event that says why: ``action_cancelled`` (the re-check no
longer justifies it), ``released`` / ``release_failed`` (SPEC "Release before
restart"), the action itself, then ``action_unconfirmed`` or ``action_failed``
when the job did not end well. What it needs comes in explicitly: the sampler
and the actuator, the event log, the metrics and the clock at construction;
the running config and the policy's history with each action, and the history
as the action left it goes back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from vramwatch import policy
from vramwatch.actuators import commands
from vramwatch.config import Config
from vramwatch.events import EventLog
from vramwatch.model import Action, Actuator, JobOutcome, Snapshot, Verb
from vramwatch.sink import WITHDRAWN, MetricsSink
from vramwatch.tenants import tenant_fields
from vramwatch.units import format_duration

# How often the memory is looked at while a release command's effect is awaited.
RELEASE_POLL_S = 0.5

# Outcomes of an accepted job whose end vramwatch did not see (JobOutcome.result).
UNSEEN_RESULTS = frozenset({"timeout", "disconnected", "interrupted", "unknown"})


class SnapshotSource(Protocol):
    def sample(self, config: Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        """One snapshot; ``recheck`` marks the sample right before an action, which must
        not rest on anything remembered from before (who owns a GPU process)."""
        ...

    def close(self) -> None: ...


class Release(Protocol):
    """Runs the tenant's release for ``action`` and says whether all the memory it
    holds came back, with its ``released`` or ``release_failed`` event said. The
    default, :meth:`Acting.release`, runs the command; replay reads the trace."""

    def __call__(
        self,
        action: Action,
        *,
        config: Config,
        history: policy.History,
        named: Mapping[str, Any],
    ) -> bool: ...


class Acting:
    """Carries out one action at a time (:meth:`apply`); never loops, never decides."""

    def __init__(
        self,
        sampler: SnapshotSource,
        actuator: Actuator,
        events: EventLog,
        metrics: MetricsSink,
        clock: Callable[[], int],
        *,
        keepalive: Callable[[], None],
        stop: threading.Event,
        release: Release | None = None,
    ) -> None:
        self.sampler = sampler
        self.actuator = actuator
        self.events = events
        self.metrics = metrics
        self.clock = clock
        # Feeds systemd's watchdog while a job or a release command is waited for.
        self.keepalive = keepalive
        # Set when vramwatch is stopping: a wait gives up, and a release wait sleeps on it.
        self.stop = stop
        self.release: Release = self.run_release if release is None else release

    def _waiting_for_job(self) -> bool:
        """Polled while a restart job runs: keep the watchdog fed; say whether to give up."""
        self.keepalive()
        return self.stop.is_set()

    def _waiting_for_release(self, deadline_ns: int) -> None:
        """Polled while a release command runs and its memory is awaited: the watchdog is
        fed within the release's own deadline only, so a wait stuck past it lets systemd
        act (WatchdogSec= is 1 min; release_timeout allows 10)."""
        if time.monotonic_ns() < deadline_ns:
            self.keepalive()

    def apply(
        self, config: Config, history: policy.History, action: Action, snapshot: Snapshot
    ) -> policy.History:
        """Re-check, release, act: the history as this action leaves it."""
        # Samples go stale: re-read right before acting; the tenant may have shrunk.
        # The fields naming the tenant: VRAMWATCH_TENANT, and UNIT or CONTAINER(_ID).
        named = tenant_fields(action.unit, snapshot.units.get(action.unit))
        try:
            fresh = self.sampler.sample(config, self.clock(), recheck=True)
            reason = policy.still_justified(config, fresh, action)
        except Exception as exc:  # noqa: BLE001 - unsure means do not act
            reason = f"could not re-check usage ({exc!r})"
        if reason is not None:
            history = policy.action_cancelled(history, action)
            self.metrics.observe_action(action.unit, action.verb.value, WITHDRAWN)
            self.events.say(
                "action_cancelled",
                "info",
                f"not {'stopping' if action.verb is Verb.STOP else 'restarting'} "
                f"{action.unit} after all: {reason}",
                **named,
                resource=action.resource,
                gpu=action.gpu,
                reason=reason,
            )
            return history
        tenant = config.tenant(action.unit)
        if tenant is not None and tenant.release:
            if self.release(action, config=config, history=history, named=named):
                self.metrics.observe_action(action.unit, "release", "released")
                return history
        self.events.say(
            action.verb.value,
            "warning",
            action.message,
            **{  # the decision's fields (as its would_ twin has them), then the tenant's
                **action.fields,
                **named,
                "resource": action.resource,
                "gpu": action.gpu,
                "used_bytes": action.used_bytes,
                "budget_bytes": action.budget_bytes,
                "free_bytes": action.free_bytes,
                "floor_bytes": action.floor_bytes,
                "action": action.verb.value,
            },
        )
        try:
            outcome = self.actuator.act(action.unit, action.verb, self._waiting_for_job)
        except Exception as exc:  # noqa: BLE001 - an actuator bug must not kill the guard
            # Whether systemd got the call is unknown: treat it as accepted, so no second
            # tenant is acted on for this incident before it settles.
            outcome = JobOutcome(
                False, "unknown", f"{action.verb.value} raised {exc!r}", accepted=True
            )
        self.metrics.observe_action(action.unit, action.verb.value, outcome.result)
        if outcome.ok:
            return history
        return self._failed(config, history, action, outcome, named)

    def _failed(
        self,
        config: Config,
        history: policy.History,
        action: Action,
        outcome: JobOutcome,
        named: Mapping[str, Any],
    ) -> policy.History:
        """The job did not end well: in flight if systemd has it, else a failed attempt."""
        fields = dict(
            named,
            resource=action.resource,
            gpu=action.gpu,
            action=action.verb.value,
            result=outcome.result,
            error=outcome.detail,
        )
        if outcome.accepted:
            # The job exists (or may): it is in flight until reclaimed or reclaim_timeout.
            still = (
                "so it counts as in flight until the memory comes back or reclaim_timeout "
                f"({format_duration(config.daemon.reclaim_timeout_ns)}) passes"
            )
            if outcome.result in UNSEEN_RESULTS:
                self.events.say(
                    "action_unconfirmed",
                    "warning",
                    f"{action.verb.value} {action.unit}: {outcome.detail}; the job was "
                    f"accepted, {still}",
                    **fields,
                )
            else:  # the job ran and ended badly (failed, canceled, dependency)
                self.events.say(
                    "action_failed",
                    "error",
                    f"{action.verb.value} {action.unit} failed: {outcome.detail}; the job ran, "
                    f"{still}",
                    **fields,
                )
            return history
        history = policy.action_failed(history, action, reached=outcome.reached)
        unreached = (
            f"; nothing was {'stopped' if action.verb is Verb.STOP else 'restarted'}, so this "
            "attempt does not count toward max_restarts; the next one waits for cooldown "
            f"({format_duration(config.daemon.cooldown_ns)})"
        )
        self.events.say(
            "action_failed",
            "error",
            f"{action.verb.value} {action.unit} failed: {outcome.detail}"
            + ("" if outcome.reached else unreached),
            **fields,
        )
        return history

    def run_release(
        self,
        action: Action,
        *,
        config: Config,
        history: policy.History,
        named: Mapping[str, Any],
    ) -> bool:
        """Run the tenant's release command and wait for the memory: every resource the
        action holds (SPEC "Release before restart"). True when all of it came back."""
        tenant = config.tenant(action.unit)
        assert tenant is not None  # apply() releases configured tenants only
        argv, timeout_ns = tenant.release, tenant.release_timeout_ns
        started = time.monotonic_ns()  # real time: the command and the wait are real
        deadline = started + timeout_ns
        result = commands.run(
            argv, timeout_ns / 1e9, waiting=lambda: self._waiting_for_release(deadline)
        )
        fields: dict[str, Any] = dict(
            named,
            resource=action.resource,
            gpu=action.gpu,
            command=" ".join(argv),
            returncode=result.returncode,
            output=result.output or None,
        )
        if result.ok:
            check: policy.Released | None = None
            while True:
                try:
                    fresh = self.sampler.sample(config, self.clock())
                    now_check = policy.released(config, fresh, action, history)
                except Exception:  # noqa: BLE001 - unsure means not released
                    now_check = None
                if now_check is not None:
                    check = now_check  # a failed sample does not forget the last answer
                took = format_duration(time.monotonic_ns() - started)
                if now_check is not None and now_check.released:
                    self.events.say(
                        "released",
                        "warning",
                        f"released {action.unit} without a restart: its release command "
                        f"gave back {listed(now_check.came_back_text)} within {took}",
                        **fields,
                        came_back=list(now_check.came_back),
                        not_back=[],
                    )
                    return True
                if time.monotonic_ns() >= deadline or self.stop.is_set():
                    break
                self._waiting_for_release(deadline)
                # The stop event, not the daemon's wake event: a SIGHUP leaves that set
                # until the loop reloads, and the wait would spin through full samples
                # (issue 22 item 13).
                self.stop.wait(RELEASE_POLL_S)
            if check is None:
                problem = f"the memory could not be re-checked within {took}"
            elif check.came_back:
                problem = (
                    f"not all the memory came back within {took}: "
                    f"{listed(check.came_back_text)} did, "
                    f"{listed(check.not_back_text)} did not"
                )
            else:
                problem = (
                    f"the memory did not come back within {took}: {listed(check.not_back_text)}"
                )
            if check is not None:
                fields.update(came_back=list(check.came_back), not_back=list(check.not_back))
        else:
            problem = result.problem
        self.events.say(
            "release_failed",
            "warning",
            f"release of {action.unit} did not free it ({problem}); "
            f"{'stopping' if action.verb is Verb.STOP else 'restarting'} it instead"
            + (f"; output: {result.output}" if result.output else ""),
            error=problem,
            **fields,
        )
        return False


def listed(items: tuple[str, ...]) -> str:
    """ "GPU 0", "GPU 0 and RAM", "GPU 0, GPU 1 and RAM"."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
