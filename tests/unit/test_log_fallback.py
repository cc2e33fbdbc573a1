"""Logging never kills the guard: a journal that refuses entries, or no systemd-python."""

from __future__ import annotations

import io
import json
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_daemon import CONFIG_TEXT, Clock, RecordingActuator, ScriptedSampler, snapshot
from vramwatch import config as cfg
from vramwatch import events as events_module
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import JobOutcome


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
def short_dir() -> Iterator[Path]:
    """A directory for a socket: tmp_path can exceed sun_path's 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="vw-") as name:
        yield Path(name)


@pytest.fixture
def journald_socket(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A socket where journald's would be (only its presence is looked at)."""
    path = short_dir / "socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setattr(events_module, "JOURNAL_SOCKET", str(path))
        yield path


@pytest.fixture
def fake_journal(monkeypatch: pytest.MonkeyPatch, journald_socket: Path) -> Journal:
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


def test_a_journal_that_fails_another_way_meanwhile_is_not_said_again(
    fake_journal: Journal,
) -> None:
    """log_fallback is said when the journal starts failing, not when its error changes:
    journald restarting goes from EAGAIN to ECONNREFUSED and back."""
    out = io.StringIO()
    log = EventLog("journal", "json", stream=out)

    log.say("floor_breached", "warning", "GPU 0 free 1 GiB < floor 2 GiB", gpu=0)
    fake_journal.error = ConnectionRefusedError(111, "Connection refused")
    log.say("restart", "warning", "restarting hog.service", unit="hog.service")

    assert ["log_fallback", "floor_breached", "restart"] == [e["event"] for e in lines(out)]


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


def test_log_target_journal_without_journald_falls_back_to_stderr_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: sd_journal_sendv reports a missing socket (ENOENT) as success, so every
    event was dropped silently. The real sender is used: only the socket is missing."""
    pytest.importorskip("systemd._journal")
    missing = tmp_path / "no-journald" / "socket"
    monkeypatch.setattr(events_module, "JOURNAL_SOCKET", str(missing), raising=False)
    out = io.StringIO()

    log = EventLog("journal", "json", stream=out)
    log.say("started", "info", "vramwatch started")
    log.say("floor_breached", "warning", "GPU 0 free 1 GiB < floor 2 GiB", gpu=0)

    assert [
        (
            "log_fallback",
            (
                f"cannot log to the journal (journald is not listening: no socket {missing}); "
                "writing to stderr until it works again"
            ),
        ),
        ("started", "vramwatch started"),
        ("floor_breached", "GPU 0 free 1 GiB < floor 2 GiB"),
    ] == [(e["event"], e["message"]) for e in lines(out)]


def test_journald_coming_back_is_used_again_and_said(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Journal()
    fake.error = None
    monkeypatch.setattr(events_module, "journal_sender", lambda: fake.send)
    path = short_dir / "socket"
    monkeypatch.setattr(events_module, "JOURNAL_SOCKET", str(path))
    out = io.StringIO()
    log = EventLog("journal", "json", stream=out)

    log.say("started", "info", "vramwatch started")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        log.say("floor_breached", "warning", "GPU 0 free 1 GiB < floor 2 GiB", gpu=0)

    assert (["log_fallback", "started"], ["floor_breached", "log_recovered"]) == (
        [e["event"] for e in lines(out)],
        [f["VRAMWATCH_EVENT"] for f in fake.sent],
    )


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
        Ports(
            ScriptedSampler(lambda _n, now: snapshot(now, 10700, 1000)),
            actuator,
            EventLog("journal", "json", stream=Broken()),
            clock=clock,
            notify=lambda _state: False,
        ),
    )

    for s in range(5):
        clock.now = s * 10**9
        daemon.tick()

    assert ["hog.service"] == [unit for unit, _verb in actuator.calls]
