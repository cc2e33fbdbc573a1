"""A bus that cannot be reached is not a restart storm: the real SystemdClient on a
missing bus socket, the real Daemon and policy, a scripted sampler."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.builders import S
from tests.unit.test_daemon import ScriptedSampler, snapshot
from vramwatch import cli
from vramwatch import config as cfg
from vramwatch.actuators.systemd import SystemdClient
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog

CONFIG_TEXT = """
[daemon]
interval = "1s"
cooldown = "2s"
max_restarts = 2
restart_window = "1h"
reclaim_timeout = "1s"
[gpu]
min_free_vram = "2GiB"
grace = "0s"
[[tenant]]
unit = "hog.service"
vram = "3000MiB"
"""


@pytest.fixture
def no_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    socket = tmp_path / "no-bus"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={socket}")
    return str(socket)


def test_attempts_that_never_reach_the_manager_are_spaced_but_are_no_storm(
    tmp_path: Path, no_bus: str
) -> None:
    """Before: each failed connect counted toward max_restarts, so after two attempts
    vramwatch logged "restart storm, fix the unit" although nothing was restarted."""
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG_TEXT)
    out = io.StringIO()
    clock = [0]
    client = SystemdClient("system")
    daemon = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(lambda _n, now: snapshot(now, 10700, 1000)),
            client,
            EventLog("stderr", "json", stream=out),
            clock=lambda: clock[0],
            notify=lambda _state: False,
        ),
    )
    for s in range(10):
        clock[0] = s * S
        daemon.tick()
    client.close()

    events: list[dict[str, Any]] = [json.loads(line) for line in out.getvalue().splitlines()]
    attempts = [e for e in events if e["event"] == "action_failed"]
    assert (5, [], ["connect"] * 5) == (
        len([e for e in events if e["event"] == "restart"]),
        [e for e in events if e["event"] == "rate_limited"],
        [e["result"] for e in attempts],
    )
    assert (
        "restart hog.service failed: cannot connect to the system bus: [Errno 2] No such file "
        "or directory; nothing was restarted, so this attempt does not count toward "
        "max_restarts; the next one waits for cooldown (2s)"
    ) == attempts[0]["message"]
    assert () == daemon.history.actions_ns.get("hog.service", ())


def test_run_says_at_start_that_the_bus_cannot_be_reached(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_bus: str,
) -> None:
    """Before: an enforcing daemon said nothing about the bus until its first action."""
    monkeypatch.setattr(Daemon, "run", lambda _self: 0)  # the wiring only, not the loop
    tmp_path.chmod(0o755)
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG_TEXT)
    path.chmod(0o644)
    argv = ["run", "-c", str(path), "--log-target", "stderr", "--log-format", "json"]

    code = cli.main([*argv, "--state-dir", str(tmp_path / "state")])
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    dry = cli.main([*argv, "--dry-run", "--state-dir", str(tmp_path / "state")])
    in_dry_run = [
        line for line in capsys.readouterr().err.splitlines() if "bus_unreachable" in line
    ]

    said = [(e["level"], e["message"]) for e in events if e["event"] == "bus_unreachable"]
    expected = (
        "cannot reach systemd on the system bus: cannot connect to the system bus: "
        "[Errno 2] No such file or directory; restarting or stopping unit tenants fails "
        "until it can (such attempts do not count toward max_restarts)"
    )
    assert (0, 0) == (code, dry)
    assert [("warning", expected)] == said
    assert [] == in_dry_run  # a dry run acts on nothing: the bus does not matter yet
