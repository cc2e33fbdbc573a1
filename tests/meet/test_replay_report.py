"""The summary replay prints, from a trace the real daemon recorded: a breach is
counted once, however long it lasts and however often it is reminded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.meet.test_replay_property import recording_bed
from tests.meet.world import GIB
from vramwatch.record.replay import Result, replay
from vramwatch.record.report import summary
from vramwatch.record.trace import segments

# Not a tenant: nobody to restart, so a breach lasts until its memory goes.
OTHER = "x.service"
CONFIG = """
[daemon]
interval = "30s"
[gpu]
min_free_vram = "2GiB"
grace = "30s"
[[tenant]]
unit = "a.service"
vram = "4GiB"
"""


def two_breaches(tmp_path: Path) -> tuple[list[str], Result]:
    """GPU 0 under its floor for 12 minutes (reminded twice), back above it, then under
    it again: what the daemon logged of it, and the replay of its trace."""
    trace = tmp_path / "trace.jsonl.gz"
    bed = recording_bed(tmp_path, CONFIG, trace)
    bed.daemon.restore_state()
    bed.world.spawn(OTHER, {0: 14 * GIB})
    bed.ticks(range(0, 750, 30))
    bed.world.stop(OTHER)
    bed.ticks(range(750, 810, 30))
    bed.world.spawn(OTHER, {0: 14 * GIB})
    bed.ticks(range(810, 900, 30))
    bed.daemon.sampler.close()
    logged = [str(e["message"]) for e in bed.named("floor_breached")]
    return logged, replay(segments(trace))


def test_a_breach_reminded_while_it_lasts_is_counted_once(tmp_path: Path) -> None:
    logged, result = two_breaches(tmp_path)

    assert [False, True, True, False] == [m.startswith("still: ") for m in logged]
    assert {"GPU 0": 2} == summary(result)["breaches"]


def test_breaches_are_counted_from_the_policy_not_from_the_words_of_its_events(
    tmp_path: Path,
) -> None:
    """Replay read "still: " in each floor_breached sentence to tell a reminder from a
    new breach; the sentences are the journal's to word (issue 24 item 5)."""
    _, result = two_breaches(tmp_path)
    result.events = [
        dataclasses.replace(s, event=dataclasses.replace(s.event, message=""))
        for s in result.events
    ]

    assert {"GPU 0": 2} == summary(result)["breaches"]
