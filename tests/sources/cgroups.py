"""Throwaway tenant units on the host's real cgroup v2 hierarchy, for the sampler's tests."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

from vramwatch.sources.cgroups import CgroupLayout


def v2_root() -> Path:
    """The host's cgroup v2 hierarchy: the whole tree, or the unified one of a hybrid host."""
    layout = CgroupLayout.detect()
    root = layout.tracking if layout.mode == "v2" else layout.memory
    assert root is not None, "these tests need a cgroup v2 hierarchy (root, Linux)"
    return root


class Units:
    """Unit cgroups below one throwaway slice of the v2 hierarchy, with sleeping processes."""

    def __init__(self) -> None:
        self.root = v2_root()
        self.layout = CgroupLayout("v2", self.root, self.root)
        self.slice = self.root / f"vwfd-{secrets.token_hex(3)}.slice"
        self.slice.mkdir()
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> int:
        child = subprocess.Popen(["sleep", "600"])
        self.children.append(child)
        return child.pid

    def place(self, unit: str, *pids: int) -> None:
        directory = self.slice / unit
        directory.mkdir(parents=True, exist_ok=True)
        for pid in pids:
            (directory / "cgroup.procs").write_text(str(pid))

    def remove(self, unit: str) -> None:
        """Stop a unit as systemd does: its processes leave, its directory goes."""
        directory = self.slice / unit
        for pid in (directory / "cgroup.procs").read_text().split():
            (self.root / "cgroup.procs").write_text(pid)
        directory.rmdir()

    def close(self) -> None:
        for child in self.children:
            child.kill()
            child.wait()
        deadline = time.monotonic() + 10
        for directory in sorted(self.slice.rglob("*"), key=lambda p: -len(p.parts)):
            if directory.is_dir():
                while True:
                    try:
                        directory.rmdir()
                        break
                    except OSError:  # EBUSY until the killed processes are gone
                        assert time.monotonic() < deadline, f"cannot remove {directory}"
                        time.sleep(0.02)
        self.slice.rmdir()
