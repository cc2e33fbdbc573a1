"""A host to benchmark on: real sleeping processes in real cgroups, and a fake GPU.

The processes are forked by a small helper (``python3 -c SPAWNER``) so that
each costs a few hundred KiB of private memory; the helper's children die
with it (``PR_SET_PDEATHSIG``). Units are directories created under the
``name=systemd`` hierarchy (cgroup v1 / hybrid) or the unified tree (v2),
below one ``vwbench-<random>.slice`` that :meth:`World.close` removes, so the
daemon's own code finds them exactly as it finds systemd's units.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

from vramwatch.sources.cgroups import CgroupLayout

# Forks N children that sleep until killed; prints their PIDs, one a line.
SPAWNER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
def child():
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    while True:
        signal.pause()
pids = []
for line in sys.stdin:
    n = int(line)
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(0)
        pids.append(pid)
        print(pid)
    print("done", flush=True)
"""


class World:
    """Sleeping processes and unit cgroups under one throwaway slice."""

    def __init__(self, layout: CgroupLayout | None = None) -> None:
        """Units go in ``layout.tracking`` (the host's own layout by default)."""
        self.layout = layout or CgroupLayout.detect()
        self.slice = f"vwbench-{secrets.token_hex(3)}.slice"
        self.top = self.layout.tracking / self.slice
        self.top.mkdir()
        self.units: set[str] = set()
        self.pids: list[int] = []
        self._spawner = subprocess.Popen(
            [sys.executable, "-c", SPAWNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def spawn(self, n: int) -> list[int]:
        """Start ``n`` more sleeping processes; returns their PIDs."""
        assert self._spawner.stdin is not None and self._spawner.stdout is not None
        self._spawner.stdin.write(f"{n}\n")
        self._spawner.stdin.flush()
        new: list[int] = []
        for line in self._spawner.stdout:
            if line.strip() == "done":
                break
            new.append(int(line))
        self.pids += new
        return new

    def unit_path(self, unit: str) -> str:
        """The unit's cgroup path as /proc/PID/cgroup shows it."""
        return f"/{self.slice}/{unit}"

    def place(self, unit: str, pids: list[int]) -> None:
        """Move ``pids`` into the unit's cgroup (created on first use)."""
        directory = self.top / unit
        if unit not in self.units:
            directory.mkdir(exist_ok=True)
            self.units.add(unit)
        procs = directory / "cgroup.procs"
        for pid in pids:
            # cgroup.procs takes one PID per write(2).
            with open(procs, "w") as handle:
                handle.write(str(pid))

    def close(self) -> None:
        """Kill every process and remove every cgroup created."""
        self._spawner.kill()
        self._spawner.wait()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for unit in sorted(self.units):
            directory = self.top / unit
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # EBUSY until the killed processes are reaped
                    if time.monotonic() > deadline:
                        print(f"bench: could not remove {directory}", file=sys.stderr)
                        break
                    time.sleep(0.05)
        try:
            self.top.rmdir()
        except OSError as exc:
            print(f"bench: could not remove {self.top}: {exc}", file=sys.stderr)


def proc_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())
