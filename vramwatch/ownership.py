"""Who may own and write what vramwatch reads and writes; the reason when not.

The user vramwatch runs as is trusted like root: it could rewrite its own
files anyway (an unprivileged ``vramwatch`` system user, or the test user of
``bus = "user"``). Nobody else may be able to change:

- **the config**, which decides which services vramwatch restarts (the rule
  OpenSSH's StrictModes and sudo apply to their own files): the file must be
  owned by root or that user and not be writable by group or others; the
  directory holding it likewise; every directory above it and every directory
  a symbolic link on the way leads through likewise, except that a sticky
  directory (``/tmp``) may be writable by others (nobody else can rename what
  it holds); every symbolic link on the way must be owned by root or that
  user. :func:`vramwatch.security.open_config` walks the path and asks these
  checks at each step.
- **the state file** read back at start (the restart history): a regular
  file owned by root or that user, not writable by group or others.
- **a directory vramwatch writes into** (state file, metrics textfile,
  trace): not writable by others, nor by a group that is not vramwatch's own,
  unless it is sticky (``/tmp``) and the file there, if any, is ours. A
  directory owned by one other service user is fine: see
  :mod:`vramwatch.files`, which writes so that it cannot redirect the write.

Each check takes stat results (the fstat of the descriptor then used, so what
is checked is what is used) and returns why it is unsafe, or ``None``.
"""

from __future__ import annotations

import os
import pwd
import stat

WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def trusted_owner(uid: int, euid: int) -> bool:
    """Root, or the user vramwatch runs as (``euid``)."""
    return uid in (0, euid)


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _owner_problem(what: str, info: os.stat_result, euid: int) -> str | None:
    if trusted_owner(info.st_uid, euid):
        return None
    allowed = "root" if euid == 0 else f"root or {_who(euid)}, the user vramwatch runs as"
    return f"{what} is owned by {_who(info.st_uid)}; it must be owned by {allowed}"


def _mode_problem(what: str, info: os.stat_result, fix: str) -> str | None:
    if not info.st_mode & WRITABLE_BY_OTHERS:
        return None
    mode = stat.S_IMODE(info.st_mode)
    by = " and ".join(
        w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit
    )
    return f"{what} is writable by {by} (mode {mode:04o}); {fix}"


# -- the config -----------------------------------------------------------------------


def config_file_problem(info: os.stat_result, euid: int) -> str | None:
    """Why an opened config file is not trusted, or ``None``."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return _owner_problem("the file", info, euid) or _mode_problem(
        "the file", info, "run chmod go-w on it"
    )


def config_directory_problem(directory: str, info: os.stat_result, euid: int) -> str | None:
    """The directory holding the config (``info`` from fstat): no sticky exception."""
    what = f"its directory {directory}"
    return _owner_problem(what, info, euid) or _mode_problem(
        what, info, "anyone who can write there can replace the config"
    )


def config_ancestor_problem(directory: str, info: os.stat_result, euid: int) -> str | None:
    """A directory a name on the config's path is looked up in: sticky is protection enough."""
    what = f"the directory {directory} on its path"
    problem = _owner_problem(what, info, euid)
    if problem is None and not info.st_mode & stat.S_ISVTX:
        problem = _mode_problem(
            what, info, "anyone who can write there can swap what lies below it"
        )
    return problem


def config_link_problem(link: str, info: os.stat_result, euid: int) -> str | None:
    """A symbolic link on the config's path (``info`` from lstat)."""
    return _owner_problem(f"the symbolic link {link}", info, euid)


# -- the state file -------------------------------------------------------------------


def state_file_problem(info: os.stat_result, euid: int) -> str | None:
    """Why an opened state file is not read, or ``None``."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if not trusted_owner(info.st_uid, euid):
        return f"owned by uid {info.st_uid}, not by root or vramwatch's user"
    if info.st_mode & WRITABLE_BY_OTHERS:
        return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


# -- a directory vramwatch writes into ------------------------------------------------


def write_directory_problem(
    directory: str,
    dir_info: os.stat_result,
    target: os.stat_result | None,
    euid: int,
    egid: int,
) -> str | None:
    """Why writing into ``directory`` (fstat ``dir_info``) is unsafe, or ``None``.

    ``target`` is the lstat of the file to replace (``None``: absent). Group
    write is fine when the group is vramwatch's own (``egid``), as in a
    collector directory made ``prometheus:vramwatch 0775`` for it.
    """
    mode = stat.S_IMODE(dir_info.st_mode)
    writable = mode & stat.S_IWOTH or (mode & stat.S_IWGRP and dir_info.st_gid != egid)
    if not writable:
        return None
    if mode & stat.S_ISVTX:
        if target is None or trusted_owner(target.st_uid, euid):
            return None
        return (
            f"{directory} is sticky and writable by others (mode {mode:04o}), and the file "
            f"there is owned by uid {target.st_uid}, not by vramwatch: another user controls it"
        )
    by = "others" if mode & stat.S_IWOTH else f"group {dir_info.st_gid}"
    return (
        f"{directory} is writable by {by} (mode {mode:04o}) and not sticky: they could "
        "replace what vramwatch writes; run chmod go-w on it"
    )
