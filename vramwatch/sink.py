"""What the daemon tells its metrics, and the sink used when metrics are off.

:class:`vramwatch.metrics.Metrics` (on prometheus_client) is built only when
``[metrics]`` serves or writes something: a host without metrics never
imports the exporter (over 10 MiB resident for a daemon that must be light
exactly when memory is short). Both take the same calls from the loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from vramwatch.config import Config, MetricsConfig
from vramwatch.model import Event, Snapshot
from vramwatch.policy import Reading
from vramwatch.trend import Estimate

# The action result for an action dropped by the re-check right before acting
# (event action_cancelled); other results are systemd's job results ("done",
# "failed", "timeout", "canceled", ...) or the D-Bus error name, and
# "dry_run" for would_restart / would_stop.
WITHDRAWN = "withdrawn"


class MetricsSink(Protocol):
    def observe_snapshot(self, config: Config, snapshot: Snapshot) -> None: ...
    def observe_readings(self, read: Sequence[Reading]) -> None: ...
    def observe_trends(self, estimates: Iterable[Estimate]) -> None: ...
    def sampling_failed(self) -> None: ...
    def observe_events(self, events: Iterable[Event]) -> None: ...
    def observe_action(self, unit: str, action: str, result: str) -> None: ...
    def flush(self) -> str | None: ...


def enabled(config: MetricsConfig) -> bool:
    """Whether ``[metrics]`` serves or writes anything (both are off by default)."""
    return config.listen_host is not None or config.textfile is not None


class NoMetrics:
    """Metrics off: every observation is dropped, nothing is imported."""

    def observe_snapshot(self, config: Config, snapshot: Snapshot) -> None:
        pass

    def observe_readings(self, read: Sequence[Reading]) -> None:
        pass

    def observe_trends(self, estimates: Iterable[Estimate]) -> None:
        pass

    def sampling_failed(self) -> None:
        pass

    def observe_events(self, events: Iterable[Event]) -> None:
        pass

    def observe_action(self, unit: str, action: str, result: str) -> None:
        pass

    def flush(self) -> str | None:
        return None
