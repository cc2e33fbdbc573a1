"""files.py, metrics textfile and state file: writes that no planted link can redirect."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from vramwatch.files import UnsafeWrite, write_atomically
from vramwatch.metrics import Metrics
from vramwatch.ownership import write_directory_problem
from vramwatch.state import FILE_NAME, StateError, StateStore

VICTIM = b"precious\n"


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    return path


def plant_predictable_links(directory: Path, name: str, target: Path) -> None:
    """Every temporary name the old writers used: prometheus_client's
    ``NAME.PID.TID`` and state.py's ``.NAME.PID.tmp``."""
    pid, tid = os.getpid(), threading.current_thread().ident
    for link in (f"{name}.{pid}.{tid}", f".{name}.{pid}.tmp"):
        (directory / link).symlink_to(target)


def test_a_symlink_planted_under_the_target_name_is_replaced_not_followed(tmp_path: Path) -> None:
    precious = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "vramwatch.prom").symlink_to(precious)

    write_atomically(out / "vramwatch.prom", b"metrics\n")

    assert VICTIM == precious.read_bytes()
    assert (False, b"metrics\n") == (
        (out / "vramwatch.prom").is_symlink(),
        (out / "vramwatch.prom").read_bytes(),
    )


def test_the_metrics_textfile_does_not_follow_a_link_at_a_predictable_temporary_name(
    tmp_path: Path,
) -> None:
    """Before: prometheus_client wrote NAME.PID.TID through a planted link."""
    precious = victim(tmp_path)
    out = tmp_path / "collector"
    out.mkdir()
    plant_predictable_links(out, "vramwatch.prom", precious)
    metrics = Metrics(textfile=str(out / "vramwatch.prom"))

    problem = metrics.flush()

    assert (None, VICTIM) == (problem, precious.read_bytes())
    assert b"vramwatch_" in (out / "vramwatch.prom").read_bytes()
    assert 0o644 == stat.S_IMODE((out / "vramwatch.prom").stat().st_mode)


def test_the_state_file_is_saved_past_a_link_at_its_old_temporary_name(tmp_path: Path) -> None:
    """Before: .state.json.PID.tmp was predictable; a link there made every save fail."""
    precious = victim(tmp_path)
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    plant_predictable_links(directory, FILE_NAME, precious)
    store = StateStore(directory, boot_id=lambda: "b")

    store.save({"a.service": (1,)})

    assert VICTIM == precious.read_bytes()
    assert 0o600 == stat.S_IMODE((directory / FILE_NAME).stat().st_mode)
    assert ("a.service",) == tuple(store.load().actions_ns)


def test_no_temporary_file_is_left_behind_when_the_rename_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.prom").mkdir()  # rename cannot replace a directory

    with pytest.raises(UnsafeWrite) as raised:
        write_atomically(out / "x.prom", b"data")

    assert "is a directory" == str(raised.value)
    assert ["x.prom"] == [p.name for p in out.iterdir()]


def test_a_world_writable_collector_directory_is_refused_once_and_nothing_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "collector"
    out.mkdir()
    out.chmod(0o777)
    metrics = Metrics(textfile=str(out / "vramwatch.prom"))

    first, second = metrics.flush(), metrics.flush()

    assert (
        f"cannot write metrics to {out}/vramwatch.prom: refusing to write there: {out} is "
        "writable by others (mode 0777) and not sticky: they could replace what vramwatch "
        "writes; run chmod go-w on it"
    ) == first
    assert None is second  # said once
    assert [] == list(out.iterdir())


def test_an_unsafe_state_directory_is_a_state_error(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(0o777)

    with pytest.raises(StateError) as raised:
        StateStore(directory, boot_id=lambda: "b").save({"a.service": (1,)})

    assert str(raised.value).startswith(
        f"{directory / FILE_NAME}: cannot save: refusing to write there: {directory} is writable"
    )


def info(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


DIR = stat.S_IFDIR
ME, MY_GROUP = 999, 999


@pytest.mark.parametrize(
    ("directory", "target", "problem"),
    [
        (info(DIR | 0o755), None, None),
        (info(DIR | 0o755, uid=123), None, None),  # Debian: prometheus's own directory
        (info(DIR | 0o775, uid=123, gid=MY_GROUP), None, None),  # made group-writable for us
        (info(DIR | 0o1777), None, None),  # /tmp, nothing there yet
        (info(DIR | 0o1777), info(stat.S_IFREG | 0o644, uid=ME), None),  # /tmp, ours
        (
            info(DIR | 0o1777),
            info(stat.S_IFREG | 0o644, uid=123),
            (
                "/d is sticky and writable by others (mode 1777), and the file there is owned by "
                "uid 123, not by vramwatch: another user controls it"
            ),
        ),
        (
            info(DIR | 0o775, gid=50),
            None,
            (
                "/d is writable by group 50 (mode 0775) and not sticky: they could replace what "
                "vramwatch writes; run chmod go-w on it"
            ),
        ),
        (
            info(DIR | 0o757),
            None,
            (
                "/d is writable by others (mode 0757) and not sticky: they could replace what "
                "vramwatch writes; run chmod go-w on it"
            ),
        ),
    ],
)
def test_which_directories_are_safe_to_write_into(
    directory: os.stat_result, target: os.stat_result | None, problem: str | None
) -> None:
    actual = write_directory_problem("/d", directory, target, ME, MY_GROUP)

    assert problem == actual
