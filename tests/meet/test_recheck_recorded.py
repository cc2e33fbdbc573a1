"""The re-check before an action is recorded as the re-check (trace format 3): the
recorder writes the flag the daemon gives the sampler, and replay serves the re-check
by that flag, not by its place in the tick (issue 24 item 7)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tests.meet.test_replay_property import recording_bed
from tests.meet.world import GIB
from tests.unit.builders import S, one_gpu
from vramwatch.config import load
from vramwatch.model import JobOutcome
from vramwatch.record.format import (
    answer_record,
    config_record,
    sample_record,
    state_record,
)
from vramwatch.record.replay import replay
from vramwatch.record.trace import TraceReader, TraceWriter, segments

# GPU 0 is breached when under 2 GiB free for 2 s: a tick after it is first seen.
FLOOR = '[daemon]\ninterval = "2s"\n[gpu]\nmin_free_vram = "2GiB"\ngrace = "2s"\n'
RELEASING = FLOOR + (
    '[[tenant]]\nunit = "a.service"\nvram = "3GiB"\n'
    'release = ["/usr/bin/touch", "{marker}"]\nrelease_timeout = "3s"\n'
)


def test_the_recheck_sample_is_recorded_as_the_recheck_and_a_releases_wait_is_not(
    tmp_path: Path,
) -> None:
    """a.service takes 14 GiB: the tick's sample, the re-check before acting, then the
    samples that wait for its release command's effect, then the release's entry."""
    trace = tmp_path / "trace.jsonl.gz"
    marker = tmp_path / "host" / "released-a.service"
    bed = recording_bed(tmp_path, RELEASING.format(marker=marker), trace)
    bed.daemon.restore_state()
    bed.world.spawn("a.service", {0: 14 * GIB})
    bed.ticks([0, 2])
    bed.daemon.sampler.close()

    records = list(TraceReader(trace))
    tick = records[[n for n, r in enumerate(records) if r["k"] == "s"][-1] :]

    assert ["released"] == [e["event"] for e in bed.named("released")]
    assert [("s", False), ("x", True), ("x", False), ("r", False)] == [
        (r["k"], r.get("rc") is True) for r in tick
    ]


HOG = FLOOR + '[[tenant]]\nunit = "hog.service"\nvram = "3000MiB"\n'


def trace_with_a_sample_before_the_recheck(tmp_path: Path) -> Path:
    """A tick that acts, holding a further sample (the hog gone) before its re-check
    (the hog still there), and systemd's answer to the restart."""
    config = tmp_path / "vramwatch.toml"
    config.write_text(HOG)
    trace = tmp_path / "trace.jsonl.gz"
    writer = TraceWriter(trace, 86400 * S, 1 << 30, wall_ns=lambda: 1_767_261_600 * S)
    writer.preamble = [config_record(load(config), "start", False, lambda c: c), state_record({})]
    writer.open()
    for n in (0, 1):
        snapshot = one_gpu(2 * n * S, hog_mib=12000, free_mib=1000)
        writer.write(sample_record(snapshot, 2000 * n, first=True), tick=True)
    gone = one_gpu(2 * S, hog_mib=100, free_mib=13000)
    writer.write(sample_record(gone, 2000, first=False))
    still = one_gpu(2 * S, hog_mib=12000, free_mib=1000)
    writer.write(sample_record(still, 2000, first=False, recheck=True))
    done = JobOutcome(True, "done", "job done", accepted=True)
    writer.write(answer_record("hog.service", "restart", done, None))
    writer.close()
    return trace


def as_format_2(trace: Path) -> None:
    """The same trace as format 2 wrote it: no re-check flag."""
    records: list[dict[str, Any]] = [json.loads(line) for line in gzip.open(trace)]
    records[0]["v"] = 2
    for record in records:
        record.pop("rc", None)
    trace.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records)))


@pytest.mark.parametrize(
    ("version", "decided"),
    [
        (3, "restart"),  # the flagged sample is the re-check, wherever it is in the tick
        (2, "action_cancelled"),  # no flag: the first further sample was the re-check
    ],
)
def test_replay_serves_the_recheck_by_its_flag(tmp_path: Path, version: int, decided: str) -> None:
    trace = trace_with_a_sample_before_the_recheck(tmp_path)
    if version == 2:
        as_format_2(trace)

    result = replay(segments(trace))

    assert [] == result.damage
    assert [decided] == [
        s.event.name for s in result.events if s.event.name in ("restart", "action_cancelled")
    ]
