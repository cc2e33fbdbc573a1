"""What `vramwatch run` says about a config it runs all the same (config_warning), at start
and after each reload, and never refuses (issue 22, items 4 and 14): an exit 78 for a config
an earlier release accepted, with RestartPreventExitStatus=78, leaves the host unguarded.

The real loop (Daemon.run) over a scripted sampler: the warnings come from its samples.
"""

from __future__ import annotations

import io
import itertools
import json
import signal
from pathlib import Path

import pytest

from tests.unit.builders import MIB
from tests.unit.test_daemon import RecordingActuator
from vramwatch import config as cfg
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import GpuSample, HostSample, JobOutcome, Snapshot

GPU_MIB = 16384
MINUTE_USEC = 60 * 10**6  # WatchdogSec=1min, as in the packaged unit

RESERVING_UNPINNED = """
[[tenant]]
unit = "llm.service"
vram = "8GiB"
reserve = true
"""

LONG_WAITS = """
[gpu]
nvml_timeout = "50s"
[containers]
stop_timeout = "40s"
[[tenant]]
unit = "llm.service"
vram = "8GiB"
release = ["/usr/bin/true"]
release_timeout = "45s"
[[tenant]]
unit = "img.service"
vram = "2GiB"
release = ["/usr/bin/true"]
[[tenant]]
container = "triton"
vram = "2GiB"
"""


def host_with(gpu_count: int, now_ns: int, hung: bool = False) -> Snapshot:
    gpus = tuple(
        GpuSample(
            i,
            f"GPU-{i}",
            "A100",
            None if hung else GPU_MIB * MIB,
            None if hung else 1000 * MIB,
            None if hung else (GPU_MIB - 1000) * MIB,
            (),
            "NVML_HUNG: not answering" if hung else None,
        )
        for i in range(gpu_count)
    )
    return Snapshot(
        now_ns, gpus, HostSample(64 << 30, 32 << 30), {}, nvml_hung_ns=10**9 if hung else None
    )


class Sampler:
    """Each sample from ``script``; the second one asks for a reload (SIGHUP), the last stops."""

    def __init__(self, script: list[Snapshot]) -> None:
        self.script = script
        self.calls = 0
        self.daemon: Daemon | None = None

    def sample(self, config: cfg.Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        assert self.daemon is not None
        snap = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if self.calls == len(self.script) - 1:
            self.daemon._on_reload(signal.SIGHUP, None)
        if self.calls >= len(self.script):
            self.daemon.stop()
        return snap

    def close(self) -> None:
        pass


def run(tmp_path: Path, text: str, script: list[Snapshot]) -> tuple[int, list[dict[str, object]]]:
    """Start, tick through ``script`` (a reload before the last sample), stop; the events."""
    tmp_path.chmod(0o755)
    path = tmp_path / "vramwatch.toml"
    path.write_text(text)
    path.chmod(0o644)
    out = io.StringIO()
    sampler = Sampler(script)
    ticks = itertools.count()
    daemon = Daemon(
        path,
        cfg.load(path, trusted=True),
        Ports(
            sampler,
            RecordingActuator(JobOutcome(True, "done", "")),
            EventLog("stderr", "json", stream=out),
            clock=lambda: next(ticks) * 10 * 10**9,  # 10 s a look: no real sleeping
            notify=lambda _state: False,
        ),
    )
    sampler.daemon = daemon
    code = daemon.run()
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def said(events: list[dict[str, object]]) -> list[object]:
    """The config_warnings (their key), with the starts and reloads between them."""
    return [
        str(e["warning"]).split(" ")[0] if e["event"] == "config_warning" else e["event"]
        for e in events
        if e["event"] in {"started", "config_reloaded", "config_warning"}
    ]


def test_reserve_without_gpu_on_two_gpus_is_said_at_start_and_after_a_reload(
    tmp_path: Path,
) -> None:
    """Before: run accepted it and reserved nothing on either GPU, without a word; only
    check refused it."""
    code, events = run(tmp_path, RESERVING_UNPINNED, [host_with(2, 0), host_with(2, 10**9)])

    warnings = [e for e in events if e["event"] == "config_warning"]
    assert 0 == code
    assert ["started", "tenant[0].gpu:", "config_reloaded", "tenant[0].gpu:"] == said(events)
    assert (
        f"{tmp_path / 'vramwatch.toml'}: tenant[0].gpu: llm.service reserves VRAM and 2 GPUs "
        "are present: say which one (an index or a GPU-/MIG- UUID); vramwatch check refuses "
        "this, and run cannot keep this reservation as configured"
    ) == warnings[0]["message"]


def test_reserve_without_gpu_waits_for_a_sample_in_which_nvml_answered(tmp_path: Path) -> None:
    """NVML hung at start: the GPUs are not known yet; said once they are, and only once."""
    script = [host_with(2, 0, hung=True), host_with(2, 10**9), host_with(2, 2 * 10**9)]
    script.append(host_with(2, 3 * 10**9))

    code, events = run(tmp_path, RESERVING_UNPINNED, script)

    assert 0 == code
    assert ["started", "tenant[0].gpu:", "config_reloaded", "tenant[0].gpu:"] == said(events)


def test_one_gpu_and_no_watchdog_say_nothing(tmp_path: Path) -> None:
    """One GPU: a reserving tenant needs no gpu. No WATCHDOG_USEC: no wait is too long."""
    reserving = LONG_WAITS.replace("release_timeout", "reserve = true\nrelease_timeout")

    code, events = run(tmp_path, reserving, [host_with(1, 0)] * 2)

    assert (0, ["started", "config_reloaded"]) == (code, said(events))


def test_waits_longer_than_half_the_watchdog_are_said_at_start_and_after_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WatchdogSec=1min: nvml_timeout 50s, a release_timeout of 45s and a container
    stop_timeout of 40s each hold the loop past 30s. Before: run said nothing."""
    monkeypatch.setenv("WATCHDOG_USEC", str(MINUTE_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    code, events = run(tmp_path, LONG_WAITS, [host_with(1, 0), host_with(1, 10**9)])

    keys = ["gpu.nvml_timeout", "tenant[0].release_timeout", "containers.stop_timeout"]
    warnings = [str(e["warning"]) for e in events if e["event"] == "config_warning"]
    assert 0 == code
    assert ["started", *keys, "config_reloaded", *keys] == said(events)
    assert (
        "gpu.nvml_timeout 50s is longer than half of the unit's WatchdogSec= (1m): a hung "
        "driver holds the loop up to that long; vramwatch keeps the watchdog fed meanwhile "
        "but acts on nothing else; lower it, or raise WatchdogSec="
    ) == warnings[0]


def test_waits_within_half_the_watchdog_say_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(2 * MINUTE_USEC))  # half: 60 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    code, events = run(tmp_path, LONG_WAITS, [host_with(1, 0), host_with(1, 10**9)])

    assert (0, ["started", "config_reloaded"]) == (code, said(events))
