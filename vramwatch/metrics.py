"""Prometheus metrics: each snapshot as gauges, each decision as counters.

The daemon feeds :class:`Metrics` from the loop (``observe_snapshot`` after a
sample, ``observe_events`` with the policy's events, ``observe_action`` with
what systemd answered); :func:`serve` exposes the private registry over HTTP
and :meth:`Metrics.flush` writes it for node_exporter's textfile collector.
Names follow Prometheus conventions: the ``vramwatch_`` prefix, base units
(``_bytes``, ``_seconds``), counters ending in ``_total``. A value vramwatch
cannot know (a GPU in error, a tenant whose VRAM NVML cannot attribute) is an
absent series, never a zero. See docs/observability.md for the full list.
"""

from __future__ import annotations

import ipaddress
import platform
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, generate_latest, make_wsgi_app
from prometheus_client.registry import Collector

from vramwatch import __version__
from vramwatch.config import Config, MetricsConfig
from vramwatch.files import UnsafeWrite, write_atomically
from vramwatch.model import Event, Snapshot
from vramwatch.once import Once
from vramwatch.policy import RAM_KEY, Reading, gpu_key, readings
from vramwatch.sink import WITHDRAWN as WITHDRAWN  # the daemon's name, kept importable here
from vramwatch.trend import Estimate

GPU_LABELS = ("gpu", "uuid", "name")  # gpu: "0", or "0:1" for MIG device 1 of GPU 0
FLOOR_LABELS = ("resource", "gpu")  # gpu is "" for the host RAM floor

# Where a failed read came from: the NVML library/driver as a whole, one GPU,
# host memory (/proc/meminfo), or the sampler itself raising.
SOURCES = ("nvml", "gpu", "host", "engine", "sampler")

# Why an over-budget tenant (or a breach) led to no action; policy.py's
# "skipped" reasons plus rate_limited and no_candidate.
REFUSAL_REASONS = (
    "no_candidate",
    "protected",
    "cooldown",
    "rate_limited",
    "self",
    "held",
    "mps",
)

# node_exporter runs as its own user: the textfile must be readable by others.
TEXTFILE_MODE = 0o644
DRY_RUN = "dry_run"


class Metrics:
    """The registry and the mapping from snapshots and events to series."""

    def __init__(
        self,
        *,
        textfile: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        version: str = __version__,
    ) -> None:
        # A private registry: no process_* or python_gc_* collectors, and tests
        # can build as many as they like.
        self.registry = CollectorRegistry()
        # *_created series (counter creation times) only add noise to a daemon's scrape.
        disable_created = getattr(prometheus_client, "disable_created_metrics", None)
        if disable_created is not None:  # prometheus_client >= 0.17
            disable_created()
        self.textfile = textfile
        self.wall_clock = wall_clock
        self.version = version
        self._textfile_failing = Once()  # said when writing starts or changes failing
        # What the gauges show, replaced whole on each tick and read whole by a
        # scrape (from the HTTP server's thread): a scrape never sees half a tick.
        self._view: _View | None = None
        self._trends: list[Estimate] = []
        self._last_good_s: float | None = None
        self._last_sample_s: float | None = None
        self._breached: dict[tuple[str, str], int] = {("ram", ""): 0}
        self.registry.register(_GaugeCollector(self))
        r = self.registry
        self.sampling_errors = Counter(
            "vramwatch_sampling_errors_total",
            "Samples in which a source could not be read (one per source per failed tick).",
            ("source",),
            registry=r,
        )
        self.breaches = Counter(
            "vramwatch_floor_breaches_total",
            "Breach episodes: the floor stayed breached for its grace.",
            FLOOR_LABELS,
            registry=r,
        )
        self.actions = Counter(
            "vramwatch_actions_total",
            "Actions on tenants by result (systemd job result, Engine API outcome, withdrawn, "
            "dry_run).",
            ("tenant", "action", "result"),
            registry=r,
        )
        self.refusals = Counter(
            "vramwatch_refusals_total",
            "Refusals to act, as logged: once per breach episode and unit "
            "(rate_limited: once per restart_window).",
            ("reason",),
            registry=r,
        )
        # Every known label value from zero, so rate() and increase() see the first one.
        for source in SOURCES:
            self.sampling_errors.labels(source)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        self.breaches.labels("ram", "")

    # snapshots -----------------------------------------------------------

    def observe_snapshot(self, config: Config, snapshot: Snapshot) -> None:
        """Gauges from one sample; failed reads count as sampling errors."""
        now = self.wall_clock()
        self._last_sample_s = now
        if snapshot.nvml_error is not None:
            self.sampling_errors.labels("nvml").inc()
        for gpu in snapshot.gpus:
            if gpu.error is not None:
                self.sampling_errors.labels("gpu").inc()
            key = ("vram", gpu.label)
            if key not in self._breached:
                self._breached[key] = 0
                self.breaches.labels(*key)
        if snapshot.host.error is not None:
            self.sampling_errors.labels("host").inc()
        if snapshot.engine_error is not None:
            self.sampling_errors.labels("engine").inc()  # container tenants unknown
        present = {g.label for g in snapshot.gpus}
        for key in [k for k in self._breached if k[0] == "vram" and k[1] not in present]:
            del self._breached[key]  # the GPU is gone (driver reset, hot unplug)
        clean = (
            snapshot.nvml_error is None
            and snapshot.host.ok
            and all(gpu.ok for gpu in snapshot.gpus)
        )
        if clean:
            self._last_good_s = now
        self._view = _View(config, snapshot)

    def observe_readings(self, read: Sequence[Reading]) -> None:
        """The floors of the last sample as the policy read them (``Decision.readings``):
        the floor gauges show them. A scrape before they come reads them itself."""
        view = self._view
        if view is not None:
            view.readings = {r.key: r for r in read}

    def observe_trends(self, estimates: Iterable[Estimate]) -> None:
        """The leak forecasts (vramwatch.trend) as of the last closed bucket."""
        self._trends = list(estimates)

    def sampling_failed(self) -> None:
        """The sampler raised: nothing was read this tick."""
        self.sampling_errors.labels("sampler").inc()
        self._last_sample_s = self.wall_clock()

    def collect_gauges(self) -> Iterator[Metric]:
        """The gauge families, built from the last snapshot at scrape time."""
        info = GaugeMetricFamily(
            "vramwatch_build_info",
            "Always 1; the labels say which vramwatch runs.",
            labels=("version", "python"),
        )
        info.add_metric((self.version, platform.python_version()), 1)
        yield info
        yield _scalar(
            "vramwatch_last_good_sample_timestamp_seconds",
            "Unix time of the last sample in which NVML, every GPU and host memory read cleanly.",
            self._last_good_s,
        )
        yield _scalar(
            "vramwatch_last_sample_timestamp_seconds",
            "Unix time of the last sample taken, clean or not.",
            self._last_sample_s,
        )
        breached = GaugeMetricFamily(
            "vramwatch_floor_breached",
            "1 while a floor has stayed breached for at least its grace, else 0.",
            labels=FLOOR_LABELS,
        )
        for labels, value in sorted(dict(self._breached).items()):
            breached.add_metric(labels, value)
        yield breached
        view = self._view
        if view is not None:
            yield from view.families()
        growth = GaugeMetricFamily(
            "vramwatch_tenant_growth_bytes_per_second",
            "Steady growth of the tenant's usage, from the troughs over [trend] window "
            "(0: not growing).",
            labels=("tenant", "resource"),
        )
        eta = GaugeMetricFamily(
            "vramwatch_tenant_seconds_to_budget",
            "At the current growth, seconds until the tenant reaches its budget "
            "(absent when it is not growing or has no budget).",
            labels=("tenant", "resource"),
        )
        for est in self._trends:
            growth.add_metric((est.unit, est.resource), est.rate_bytes_per_s)
            if est.seconds_to_budget is not None:
                eta.add_metric((est.unit, est.resource), est.seconds_to_budget)
        yield growth
        yield eta

    # decisions -----------------------------------------------------------

    def observe_events(self, events: Iterable[Event]) -> None:
        """Counters and the breached gauge from the policy's events."""
        for event in events:
            f = event.fields
            if event.name in ("floor_breached", "floor_recovered"):
                key = (str(f.get("resource", "")), _gpu_label(f))
                if event.name == "floor_recovered":
                    self._breached[key] = 0
                    continue
                if self._breached.get(key, 0) == 0:
                    self.breaches.labels(*key).inc()  # a new episode, not a reminder
                self._breached[key] = 1
            elif event.name == "skipped":
                self.refusals.labels(str(f.get("reason", ""))).inc()
            elif event.name in ("rate_limited", "no_candidate"):
                self.refusals.labels(event.name).inc()
            elif event.name in ("would_restart", "would_stop"):
                self.actions.labels(str(f.get("unit")), str(f.get("action")), DRY_RUN).inc()

    def observe_action(self, unit: str, action: str, result: str) -> None:
        """One real action: systemd's job result, or WITHDRAWN by the last re-check."""
        self.actions.labels(unit, action, result).inc()

    # outputs -------------------------------------------------------------

    def flush(self) -> str | None:
        """Write the textfile, safely (:func:`vramwatch.files.write_atomically`).

        Returns a message the first time writing fails (or fails differently),
        so the caller logs a failure once, not every tick. A collector
        directory others can write is refused: no textfile while it stays so.
        """
        if self.textfile is None:
            return None
        try:
            write_atomically(self.textfile, generate_latest(self.registry), TEXTFILE_MODE)
        except UnsafeWrite as exc:
            message = f"cannot write metrics to {self.textfile}: {exc}"
            return message if self._textfile_failing.failed(message) else None
        self._textfile_failing.worked()  # silently: the next failure is news again
        return None


def start_exporter(metrics: Metrics, config: MetricsConfig) -> str | None:
    """Serve ``/metrics`` on ``[metrics] listen`` from a daemon thread, if configured.

    Returns the problem when the address cannot be bound (in use, not local).
    Changes to ``listen`` take effect when vramwatch restarts, not on SIGHUP.
    """
    if config.listen_host is None or config.listen_port is None:
        return None
    try:
        family, host = _address(config.listen_host, config.listen_port)

        class Server(_Server):
            address_family = family

        server = make_server(
            host, config.listen_port, make_wsgi_app(metrics.registry), Server, _QuietHandler
        )
    except OSError as exc:
        return f"cannot serve metrics on {config.listen}: {exc.strerror or exc}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return None


# prometheus_client's start_http_server, from the parts it offers (make_wsgi_app, its
# thread-per-scrape server), minus two name lookups: getaddrinfo() for the address
# family and, in HTTPServer.server_bind, socket.getfqdn() of the address. glibc keeps
# 0.4 MiB of resolver state resident after them (docs/benchmarks.md); an IP literal,
# what [metrics] listen usually is, needs neither.


def _address(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The family to bind ``host`` with, and the address: a name is resolved as
    prometheus_client resolves it (the first answer of getaddrinfo)."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _type, _proto, _name, sockaddr = infos[0]
        return family, str(sockaddr[0])
    return (socket.AF_INET6 if version == 6 else socket.AF_INET), host


class _Server(ThreadingWSGIServer):
    def server_bind(self) -> None:
        """WSGIServer's, with the address as SERVER_NAME instead of a reverse lookup of it."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per scrape (prometheus_client's handler is quiet too)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


def _gpu_label(fields: Mapping[str, Any]) -> str:
    """GpuSample.label from an event's fields: "0", "0:1" for MIG 1 on GPU 0, "" for RAM."""
    gpu = fields.get("gpu")
    if gpu is None:
        return ""
    return f"{gpu}:{fields['mig']}" if fields.get("mig") is not None else str(gpu)


def _scalar(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=())
    if value is not None:
        family.add_metric((), value)
    return family


class _View:
    """The gauges of one snapshot; unknown values are left out, never zero."""

    def __init__(self, config: Config, snapshot: Snapshot) -> None:
        self.config = config
        self.snapshot = snapshot
        self.readings: dict[str, Reading] | None = None  # the decision's, once it is made

    def families(self) -> Iterator[GaugeMetricFamily]:
        config, snap = self.config, self.snapshot
        floors = self.readings
        if floors is None:  # scraped before the decision (or the policy failed)
            floors = {r.key: r for r in readings(config, snap)}

        def family(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        yield _scalar(
            "vramwatch_dry_run",
            "1 when vramwatch only logs what it would do.",
            1 if config.daemon.dry_run else 0,
        )
        up = family("vramwatch_gpu_up", "1 when the last sample read this GPU cleanly.", GPU_LABELS)
        lost = family(
            "vramwatch_gpu_lost",
            "1 while NVML says this GPU is lost (GPU_IS_LOST, RESET_REQUIRED): no enforcement.",
            GPU_LABELS,
        )
        total = family("vramwatch_gpu_memory_total_bytes", "GPU memory size (NVML).", GPU_LABELS)
        used = family("vramwatch_gpu_memory_used_bytes", "GPU memory in use (NVML).", GPU_LABELS)
        free = family(
            "vramwatch_gpu_memory_free_bytes",
            "Free GPU memory, compared with the floor.",
            GPU_LABELS,
        )
        floor = family(
            "vramwatch_gpu_memory_floor_bytes",
            "The effective floor of this GPU: [gpu] min_free_vram plus the unused budgets "
            "of reserving tenants; free below it for grace, vramwatch acts.",
            GPU_LABELS,
        )
        reserved = family(
            "vramwatch_gpu_memory_reserved_bytes",
            "The part of the floor reserved for idle budgets (tenants with reserve = true).",
            GPU_LABELS,
        )
        rest = family(
            "vramwatch_gpu_memory_unattributed_bytes",
            "Used GPU memory that no listed process accounts for (used minus their sum).",
            GPU_LABELS,
        )
        for gpu in snap.gpus:
            labels = (gpu.label, gpu.uuid, gpu.name)
            ok = gpu.ok and snap.nvml_error is None
            up.add_metric(labels, 1 if ok else 0)
            lost.add_metric(labels, 1 if gpu.lost else 0)
            if not ok:
                continue  # a failed or partial read says nothing reliable
            assert gpu.total_bytes is not None and gpu.free_bytes is not None
            total.add_metric(labels, gpu.total_bytes)
            free.add_metric(labels, gpu.free_bytes)
            reading = floors.get(gpu_key(gpu.uuid))
            if reading is not None:  # the GPU read cleanly: the policy read its floor
                floor.add_metric(labels, reading.floor_bytes)
                reserved.add_metric(labels, reading.reserved_bytes)
            if gpu.used_bytes is not None and gpu.unattributed_bytes is not None:
                used.add_metric(labels, gpu.used_bytes)
                rest.add_metric(labels, gpu.unattributed_bytes)
        yield from (up, lost, total, used, free, floor, reserved, rest)

        host = snap.host
        available = host.mem_available_bytes if host.ok else None
        host_total = host.mem_total_bytes if host.ok else None
        host_floor = floors.get(RAM_KEY)
        yield _scalar(
            "vramwatch_host_memory_available_bytes", "MemAvailable (/proc/meminfo).", available
        )
        yield _scalar("vramwatch_host_memory_total_bytes", "MemTotal (/proc/meminfo).", host_total)
        yield _scalar(
            "vramwatch_host_memory_floor_bytes",
            "[host] min_available_ram: MemAvailable below it for grace, vramwatch acts.",
            None if host_floor is None else host_floor.floor_bytes,
        )

        vram = family(
            "vramwatch_tenant_vram_used_bytes",
            "VRAM held by the tenant (unit, container or compose service), all GPUs.",
            ("tenant",),
        )
        vram_budget = family(
            "vramwatch_tenant_vram_budget_bytes", "The tenant's VRAM budget.", ("tenant",)
        )
        ram = family(
            "vramwatch_tenant_ram_used_bytes",
            "RAM of the tenant: anonymous + shmem (cgroup memory.stat, "
            "or its processes' RssAnon + RssShmem).",
            ("tenant",),
        )
        ram_budget = family(
            "vramwatch_tenant_ram_budget_bytes", "The tenant's RAM budget.", ("tenant",)
        )
        protected = family(
            "vramwatch_tenant_protected", "1 for a protected tenant: never acted on.", ("tenant",)
        )
        for tenant in config.tenants:
            label = (tenant.unit,)
            usage = snap.units.get(tenant.unit)
            if usage is not None and usage.vram_bytes is not None:
                vram.add_metric(label, usage.vram_bytes)
            if usage is not None and usage.ram_bytes is not None:
                ram.add_metric(label, usage.ram_bytes)
            if tenant.vram_bytes is not None:
                vram_budget.add_metric(label, tenant.vram_bytes)
            if tenant.ram_bytes is not None:
                ram_budget.add_metric(label, tenant.ram_bytes)
            protected.add_metric(label, 1 if tenant.protected else 0)
        yield from (vram, vram_budget, ram, ram_budget, protected)


class _GaugeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self.metrics.collect_gauges())
