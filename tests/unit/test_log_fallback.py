"""Logging never kills the guard: a journal that refuses entries, or no systemd-python."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_daemon import CONFIG_TEXT, Clock, RecordingActuator, ScriptedSampler, snapshot
from vramwatch import config as cfg
from vramwatch import events as events_module
from vramwatch.daemon import Daemon
from vramwatch.events import EventLog
from vramwatch.systemd import JobOutcome


class Journal:
    """journal.send that fails with ``error`` while it is set, else records."""

    def __init__(self) -> None:
        self.error: Exception | None = OSError(11, "Resource temporarily unavailable")
        self.sent: list[dict[str, str]] = []

    def send(self, **fields: str) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(fields)


@pytest.fixture
def fake_journal(monkeypatch: pytest.MonkeyPatch) -> Journal:
    fake = Journal()
    monkeypatch.setattr(events_module, "journal_sender", lambda: fake.send)
    return fake


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_journal_that_refuses_entries_falls_back_to_stderr_and_says_so_once(
    fake_journal: Journal,
) -> None:
    out = io.StringIO()
    log = EventLog("journal", "json", stream=out)

    log.say("floor_breached", "warning", "GPU 0 free 1 GiB < floor 2 GiB", gpu=0)
    log.say("restart", "warning", "restarting hog.service", unit="hog.service")
    fake_journal.error = None
    log.say("reclaimed", "info", "hog.service released 10 GiB", unit="hog.service")

    written = lines(out)
    assert [
        (
            "log_fallback",
            (
                "cannot log to the journal (BlockingIOError: [Errno 11] Resource temporarily "
                "unavailable); writing to stderr until it works again"
            ),
        ),
        ("floor_breached", "GPU 0 free 1 GiB < floor 2 GiB"),
        ("restart", "restarting hog.service"),
    ] == [(e["event"], e["message"]) for e in written]
    assert ["reclaimed", "log_recovered"] == [f["VRAMWATCH_EVENT"] for f in fake_journal.sent]


def test_log_target_journal_without_systemd_python_logs_to_stderr_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: _JournalRenderer's import raised ImportError out of cmd_run."""
    monkeypatch.setattr(events_module, "journal_available", lambda: False)
    out = io.StringIO()

    log = EventLog("journal", "json", stream=out)
    log.say("started", "info", "vramwatch started")

    assert [
        (
            "log_fallback",
            (
                "cannot log to the journal: systemd-python (python3-systemd) is not installed; "
                "logging to stderr"
            ),
        ),
        ("started", "vramwatch started"),
    ] == [(e["event"], e["message"]) for e in lines(out)]
    assert "stderr" == log.target


class Broken(io.StringIO):
    def write(self, _text: str) -> int:
        raise OSError(32, "Broken pipe")


def test_a_tick_whose_logging_fails_everywhere_still_restarts_the_hog(
    tmp_path: Path, fake_journal: Journal
) -> None:
    """journald gone and stderr a broken pipe: the guard acts and tick returns."""
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG_TEXT)
    actuator = RecordingActuator(JobOutcome(True, "done", "ok"))
    clock = Clock()
    daemon = Daemon(
        path,
        cfg.load(path),
        ScriptedSampler(lambda _n, now: snapshot(now, 10700, 1000)),
        actuator,
        EventLog("journal", "json", stream=Broken()),
        clock=clock,
        notifier=lambda _state: False,
    )

    for s in range(5):
        clock.now = s * 10**9
        daemon.tick()

    assert ["hog.service"] == [unit for unit, _verb in actuator.calls]
