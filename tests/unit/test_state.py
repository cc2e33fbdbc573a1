"""Persisted restart history: atomic, clock-jump proof, corrupt files set aside."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from tests.unit.test_daemon import CONFIG_TEXT, RecordingActuator, ScriptedSampler, snapshot
from vramwatch import config as cfg
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import JobOutcome
from vramwatch.state import FILE_NAME, Restored, StateError, StateStore, default_dir

S = 10**9
DAY = 86400 * S


class Clocks:
    """A wall clock and a monotonic clock that tests move independently."""

    def __init__(self, mono: int = 1000 * S, wall: int = 1_700_000_000 * S) -> None:
        self.mono = mono
        self.wall = wall
        self.boot = "boot-a"

    def store(self, directory: Path) -> StateStore:
        return StateStore(
            directory,
            wall_ns=lambda: self.wall,
            mono_ns=lambda: self.mono,
            boot_id=lambda: self.boot,
        )


def test_the_times_come_back_on_the_monotonic_clock_within_one_boot(tmp_path: Path) -> None:
    c = Clocks()
    c.store(tmp_path).save({"a.service": (900 * S, 990 * S)})
    c.mono += 5 * S
    c.wall += 5 * S

    restored = c.store(tmp_path).load()

    assert Restored({"a.service": (900 * S, 990 * S)}, None, True) == restored


def test_container_tenants_keep_their_history_across_a_restart_of_vramwatch(
    tmp_path: Path,
) -> None:
    c = Clocks()
    history = {
        "container:frigate": (900 * S,),
        "compose:immich/immich-machine-learning": (950 * S, 990 * S),
    }
    c.store(tmp_path).save(history)

    restored = c.store(tmp_path).load()

    assert Restored(history, None, True) == restored


@pytest.mark.parametrize("jump", [-DAY, -3600 * S, 3600 * S, DAY])
def test_a_wall_clock_jump_within_one_boot_changes_nothing(tmp_path: Path, jump: int) -> None:
    c = Clocks()
    c.store(tmp_path).save({"a.service": (990 * S,)})
    c.wall += jump

    assert {"a.service": (990 * S,)} == c.store(tmp_path).load().actions_ns


def test_after_a_reboot_the_wall_clock_gives_the_age(tmp_path: Path) -> None:
    c = Clocks()
    c.store(tmp_path).save({"a.service": (990 * S,)})  # 10 s before the save
    c.boot, c.mono, c.wall = "boot-b", 30 * S, c.wall + 60 * S  # rebooted a minute later

    assert {"a.service": (30 * S - 70 * S,)} == c.store(tmp_path).load().actions_ns


def test_after_a_reboot_with_the_clock_set_back_the_times_count_as_now(tmp_path: Path) -> None:
    """Never a shorter cooldown than was due: a time in the future is taken as now."""
    c = Clocks()
    c.store(tmp_path).save({"a.service": (990 * S, 1000 * S)})
    c.boot, c.mono, c.wall = "boot-b", 30 * S, c.wall - DAY

    assert {"a.service": (30 * S, 30 * S)} == c.store(tmp_path).load().actions_ns


def test_no_file_is_an_empty_history_and_no_problem(tmp_path: Path) -> None:
    assert Restored({}, None, False) == Clocks().store(tmp_path / "none").load()


def test_save_is_atomic_private_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    directory = tmp_path / "lib" / "vramwatch"
    Clocks().store(directory).save({"a.service": (1 * S,), "b.service": ()})

    assert [FILE_NAME] == sorted(p.name for p in directory.iterdir())
    assert 0o600 == (directory / FILE_NAME).stat().st_mode & 0o777
    assert 0o700 == directory.stat().st_mode & 0o777
    assert ["a.service"] == list(json.loads((directory / FILE_NAME).read_text())["units"])


CORRUPT = [
    (b"", "not a vramwatch state file"),
    (b"\x00\xff garbage", "not a vramwatch state file"),
    (b"[]", "not a vramwatch state file"),
    (b'{"version": 0, "units": {}}', "expected an object with version 1"),
    (b'{"version": "2", "units": {}}', "expected an object with version 1"),
    (b'{"units": {}}', "expected an object with version 1"),
    (b'{"version": 1, "units": []}', "units is not an object"),
    (b'{"version": 1, "units": {"x; rm -rf /": {"actions": []}}}', "bad tenant"),
    (
        b'{"version": 1, "units": {"a.service": {"actions": [{"mono_ns": true, "wall_ns": 1}]}}}',
        "times must be integers",
    ),
    (b'{"version": 1, "units": {"a.service": {}}}', "not a vramwatch state file"),
    (b"[" * 100_000, "not a vramwatch state file"),
    (b" " * (1024 * 1024 + 1), "larger than 1048576 bytes"),
]


@pytest.mark.parametrize(("raw", "problem"), CORRUPT)
def test_a_corrupt_file_is_reported_set_aside_and_replaced(
    tmp_path: Path, raw: bytes, problem: str
) -> None:
    (tmp_path / FILE_NAME).write_bytes(raw)
    (tmp_path / FILE_NAME).chmod(0o600)
    store = Clocks().store(tmp_path)

    restored = store.load()
    store.save({"a.service": (1 * S,)})

    assert {} == restored.actions_ns
    assert restored.problem is not None and problem in restored.problem
    assert restored.problem.startswith(f"{tmp_path / FILE_NAME}: ")
    assert raw == (tmp_path / f"{FILE_NAME}.corrupt").read_bytes()
    assert {"a.service": (1 * S,)} == store.load().actions_ns


def test_a_state_file_others_could_write_is_not_trusted(tmp_path: Path) -> None:
    """A forged history could hold back a restart (or lift the storm limit)."""
    c = Clocks()
    c.store(tmp_path).save({"a.service": (1 * S,)})
    (tmp_path / FILE_NAME).chmod(0o666)

    restored = c.store(tmp_path).load()

    assert {} == restored.actions_ns
    assert "writable by group or others (mode 0666)" in (restored.problem or "")


def test_an_unwritable_directory_is_a_state_error_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    with pytest.raises(StateError) as err:
        Clocks().store(blocker / "sub").save({"a.service": (1 * S,)})

    assert str(err.value).startswith(f"{blocker / 'sub' / FILE_NAME}: cannot save: ")


def test_the_default_directory_follows_systemds_state_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert Path("/var/lib/vramwatch") == default_dir()
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/vw:/var/lib/other")
    assert Path("/var/lib/vw") == default_dir()


# the daemon keeps it ---------------------------------------------------------------------


STORM_CONFIG = CONFIG_TEXT.replace(
    'interval = "1s"',
    'interval = "1s"\ncooldown = "0s"\nmax_restarts = 2\nrestart_window = "1h"\n'
    'reclaim_timeout = "1s"',
).replace('grace = "2s"', 'grace = "0s"')


def daemon(tmp_path: Path, state_dir: Path, clock: list[int]) -> tuple[Daemon, io.StringIO]:
    path = tmp_path / "vramwatch.toml"
    path.write_text(STORM_CONFIG)
    out = io.StringIO()
    actuator = RecordingActuator(JobOutcome(True, "done", "ok"))
    d = Daemon(
        path,
        cfg.load(path),
        Ports(
            ScriptedSampler(lambda _n, now: snapshot(now, hog_vram_mib=12000, free_mib=1000)),
            actuator,
            EventLog("stderr", "json", stream=out),
            clock=lambda: clock[0],
            notify=lambda state: False,
            state=StateStore(state_dir, mono_ns=lambda: clock[0]),
        ),
    )
    d.restore_state()
    return d, out


def names(out: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in out.getvalue().splitlines()]


def test_restarting_vramwatch_does_not_reset_the_storm_limit(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    clock = [100 * S]
    first, out1 = daemon(tmp_path, state_dir, clock)
    for _ in range(4):
        clock[0] += S
        first.tick()
    second, out2 = daemon(tmp_path, state_dir, clock)  # a new process, same boot
    clock[0] += S
    second.tick()

    assert 2 == names(out1).count("restart")
    assert ["state_restored", "floor_breached", "rate_limited", "no_candidate"] == names(out2)


def test_a_corrupt_state_file_is_an_event_and_the_daemon_guards_on(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / FILE_NAME).write_text("{not json")
    (state_dir / FILE_NAME).chmod(0o600)
    clock = [100 * S]

    d, out = daemon(tmp_path, state_dir, clock)
    clock[0] += S
    d.tick()

    assert ["state_corrupt", "floor_breached", "restart"] == names(out)
    assert (state_dir / f"{FILE_NAME}.corrupt").exists()
    assert 1 == len(json.loads((state_dir / FILE_NAME).read_text())["units"])


def test_a_newer_state_file_is_its_own_event_kept_aside_and_the_daemon_guards_on(
    tmp_path: Path,
) -> None:
    """A downgrade: the file of a newer vramwatch is not read, not called corrupt, and
    kept (state.json.v2); this version's history is saved afresh."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / FILE_NAME).write_text('{"version": 2, "units": {}}')
    (state_dir / FILE_NAME).chmod(0o600)
    clock = [100 * S]

    d, out = daemon(tmp_path, state_dir, clock)
    clock[0] += S
    d.tick()

    first = json.loads(out.getvalue().splitlines()[0])
    assert ["state_too_new", "floor_breached", "restart"] == names(out)
    assert ("error", f"{state_dir / FILE_NAME}") == (first["level"], first["state"])
    assert "written by a newer vramwatch (state format 2" in first["message"]
    assert '{"version": 2, "units": {}}' == (state_dir / f"{FILE_NAME}.v2").read_text()
    assert 1 == json.loads((state_dir / FILE_NAME).read_text())["version"]


def test_an_unwritable_state_directory_is_one_warning_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    clock = [100 * S]

    d, out = daemon(tmp_path, blocker / "state", clock)
    for _ in range(3):
        clock[0] += S
        d.tick()

    assert 1 == names(out).count("state_unavailable")
    assert 2 == names(out).count("restart")


def test_a_dry_run_does_not_persist_would_restart(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    clock = [100 * S]
    d, _ = daemon(tmp_path, state_dir, clock)
    d.force_dry_run = True
    d.config = d._effective(d.config)
    os.makedirs(state_dir, exist_ok=True)
    before = sorted(p.name for p in state_dir.iterdir())
    clock[0] += S
    d.tick()

    assert before == sorted(p.name for p in state_dir.iterdir())
    assert {} == json.loads((state_dir / FILE_NAME).read_text())["units"]


def test_a_state_directory_vramwatch_may_not_open_is_unavailable_not_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: EACCES on opening state.json was logged as state_corrupt (an error about a
    damaged file) although nothing was read or set aside; it is state_unavailable, once."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    real_open = os.open

    def no_entry(path: object, *args: object, **kwargs: object) -> int:
        if str(path).startswith(str(state_dir)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_entry)  # as for a vramwatch user without access
    clock = [100 * S]

    d, out = daemon(tmp_path, state_dir, clock)
    clock[0] += S
    d.tick()  # acts, so it saves again: that failure is the same, and not said twice

    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert ["state_unavailable", "floor_breached", "restart"] == [e["event"] for e in entries]
    expected = (
        f"{state_dir / FILE_NAME}: cannot open: Permission denied; the restart history was "
        "not restored and will not survive a restart of vramwatch"
    )
    assert ("warning", expected) == (entries[0]["level"], entries[0]["message"])
