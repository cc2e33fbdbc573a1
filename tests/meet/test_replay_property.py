"""Replay reproduces the daemon: for random runs of the real Daemon over the moving
fixture host (faults, refusals, timeouts, orphans, reloads, dry run), replaying the
trace it recorded with the recorded config gives exactly the decisions it logged:
the same events, with the same messages, in the same order (SPEC "Record and replay").
"""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.meet.test_property import GPUS, OTHER, STEP, apply, config_text
from tests.meet.world import GIB, Bed, Clock, World, WorldActuator, WorldGpus
from vramwatch import config as cfg
from vramwatch.events import EventLog
from vramwatch.recording import RecordingDaemon
from vramwatch.replay import replay
from vramwatch.sampler import Sampler
from vramwatch.trace import segments

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
        Sampler(WorldGpus(world), world.procfs()),
        actuator,
        EventLog("stderr", "json", stream=out),
        clock=clock,
        notifier=lambda state: False,
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
