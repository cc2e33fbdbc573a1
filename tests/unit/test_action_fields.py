"""A real action's journal entry carries what its dry-run twin carries (vramwatch(8)
FIELDS: VRAMWATCH_OVER_BYTES, the breach time, what the action holds)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from tests.unit.builders import MIB, S
from tests.unit.test_daemon import CONFIG_TEXT, Clock, RecordingActuator, ScriptedSampler, snapshot
from vramwatch import config as cfg
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog, journal_fields
from vramwatch.model import JobOutcome


def action_entry(tmp_path: Path, dry_run: bool) -> dict[str, str]:
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
            EventLog("stderr", "json", stream=out),
            clock=clock,
            notify=lambda _state: False,
        ),
        force_dry_run=dry_run,
    )
    for s in (0, 1, 2):
        clock.now = s * S
        daemon.tick()
    events: list[dict[str, Any]] = [json.loads(line) for line in out.getvalue().splitlines()]
    (entry,) = [e for e in events if e["event"] in ("restart", "would_restart")]
    return journal_fields(entry)


def test_a_restart_entry_has_every_field_its_would_restart_twin_has(tmp_path: Path) -> None:
    """Before: restart lacked VRAMWATCH_OVER_BYTES, VRAMWATCH_BREACHED_NS and VRAMWATCH_HOLDS,
    which would_restart carried: the daemon rebuilt the entry from the Action alone."""
    real = action_entry(tmp_path, dry_run=False)
    dry = action_entry(tmp_path, dry_run=True)

    assert [] == sorted(set(dry) - set(real) - {"VRAMWATCH_DRY_RUN", "MESSAGE_ID"})
    assert (str((10700 - 3000) * MIB), str(2 * S), '["gpu:GPU-0"]') == (
        real["VRAMWATCH_OVER_BYTES"],
        real["VRAMWATCH_BREACHED_NS"],
        real["VRAMWATCH_HOLDS"],
    )
