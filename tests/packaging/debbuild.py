"""The Debian package, built once per test session from a copy of the tree.

``dpkg-buildpackage -us -uc -b`` on the files a fresh clone would have (about
10 s). Shared by tests/packaging/test_deb.py (its contents, lintian, the
packaged code on Debian's python3) and tests/system (``apt install`` on a
booted Debian 12 and 13): a plugin of tests/conftest.py, fixture ``deb_build``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Build:
    deb: Path
    changes: Path
    tree: Path  # the .deb unpacked, control files in DEBIAN/
    seconds: float
    output: str  # dpkg-buildpackage's stdout and stderr, the build backend's included


def source_copy(dest: Path) -> None:
    """Tracked and new (not ignored) files, as a fresh clone would have them."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)


def build_deb(work: Path) -> Build:
    """Build the package in ``work`` (a copy of the tree in work/vramwatch)."""
    src = work / "vramwatch"
    source_copy(src)
    started = time.monotonic()
    proc = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": DEBIAN_PATH, "LC_ALL": "C.UTF-8", "HOME": str(work)},
    )
    seconds = time.monotonic() - started
    assert 0 == proc.returncode, proc.stdout[-4000:] + proc.stderr[-4000:]
    (deb,) = work.glob("vramwatch_*_all.deb")
    (changes,) = work.glob("vramwatch_*.changes")
    tree = work / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tree / "DEBIAN")], check=True)
    return Build(deb, changes, tree, seconds, proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def deb_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    from tests.packaging.conftest import require

    require(commands=("dpkg-buildpackage", "dh", "lintian", "git"))
    build = build_deb(tmp_path_factory.mktemp("deb"))
    print(f"\n.deb built in {build.seconds:.1f}s")
    return build
