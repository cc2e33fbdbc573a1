"""vramwatch.trend: leak forecasts from the troughs, on synthetic series (issue 14 part 3).

Each series is one tenant's RAM sampled every 2 s; the verdict is whether
``growing`` is said, and with what forecast.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

import pytest

from tests.unit.test_policy import cfg, tenant, usage
from vramwatch.config import Config, TrendConfig
from vramwatch.model import HostSample, Snapshot
from vramwatch.trend import Trends, theil_sen

MIB = 2**20
GIB = 2**30
S = 10**9
UNIT = "model-server.service"
WINDOW_S = 30 * 60
INTERVAL_S = 2


def config(warn_within_s: int = 2 * 3600, window_s: int = WINDOW_S) -> Config:
    base = cfg(tenant(UNIT, ram=32 * GIB))
    return Config(
        base.path,
        base.daemon,
        base.gpu,
        base.host,
        base.tenants,
        base.metrics,
        TrendConfig(window_s * S, warn_within_s * S),
    )


def drive(
    series: Callable[[float], float], seconds: int, conf: Config | None = None
) -> tuple[Trends, list]:  # type: ignore[type-arg]
    conf = conf or config()
    trends = Trends()
    events = []
    for t in range(0, seconds, INTERVAL_S):
        snap = Snapshot(
            now_ns=t * S,
            gpus=(),
            host=HostSample(64 * GIB, 32 * GIB),
            units={UNIT: usage(UNIT, vram=None, ram=int(series(t)), by_gpu={})},
        )
        events += trends.observe(conf, snap)
    return trends, events


LEAK_PER_S = 2.3 * GIB / 3600  # the model server of the incident: 2.3 GiB an hour


def steady_leak(t: float) -> float:
    return 27 * GIB + LEAK_PER_S * t  # 5 GiB under budget: ~2h10m away at the start


def sawtooth(t: float) -> float:
    """A worker that takes 3 GiB per batch and gives it back: 90 s cycles, no leak."""
    return 4 * GIB + 3 * GIB * ((t % 90) / 90)


def sawtooth_on_a_rising_floor(t: float) -> float:
    return sawtooth(t) + LEAK_PER_S * t + 23 * GIB


def step_then_flat(t: float) -> float:
    return 10 * GIB if t < 600 else 14 * GIB


_rng = random.Random(7)


def noise(t: float) -> float:
    return 8 * GIB + _rng.gauss(0, 200 * MIB)


def test_a_steady_leak_is_growing_with_a_forecast_close_to_the_truth() -> None:
    trends, events = drive(steady_leak, 3600)

    assert ["growing"] == [e.name for e in events]
    rate = events[0].fields["rate_bytes_per_s"]
    assert math.isclose(LEAK_PER_S, rate, rel_tol=0.05)
    level = events[0].fields["used_bytes"]
    truth_s = (32 * GIB - level) / LEAK_PER_S
    assert math.isclose(truth_s, events[0].fields["seconds_to_budget"], rel_tol=0.05)
    assert events[0].message.startswith(f"{UNIT} RAM grows 2.3 GiB/h; at ")
    assert "reaches its budget in ~" in events[0].message
    # In words, never "~3198.6s" (issue 23).
    (left,) = re.findall(r"reaches its budget in ~([^ ]+) ", events[0].message)
    assert re.fullmatch(r"(\d+d)?(\d+h)?(\d+m)?(\d+s)?", left), left


@pytest.mark.parametrize(
    "series", [sawtooth, step_then_flat, noise], ids=["sawtooth", "step-then-flat", "noise"]
)
def test_what_is_not_a_leak_is_never_growing(series: Callable[[float], float]) -> None:
    trends, events = drive(series, 3 * 3600)

    assert [] == events
    assert all(e.rate_bytes_per_s == 0 for e in trends.estimates())


def test_a_sawtooth_on_a_rising_floor_is_the_leak_under_it() -> None:
    trends, events = drive(sawtooth_on_a_rising_floor, 3600)

    assert ["growing"] == [e.name for e in events]
    assert math.isclose(LEAK_PER_S, events[0].fields["rate_bytes_per_s"], rel_tol=0.1)


def test_a_leak_that_reaches_its_budget_beyond_warn_within_is_estimated_but_not_said() -> None:
    trends, events = drive(steady_leak, 3600, config(warn_within_s=3600))

    assert [] == events
    (estimate,) = trends.estimates()
    assert estimate.seconds_to_budget is not None and estimate.seconds_to_budget > 3600


def test_growing_is_said_once_per_episode() -> None:
    trends, events = drive(steady_leak, 4 * 3600)

    assert 1 == len(events)


def test_theil_sen_ignores_an_outlier() -> None:
    points = [(float(x), 2.0 * x + 1) for x in range(10)] + [(4.5, 1000.0)]

    slope, intercept = theil_sen(points)

    assert (2.0, 1.0) == (round(slope, 6), round(intercept, 6))
