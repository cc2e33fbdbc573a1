"""Fixtures for tests/system: a Debian 12 or 13 booted under systemd as PID 1.

``payload`` (session): what the tests bring into the booted system, bound
read-only at /mnt/vramwatch-test: the fake libnvidia-ml.so.1 compiled on this
host and the tenant program of the end-to-end tests. ``boot()`` starts a
``Machine`` from the cached tree and always stops it.

A machine that cannot boot containers (not root, no debootstrap or
systemd-nspawn) skips these tests with the reason, and fails them under
CI=true, where ./scripts/bootstrap has installed both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import fakenvml
from tests.packaging.conftest import ROOT, require
from tests.system.machine import RELEASES, Machine, lock_path, tree


def require_machines() -> None:
    require(root=True, commands=("debootstrap", "systemd-nspawn", "nsenter", "gcc"))


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_machines()
    out = tmp_path_factory.mktemp("system-payload")
    fakenvml.build(out)
    shutil.copy(ROOT / "tests/e2e/tenant.py", out / "tenant.py")
    shutil.copy(ROOT / "tests/sandbox/hog.py", out / "hog.py")
    out.chmod(0o755)
    for path in out.iterdir():
        path.chmod(0o755)
    return out


@pytest.fixture(scope="session")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Every release's cached tree; missing ones are debootstrapped side by side
    (about 2.5 minutes for both on a cold machine, instead of 5 one after the other).
    Held with a shared lock for the session: a concurrent run that finds a tree
    stale waits to rebuild it until no run boots from it."""
    require_machines()
    logs = tmp_path_factory.mktemp("debootstrap")
    with ThreadPoolExecutor(len(RELEASES)) as pool:
        futures = {r: pool.submit(tree, r, log=logs / f"{r}.log") for r in RELEASES}
    roots = {}
    for release, future in futures.items():
        roots[release], built = future.result()
        if built:
            print(f"\n{release}: tree built in {built:.0f}s ({logs})", file=sys.stderr)
    with contextlib.ExitStack() as held:
        for release in RELEASES:
            lock = held.enter_context(open(lock_path(release), "w"))
            fcntl.flock(lock, fcntl.LOCK_SH)
        yield roots


@contextmanager
def boot(release: str, root: Path, log_dir: Path, binds: Mapping[Path, str]) -> Iterator[Machine]:
    """``release`` booted from its tree ``root`` (``trees[release]``)."""
    require_machines()
    log_dir.mkdir(parents=True, exist_ok=True)
    run_systemd_before = os.path.exists("/run/systemd/system")
    machine = Machine(release, root, log_dir, binds=binds)
    started = time.monotonic()
    try:
        machine.start()
        print(
            f"\n{release}: booted in {machine.boot_seconds:.1f}s; logs {log_dir}", file=sys.stderr
        )
        yield machine
    finally:
        if machine.leader:
            with contextlib.suppress(Exception):
                journal = machine.run("journalctl", "-b", "--no-pager", "-o", "short-precise")
                (log_dir / "journal.txt").write_text(journal.stdout)
        machine.stop()
        print(f"\n{release}: up for {time.monotonic() - started:.0f}s", file=sys.stderr)
    # The host is no systemd host: booting a container must not make it look like one.
    assert run_systemd_before == os.path.exists("/run/systemd/system")
