"""Replay reproduces the daemon: for random runs of the real Daemon over the moving
fixture host (faults, refusals, timeouts, orphans, reloads, dry run), replaying the
trace it recorded with the recorded config gives exactly the decisions it logged:
the same events, with the same messages, in the same order (SPEC "Record and replay").
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.meet.test_property import GPUS, OTHER, STEP, apply, config_text
from tests.meet.world import GIB, Bed, Clock, World, WorldActuator, WorldGpus
from vramwatch import config as cfg
from vramwatch.daemon import Ports
from vramwatch.events import EventLog
from vramwatch.record.recorder import RecordingDaemon
from vramwatch.record.replay import floor_name, replay
from vramwatch.record.report import summary
from vramwatch.record.trace import segments
from vramwatch.sampler import Sampler

# What the daemon logs about itself rather than about the host: not decisions.
NOT_DECISIONS = frozenset(
    {"started", "stopping", "config_rejected", "state_restored", "state_saved"}
)


def recording_bed(tmp: Path, text: str, trace: Path) -> Bed:
    world = World(tmp / "host", gpu_count=GPUS)
    path = tmp / "vramwatch.toml"
    path.write_text(text)
    clock = Clock()
    actuator = WorldActuator(world, clock)
    out = io.StringIO()
    daemon = RecordingDaemon(
        path,
        cfg.load(path),
        Ports(
            Sampler(WorldGpus(world), world.procfs()),
            actuator,
            EventLog("stderr", "json", stream=out),
            clock=clock,
            notify=lambda state: False,
        ),
        record=str(trace),
    )
    actuator.daemon = daemon
    return Bed(world, daemon, actuator, clock, out, path)


def decisions(events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, message) for name, message in events if name not in NOT_DECISIONS]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    dry=st.booleans(),
    budgets=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    steps=st.lists(STEP, min_size=5, max_size=40),
)
def test_property_replay_with_the_recorded_config_logs_what_the_daemon_logged(
    tmp_path_factory: object,
    dry: bool,
    budgets: tuple[int, int, int],
    steps: list[tuple[object, ...]],
) -> None:
    tmp = Path(tmp_path_factory.mktemp("replay"))  # type: ignore[attr-defined]
    trace = tmp / "trace.jsonl.gz"
    bed = recording_bed(tmp, config_text(dry, None, budgets), trace)
    bed.daemon.restore_state()
    for unit, vram, ram in (
        ("a.service", {0: 5 * GIB, 1: 3 * GIB}, 15),
        ("b.service", {0: 4 * GIB}, 12),
        ("c.service", {0: 3 * GIB, 1: 5 * GIB}, 10),
        (OTHER, {0: 2 * GIB, 1: 4 * GIB}, 12),
    ):
        bed.world.spawn(unit, vram, ram=ram * GIB)
    now = 0
    for step in steps:
        apply(bed, step)
        now += int(step[1]) * 2 if step[0] == "wait" else 2  # type: ignore[call-overload]
        bed.tick_at(now)
    bed.daemon.sampler.close()
    logged = decisions([(str(e["event"]), str(e["message"])) for e in bed.events()])

    result = replay(segments(trace))

    assert [] == result.damage
    assert logged == decisions([(s.event.name, s.event.message) for s in result.events])
    # The summary's breaches are those the journal announced as new, not reminders.
    announced = Counter(
        floor_name(e)
        for e in bed.named("floor_breached")
        if not str(e["message"]).startswith("still: ")
    )
    assert dict(announced) == summary(result)["breaches"]


def test_replay_gives_refusals_and_unseen_jobs_as_the_daemon_met_them(tmp_path: Path) -> None:
    """A refused restart drops its holds and an unconfirmed one keeps them: replay uses
    the answers systemd gave, so the next decisions match too."""
    trace = tmp_path / "trace.jsonl.gz"
    bed = recording_bed(tmp_path, config_text(False, None, (2, 2, 2)), trace)
    bed.daemon.restore_state()
    for unit, vram, ram in (
        ("a.service", {0: 5 * GIB, 1: 3 * GIB}, 15),
        ("b.service", {0: 4 * GIB}, 12),
        ("c.service", {0: 3 * GIB, 1: 5 * GIB}, 10),
        (OTHER, {0: 2 * GIB, 1: 4 * GIB}, 12),
    ):
        bed.world.spawn(unit, vram, ram=ram * GIB)
    bed.actuator.script += ["refused", "timeout"]
    bed.ticks(range(2, 60, 2))
    bed.daemon.sampler.close()
    logged = decisions([(str(e["event"]), str(e["message"])) for e in bed.events()])

    result = replay(segments(trace))

    assert ["action_failed", "action_unconfirmed"] == [
        n for n, _ in logged if n.startswith("action_")
    ]
    assert logged == decisions([(s.event.name, s.event.message) for s in result.events])


# -- releases (issue 22 item 10) ---------------------------------------------------------


def with_releases(text: str, marker: Path) -> str:
    """a.service's release gives its VRAM back (the world frees it at the next sample);
    c.service's fails at once."""
    text = text.replace(
        'unit = "a.service"\n',
        f'unit = "a.service"\nrelease = ["/usr/bin/touch", "{marker}"]\nrelease_timeout = "1s"\n',
    )
    return text.replace(
        'unit = "c.service"\n',
        'unit = "c.service"\nrelease = ["/bin/sh", "-c", "echo no >&2; exit 3"]\n'
        'release_timeout = "1s"\n',
    )


def released_bed(tmp: Path, text: str) -> tuple[Bed, Path]:
    trace = tmp / "trace.jsonl.gz"
    bed = recording_bed(tmp, text, trace)
    bed.daemon.restore_state()
    return bed, trace


def hogs(bed: Bed) -> None:
    bed.world.spawn("a.service", {0: 14 * GIB})
    bed.world.spawn("c.service", {1: 14 * GIB})


def replayed(trace: Path, config: cfg.Config | None = None) -> list[tuple[str, str]]:
    result = replay(segments(trace), config)
    assert [] == result.damage
    return decisions([(s.event.name, s.event.message) for s in result.events])


def test_a_release_replays_as_the_daemon_logged_it_not_as_a_restart(tmp_path: Path) -> None:
    """a.service's release gives its VRAM back: replay logs ``released``, with the
    daemon's own message, and no restart; c.service's fails: ``release_failed``, then
    the restart, as logged."""
    marker = tmp_path / "host" / "released-a.service"
    bed, trace = released_bed(tmp_path, with_releases(config_text(False, None, (2, 2, 2)), marker))
    hogs(bed)
    bed.ticks(range(2, 12, 2))
    bed.daemon.sampler.close()
    logged = decisions([(str(e["event"]), str(e["message"])) for e in bed.events()])

    events = replayed(trace)

    assert ["released", "release_failed", "restart"] == [
        n for n, _ in logged if n in ("released", "release_failed", "restart")
    ]
    assert logged == events


def test_with_the_same_release_in_another_config_the_recorded_result_is_used(
    tmp_path: Path,
) -> None:
    """-c with a config whose release for a.service is the recorded one: the release the
    daemon ran at that moment is the release this config would have run."""
    marker = tmp_path / "host" / "released-a.service"
    text = with_releases(config_text(False, None, (2, 2, 2)), marker)
    bed, trace = released_bed(tmp_path, text)
    hogs(bed)
    bed.ticks(range(2, 12, 2))
    bed.daemon.sampler.close()
    other = tmp_path / "other.toml"
    other.write_text(text.replace("max_restarts = 3", "max_restarts = 5"))

    events = replayed(trace, cfg.load(other))

    assert [("released", "a.service")] == [(n, m.split()[1]) for n, m in events if n == "released"]
    assert [] == [m for n, m in events if n == "restart" and "a.service" in m]


def test_with_another_config_a_release_the_trace_lacks_is_taken_as_not_freed(
    tmp_path: Path,
) -> None:
    """The daemon had no release command for a.service; a config that gives it one cannot
    know what that command would have done: replay says so and shows the restart."""
    bed, trace = released_bed(tmp_path, config_text(False, None, (2, 2, 2)))
    hogs(bed)
    bed.ticks(range(2, 12, 2))
    bed.daemon.sampler.close()
    other = tmp_path / "other.toml"
    other.write_text(with_releases(config_text(False, None, (2, 2, 2)), tmp_path / "marker"))

    events = replayed(trace, cfg.load(other))

    failed = [m for n, m in events if n == "release_failed" and "a.service" in m]
    assert [
        (
            "release of a.service not replayed (the trace holds no release of a.service at "
            "this moment): taken as not freed; restarting it instead"
        )
    ] == failed
    assert 1 == sum(1 for n, m in events if n == "restart" and "a.service" in m)


def apply_keeping_releases(bed: Bed, step: tuple[object, ...], marker: Path) -> None:
    if step[0] == "reload":
        _, dry, protected, budgets = step
        bed.reload(with_releases(config_text(bool(dry), protected, budgets), marker))  # type: ignore[arg-type]
    else:
        apply(bed, step)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    budgets=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    steps=st.lists(STEP, min_size=5, max_size=25),
)
def test_property_replay_with_releases_logs_what_the_daemon_logged(
    tmp_path_factory: object,
    budgets: tuple[int, int, int],
    steps: list[tuple[object, ...]],
) -> None:
    """Releases that give the memory back, that fail, and that free the wrong resource
    (a.service's gives VRAM back, never RAM: it waits its 1 s out), among the faults,
    reloads and refusals of the property above: replay logs what the daemon logged."""
    tmp = Path(tmp_path_factory.mktemp("replay"))  # type: ignore[attr-defined]
    marker = tmp / "host" / "released-a.service"
    bed, trace = released_bed(tmp, with_releases(config_text(False, None, budgets), marker))
    for unit, vram, ram in (
        ("a.service", {0: 5 * GIB, 1: 3 * GIB}, 15),
        ("b.service", {0: 4 * GIB}, 12),
        ("c.service", {0: 3 * GIB, 1: 5 * GIB}, 10),
        (OTHER, {0: 2 * GIB, 1: 4 * GIB}, 12),
    ):
        bed.world.spawn(unit, vram, ram=ram * GIB)
    now = 0
    for step in steps:
        apply_keeping_releases(bed, step, marker)
        now += int(step[1]) * 2 if step[0] == "wait" else 2  # type: ignore[call-overload]
        bed.tick_at(now)
    bed.daemon.sampler.close()
    logged = decisions([(str(e["event"]), str(e["message"])) for e in bed.events()])

    assert logged == replayed(trace)
