"""End-to-end harness: the installed ``vramwatch run`` on a real systemd user
manager, with the real pynvml loading a fake ``libnvidia-ml.so.1``.

``bed`` gives each test a world-readable directory with the fake GPU state,
a procdir where tenant programs declare their VRAM, helpers to start tenant
units and to run the daemon as a subprocess, reading its JSON events.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Bed, Daemon, prepare, venv
from tests.sandbox import Sandbox
from tests.sandbox.fixtures import in_ci

__all__ = ["Bed", "Daemon", "venv"]


@pytest.fixture(scope="session")
def vramwatch_bin() -> Path:
    path = venv() / "bin" / "vramwatch"
    if not os.access(path, os.X_OK):
        reason = f"no installed vramwatch at {path} (run ./scripts/bootstrap or set VRAMWATCH_VENV)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def e2e_lib(sandbox: Sandbox) -> Path:
    """The fake NVML, built where the sandbox user can load it."""
    return prepare(sandbox)


@pytest.fixture
def bed(clean_sandbox: Sandbox, e2e_lib: Path, vramwatch_bin: Path) -> Iterator[Bed]:
    b = Bed(clean_sandbox, e2e_lib, vramwatch_bin)
    try:
        yield b
    finally:
        b.close()
