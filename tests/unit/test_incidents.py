"""The incidents behind vramwatch, as traces (examples/incidents/), replayed with their
example configs: who is restarted, when, and that nobody else is."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.incidents.make import HERE, INCIDENTS, make
from vramwatch.config import load
from vramwatch.record.replay import replay
from vramwatch.record.report import ACTION_EVENTS
from vramwatch.record.trace import segments

S = 10**9


def decisions(name: str, *, recorded: bool = False) -> list[tuple[int, str, str]]:
    """(seconds into the trace, event, unit) of every action and forecast."""
    config = None if recorded else load(HERE / f"{name}.toml")
    result = replay(segments(HERE / f"{name}.jsonl.gz"), config)
    assert [] == result.damage
    return [
        (s.mono_ns // S, s.event.name, str(s.event.fields.get("unit")))
        for s in result.events
        if s.event.name in ACTION_EVENTS | {"growing", "rate_limited", "action_cancelled"}
    ]


@pytest.mark.parametrize("name", sorted(INCIDENTS))
def test_the_script_writes_the_traces_that_are_shipped(name: str, tmp_path: Path) -> None:
    """The traces say what make.py says they are: regenerating gives the same bytes."""
    written = make(name, tmp_path)

    assert (HERE / f"{name}.jsonl.gz").read_bytes() == written.read_bytes()


def test_arena_restarts_only_the_arena_10s_after_the_floor_is_crossed() -> None:
    """GPU 0 free falls under 1.5 GiB at 24m00s (the arena at 9.4 GiB, budget 2.9 GiB);
    after the 10s grace immich-machine-learning is restarted, once: the LLM server is
    protected and within budget, frigate and whisper-asr are within theirs. The hand
    restart at 26m frees the GPU before the 2m cooldown ends."""
    assert [(24 * 60 + 10, "restart", "immich-machine-learning.service")] == decisions("arena")


def test_arena_recorded_in_dry_run_replays_as_what_the_dry_run_logged() -> None:
    assert [(24 * 60 + 10, "would_restart", "immich-machine-learning.service")] == decisions(
        "arena", recorded=True
    )


def test_worker_pool_restarts_only_the_pool_before_the_oom_killer_fires() -> None:
    """MemAvailable falls under 8 GiB at 22m20s (the pool near 93 GiB RSS, budget 24 GiB):
    whisper-asr is restarted at 22m30s, 3.5 minutes before the kernel's OOM killer
    fired in the trace; its 5m cooldown outlasts the breach."""
    assert [(22 * 60 + 30, "restart", "whisper-asr.service")] == decisions("worker-pool")


def test_leaking_model_server_is_forecast_hours_ahead_and_never_restarted() -> None:
    """The troughs grow 2.3 GiB/h; "growing" comes 30 minutes in (the window filled)
    with the budget ~53 minutes away, and again as the episode goes on; no floor is
    breached, so nothing is restarted."""
    found = decisions("leaking-model-server")

    assert {("growing", "model-server.service")} == {(e, u) for _, e, u in found}
    assert 30 * 60 == found[0][0]
