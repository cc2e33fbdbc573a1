"""Leak forecasts from troughs: pure, fed the same snapshots as the policy.

A leak is steady growth of the memory a tenant keeps *between* allocator or GC
cycles, not of its peaks: a worker that allocates 2 GiB per request and frees
it afterwards has a sawtooth, not a leak. So per tenant and resource the
window is cut into ``BUCKETS`` equal buckets, each bucket keeps only its
lowest reading (the trough), and the trend is the Theil-Sen slope through
those troughs: the median of the pairwise slopes, which a few outliers (a
burst, a restart) cannot drag. The level now is the median intercept carried
to the newest trough.

A forecast is made when a bucket closes, so a tick costs one comparison per
tenant and resource; the O(BUCKETS^2) fit runs once per bucket width. No
clock and no I/O: time is ``snapshot.now_ns``.

It never acts: it returns ``growing`` events, once per episode, and the
estimates for the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vramwatch.config import Config, Tenant
from vramwatch.model import Event, Resource, Snapshot
from vramwatch.units import format_approximate, format_duration, format_size

# Troughs per window: enough points for a robust slope, few enough to fit cheaply.
BUCKETS = 12
# A trend needs troughs spread over at least half the window.
MIN_BUCKETS = BUCKETS // 2
# Growth smaller than this over a whole window is noise, not a leak: a page
# cache wobble, an allocator's rounding (absolute floor, and share of the budget).
MIN_RISE_BYTES = 32 * 1024 * 1024
MIN_RISE_SHARE = 0.01
# Both halves of the window must rise at least this share of the whole slope.
STEADY_SHARE = 0.3
# An episode ends once the forecast leaves warn_within by this factor (hysteresis:
# a rate near the edge does not make it announce again and again).
CLEAR_FACTOR = 1.5

S = 10**9


@dataclass(frozen=True, slots=True)
class Estimate:
    """One tenant's trend on one resource."""

    unit: str
    resource: str
    rate_bytes_per_s: float
    level_bytes: int  # the trough level now, on the fitted line
    budget_bytes: int | None
    seconds_to_budget: float | None  # None: not growing, or no budget

    def forecast_text(self) -> str:
        hour = 3600.0
        rate = f"{format_size(int(self.rate_bytes_per_s * hour))}/h"
        text = f"{self.unit} {self.resource.upper()} grows {rate}"
        if self.budget_bytes is not None and self.seconds_to_budget is not None:
            text += (
                f"; at {format_size(self.level_bytes)} of {format_size(self.budget_bytes)}, "
                f"reaches its budget in ~{format_approximate(int(self.seconds_to_budget * S))}"
            )
        return text


def theil_sen(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Slope and intercept: the median pairwise slope, the median of y - slope * x."""
    slopes = sorted(
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if x2 != x1
    )
    if not slopes:
        return 0.0, points[0][1] if points else 0.0
    slope = _median(slopes)
    intercept = _median(sorted(y - slope * x for x, y in points))
    return slope, intercept


def _median(values: list[float]) -> float:
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2


@dataclass(slots=True)
class _Series:
    """The troughs of one tenant's usage of one resource: bucket -> (t_ns, lowest bytes)."""

    troughs: dict[int, tuple[int, int]] = field(default_factory=dict)
    estimate: Estimate | None = None
    announced: bool = False


class Trends:
    """Per tenant and resource: troughs over the window, a forecast, ``growing`` once."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}
        self._window_ns = 0

    def estimates(self) -> list[Estimate]:
        return [s.estimate for s in self._series.values() if s.estimate is not None]

    def observe(self, config: Config, snapshot: Snapshot) -> list[Event]:
        """Take one snapshot in; the ``growing`` events it gives rise to."""
        trend = config.trend
        if trend.window_ns <= 0:
            self._series.clear()
            return []
        if trend.window_ns != self._window_ns:
            self._series.clear()  # a reload changed the window: buckets mean something else
            self._window_ns = trend.window_ns
        width = max(1, trend.window_ns // BUCKETS)
        bucket = snapshot.now_ns // width
        events: list[Event] = []
        tenants = {t.unit: t for t in config.tenants}
        for key in [k for k in self._series if k[0] not in tenants]:
            del self._series[key]
        for tenant in config.tenants:
            usage = snapshot.units.get(tenant.unit)
            for resource in Resource:
                used = resource.used(usage) if usage is not None else None
                if used is None:
                    continue  # unknown: no point, and no gap filled with a guess
                series = self._series.setdefault((tenant.unit, resource), _Series())
                closed = bucket not in series.troughs and bool(series.troughs)
                low = series.troughs.get(bucket)
                if low is None or used < low[1]:
                    series.troughs[bucket] = (snapshot.now_ns, used)
                for old in [b for b in series.troughs if b <= bucket - BUCKETS]:
                    del series.troughs[old]
                if closed:
                    event = self._forecast(config, tenant, resource, series, bucket)
                    if event is not None:
                        events.append(event)
        return events

    def _forecast(
        self, config: Config, tenant: Tenant, resource: Resource, series: _Series, bucket: int
    ) -> Event | None:
        # The bucket in progress is not a trough yet: fit the closed ones.
        closed = sorted(v for b, v in series.troughs.items() if b < bucket)
        if len(closed) < MIN_BUCKETS:
            series.estimate = None
            return None
        t0 = closed[0][0]
        points = [((t - t0) / S, float(v)) for t, v in closed]
        slope, intercept = theil_sen(points)
        level = int(intercept + slope * points[-1][0])
        budget = resource.budget(tenant)
        window_s = config.trend.window_ns / S
        rise = slope * window_s
        floor = max(MIN_RISE_BYTES, MIN_RISE_SHARE * budget if budget else 0)
        # Steady means both halves of the window rise: a step (a model loaded, a cache
        # filled) rises in one half and is flat in the other.
        half = len(points) // 2
        early, _ = theil_sen(points[: half + 1])
        late, _ = theil_sen(points[half:])
        steady = min(early, late) >= STEADY_SHARE * slope
        growing = slope > 0 and rise >= floor and steady
        seconds: float | None = None
        if growing and budget is not None:
            seconds = max(0.0, (budget - level) / slope)
        series.estimate = Estimate(
            tenant.unit, resource, slope if growing else 0.0, level, budget, seconds
        )
        warn_s = config.trend.warn_within_ns / S
        if seconds is not None and seconds <= warn_s and level < (budget or 0):
            if series.announced:
                return None
            series.announced = True
            fields: dict[str, Any] = {
                "unit": tenant.unit,
                "resource": resource,
                "rate_bytes_per_s": round(slope, 1),
                "used_bytes": level,
                "budget_bytes": budget,
                "seconds_to_budget": round(seconds),
            }
            return Event(
                "growing",
                "warning",
                series.estimate.forecast_text() + " (trend of the troughs over "
                f"{format_duration(config.trend.window_ns)}; vramwatch does not act on it)",
                fields,
            )
        if series.announced and (seconds is None or seconds > CLEAR_FACTOR * warn_s):
            series.announced = False  # the episode is over: a new one is announced afresh
        return None
