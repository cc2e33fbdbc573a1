"""The Prometheus exporter, end to end: `vramwatch run` on the test bed with
[metrics] listen on a free loopback port and a node_exporter textfile; a
restart happens, then the test scrapes http://127.0.0.1:PORT/metrics and reads
the textfile, and compares them with the fake GPU's state and the actions."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import T4_UUID, Bed
from tests.fakenvml import mib

GPU0 = {"gpu": "0", "uuid": T4_UUID}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name}{labels} is ambiguous"
    return found[0] if found else None


def scrape(port: int) -> Samples:
    # Loopback only: the exporter is the daemon on this host.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
        return parse(response.read().decode())


def until(read: Callable[[], Samples], ok: Callable[[Samples], bool], timeout: float) -> Samples:
    """Read until ``ok`` (a tick may land between the event and the next scrape)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = read()
        if ok(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def config(port: int, textfile: Path) -> str:
    return f"""
[daemon]
interval = "1s"
bus = "user"
cooldown = "1m"
reclaim_timeout = "20s"

[gpu]
min_free_vram = "2GiB"
grace = "1s"

[host]
min_available_ram = "1MiB"

[metrics]
listen = "127.0.0.1:{port}"
textfile = "{textfile}"

[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
ram = "2GiB"

[[tenant]]
unit = "llama.service"
vram = "5000MiB"
protected = true
"""


def test_scraped_gauges_match_the_fake_gpu_and_counters_count_the_restart(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    bed.tenant("immich-ml.service", vram_mib=11000)
    bed.tenant("llama.service", vram_mib=2500)
    collector = bed.dir / "textfile_collector"
    collector.mkdir()
    os.chown(collector, bed.sb.uid, bed.sb.gid)
    textfile = collector / "vramwatch.prom"
    port = free_loopback_port()
    daemon = bed.run_daemon(bed.config(config(port, textfile)))

    daemon.wait_event("restart", timeout=6)
    daemon.wait_event("floor_recovered", timeout=8)
    restarted = {"tenant": "immich-ml.service", "action": "restart", "result": "done"}
    after = until(
        lambda: scrape(port),
        lambda s: (
            get(s, "vramwatch_floor_breached", resource="vram", gpu="0") == 0
            and get(s, "vramwatch_gpu_memory_free_bytes", **GPU0) == mib(15360 - 2500)
        ),
        timeout=5,
    )
    from_file = until(
        lambda: parse(textfile.read_text()),
        lambda s: get(s, "vramwatch_floor_breached", resource="vram", gpu="0") == 0,
        timeout=5,
    )
    now = time.time()

    assert {
        "total": mib(15360),
        "used": mib(2500),  # the hog's memory is gone with its old process
        "free": mib(15360 - 2500),
        "floor": mib(2048),
        "up": 1,
    } == {
        "total": get(after, "vramwatch_gpu_memory_total_bytes", **GPU0),
        "used": get(after, "vramwatch_gpu_memory_used_bytes", **GPU0),
        "free": get(after, "vramwatch_gpu_memory_free_bytes", **GPU0),
        "floor": get(after, "vramwatch_gpu_memory_floor_bytes", **GPU0),
        "up": get(after, "vramwatch_gpu_up", **GPU0),
    }
    assert {
        ("immich-ml.service", "vram_used"): 0,
        ("immich-ml.service", "vram_budget"): mib(3000),
        ("immich-ml.service", "ram_budget"): mib(2048),
        ("llama.service", "vram_used"): mib(2500),
        ("llama.service", "vram_budget"): mib(5000),
        ("llama.service", "ram_budget"): None,
    } == {
        (unit, what): get(after, f"vramwatch_tenant_{what}_bytes", tenant=unit)
        for unit in ("immich-ml.service", "llama.service")
        for what in ("vram_used", "vram_budget", "ram_budget")
    }
    assert (get(after, "vramwatch_tenant_ram_used_bytes", tenant="llama.service") or 0) > mib(1)
    assert 1 == get(after, "vramwatch_actions_total", **restarted)
    assert 1 == len([k for k in after if k[0] == "vramwatch_actions_total"])
    assert (1, 0) == (
        get(after, "vramwatch_floor_breaches_total", resource="vram", gpu="0"),
        get(after, "vramwatch_floor_breached", resource="vram", gpu="0"),
    )
    assert 0 == sum(v for (n, _), v in after.items() if n == "vramwatch_sampling_errors_total")
    assert mib(1) == get(after, "vramwatch_host_memory_floor_bytes")
    last_good = get(after, "vramwatch_last_good_sample_timestamp_seconds")
    assert last_good is not None and now - 5 < last_good <= now
    assert 1 == get(after, "vramwatch_build_info")
    # The node_exporter textfile says the same.
    assert 1 == get(from_file, "vramwatch_actions_total", **restarted)
    assert mib(15360) == get(from_file, "vramwatch_gpu_memory_total_bytes", **GPU0)
    assert [textfile.name] == sorted(p.name for p in collector.iterdir())  # no temporaries
    assert [] == daemon.named("metrics_error")


def test_a_taken_port_is_logged_and_the_daemon_still_guards(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    bed.tenant("immich-ml.service", vram_mib=14000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        textfile = bed.dir / "absent-dir" / "vramwatch.prom"
        daemon = bed.run_daemon(bed.config(config(port, textfile)))

        bind_error = daemon.wait_event("metrics_error", timeout=5)
        daemon.wait_event("restart", timeout=6, unit="immich-ml.service")

    textfile_errors = [e for e in daemon.named("metrics_error") if "cannot write" in e["message"]]
    assert (
        f"cannot serve metrics on 127.0.0.1:{port}: Address already in use",
        "error",
    ) == (bind_error["message"], bind_error["level"])
    assert 1 == len(textfile_errors), "a failing textfile is logged once, not every tick"
    assert textfile_errors[0]["message"].endswith("No such file or directory")
