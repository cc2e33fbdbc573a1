"""Who may write the config: it decides which services vramwatch restarts.

The rule (the one OpenSSH's StrictModes and sudo apply to their own files):
the config file must be owned by root or by the user vramwatch runs as, and
not be writable by group or others; the directory holding it likewise; every
directory above it and every directory a symbolic link on the way leads
through likewise, except that a sticky directory (``/tmp``) may be writable
by others (nobody else can rename what it holds); every symbolic link on the
way must be owned by root or that user. The user running vramwatch is
trusted because it could rewrite its own config anyway: an unprivileged
``vramwatch`` system user, or the test user of ``bus = "user"``.

:func:`open_config` checks on the opened descriptors, walking with
``openat`` and ``O_NOFOLLOW`` from ``/``, so what is checked is what is read.
"""

from __future__ import annotations

import errno
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
    return directory_problem_of(str(directory), info, euid)


def directory_problem_of(directory: str, info: os.stat_result, euid: int) -> str | None:
    """The directory holding the config (``info`` from fstat): no sticky exception."""
    what = f"its directory {directory}"
    return _owner_problem(what, info, euid) or _mode_problem(
        what, info, "anyone who can write there can replace the config"
    )


class Untrusted(Exception):
    """The config, or a path that leads to it, could be changed by someone else."""


# Linux follows at most 40 symbolic links in one lookup (MAXSYMLINKS).
MAX_SYMLINKS = 40


def _ancestor_problem(directory: str, info: os.stat_result, euid: int) -> str | None:
    """A directory a name is looked up in: the sticky bit is enough protection there."""
    what = f"the directory {directory} on its path"
    problem = _owner_problem(what, info, euid)
    if problem is None and not info.st_mode & stat.S_ISVTX:
        problem = _mode_problem(
            what, info, "anyone who can write there can swap what lies below it"
        )
    return problem


def open_config(path: Path | str, euid: int | None = None) -> int:
    """Open the config at ``path`` for reading, checking every step on the way.

    Walks from ``/`` one component at a time with ``openat(O_PATH|O_NOFOLLOW)``
    on the descriptor of the directory already checked, so what is checked is
    what is read (a rename or a planted link between check and open changes
    nothing). Every directory a name is looked up in must be owned by root or
    ``euid`` and not writable by group or others, except with the sticky bit
    (``/tmp``); the directory holding the file has no sticky exception. Every
    symbolic link followed must be owned by root or ``euid``; the file, see
    :func:`file_problem`.

    Returns a descriptor open for reading. Raises :class:`Untrusted` with the
    reason, or ``OSError`` (``FileNotFoundError``, ``PermissionError``, ...).
    """
    euid = os.geteuid() if euid is None else euid
    text = os.fspath(path)
    if not text.startswith("/"):
        text = os.path.join(os.getcwd(), text)  # getcwd() has no links and no ".."
    pending = [part for part in text.split("/") if part not in ("", ".")]
    walk: list[tuple[int, str, os.stat_result]] = []  # directories: fd, shown path, fstat
    links = 0
    try:
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        walk.append((root, "/", os.fstat(root)))
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(walk) > 1:
                    os.close(walk.pop()[0])
                continue
            parent_fd, parent_path, parent_info = walk[-1]
            shown = os.path.join(parent_path, name)
            last = not pending
            problem = (
                directory_problem_of(parent_path, parent_info, euid)
                if last
                else _ancestor_problem(parent_path, parent_info, euid)
            )
            if problem is not None:
                raise Untrusted(problem)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            info = os.fstat(fd)
            if stat.S_ISLNK(info.st_mode):
                os.close(fd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), text)
                problem = _owner_problem(f"the symbolic link {shown}", info, euid)
                if problem is not None:
                    raise Untrusted(problem)
                target = os.readlink(name, dir_fd=parent_fd)
                if target.startswith("/"):
                    while len(walk) > 1:
                        os.close(walk.pop()[0])
                pending[:0] = [part for part in target.split("/") if part not in ("", ".")]
                continue
            if last:
                os.close(fd)
                if stat.S_ISDIR(info.st_mode):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), text)
                problem = file_problem(info, euid)
                if problem is not None:
                    raise Untrusted(problem)
                # Only now open it for reading (O_NOFOLLOW, and a FIFO must not block).
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                readable = os.open(name, flags, dir_fd=parent_fd)
                opened = os.fstat(readable)
                if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                    os.close(readable)
                    raise Untrusted(f"{shown} changed while it was being opened")
                return readable
            if not stat.S_ISDIR(info.st_mode):
                os.close(fd)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), shown)
            walk.append((fd, shown, info))
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), text)  # "/" itself
    finally:
        for fd, _shown, _info in walk:
            os.close(fd)
