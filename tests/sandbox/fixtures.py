"""pytest fixtures for the systemd sandbox.

Registered as a plugin (``pytest_plugins = ["tests.sandbox.fixtures"]`` in
tests/conftest.py or a test module; run pytest as ``python -m pytest`` from
the repository root so that ``tests`` is importable).

``sandbox`` is session-scoped (one user manager for the whole run);
``clean_sandbox`` is the same object, reset after each test (units stopped,
popen()ed processes killed, /proc/meminfo restored).

Skip policy: when the machine cannot host a sandbox (not root, a tool
missing, no usable cgroup hierarchy, no mount namespaces) the tests are
skipped with the reason, except when the environment variable CI is "true"
(or "1"): then they fail, because a skipped sandbox in CI means untested code.
A sandbox that should work but fails to start is always an error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from . import Sandbox, missing_prerequisites


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_sandbox() -> None:
    """Skip (or, in CI, fail) unless this machine can host a sandbox."""
    problems = missing_prerequisites()
    if problems:
        reason = "systemd sandbox unavailable: " + "; ".join(problems)
        if in_ci():
            pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
        pytest.skip(reason)


def running_sandbox(**options: Any) -> Iterator[Sandbox]:
    """Start a sandbox (skip or, in CI, fail when the machine cannot), yield it, stop it."""
    require_sandbox()
    sb = Sandbox(**options)
    sb.start()
    print(f"\nsandbox {sb.name} {options or ''} up in {sb.startup_seconds:.2f}s", file=sys.stderr)
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    yield from running_sandbox()


@pytest.fixture
def clean_sandbox(sandbox: Sandbox) -> Iterator[Sandbox]:
    try:
        yield sandbox
    finally:
        sandbox.reset()
