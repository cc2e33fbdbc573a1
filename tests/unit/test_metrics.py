"""metrics.py: literal snapshots and events -> Prometheus series, and the outputs.

Values are read back from the private registry (and, for the outputs, from the
exposition text a scrape or node_exporter would read), never from internals.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import stat
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vramwatch import __version__
from vramwatch import config as cfg
from vramwatch.config import MetricsConfig
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.metrics import Metrics, start_exporter
from vramwatch.model import (
    Event,
    GpuProcess,
    GpuSample,
    HostSample,
    JobOutcome,
    Owner,
    Snapshot,
    UnitUsage,
    Verb,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
S = 10**9
UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
GPU0 = {"gpu": "0", "uuid": UUID, "name": "Tesla T4"}
WALL = 1_700_000_000.0

CONFIG = cfg.parse(
    """
[daemon]
interval = "1s"
[gpu]
min_free_vram = "2GiB"
grace = "2s"
[host]
min_available_ram = "10%"
[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
ram = "6GiB"
[[tenant]]
unit = "llama.service"
vram = "5000MiB"
protected = true
"""
)


def gpu(free_mib: int = 4000, *, hog_mib: int = 10700, error: str | None = None) -> GpuSample:
    owner = Owner("/system.slice/immich-ml.service", "immich-ml.service", "system")
    if error is not None:
        return GpuSample(0, UUID, "Tesla T4", 15360 * MIB, None, None, (), error)
    return GpuSample(
        0,
        UUID,
        "Tesla T4",
        15360 * MIB,
        (15360 - free_mib) * MIB,
        free_mib * MIB,
        (GpuProcess(100, hog_mib * MIB, "compute", "python3", owner),),
    )


def snap(
    gpus: tuple[GpuSample, ...] | None = None,
    *,
    nvml_error: str | None = None,
    host: HostSample | None = None,
    hog_vram_mib: int | None = 10700,
) -> Snapshot:
    units = {
        "immich-ml.service": UnitUsage(
            "immich-ml.service",
            None if hog_vram_mib is None else hog_vram_mib * MIB,
            {UUID: (hog_vram_mib or 0) * MIB},
            700 * MIB,
            (100,),
        ),
        "llama.service": UnitUsage("llama.service", 0, {}, 50 * MIB, (200,)),
    }
    return Snapshot(
        now_ns=5 * S,
        gpus=(gpu(),) if gpus is None else gpus,
        host=host or HostSample(64 * GIB, 20 * GIB),
        units=units,
        nvml_error=nvml_error,
    )


def metrics(clock: Callable[[], float] = lambda: WALL, **kw: str) -> Metrics:
    return Metrics(wall_clock=clock, **kw)


def value(m: Metrics, metric: str, /, **labels: str) -> float | None:
    return m.registry.get_sample_value(metric, labels)


def series(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric, keyed by its sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in m.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_a_clean_snapshot_becomes_gpu_host_and_tenant_gauges() -> None:
    m = metrics()

    m.observe_snapshot(CONFIG, snap())

    assert {
        "vramwatch_gpu_up": 1,
        "vramwatch_gpu_memory_total_bytes": 15360 * MIB,
        "vramwatch_gpu_memory_used_bytes": (15360 - 4000) * MIB,
        "vramwatch_gpu_memory_free_bytes": 4000 * MIB,
        "vramwatch_gpu_memory_floor_bytes": 2 * GIB,
        "vramwatch_gpu_memory_unattributed_bytes": (15360 - 4000 - 10700) * MIB,
    } == {
        name: value(m, name, **GPU0)
        for name in (
            "vramwatch_gpu_up",
            "vramwatch_gpu_memory_total_bytes",
            "vramwatch_gpu_memory_used_bytes",
            "vramwatch_gpu_memory_free_bytes",
            "vramwatch_gpu_memory_floor_bytes",
            "vramwatch_gpu_memory_unattributed_bytes",
        )
    }
    assert (20 * GIB, 64 * GIB, int(64 * GIB * 0.1)) == (
        value(m, "vramwatch_host_memory_available_bytes"),
        value(m, "vramwatch_host_memory_total_bytes"),
        value(m, "vramwatch_host_memory_floor_bytes"),
    )
    assert {
        (("tenant", "immich-ml.service"),): 10700 * MIB,
        (("tenant", "llama.service"),): 0,
    } == series(m, "vramwatch_tenant_vram_used_bytes")
    assert {
        (("tenant", "immich-ml.service"),): 3000 * MIB,
        (("tenant", "llama.service"),): 5000 * MIB,
    } == series(m, "vramwatch_tenant_vram_budget_bytes")
    assert {
        (("tenant", "immich-ml.service"),): 700 * MIB,
        (("tenant", "llama.service"),): 50 * MIB,
    } == series(m, "vramwatch_tenant_ram_used_bytes")
    # llama.service has no RAM budget: no series, not a zero budget.
    assert {(("tenant", "immich-ml.service"),): 6 * GIB} == series(
        m, "vramwatch_tenant_ram_budget_bytes"
    )
    assert {
        (("tenant", "immich-ml.service"),): 0,
        (("tenant", "llama.service"),): 1,
    } == series(m, "vramwatch_tenant_protected")
    assert (WALL, WALL, 0) == (
        value(m, "vramwatch_last_good_sample_timestamp_seconds"),
        value(m, "vramwatch_last_sample_timestamp_seconds"),
        value(m, "vramwatch_dry_run"),
    )


def test_build_info_names_the_version() -> None:
    m = metrics()

    [labels] = series(m, "vramwatch_build_info")

    assert __version__ == dict(labels)["version"]
    assert 1 == series(m, "vramwatch_build_info")[labels]


def test_a_gpu_in_error_has_no_memory_series_only_up_0_and_counts_errors() -> None:
    now = [WALL]
    m = metrics(lambda: now[0])
    m.observe_snapshot(CONFIG, snap())

    now[0] = WALL + 10
    m.observe_snapshot(CONFIG, snap((gpu(error="GPU_IS_LOST"),), hog_vram_mib=None))
    now[0] = WALL + 20
    m.observe_snapshot(CONFIG, snap((gpu(error="GPU_IS_LOST"),), hog_vram_mib=None))

    assert 0 == value(m, "vramwatch_gpu_up", **GPU0)
    assert {} == series(m, "vramwatch_gpu_memory_free_bytes")
    assert {} == series(m, "vramwatch_gpu_memory_total_bytes")
    assert 2 == value(m, "vramwatch_sampling_errors_total", source="gpu")
    assert 0 == value(m, "vramwatch_sampling_errors_total", source="nvml")
    assert (WALL, WALL + 20) == (
        value(m, "vramwatch_last_good_sample_timestamp_seconds"),
        value(m, "vramwatch_last_sample_timestamp_seconds"),
    )
    # NVML cannot attribute: the tenant's VRAM is unknown, so absent, not zero.
    assert {(("tenant", "llama.service"),): 0} == series(m, "vramwatch_tenant_vram_used_bytes")


def test_a_lost_gpu_is_gpu_lost_1_and_a_healthy_or_failing_one_0() -> None:
    m = metrics()
    m.observe_snapshot(CONFIG, snap())
    healthy = value(m, "vramwatch_gpu_lost", **GPU0)
    m.observe_snapshot(CONFIG, snap((gpu(error="TIMEOUT: Timeout"),), hog_vram_mib=None))
    failing = value(m, "vramwatch_gpu_lost", **GPU0)
    lost = dataclasses.replace(gpu(error="GPU_IS_LOST: GPU is lost"), lost=True)
    m.observe_snapshot(CONFIG, snap((lost,), hog_vram_mib=None))

    assert (0, 0, 1) == (healthy, failing, value(m, "vramwatch_gpu_lost", **GPU0))
    assert 0 == value(m, "vramwatch_gpu_up", **GPU0)


MIG0 = "MIG-a1000000-0000-0000-0000-000000000000"
MIG1 = "MIG-a1000000-0000-0000-0000-000000000001"


def test_mig_devices_carry_their_mig_uuid_and_a_gpu_label_of_their_own() -> None:
    base = dataclasses.replace(gpu(), parent_uuid=UUID, mig_index=0)
    migs = (
        dataclasses.replace(base, uuid=MIG0, name="MIG 2g.20gb"),
        dataclasses.replace(base, uuid=MIG1, name="MIG 3g.40gb", mig_index=1),
    )
    m = metrics()
    m.observe_snapshot(CONFIG, snap(migs))
    m.observe_events(
        [Event("floor_breached", "warning", "", {"resource": "vram", "gpu": 0, "mig": 1})]
    )

    assert {
        (("gpu", "0:0"), ("name", "MIG 2g.20gb"), ("uuid", MIG0)): 1,
        (("gpu", "0:1"), ("name", "MIG 3g.40gb"), ("uuid", MIG1)): 1,
    } == series(m, "vramwatch_gpu_up")
    assert {
        (("gpu", ""), ("resource", "ram")): 0,
        (("gpu", "0:0"), ("resource", "vram")): 0,
        (("gpu", "0:1"), ("resource", "vram")): 1,
    } == series(m, "vramwatch_floor_breached")


def test_no_driver_counts_nvml_errors_and_host_gauges_stay() -> None:
    m = metrics()

    m.observe_snapshot(CONFIG, snap((), nvml_error="NVIDIA driver not loaded (nvidia.ko)"))

    assert 1 == value(m, "vramwatch_sampling_errors_total", source="nvml")
    assert {} == series(m, "vramwatch_gpu_up")
    assert 20 * GIB == value(m, "vramwatch_host_memory_available_bytes")
    assert None is value(m, "vramwatch_last_good_sample_timestamp_seconds")


def test_unreadable_host_memory_is_absent_and_counted() -> None:
    m = metrics()

    m.observe_snapshot(CONFIG, snap(host=HostSample(None, None, error="/proc/meminfo: EACCES")))

    assert 1 == value(m, "vramwatch_sampling_errors_total", source="host")
    assert None is value(m, "vramwatch_host_memory_available_bytes")
    assert None is value(m, "vramwatch_host_memory_floor_bytes")


def test_an_unreachable_engine_api_counts_as_an_engine_error_not_a_bad_sample() -> None:
    m = metrics()

    m.observe_snapshot(CONFIG, dataclasses.replace(snap(), engine_error="dockerd is down"))

    assert 1 == value(m, "vramwatch_sampling_errors_total", source="engine")
    assert WALL == value(m, "vramwatch_last_good_sample_timestamp_seconds")


def test_a_sampler_exception_counts_as_a_sampler_error() -> None:
    m = metrics()

    m.sampling_failed()

    assert 1 == value(m, "vramwatch_sampling_errors_total", source="sampler")
    assert WALL == value(m, "vramwatch_last_sample_timestamp_seconds")


def test_every_sampling_source_and_refusal_reason_starts_at_zero() -> None:
    m = metrics()

    assert {(("source", s),): 0 for s in ("nvml", "gpu", "host", "engine", "sampler")} == series(
        m, "vramwatch_sampling_errors_total"
    )
    assert {
        (("reason", r),): 0
        for r in ("no_candidate", "protected", "cooldown", "rate_limited", "self", "held", "mps")
    } == series(m, "vramwatch_refusals_total")


def breach(**fields: object) -> Event:
    return Event(
        "floor_breached", "warning", "GPU 0 free ...", {"resource": "vram", "gpu": 0, **fields}
    )


def test_a_breach_episode_counts_once_despite_reminders_and_the_gauge_follows() -> None:
    m = metrics()
    m.observe_snapshot(CONFIG, snap())
    before = value(m, "vramwatch_floor_breached", resource="vram", gpu="0")

    m.observe_events([breach()])
    during = value(m, "vramwatch_floor_breached", resource="vram", gpu="0")
    m.observe_events([breach()])  # the 5-minute reminder
    m.observe_events([Event("floor_recovered", "info", "", {"resource": "vram", "gpu": 0})])
    after = value(m, "vramwatch_floor_breached", resource="vram", gpu="0")
    m.observe_events([breach()])  # a second episode

    assert (0, 1, 0) == (before, during, after)
    assert 2 == value(m, "vramwatch_floor_breaches_total", resource="vram", gpu="0")
    assert 0 == value(m, "vramwatch_floor_breaches_total", resource="ram", gpu="")
    assert 0 == value(m, "vramwatch_floor_breached", resource="ram", gpu="")


def test_host_breach_uses_an_empty_gpu_label() -> None:
    m = metrics()

    m.observe_events([Event("floor_breached", "warning", "", {"resource": "ram"})])

    assert 1 == value(m, "vramwatch_floor_breached", resource="ram", gpu="")
    assert 1 == value(m, "vramwatch_floor_breaches_total", resource="ram", gpu="")


def test_refusals_are_counted_by_reason() -> None:
    m = metrics()

    m.observe_events(
        [
            Event("skipped", "warning", "", {"reason": "protected", "unit": "llama.service"}),
            Event("skipped", "info", "", {"reason": "cooldown", "unit": "a.service"}),
            Event("skipped", "info", "", {"reason": "cooldown", "unit": "b.service"}),
            Event("skipped", "warning", "", {"reason": "self", "unit": "vramwatch.service"}),
            Event("skipped", "info", "", {"reason": "held", "unit": "b.service"}),
            Event("rate_limited", "error", "", {"unit": "a.service"}),
            Event("no_candidate", "warning", "", {"resource": "vram"}),
            Event("reclaimed", "info", "", {"unit": "a.service"}),
        ]
    )

    assert {
        (("reason", "no_candidate"),): 1,
        (("reason", "protected"),): 1,
        (("reason", "cooldown"),): 2,
        (("reason", "rate_limited"),): 1,
        (("reason", "self"),): 1,
        (("reason", "held"),): 1,
        (("reason", "mps"),): 0,
    } == series(m, "vramwatch_refusals_total")


def test_actions_by_tenant_action_and_result() -> None:
    m = metrics()

    m.observe_action("immich-ml.service", "restart", "done")
    m.observe_action("immich-ml.service", "restart", "done")
    m.observe_action("whisper.service", "stop", "failed")
    m.observe_action("immich-ml.service", "restart", "withdrawn")
    m.observe_events(
        [Event("would_restart", "warning", "", {"unit": "x.service", "action": "restart"})]
    )

    assert {
        (("action", "restart"), ("result", "done"), ("tenant", "immich-ml.service")): 2,
        (("action", "stop"), ("result", "failed"), ("tenant", "whisper.service")): 1,
        (("action", "restart"), ("result", "withdrawn"), ("tenant", "immich-ml.service")): 1,
        (("action", "restart"), ("result", "dry_run"), ("tenant", "x.service")): 1,
    } == series(m, "vramwatch_actions_total")


def test_a_tenant_dropped_by_a_reload_and_a_gone_gpu_leave_no_series() -> None:
    m = metrics()
    m.observe_snapshot(CONFIG, snap())
    smaller = cfg.parse('[[tenant]]\nunit = "llama.service"\nvram = "5000MiB"\n')

    m.observe_snapshot(smaller, snap(()))

    assert {(("tenant", "llama.service"),): 0} == series(m, "vramwatch_tenant_vram_used_bytes")
    assert {} == series(m, "vramwatch_gpu_memory_free_bytes")
    assert {(("gpu", ""), ("resource", "ram")): 0} == series(m, "vramwatch_floor_breached")


def test_textfile_is_written_whole_and_readable_by_node_exporter(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.prom"
    m = metrics(textfile=str(path))
    m.observe_snapshot(CONFIG, snap())

    problem = m.flush()

    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert None is problem
    assert [4000 * MIB] == [s.value for s in families["vramwatch_gpu_memory_free_bytes"].samples]
    assert ["vramwatch.prom"] == [p.name for p in tmp_path.iterdir()]  # no temporary left
    assert "counter" == families["vramwatch_actions"].type
    assert not any(name.endswith("_created") for name in families)


def test_an_unwritable_textfile_is_reported_once_then_again_after_recovery(tmp_path: Path) -> None:
    directory = tmp_path / "textfile_collector"
    m = metrics(textfile=str(directory / "vramwatch.prom"))

    first, second = m.flush(), m.flush()
    directory.mkdir()
    recovered = m.flush()
    directory.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        again = m.flush() if not _root() else "skipped"
    finally:
        directory.chmod(0o755)

    assert (
        f"cannot write metrics to {directory}/vramwatch.prom: No such file or directory"
    ) == first
    assert (None, None) == (second, recovered)
    if again != "skipped":
        assert again is not None and again.endswith("Permission denied")


def test_a_textfile_failing_another_way_is_reported_again_and_after_a_write_anew(
    tmp_path: Path,
) -> None:
    """metrics_error is said when the failure starts or its text changes; a write that
    works ends it silently, so the same failure after it is news."""
    directory = tmp_path / "textfile_collector"
    m = metrics(textfile=str(directory / "vramwatch.prom"))
    said = [m.flush(), m.flush()]  # no directory
    directory.write_text("")  # a file where the directory should be
    said += [m.flush(), m.flush()]
    directory.unlink()
    directory.mkdir()
    said.append(m.flush())  # works
    (directory / "vramwatch.prom").unlink()
    directory.rmdir()
    directory.write_text("")
    said.append(m.flush())  # a file there again

    prefix = f"cannot write metrics to {directory}/vramwatch.prom: "
    missing, not_dir = prefix + "No such file or directory", prefix + "Not a directory"
    assert [missing, None, not_dir, None, None, not_dir] == said


def _root() -> bool:
    import os

    return os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_exporter_serves_the_registry_on_loopback() -> None:
    m = metrics()
    m.observe_snapshot(CONFIG, snap())
    port = free_port()

    problem = start_exporter(m, MetricsConfig("127.0.0.1", port))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()

    free = [
        (s.labels, s.value)
        for f in text_string_to_metric_families(body)
        for s in f.samples
        if s.name == "vramwatch_gpu_memory_free_bytes"
    ]
    assert None is problem
    assert [(GPU0, 4000 * MIB)] == free


def scrape_free_bytes(url: str) -> list[tuple[dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    return [
        (s.labels, s.value)
        for f in text_string_to_metric_families(body)
        for s in f.samples
        if s.name == "vramwatch_gpu_memory_free_bytes"
    ]


def test_an_ip_address_is_served_without_name_lookups(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """getaddrinfo and getfqdn leave 0.4 MiB of glibc resolver state: not for an IP literal."""
    m = metrics()
    m.observe_snapshot(CONFIG, snap())
    port = free_port()

    def no_lookup(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a name lookup")

    with monkeypatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", no_lookup)
        patch.setattr(socket, "getfqdn", no_lookup)
        problem = start_exporter(m, MetricsConfig("127.0.0.1", port))

    assert None is problem
    assert [(GPU0, 4000 * MIB)] == scrape_free_bytes(f"http://127.0.0.1:{port}/metrics")
    assert "" == capsys.readouterr().err  # no line per scrape


def test_a_host_name_is_resolved_and_served() -> None:
    m = metrics()
    m.observe_snapshot(CONFIG, snap())
    port = free_port()

    problem = start_exporter(m, MetricsConfig("localhost", port))

    assert None is problem
    assert [(GPU0, 4000 * MIB)] == scrape_free_bytes(f"http://localhost:{port}/metrics")


def test_an_ipv6_address_is_served_on_ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = int(s.getsockname()[1])
    except OSError:
        pytest.skip("no IPv6 loopback here")
    m = metrics()
    m.observe_snapshot(CONFIG, snap())

    problem = start_exporter(m, MetricsConfig("::1", port))

    assert None is problem
    assert [(GPU0, 4000 * MIB)] == scrape_free_bytes(f"http://[::1]:{port}/metrics")


def test_an_address_in_use_is_a_problem_not_a_crash() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        problem = start_exporter(metrics(), MetricsConfig("127.0.0.1", port))

    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" == problem


def test_no_listen_address_starts_nothing() -> None:
    assert None is start_exporter(metrics(), MetricsConfig())


# Through the loop: the real policy decides, the metrics count what happened.


class Sampler:
    def __init__(self, hog_mib: int) -> None:
        self.hog_mib = hog_mib

    def sample(self, config: cfg.Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        free = 15360 - self.hog_mib - 200
        return Snapshot(
            now_ns,
            (gpu(free, hog_mib=self.hog_mib),),
            HostSample(64 * GIB, 20 * GIB),
            {
                "immich-ml.service": UnitUsage(
                    "immich-ml.service",
                    self.hog_mib * MIB,
                    {UUID: self.hog_mib * MIB},
                    700 * MIB,
                    (100,),
                )
            },
        )

    def close(self) -> None:
        pass


class Actuator:
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        self.sampler.hog_mib = 500  # the restart frees the memory
        return JobOutcome(True, "done", "")


def test_the_loop_feeds_gauges_breaches_and_the_restart_counter(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(
        '[gpu]\nmin_free_vram = "2GiB"\ngrace = "2s"\n'
        '[[tenant]]\nunit = "immich-ml.service"\nvram = "3000MiB"\n'
    )
    sampler = Sampler(14000)
    clock = [0]
    m = metrics()
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            sampler,
            Actuator(sampler),
            EventLog("stderr", "json", stream=io.StringIO()),
            clock=lambda: clock[0],
            notify=lambda state: False,
            metrics=m,
        ),
    )
    observed = []
    for second in (0, 1, 2, 3, 4):
        clock[0] = second * S
        daemon.tick()
        observed.append(
            (
                value(m, "vramwatch_gpu_memory_free_bytes", **GPU0),
                value(m, "vramwatch_floor_breached", resource="vram", gpu="0"),
            )
        )

    assert [
        (1160 * MIB, 0),
        (1160 * MIB, 0),
        (1160 * MIB, 1),  # grace passed: breached, and the restart
        (14660 * MIB, 0),  # reclaimed and back above the floor
        (14660 * MIB, 0),
    ] == observed
    assert 1 == value(
        m, "vramwatch_actions_total", tenant="immich-ml.service", action="restart", result="done"
    )
    assert 1 == value(m, "vramwatch_floor_breaches_total", resource="vram", gpu="0")


def test_trend_metrics_label_the_tenant_tenant_as_every_tenant_metric_does() -> None:
    """Before: the two trend families said ``unit`` where every other tenant metric says
    ``tenant``, so one PromQL join or dashboard variable could not cover both."""
    from vramwatch.trend import Estimate

    m = metrics()
    m.observe_trends(
        [Estimate("compose:ml/worker", "ram", 1000.0, 4 * GIB, 6 * GIB, 2 * GIB / 1000.0)]
    )

    assert (1000.0, 2 * GIB / 1000.0) == (
        value(
            m,
            "vramwatch_tenant_growth_bytes_per_second",
            tenant="compose:ml/worker",
            resource="ram",
        ),
        value(m, "vramwatch_tenant_seconds_to_budget", tenant="compose:ml/worker", resource="ram"),
    )


def test_the_loop_shows_the_floor_with_its_reserve_as_the_policy_read_it(tmp_path: Path) -> None:
    """The floor gauges come from the decision's readings: an idle reserve is in the floor."""
    path = tmp_path / "vramwatch.toml"
    path.write_text(
        '[gpu]\nmin_free_vram = "2GiB"\n[host]\nmin_available_ram = "4GiB"\n'
        '[[tenant]]\nunit = "immich-ml.service"\nvram = "3000MiB"\nreserve = true\n'
    )
    sampler = Sampler(500)
    m = metrics()
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            sampler,
            Actuator(sampler),
            EventLog("stderr", "json", stream=io.StringIO()),
            metrics=m,
            clock=lambda: 0,
            notify=lambda state: False,
        ),
    )
    daemon.tick()

    assert (2 * GIB + 2500 * MIB, 2500 * MIB, 4 * GIB) == (
        value(m, "vramwatch_gpu_memory_floor_bytes", **GPU0),
        value(m, "vramwatch_gpu_memory_reserved_bytes", **GPU0),
        value(m, "vramwatch_host_memory_floor_bytes"),
    )
