"""Never the wrong unit: a GPU process that moved to another unit since its owner
was last read is counted where it is now before anything is acted on.

Between ticks the sampler remembers who owns a GPU process (IDENTITY_TTL_NS),
which is what keeps a tick cheap. The sample taken right before an action (the
re-check) reads every owner again. Real processes in real cgroup v2 units, the
real sampler and daemon, NVML through nvidia-ml-py over the fake driver.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.fakenvml import FakeGpu, FakeNvmlState, FakeProcess, gib
from tests.sources.cgroups import Units
from vramwatch import config as cfg
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import JobOutcome, Snapshot, Verb
from vramwatch.sampler import IDENTITY_TTL_NS, Sampler
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
S = 10**9

CONFIG = """
[daemon]
interval = "2s"
dry_run = false

[gpu]
min_free_vram = "4GiB"
grace = "2s"

[[tenant]]
unit = "a.service"
vram = "1GiB"

[[tenant]]
unit = "b.service"
vram = "12GiB"
"""


def hog_gpu(pid: int) -> list[FakeGpu]:
    """16 GiB, 10 GiB of it held by ``pid``: 1 GiB free, under the 4 GiB floor."""
    return [FakeGpu(UUID, gib(16), base_used_bytes=gib(5), processes=(FakeProcess(pid, gib(10)),))]


def vram(snapshot: Snapshot) -> tuple[int | None, int | None]:
    """What each tenant is charged: (a.service, b.service)."""
    return snapshot.units["a.service"].vram_bytes, snapshot.units["b.service"].vram_bytes


def test_a_moved_gpu_process_is_remembered_between_ticks_and_read_again_on_recheck(
    units: Units, fake_nvml: FakeNvmlState
) -> None:
    pid = units.spawn()
    units.place("a.service", pid)
    time.sleep(0.05)  # older than the NVML list by more than one clock tick
    fake_nvml.write(hog_gpu(pid))
    config = cfg.parse(CONFIG, "<test>")
    sampler = Sampler(NvmlSource(), ProcFs(layout=units.layout))
    try:
        before = sampler.sample(config, 0)
        units.place("b.service", pid)  # moved, as `systemctl` or a runtime can
        tick = sampler.sample(config, 2 * S)
        recheck = sampler.sample(config, 3 * S, recheck=True)
        after = sampler.sample(config, 4 * S)
    finally:
        sampler.close()

    assert 2 * S < IDENTITY_TTL_NS
    assert (gib(10), 0) == vram(before)
    assert (gib(10), 0) == vram(tick)  # remembered: the cheap tick
    assert (0, gib(10)) == vram(recheck)  # read again before acting
    assert (0, gib(10)) == vram(after)  # and remembered from then on


class Recorder:
    """An actuator that records what it was asked to do, and does it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Verb]] = []

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        self.calls.append((unit, verb))
        return JobOutcome(True, "done", "job done", accepted=True)


def test_the_daemon_does_not_restart_the_unit_a_hog_has_left(
    units: Units, fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """a.service's 10 GiB process moves into b.service (within its 12 GiB) during the
    grace period: restarting a.service would free nothing and hit the wrong unit."""
    pid = units.spawn()
    units.place("a.service", pid)
    units.place("b.service", units.spawn())
    time.sleep(0.05)
    fake_nvml.write(hog_gpu(pid))
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG)
    now = [0]
    out = io.StringIO()
    actuator = Recorder()
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            Sampler(NvmlSource(), ProcFs(layout=units.layout)),
            actuator,
            EventLog("stderr", "json", stream=out),
            clock=lambda: now[0],
            notify=lambda _state: False,
        ),
    )
    try:
        daemon.tick()  # breached (1 GiB free < 4 GiB), grace starts; owner a.service read
        units.place("b.service", pid)
        now[0] = 2 * S
        daemon.tick()  # grace is over: the tick's own sample still says a.service
    finally:
        daemon.sampler.close()

    events = [json.loads(line) for line in out.getvalue().splitlines()]
    cancelled = [e for e in events if e["event"] == "action_cancelled"]
    assert [] == actuator.calls
    assert ["a.service"] == [e["tenant"] for e in cancelled]
