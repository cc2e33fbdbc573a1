"""Upgrades keep what was written (SPEC "Files vramwatch writes"): this version reads
the state file and the traces of earlier versions, from fixtures those versions wrote
(tests/fixtures/upgrade/, made by commit 8db0bca's code: see make_v1.py there), and
refuses, with a clear message, a file of a newer version than it knows."""

from __future__ import annotations

import shutil
from pathlib import Path

from vramwatch.state import FILE_NAME, StateStore

S = 10**9
V1 = Path(__file__).resolve().parents[1] / "fixtures" / "upgrade"


# -- the state file -----------------------------------------------------------------


def state_dir(tmp_path: Path, raw: bytes | None = None) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    if raw is None:
        shutil.copy(V1 / "state.json", directory / FILE_NAME)
    else:
        (directory / FILE_NAME).write_bytes(raw)
    (directory / FILE_NAME).chmod(0o600)
    return directory


def test_a_state_file_of_format_1_is_read_within_its_boot(tmp_path: Path) -> None:
    """Restarted in the boot that wrote it (boot-b, 102 s up): the monotonic times as written."""
    store = StateStore(
        state_dir(tmp_path),
        wall_ns=lambda: 1_767_265_230 * S,
        mono_ns=lambda: 112 * S,
        boot_id=lambda: "boot-b",
    )

    restored = store.load()

    assert (None, {"a.service": (-3516 * S,), "b.service": (-3508 * S, 102 * S)}) == (
        restored.problem,
        restored.actions_ns,
    )


def test_a_state_file_of_format_1_is_read_after_a_reboot(tmp_path: Path) -> None:
    """After a reboot (boot-c, 50 s up, 10 minutes after the save) its wall times give
    the ages: b.service was restarted 10 minutes ago."""
    store = StateStore(
        state_dir(tmp_path),
        wall_ns=lambda: (1_767_265_220 + 600) * S,
        mono_ns=lambda: 50 * S,
        boot_id=lambda: "boot-c",
    )

    restored = store.load()

    assert (None, (50 * S - 600 * S - 3610 * S, 50 * S - 600 * S)) == (
        restored.problem,
        restored.actions_ns["b.service"],
    )


def test_a_state_file_of_a_newer_format_is_refused_kept_and_not_called_corrupt(
    tmp_path: Path,
) -> None:
    raw = b'{"version": 2, "units": {"a.service": {"actions": [], "released": []}}}\n'
    directory = state_dir(tmp_path, raw)
    store = StateStore(directory, boot_id=lambda: "boot-b")

    restored = store.load()

    assert {} == restored.actions_ns
    assert (
        f"{directory / FILE_NAME}: written by a newer vramwatch (state format 2; this "
        "version reads format 1): not read; kept as state.json.v2, starting afresh"
    ) == restored.problem
    assert True is restored.newer
    assert raw == (directory / f"{FILE_NAME}.v2").read_bytes()
    assert not (directory / f"{FILE_NAME}.corrupt").exists()
