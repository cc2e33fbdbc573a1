"""Files vramwatch writes (the state file, the metrics textfile): safe by construction.

Every write is a new file with a random name, created with
``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to a descriptor of the target's own
directory, written, ``fchmod``-ed, ``fsync``-ed and renamed over the target,
then the directory is ``fsync``-ed. Nothing opens a predictable name or
follows a link: a symlink planted under the target's name is replaced, not
followed, and one planted under a temporary name cannot be guessed (and
``O_EXCL`` refuses it anyway). See SPEC "Files vramwatch writes".

A directory writable by others, or by a group that is not vramwatch's own,
is refused, unless it is sticky (``/tmp``) and the target, if it exists, is
ours: there anyone could replace what vramwatch wrote. A directory owned by
one other service user (Debian's node_exporter textfile directory belongs to
``prometheus``) is accepted: that user reads the file, and the construction
above keeps it from redirecting the write.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class UnsafeWrite(Exception):
    """A write refused or failed; ``str()`` is the reason (the caller names the file)."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused  # the directory is unsafe (not an I/O error)


_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def directory_problem(
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
        if target is None or target.st_uid in (0, euid):
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


def write_atomically(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``, safely (see the module docstring).

    Raises :class:`UnsafeWrite` when the directory is unsafe or any step
    fails; the temporary file is removed then.
    """
    path = Path(path)
    directory = str(path.parent)
    name = path.name
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeWrite(str(exc.strerror or exc)) from None
    try:
        try:
            target: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            target = None
        problem = directory_problem(directory, os.fstat(dir_fd), target, os.geteuid(), os.getegid())
        if problem is not None:
            raise UnsafeWrite(f"refusing to write there: {problem}", refused=True)
        if target is not None and stat.S_ISDIR(target.st_mode):
            raise UnsafeWrite("is a directory")
        tmp = f".{name}.{os.urandom(8).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        try:
            os.fsync(dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EROFS):  # some filesystems cannot
                raise
    except OSError as exc:
        raise UnsafeWrite(str(exc.strerror or exc)) from None
    finally:
        os.close(dir_fd)
