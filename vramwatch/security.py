"""Open the config so that what is checked is what is read.

Who may own and write the config, and why not, is in :mod:`vramwatch.ownership`.
:func:`open_config` asks those checks on the opened descriptors, walking with
``openat`` and ``O_NOFOLLOW`` from ``/``, so a rename or a planted link between
check and open changes nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from vramwatch.ownership import (
    config_ancestor_problem,
    config_directory_problem,
    config_file_problem,
    config_link_problem,
)


class Untrusted(Exception):
    """The config, or a path that leads to it, could be changed by someone else."""


# Linux follows at most 40 symbolic links in one lookup (MAXSYMLINKS).
MAX_SYMLINKS = 40


def open_config(path: Path | str, euid: int | None = None) -> int:
    """Open the config at ``path`` for reading, checking every step on the way.

    Walks from ``/`` one component at a time with ``openat(O_PATH|O_NOFOLLOW)``
    on the descriptor of the directory already checked, so what is checked is
    what is read (a rename or a planted link between check and open changes
    nothing). Every directory a name is looked up in must be owned by root or
    ``euid`` and not writable by group or others, except with the sticky bit
    (``/tmp``); the directory holding the file has no sticky exception. Every
    symbolic link followed must be owned by root or ``euid``; the file, see
    :func:`~vramwatch.ownership.config_file_problem`.

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
                config_directory_problem(parent_path, parent_info, euid)
                if last
                else config_ancestor_problem(parent_path, parent_info, euid)
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
                problem = config_link_problem(shown, info, euid)
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
                problem = config_file_problem(info, euid)
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
