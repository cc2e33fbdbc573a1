"""The loop around the policy: re-check before acting, failures, reloads, stopping.

A Python-level sampler and actuator stand in for NVML and systemd here; the
end-to-end suite proves the real ones.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from tests.unit.builders import MIB, S, notified, one_gpu
from vramwatch import config as cfg
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import JobOutcome, Snapshot, Verb

CONFIG_TEXT = """
[daemon]
interval = "1s"
[gpu]
min_free_vram = "2GiB"
grace = "2s"
[[tenant]]
unit = "hog.service"
vram = "3000MiB"
"""


def snapshot(now_ns: int, hog_vram_mib: int, free_mib: int) -> Snapshot:
    return one_gpu(now_ns, hog_mib=hog_vram_mib, free_mib=free_mib)


class ScriptedSampler:
    """Returns snapshots from a function of (call number, now)."""

    def __init__(self, script: Callable[[int, int], Snapshot]) -> None:
        self.script = script
        self.calls = 0

    def sample(self, config: cfg.Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        self.calls += 1
        return self.script(self.calls, now_ns)

    def close(self) -> None:
        pass


class RecordingActuator:
    def __init__(self, outcome: JobOutcome) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str, Verb]] = []

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        self.calls.append((unit, verb))
        return self.outcome


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def make(
    tmp_path: Path, sampler: ScriptedSampler, actuator: RecordingActuator, text: str = CONFIG_TEXT
) -> tuple[Daemon, io.StringIO, Clock]:
    path = tmp_path / "vramwatch.toml"
    path.write_text(text)
    out = io.StringIO()
    clock = Clock()
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            sampler,
            actuator,
            EventLog("stderr", "json", stream=out),
            clock=clock,
            notify=lambda state: False,
        ),
    )
    return daemon, out, clock


def events(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def names(out: io.StringIO) -> list[object]:
    return [e["event"] for e in events(out)]


def run_ticks(daemon: Daemon, clock: Clock, seconds: list[int]) -> None:
    for s in seconds:
        clock.now = s * S
        daemon.tick()


def test_breach_past_grace_restarts_the_hog_once(tmp_path: Path) -> None:
    sampler = ScriptedSampler(lambda n, now: snapshot(now, 10700, 1000))
    actuator = RecordingActuator(JobOutcome(True, "done", "ok"))
    daemon, out, clock = make(tmp_path, sampler, actuator)

    run_ticks(daemon, clock, [0, 1, 2, 3])

    assert [("hog.service", Verb.RESTART)] == actuator.calls
    assert ["floor_breached", "restart"] == names(out)


def test_restart_event_carries_the_numbers(tmp_path: Path) -> None:
    sampler = ScriptedSampler(lambda n, now: snapshot(now, 10700, 1000))
    daemon, out, clock = make(tmp_path, sampler, RecordingActuator(JobOutcome(True, "done", "")))

    run_ticks(daemon, clock, [0, 2])

    restart = events(out)[-1]
    assert {
        "event": "restart",
        "unit": "hog.service",
        "resource": "vram",
        "gpu": 0,
        "used_bytes": 10700 * MIB,
        "budget_bytes": 3000 * MIB,
        "free_bytes": 1000 * MIB,
        "floor_bytes": 2048 * MIB,
        "message": "restarting hog.service: GPU 0 free 1000 MiB < floor 2 GiB for 2s; "
        "unit uses 10.4 GiB VRAM, budget 2.9 GiB",
    } == {
        k: restart[k]
        for k in (
            "event",
            "unit",
            "resource",
            "gpu",
            "used_bytes",
            "budget_bytes",
            "free_bytes",
            "floor_bytes",
            "message",
        )
    }


def test_a_tenant_that_shrank_before_the_action_is_left_alone(tmp_path: Path) -> None:
    # The decision is made on call 3; the re-check (call 4) sees the hog shrunk.
    sampler = ScriptedSampler(lambda n, now: snapshot(now, 10700 if n < 4 else 100, 1000))
    actuator = RecordingActuator(JobOutcome(True, "done", ""))
    daemon, out, clock = make(tmp_path, sampler, actuator)

    run_ticks(daemon, clock, [0, 1, 2])

    assert [] == actuator.calls
    assert ["floor_breached", "action_cancelled"] == names(out)


def test_a_failed_restart_is_logged_and_the_daemon_goes_on(tmp_path: Path) -> None:
    sampler = ScriptedSampler(lambda n, now: snapshot(now, 10700, 1000))
    actuator = RecordingActuator(
        JobOutcome(False, "org.freedesktop.systemd1.NoSuchUnit", "Unit hog.service not found.")
    )
    daemon, out, clock = make(tmp_path, sampler, actuator)

    run_ticks(daemon, clock, [0, 2, 3])

    failed = [e for e in events(out) if e["event"] == "action_failed"]
    assert 1 == len(failed)
    assert "org.freedesktop.systemd1.NoSuchUnit" == failed[0]["result"]
    assert {} == dict(daemon.history.in_flight)  # nothing left waiting for a reclaim


def test_a_sampler_exception_becomes_a_sampling_error(tmp_path: Path) -> None:
    def broken(n: int, now: int) -> Snapshot:
        raise PermissionError("/proc/meminfo")

    daemon, out, clock = make(
        tmp_path, ScriptedSampler(broken), RecordingActuator(JobOutcome(True, "done", ""))
    )

    run_ticks(daemon, clock, [0])

    assert ["sampling_error"] == names(out)
    traceback = str(events(out)[0]["traceback"])
    assert traceback.startswith("Traceback (most recent call last):\n"), traceback
    assert traceback.endswith("\nPermissionError: /proc/meminfo\n"), traceback
    assert 'in broken\n    raise PermissionError("/proc/meminfo")\n' in traceback


def test_reload_with_a_broken_config_keeps_the_old_one(tmp_path: Path) -> None:
    daemon, out, _clock = make(
        tmp_path,
        ScriptedSampler(lambda n, now: snapshot(now, 0, 9000)),
        RecordingActuator(JobOutcome(True, "done", "")),
    )
    before = daemon.config
    (tmp_path / "vramwatch.toml").write_text("[daemon]\ninterval = 2\n")

    daemon.reload()

    assert before is daemon.config
    rejected = events(out)[-1]
    assert "config_rejected" == rejected["event"]
    assert (
        f'{tmp_path}/vramwatch.toml: daemon.interval: expected a string, got 2; write it as "2s"'
        == rejected["error"]
    )


def test_reload_with_a_valid_config_applies_it(tmp_path: Path) -> None:
    daemon, out, _clock = make(
        tmp_path,
        ScriptedSampler(lambda n, now: snapshot(now, 0, 9000)),
        RecordingActuator(JobOutcome(True, "done", "")),
    )
    (tmp_path / "vramwatch.toml").write_text(CONFIG_TEXT.replace('"1s"', '"5s"'))

    daemon.reload()

    assert 5 * S == daemon.config.daemon.interval_ns
    assert "config_reloaded" == events(out)[-1]["event"]


def test_dry_run_flag_survives_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG_TEXT)
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(lambda n, now: snapshot(now, 0, 9000)),
            RecordingActuator(JobOutcome(True, "done", "")),
            EventLog("stderr", "json", stream=io.StringIO()),
            notify=lambda state: False,
        ),
        force_dry_run=True,
    )

    daemon.reload()

    assert daemon.config.daemon.dry_run


def test_run_returns_zero_soon_after_stop(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG_TEXT.replace('"1s"', '"1h"'))
    states: list[str] = []
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(lambda n, now: snapshot(now, 0, 9000)),
            RecordingActuator(JobOutcome(True, "done", "")),
            EventLog("stderr", "json", stream=io.StringIO()),
            notify=notified(states),
        ),
    )
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()))
    thread.start()
    threading.Timer(0.2, daemon.stop).start()

    thread.join(timeout=2)

    assert [0] == result
    assert "READY=1" in states and "STOPPING=1" == states[-1]


def test_ticks_are_stamped_with_their_slot_so_late_wakeups_do_not_stretch_grace(
    tmp_path: Path,
) -> None:
    """A wake-up 30 ms late still counts as the slot's time: grace 2 s acts on the 3rd tick."""
    seen: list[int] = []

    def script(n: int, now: int) -> Snapshot:
        seen.append(now)
        return snapshot(now, 10700, 1000)

    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG_TEXT.replace('"1s"', '"500ms"').replace('grace = "2s"', 'grace = "1s"'))
    late_ns = 30_000_000
    base = [0]

    def clock() -> int:  # every reading after the first wake-up is 30 ms late
        return base[0]

    actuator = RecordingActuator(JobOutcome(True, "done", ""))
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(script),
            actuator,
            EventLog("stderr", "json", stream=io.StringIO()),
            clock=clock,
            notify=lambda state: False,
        ),
    )

    def fake_sleep_until(deadline_ns: int, watchdog_ns: int | None) -> None:
        base[0] = deadline_ns + late_ns
        if len(seen) >= 4:
            daemon.stop()

    daemon._sleep_until = fake_sleep_until  # type: ignore[method-assign]
    daemon.run()

    assert [0, 500_000_000, 1_000_000_000] == seen[:3]
    assert 1 == len(actuator.calls)


def test_the_watchdog_is_fed_while_a_restart_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WatchdogSec= must not kill vramwatch while it waits up to 100 s for a job."""
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")  # 10 s: ping every 5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    clock = Clock()

    class SlowActuator:
        def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
            for _ in range(40):  # 40 polls, 1 s apart: a 40 s job
                clock.now += S
                should_stop()
            return JobOutcome(True, "done", "")

    states: list[str] = []
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG_TEXT)
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(lambda n, now: snapshot(now, 10700, 1000)),
            SlowActuator(),
            EventLog("stderr", "json", stream=io.StringIO()),
            clock=clock,
            notify=notified(states),
        ),
    )

    for s in (0, 2):
        clock.now = s * S
        daemon.tick()

    pings_during_job = [s for s in states if s == "WATCHDOG=1"]
    assert 8 == len(pings_during_job)  # 40 s of job / 5 s


def release_config(argv: str, timeout: str) -> str:
    return CONFIG_TEXT + f'release = {argv}\nrelease_timeout = "{timeout}"\n'


def test_the_watchdog_is_fed_while_a_release_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """release_timeout allows 10 minutes, the unit has WatchdogSec=1min: a release that
    blocked the loop without WATCHDOG=1 had vramwatch killed mid-action."""
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    pings: list[float] = []

    def notify(state: str) -> bool:
        if state.endswith("WATCHDOG=1"):  # the keep-alives, and the tick's own at its end
            pings.append(time.monotonic())
        return True

    def script(n: int, now: int) -> Snapshot:  # the wait's samples: the memory is back
        return snapshot(now, 10700, 1000) if n <= 3 else snapshot(now, 0, 9000)

    path = tmp_path / "vramwatch.toml"
    path.write_text(release_config('["/bin/sleep", "3"]', "10s"))
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(script),
            RecordingActuator(JobOutcome(True, "done", "")),
            EventLog("stderr", "json", stream=io.StringIO()),
            notify=notify,
        ),
    )
    daemon.tick()
    time.sleep(2.05)  # grace
    started = time.monotonic()

    daemon.tick()

    alive = [started] + [t for t in pings if t >= started]
    assert 3 <= alive[-1] - started  # the tick did wait for the command
    assert max(b - a for a, b in zip(alive, alive[1:], strict=False)) < 1.0


def test_no_keepalive_once_a_release_wait_is_past_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait stuck past its own deadline must let systemd's watchdog act."""
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    pings: list[float] = []

    def notify(state: str) -> bool:
        if state == "WATCHDOG=1":
            pings.append(time.monotonic())
        return True

    def slow(n: int, now: int) -> Snapshot:
        if n > 3:
            time.sleep(0.4)  # each sample of the wait overruns the poll
        return snapshot(now, 10700, 1000)

    path = tmp_path / "vramwatch.toml"
    path.write_text(release_config('["/bin/true"]', "1s"))
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(slow),
            RecordingActuator(JobOutcome(True, "done", "")),
            EventLog("stderr", "json", stream=io.StringIO()),
            notify=notify,
        ),
    )
    daemon.tick()
    time.sleep(2.05)
    started = time.monotonic()

    daemon.tick()

    assert [] == [t for t in pings if t > started + 1.0]


def test_a_hook_that_raises_on_start_is_hook_failed_and_the_tick_goes_on(
    tmp_path: Path,
) -> None:
    """Every event listener runs inside the loop's say(): none may raise."""
    sampler = ScriptedSampler(lambda n, now: snapshot(now, 10700, 1000))
    actuator = RecordingActuator(JobOutcome(True, "done", ""))
    text = CONFIG_TEXT.replace("[gpu]", '[hooks]\nafter_action = ["/bin/true"]\n[gpu]')
    daemon, out, clock = make(tmp_path, sampler, actuator, text)

    def broken(argv: Sequence[str], timeout_s: float, event: str, env: Mapping[str, str]) -> None:
        raise ValueError("embedded null byte")

    daemon.hooks.start = broken  # type: ignore[method-assign]
    run_ticks(daemon, clock, [0, 1, 2])

    assert [("hog.service", Verb.RESTART)] == actuator.calls
    failed = [e for e in events(out) if e["event"] == "hook_failed"]
    assert [("restart", "cannot start: ValueError('embedded null byte')")] == [
        (e["for_event"], e["error"]) for e in failed
    ]
