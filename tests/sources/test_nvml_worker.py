"""NVML on one worker thread with a per-tick deadline (issue 11, item 1).

The real pynvml over the fake driver, whose ``delay`` rule makes a call block
the way a hung driver (Xid, GSP timeout) does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakenvml import FakeNvmlState
from tests.sources.test_sampler import CONFIG, gpus, world
from vramwatch import policy
from vramwatch.model import GpuSample
from vramwatch.sampler import Sampler
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.worker import HUNG, DeadlineGpuSource, KeepAlive

S = 10**9
MS = 10**6
TIMEOUT_NS = 200 * MS
HANG_MS = 1500
QUICK = replace(CONFIG, nvml_timeout_ns=TIMEOUT_NS)
HOG = "immich-ml.service"


def codes(gpus: tuple[GpuSample, ...]) -> list[str | None]:
    return [g.error.split(":")[0] if g.error else None for g in gpus]


def timed(fn: object) -> tuple[object, float]:
    t0 = time.monotonic()
    result = fn()  # type: ignore[operator]
    return result, time.monotonic() - t0


def wait_idle(source: DeadlineGpuSource, limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while source.busy:
        assert time.monotonic() < deadline, "the stuck call never returned"
        time.sleep(0.02)


def test_a_hung_call_costs_one_deadline_then_nothing_until_it_returns(
    fake_nvml: FakeNvmlState,
) -> None:
    fake_nvml.write(gpus())
    source = DeadlineGpuSource(NvmlSource())
    clean = source.sample(0, TIMEOUT_NS)
    fake_nvml.write(gpus(), delays={"nvmlDeviceGetMemoryInfo_v2": HANG_MS})

    first, first_s = timed(lambda: source.sample(S, TIMEOUT_NS))
    later, later_s = timed(lambda: source.sample(2 * S, TIMEOUT_NS))
    fake_nvml.write(gpus())  # the driver recovers; the stuck call still finishes its sleep
    wait_idle(source)
    back = source.sample(3 * S, TIMEOUT_NS)
    source.close()

    assert ([None], None) == (codes(clean.gpus), clean.hung_ns)
    assert [HUNG] == codes(first.gpus)  # type: ignore[attr-defined]
    assert first.gpus[0].uuid == clean.gpus[0].uuid  # type: ignore[attr-defined]
    assert TIMEOUT_NS <= first.hung_ns  # type: ignore[attr-defined]
    assert 0.19 <= first_s < 1.0
    assert [HUNG] == codes(later.gpus)  # type: ignore[attr-defined]
    assert later_s < 0.05  # still stuck: GPU sampling skipped, no second wait
    assert ([None], None) == (codes(back.gpus), back.hung_ns)


def test_a_stuck_worker_never_piles_up_threads(fake_nvml: FakeNvmlState) -> None:
    fake_nvml.write(gpus(), delays={"nvmlDeviceGetMemoryInfo_v2": HANG_MS})
    source = DeadlineGpuSource(NvmlSource())
    source.sample(0, TIMEOUT_NS)
    threads = threading.active_count()

    readings = [source.sample(t * S, TIMEOUT_NS) for t in range(1, 50)]
    after = threading.active_count()
    fake_nvml.write(gpus())
    wait_idle(source)
    source.close()

    assert threads == after
    assert all(r.hung_ns is not None for r in readings)


def test_the_inner_source_raising_reaches_the_caller() -> None:
    class Broken:
        def sample(self, now_ns: int) -> tuple[tuple[GpuSample, ...], str | None]:
            raise RuntimeError("bug in the source")

        def close(self) -> None:
            pass

    source = DeadlineGpuSource(Broken())

    with pytest.raises(RuntimeError, match="bug in the source"):
        source.sample(0, TIMEOUT_NS)
    source.close()


def test_host_ram_is_sampled_and_decided_every_tick_while_nvml_hangs(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """The hog is over its RAM budget with MemAvailable under the floor: it is acted on
    for RAM on schedule while every NVML call hangs."""
    fake_nvml.write(gpus(), delays={"nvmlDeviceGetMemoryInfo_v2": HANG_MS})
    sampler = Sampler(NvmlSource(), world(tmp_path, 100_000))
    history = policy.History()
    actions, events, walls = [], [], []

    for i in range(7):  # 0 s .. 12 s, host grace 10 s
        t0 = time.monotonic()
        snap = sampler.sample(QUICK, 2 * i * S)
        walls.append(time.monotonic() - t0)
        decision = policy.decide(QUICK, snap, history)
        history = decision.history
        actions += [(a.unit, a.resource) for a in decision.actions]
        events += [e.name for e in decision.events]
    fake_nvml.write(gpus())
    wait_idle(sampler.nvml)
    sampler.close()

    assert [(HOG, "ram")] == actions
    assert 1 == events.count("nvml_hung")
    assert 0 == events.count("sampling_error")  # one nvml_hung, not one error per GPU
    assert max(walls[1:]) < 0.1  # only the first tick waited for the deadline


def test_nvml_hung_is_told_once_then_reminded_and_ends_with_recovered(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpus(), delays={"nvmlDeviceGetMemoryInfo_v2": HANG_MS})
    sampler = Sampler(NvmlSource(), world(tmp_path, 900_000))
    history = policy.History()
    names = []
    times = [0, 2 * S, 4 * S, policy.REMINDER_NS + 1 * S]
    for now in times:
        decision = policy.decide(QUICK, sampler.sample(QUICK, now), history)
        history = decision.history
        names.append([e.name for e in decision.events])
    fake_nvml.write(gpus())
    wait_idle(sampler.nvml)
    decision = policy.decide(QUICK, sampler.sample(QUICK, policy.REMINDER_NS + 3 * S), history)
    sampler.close()

    assert [["nvml_hung"], [], [], ["nvml_hung"]] == names
    assert ["sampling_recovered"] == [e.name for e in decision.events]
    # stuck from the first tick's deadline (t=0 + 200 ms) until t = REMINDER + 3 s
    assert policy.REMINDER_NS + 3 * S + TIMEOUT_NS == decision.events[0].fields["hung_ns"]


class Blocking:
    """A GPU source whose call blocks until ``release`` is set (or ``hold_s`` passes)."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.release = threading.Event()

    def sample(self, now_ns: int) -> tuple[tuple[GpuSample, ...], str | None]:
        self.release.wait(self.hold_s)
        return (GpuSample(0, "GPU-0", "Tesla T4", 16 * 2**30, 0, 16 * 2**30, ()),), None

    def close(self) -> None:
        self.release.set()


class Beats:
    """Keep-alives received, in seconds since ``started``."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(time.monotonic() - self.started)


def test_a_slow_answer_within_the_deadline_keeps_the_watchdog_fed() -> None:
    """Issue 22 item 4: nvml_timeout near its 60 s maximum, WatchdogSec=1min. Before: the
    tick waited on the worker with no WATCHDOG=1, and systemd killed vramwatch."""
    beats = Beats()
    source = DeadlineGpuSource(Blocking(1.0), KeepAlive(200 * MS, beats))

    reading, took_s = timed(lambda: source.sample(0, 5 * S))
    source.close()

    assert None is reading.hung_ns  # type: ignore[attr-defined]
    assert 3 <= len(beats.at), beats.at
    gaps = [b - a for a, b in zip([0.0, *beats.at], [*beats.at, took_s], strict=True)]
    assert max(gaps) < 0.4, (gaps, beats.at)


def test_a_wait_past_its_deadline_is_not_kept_alive() -> None:
    """Keep-alives stop at the deadline; later ticks skip the stuck call at once, unfed:
    a loop that hangs past its own limits must let systemd act."""
    beats = Beats()
    inner = Blocking(60.0)
    source = DeadlineGpuSource(inner, KeepAlive(200 * MS, beats))

    first, first_s = timed(lambda: source.sample(0, 700 * MS))
    during = list(beats.at)
    later = source.sample(S, 700 * MS)
    time.sleep(0.5)
    after = list(beats.at)
    inner.release.set()
    wait_idle(source)
    source.close()

    assert first.hung_ns is not None and later.hung_ns is not None  # type: ignore[attr-defined]
    assert 2 <= len(during), during
    assert all(t < 0.7 for t in during), during  # none past the 700 ms deadline
    assert during == after  # nothing while stuck past it, nor from the skipped sample
    assert first_s < 1.0
