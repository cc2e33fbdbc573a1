"""End-to-end harness: the installed ``vramwatch run`` on a real systemd user
manager, with the real pynvml loading a fake ``libnvidia-ml.so.1``.

``bed`` gives each test a world-readable directory with the fake GPU state,
a procdir where tenant programs declare their VRAM, helpers to start tenant
units and to run the daemon as a subprocess, reading its JSON events.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dockerd import PODMAN, Dockerd, Podman, missing
from tests.e2e.harness import Bed, Daemon, prepare, venv
from tests.sandbox import Sandbox
from tests.sandbox.fixtures import in_ci

__all__ = ["Bed", "Daemon", "Dockerd", "Podman", "venv"]


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


@pytest.fixture(scope="session")
def dockerd_session() -> Iterator[Dockerd]:
    """A private Docker Engine for the whole run; everything it made is removed after."""
    problems = missing()
    if problems:
        reason = "cannot run a private dockerd: " + "; ".join(problems)
        if in_ci():
            pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
        pytest.skip(reason)
    engine = Dockerd()
    try:
        engine.start()
        print(f"\ndockerd {engine.dir} up in {engine.startup_s:.2f}s", file=sys.stderr)
        yield engine
    finally:
        engine.close()


@pytest.fixture
def dockerd(dockerd_session: Dockerd) -> Iterator[Dockerd]:
    """The session's dockerd, running, with no container left from the test before."""
    if dockerd_session.proc is None:
        dockerd_session.start()  # a test stopped it: its containers are still there, stopped
        dockerd_session.remove_containers()
    try:
        yield dockerd_session
    finally:
        if dockerd_session.proc is not None:
            dockerd_session.remove_containers()


@pytest.fixture
def podman() -> Iterator[Podman]:
    """A private ``podman system service`` (Docker-compatible API) for one test."""
    problems = missing(PODMAN)
    if problems:
        reason = "cannot run a private podman service: " + "; ".join(problems)
        if in_ci():
            pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
        pytest.skip(reason)
    engine = Podman()
    try:
        engine.start()
        print(f"\npodman service {engine.dir} up in {engine.startup_s:.2f}s", file=sys.stderr)
        yield engine
    finally:
        engine.close()
