"""The state file's ownership rule, on stat results (the config's is in test_security.py,
a write directory's in test_files.py); StateStore.load sets aside what it refuses."""

from __future__ import annotations

import os
import stat

import pytest

from vramwatch.ownership import state_file_problem, trusted_owner

ROOT = 0
DAEMON_UID = 998  # an unprivileged "vramwatch" system user
OTHER_UID = 1000


def st(mode: int, uid: int, kind: int = stat.S_IFREG) -> os.stat_result:
    return os.stat_result((kind | mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("info", "euid", "problem"),
    [
        (st(0o600, ROOT), ROOT, None),
        (st(0o600, DAEMON_UID), DAEMON_UID, None),
        (st(0o644, ROOT), DAEMON_UID, None),  # written by root before a switch to a user
        (st(0o600, ROOT, stat.S_IFIFO), ROOT, "not a regular file"),
        (
            st(0o600, OTHER_UID),
            DAEMON_UID,
            f"owned by uid {OTHER_UID}, not by root or vramwatch's user",
        ),
        (st(0o620, ROOT), ROOT, "writable by group or others (mode 0620)"),
        (st(0o602, DAEMON_UID), DAEMON_UID, "writable by group or others (mode 0602)"),
    ],
)
def test_a_state_file_others_could_have_written_is_not_read(
    info: os.stat_result, euid: int, problem: str | None
) -> None:
    assert problem == state_file_problem(info, euid)


@pytest.mark.parametrize(
    ("uid", "euid", "trusted"),
    [(ROOT, ROOT, True), (ROOT, DAEMON_UID, True), (DAEMON_UID, DAEMON_UID, True)]
    + [(OTHER_UID, DAEMON_UID, False), (DAEMON_UID, ROOT, False)],
)
def test_root_and_the_user_vramwatch_runs_as_are_the_trusted_owners(
    uid: int, euid: int, trusted: bool
) -> None:
    assert trusted == trusted_owner(uid, euid)
