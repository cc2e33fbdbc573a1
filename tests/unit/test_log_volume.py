"""No log spam: a lasting condition is logged when it starts, every 5 minutes
while it lasts, and when it ends; never on every tick. Twelve minutes of 2 s
ticks (360 ticks) per scenario, through the real policy and loop."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tests.unit.builders import S, one_gpu
from vramwatch import config as cfg
from vramwatch import policy
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import JobOutcome, Snapshot, Verb

TICK_S = 2
MINUTES = 12

CONFIG = cfg.parse(
    """
[daemon]
interval = "2s"
cooldown = "1s"
max_restarts = 2
restart_window = "1h"
reclaim_timeout = "4s"
[gpu]
min_free_vram = "2GiB"
grace = "10s"
[[tenant]]
unit = "hog.service"
vram = "3000MiB"
[[tenant]]
unit = "small.service"
vram = "3000MiB"
"""
)


def snap(
    now_s: int, *, hog_mib: int = 0, free_mib: int = 1000, error: str | None = None
) -> Snapshot:
    return one_gpu(now_s * S, hog_mib=hog_mib, free_mib=free_mib, error=error)


def timeline(snapshots: Callable[[int], Snapshot], seconds: int) -> list[tuple[int, str]]:
    """(second, event) for every event decide() emits over the run."""
    history = policy.History()
    seen: list[tuple[int, str]] = []
    for t in range(0, seconds, TICK_S):
        decision = policy.decide(CONFIG, snapshots(t), history)
        history = decision.history
        seen += [(t, e.name) for e in decision.events]
    return seen


def test_a_lasting_breach_is_logged_at_start_every_5_minutes_and_at_the_end() -> None:
    """Nobody over budget: floor_breached + one no_candidate, reminders, floor_recovered."""
    end = MINUTES * 60

    seen = timeline(lambda t: snap(t, hog_mib=1000, free_mib=1000 if t < end else 9000), end + 4)

    assert [
        (10, "floor_breached"),
        (10, "no_candidate"),
        (310, "floor_breached"),
        (610, "floor_breached"),
        (end, "floor_recovered"),
    ] == seen


def test_a_gpu_in_error_is_logged_at_start_every_5_minutes_and_when_it_reads_again() -> None:
    end = MINUTES * 60

    seen = timeline(
        lambda t: snap(t, free_mib=9000, error="GPU_IS_LOST" if t < end else None), end + 4
    )

    assert [
        (0, "sampling_error"),
        (300, "sampling_error"),
        (600, "sampling_error"),
        (end, "sampling_recovered"),
    ] == seen


def test_the_gpu_error_reminder_says_still() -> None:
    history = policy.History()
    messages = []
    for t in (0, 2, 300):
        decision = policy.decide(CONFIG, snap(t, error="GPU_IS_LOST"), history)
        history = decision.history
        messages += [e.message for e in decision.events]

    assert [
        "cannot read GPU 0 (GPU-0): GPU_IS_LOST; no action on it until it reads cleanly again",
        "still: " + "cannot read GPU 0 (GPU-0): GPU_IS_LOST; no action on it until it reads "
        "cleanly again",
    ] == messages


def test_a_restart_storm_is_logged_once_per_window_not_per_tick() -> None:
    """A hog that never shrinks: 2 actions, then one rate_limited in 12 minutes."""
    history = policy.History()
    actions: list[int] = []
    seen: list[tuple[int, str]] = []
    for t in range(0, MINUTES * 60, TICK_S):
        decision = policy.decide(CONFIG, snap(t, hog_mib=12000, free_mib=1000), history)
        history = decision.history
        actions += [t for _ in decision.actions]
        seen += [(t, e.name) for e in decision.events]

    assert [10, 14] == actions  # grace 10 s; reclaim_timeout 4 s frees the resource again
    assert [
        (10, "floor_breached"),
        (14, "not_reclaimed"),
        (18, "not_reclaimed"),
        (18, "rate_limited"),
        (18, "no_candidate"),
        (310, "floor_breached"),
        (610, "floor_breached"),
    ] == seen


def test_a_sampler_that_keeps_raising_is_logged_every_5_minutes_not_every_tick(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text('[gpu]\nmin_free_vram = "2GiB"\n')
    clock = [0]
    end = MINUTES * 60

    class Sampler:
        def sample(self, config: cfg.Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
            if now_ns < end * S:
                raise PermissionError("/proc/meminfo")
            return snap(now_ns // S, free_mib=9000)

        def close(self) -> None:
            pass

    class Actuator:
        def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
            return JobOutcome(True, "done", "")

    out = io.StringIO()
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            Sampler(),
            Actuator(),
            EventLog("stderr", "json", stream=out),
            clock=lambda: clock[0],
            notify=lambda state: False,
        ),
    )
    for t in range(0, end + 4, TICK_S):
        clock[0] = t * S
        daemon.tick()

    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [
        "sampling_error",
        "sampling_error",
        "sampling_error",
        "sampling_recovered",
    ] == [e["event"] for e in events]
    assert (
        "sampling failed: PermissionError('/proc/meminfo'); skipping ticks until it works again"
    ) == events[0]["message"]


def test_a_lost_gpu_is_logged_once_and_when_it_reads_again() -> None:
    end = MINUTES * 60

    def lost(t: int) -> Snapshot:
        s = snap(t, free_mib=9000, error="GPU_IS_LOST: GPU is lost" if t < end else None)
        return replace(s, gpus=tuple(replace(g, lost=g.error is not None) for g in s.gpus))

    seen = timeline(lost, end + 4)

    assert [(0, "gpu_lost"), (end, "sampling_recovered")] == seen


def test_a_hung_nvml_is_logged_at_start_every_5_minutes_and_when_it_answers() -> None:
    end = MINUTES * 60

    def hung(t: int) -> Snapshot:
        s = snap(t, free_mib=9000, error="NVML_HUNG: ..." if t < end else None)
        return replace(s, nvml_hung_ns=(t + 3) * S) if t < end else s

    seen = timeline(hung, end + 4)

    assert [
        (0, "nvml_hung"),
        (300, "nvml_hung"),
        (600, "nvml_hung"),
        (end, "sampling_recovered"),
    ] == seen
