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

from vramwatch.ownership import write_directory_problem


class UnsafeWrite(Exception):
    """A write refused or failed; ``str()`` is the reason (the caller names the file)."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused  # the directory is unsafe (not an I/O error)


class Staged:
    """A new file beside ``path`` under a random name, published over ``path`` later.

    Opens ``path``'s directory, refuses it if unsafe
    (:func:`~vramwatch.ownership.write_directory_problem`),
    and creates the file ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to that
    descriptor. Write to :attr:`fd`, then :meth:`publish` (fsync, rename over
    ``path``, fsync the directory) or :meth:`discard`. After ``publish`` the
    caller owns :attr:`fd` and may go on appending to it (the trace does).
    ``dir_fd``: a descriptor of that directory the caller holds (the trace's), used
    instead of opening it again by name. Raises :class:`UnsafeWrite`.
    """

    def __init__(self, path: Path | str, mode: int = 0o644, *, dir_fd: int | None = None) -> None:
        path = Path(path)
        self.directory = str(path.parent)
        self.name = path.name
        self.mode = mode
        try:
            if dir_fd is not None:
                self.dir_fd = os.dup(dir_fd)  # its own copy, closed as this one is
            else:
                self.dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UnsafeWrite(str(exc.strerror or exc)) from None
        try:
            try:
                target: os.stat_result | None = os.stat(
                    self.name, dir_fd=self.dir_fd, follow_symlinks=False
                )
            except FileNotFoundError:
                target = None
            problem = write_directory_problem(
                self.directory, os.fstat(self.dir_fd), target, os.geteuid(), os.getegid()
            )
            if problem is not None:
                raise UnsafeWrite(f"refusing to write there: {problem}", refused=True)
            if target is not None and stat.S_ISDIR(target.st_mode):
                raise UnsafeWrite("is a directory")
            self.tmp = f".{self.name}.{os.urandom(8).hex()}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(self.tmp, flags, 0o600, dir_fd=self.dir_fd)
        except OSError as exc:
            os.close(self.dir_fd)
            raise UnsafeWrite(str(exc.strerror or exc)) from None
        except BaseException:
            os.close(self.dir_fd)
            raise

    def publish(self, *, close: bool = False) -> None:
        """fchmod, fsync, rename over the target, fsync the directory."""
        try:
            try:
                os.fchmod(self.fd, self.mode)
                os.fsync(self.fd)
                if close:
                    os.close(self.fd)
                    self.fd = -1
                os.rename(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except BaseException:
                self.discard()
                raise
            try:
                os.fsync(self.dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EROFS):  # some filesystems cannot
                    raise
        except OSError as exc:
            raise UnsafeWrite(str(exc.strerror or exc)) from None
        finally:
            self._close_dir()

    def discard(self) -> None:
        """Close and remove the new file; the target is untouched."""
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if self.dir_fd >= 0:
            try:
                os.unlink(self.tmp, dir_fd=self.dir_fd)
            except OSError:
                pass
        self._close_dir()

    def _close_dir(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def write_all(fd: int, data: bytes) -> int:
    """Write all of ``data`` to ``fd`` (short writes resumed); returns its length."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def write_atomically(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``, safely (see the module docstring).

    Raises :class:`UnsafeWrite` when the directory is unsafe or any step
    fails; the temporary file is removed then.
    """
    staged = Staged(path, mode)
    try:
        write_all(staged.fd, data)
    except OSError as exc:
        staged.discard()
        raise UnsafeWrite(str(exc.strerror or exc)) from None
    except BaseException:
        staged.discard()
        raise
    staged.publish(close=True)
