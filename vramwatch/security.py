"""Who may write the config: it decides which services vramwatch restarts.

The rule (the one OpenSSH's StrictModes and sudo apply to their own files):
the config file must be owned by root or by the user vramwatch runs as, and
not be writable by group or others; the directory holding it (and, for a
symlink, the directory holding the link) likewise. The user running vramwatch
is trusted because it could rewrite its own config anyway: an unprivileged
``vramwatch`` system user, or the test user of ``bus = "user"``.

Checks take the ``os.stat_result`` of the already opened file, so the file
checked is the file read (no race between the check and the read).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _owner_problem(what: str, info: os.stat_result, euid: int) -> str | None:
    if info.st_uid in (0, euid):
        return None
    allowed = "root" if euid == 0 else f"root or {_who(euid)}, the user vramwatch runs as"
    return f"{what} is owned by {_who(info.st_uid)}; it must be owned by {allowed}"


def _mode_problem(what: str, info: os.stat_result, fix: str) -> str | None:
    if not info.st_mode & _WRITABLE_BY_OTHERS:
        return None
    mode = stat.S_IMODE(info.st_mode)
    by = " and ".join(
        w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit
    )
    return f"{what} is writable by {by} (mode {mode:04o}); {fix}"


def file_problem(info: os.stat_result, euid: int | None = None) -> str | None:
    """Why an opened config file is not trusted, or ``None``."""
    euid = os.geteuid() if euid is None else euid
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return _owner_problem("the file", info, euid) or _mode_problem(
        "the file", info, "run chmod go-w on it"
    )


def directory_problem(directory: Path, euid: int | None = None) -> str | None:
    """Why the directory holding a config is not trusted, or ``None``."""
    euid = os.geteuid() if euid is None else euid
    try:
        info = os.stat(directory)
    except OSError as exc:
        return f"cannot check its directory {directory}: {exc.strerror or exc}"
    what = f"its directory {directory}"
    return _owner_problem(what, info, euid) or _mode_problem(
        what, info, "anyone who can write there can replace the config"
    )


def config_problem(path: Path, info: os.stat_result, euid: int | None = None) -> str | None:
    """The opened config at ``path`` (``info`` from fstat) and its directories, checked."""
    problem = file_problem(info, euid)
    if problem is not None:
        return f"refusing an untrusted config: {problem}"
    path = Path(os.path.abspath(path))
    directories = [path.parent]
    real_parent = path.resolve().parent
    if real_parent != path.parent:
        directories.append(real_parent)  # a symlink: the link and its target both matter
    for directory in directories:
        problem = directory_problem(directory, euid)
        if problem is not None:
            return f"refusing an untrusted config: {problem}"
    return None
