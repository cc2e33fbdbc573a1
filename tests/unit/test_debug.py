"""--debug: each tick says, at debug level, what it read and what it decided."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from tests.unit.builders import S
from tests.unit.test_daemon import CONFIG_TEXT, Clock, RecordingActuator, ScriptedSampler, snapshot
from vramwatch import config as cfg
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import JobOutcome

MIB = 1024**2


def run(tmp_path: Path, min_level: str, seconds: list[int]) -> list[dict[str, Any]]:
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG_TEXT)
    out = io.StringIO()
    clock = Clock()
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(lambda _n, now: snapshot(now, 10700, 1000)),
            RecordingActuator(JobOutcome(True, "done", "ok")),
            EventLog("stderr", "json", stream=out, min_level=min_level),
            clock=clock,
            notify=lambda _state: False,
        ),
    )
    for s in seconds:
        clock.now = s * S
        daemon.tick()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_debug_logs_one_tick_event_with_the_readings_and_the_decision(tmp_path: Path) -> None:
    """Before: --debug changed nothing, no event was ever logged at debug level."""
    seen = run(tmp_path, "debug", [0, 2])

    ticks = [e for e in seen if e["event"] == "tick"]
    assert ["tick", "tick", "floor_breached", "restart"] == [e["event"] for e in seen]
    assert {"debug"} == {e["level"] for e in ticks}
    assert (
        "GPU 0 free 1000 MiB, floor 2 GiB; RAM available 32 GiB, floor 6.4 GiB; "
        "hog.service VRAM 10.4 GiB of 2.9 GiB, RAM 0 B; 1 action: restart hog.service"
    ) == ticks[1]["message"]
    assert (
        [{"gpu": "0", "free_bytes": 1000 * MIB, "floor_bytes": 2048 * MIB}],
        32 << 30,
        cfg.DEFAULT_HOST.floor.resolve(64 << 30),
        {"hog.service": {"vram_bytes": 10700 * MIB, "ram_bytes": 0}},
        ["restart hog.service"],
    ) == (
        ticks[1]["gpus"],
        ticks[1]["available_bytes"],
        ticks[1]["floor_bytes"],
        ticks[1]["usage"],
        ticks[1]["actions"],
    )


def test_without_debug_no_tick_event(tmp_path: Path) -> None:
    seen = run(tmp_path, "info", [0, 2])

    assert ["floor_breached", "restart"] == [e["event"] for e in seen]
