"""Restart history that survives restarting vramwatch: ``STATE_DIRECTORY/state.json``.

Without it, a crash-looping vramwatch (or an operator's ``systemctl restart
vramwatch``) would reset ``max_restarts`` and ``cooldown`` and let a restart
storm through. Only the per-unit action times are kept: everything else in
:class:`vramwatch.policy.History` (breach streaks, in-flight actions) must be
observed afresh after a restart.

Times. The policy runs on ``time.monotonic_ns``, which restarts from zero at
boot. Each time is stored twice: as monotonic ns with the kernel's boot id
(used as is when vramwatch restarts within the same boot, so a wall clock
that jumps changes nothing), and as wall-clock ns (converted back after a
reboot). A wall time in the future (the clock was set back) counts as "now":
the cooldown is then as long as it can be, never shorter.

Versions (SPEC "Files vramwatch writes"): this version writes and reads format
1. A file of a newer format (a downgrade) is not read and not called corrupt:
it is kept as ``state.json.vN``, said so (``state_too_new``), and the history
starts afresh, saved in this version's format from then on.

Writes are atomic and safe (:mod:`vramwatch.files`: a randomly named new file
created with ``O_EXCL|O_NOFOLLOW``, fsync, rename, fsync of the directory). A
file that cannot be parsed, or that anybody but root or vramwatch's own user
could have written, is set aside as ``state.json.corrupt`` and reported; the
next save replaces it. Nothing here is fatal.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vramwatch.config import validate_tenant_key
from vramwatch.files import UnsafeWrite, write_atomically
from vramwatch.ownership import state_file_problem

DEFAULT_DIR = Path("/var/lib/vramwatch")
STATE_DIR_ENV = "STATE_DIRECTORY"  # set by systemd for StateDirectory=
FILE_NAME = "state.json"
VERSION = 1
# A state file holds a few timestamps per tenant; anything bigger is not ours.
MAX_STATE_BYTES = 1024 * 1024
# Never restore more times per unit than any sane max_restarts could use.
MAX_TIMES_PER_UNIT = 64
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def default_dir() -> Path:
    """``$STATE_DIRECTORY`` (its first entry) when systemd set it, else /var/lib/vramwatch."""
    env = os.environ.get(STATE_DIR_ENV, "")
    first = env.split(":")[0]
    return Path(first) if first else DEFAULT_DIR


def read_boot_id(path: Path = BOOT_ID) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def restored_time(mono: int, wall: int, same_boot: bool, mono_now: int, wall_now: int) -> int:
    """An action time saved as (``mono``, ``wall``), on the monotonic clock of now.

    Within one boot the monotonic time is used as is (a wall clock that jumps changes
    nothing); after a reboot only the wall clock links the two, and a time in the
    future (the clock was set back) is taken as now, never later. Replay carries
    action times from one run of vramwatch to the next by this same rule.
    """
    if same_boot:
        return min(mono, mono_now)
    return mono_now - max(0, wall_now - wall)


@dataclass(frozen=True, slots=True)
class Restored:
    """What :meth:`StateStore.load` found: action times on the monotonic clock."""

    actions_ns: Mapping[str, tuple[int, ...]]
    problem: str | None = None  # set when the file was corrupt or untrusted (then set aside)
    found: bool = False  # a state file existed
    newer: bool = False  # of a newer format than this version reads (then kept aside)
    # The file could not be opened (permissions, I/O): nothing was read or set aside.
    unavailable: bool = False


class _Newer(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


class StateError(Exception):
    """The state could not be written; ``str()`` names the file and the reason."""


class StateStore:
    """Loads and saves per-unit action times in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        boot_id: Callable[[], str] = read_boot_id,
        euid: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self._wall = wall_ns
        self._mono = mono_ns
        self._boot_id = boot_id
        self._euid = os.geteuid() if euid is None else euid

    # load ------------------------------------------------------------------

    def load(self) -> Restored:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return Restored({})
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW: a symlink planted in our directory
                return self._set_aside("a symbolic link, not a file")
            why = f"{self.path}: cannot open: {exc.strerror or exc}"
            return Restored({}, why, found=True, unavailable=True)
        try:
            info = os.fstat(fd)
            problem = state_file_problem(info, self._euid)
            if problem is not None:
                os.close(fd)
                fd = -1
                return self._set_aside(problem)
            with os.fdopen(fd, "rb") as handle:
                fd = -1
                raw = handle.read(MAX_STATE_BYTES + 1)
        except OSError as exc:
            return self._set_aside(f"cannot read: {exc.strerror or exc}")
        finally:
            if fd >= 0:
                os.close(fd)
        if len(raw) > MAX_STATE_BYTES:
            return self._set_aside(f"larger than {MAX_STATE_BYTES} bytes")
        try:
            actions = self._parse(raw)
        except _Newer as newer:
            return self._keep_newer(newer.version)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            return self._set_aside(f"not a vramwatch state file ({exc})")
        return Restored(actions, found=True)

    def _parse(self, raw: bytes) -> dict[str, tuple[int, ...]]:
        data = json.loads(raw.decode("utf-8"))
        version = data.get("version") if isinstance(data, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise _Newer(version)
        if version != VERSION:
            raise ValueError(f"expected an object with version {VERSION}")
        units = data["units"]
        if not isinstance(units, dict):
            raise ValueError("units is not an object")
        same_boot = bool(data.get("boot_id")) and data.get("boot_id") == self._boot_id()
        mono_now, wall_now = self._mono(), self._wall()
        actions: dict[str, tuple[int, ...]] = {}
        for unit, entry in units.items():
            if validate_tenant_key(unit) is not None:
                raise ValueError(f"bad tenant {unit!r}")
            times = []
            for item in entry["actions"][-MAX_TIMES_PER_UNIT:]:
                mono, wall = item["mono_ns"], item["wall_ns"]
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (mono, wall)):
                    raise ValueError("times must be integers")
                times.append(restored_time(mono, wall, same_boot, mono_now, wall_now))
            if times:
                actions[unit] = tuple(sorted(times))
        return actions

    def _set_aside(self, problem: str) -> Restored:
        text = f"{self.path}: {problem}; set aside as {FILE_NAME}.corrupt, starting afresh"
        try:
            os.replace(self.path, self.directory / f"{FILE_NAME}.corrupt")
        except OSError as exc:
            text = f"{self.path}: {problem}; could not set it aside ({exc.strerror or exc})"
        return Restored({}, problem=text, found=True)

    def _keep_newer(self, version: int) -> Restored:
        """A downgrade: what a newer vramwatch wrote is kept, unread, beside ours."""
        kept = f"{FILE_NAME}.v{version}"
        text = (
            f"{self.path}: written by a newer vramwatch (state format {version}; this "
            f"version reads format {VERSION}): not read; kept as {kept}, starting afresh"
        )
        try:
            os.replace(self.path, self.directory / kept)
        except OSError as exc:
            text = (
                f"{self.path}: written by a newer vramwatch (state format {version}; this "
                f"version reads format {VERSION}): not read, and could not be kept aside "
                f"({exc.strerror or exc})"
            )
        return Restored({}, problem=text, found=True, newer=True)

    # save ------------------------------------------------------------------

    def save(self, actions_ns: Mapping[str, tuple[int, ...]]) -> None:
        """Write atomically; raise :class:`StateError` when it cannot be written."""
        mono_now, wall_now = self._mono(), self._wall()
        units = {
            unit: {
                "actions": [
                    {"mono_ns": t, "wall_ns": wall_now - (mono_now - t)}
                    for t in sorted(times)[-MAX_TIMES_PER_UNIT:]
                ]
            }
            for unit, times in sorted(actions_ns.items())
            if times
        }
        body = {
            "version": VERSION,
            "boot_id": self._boot_id(),
            "saved_wall_ns": wall_now,
            "units": units,
        }
        data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot save: {exc.strerror or exc}") from None
        try:
            write_atomically(self.path, data, 0o600)
        except UnsafeWrite as exc:
            raise StateError(f"{self.path}: cannot save: {exc}") from None
