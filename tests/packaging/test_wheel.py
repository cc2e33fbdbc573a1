"""`python -m build`: the sdist and the wheel built from it carry the unit and man pages.

The wheel is installed with pip into a scratch prefix, as `pip install .`
would install it into a venv: the command, the man pages under
share/man (`man -M PREFIX/share/man`) and the unit under share/vramwatch.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging.conftest import ROOT, require, warning_lines
from tests.packaging.debbuild import source_copy

DATA = {
    "share/man/man8/vramwatch.8",
    "share/man/man5/vramwatch.toml.5",
    "share/vramwatch/systemd/vramwatch.service",
    "share/vramwatch/systemd/least-privilege.conf",
    "share/vramwatch/systemd/metrics.conf",
    "share/vramwatch/systemd/release.conf",
    "share/vramwatch/systemd/containers.conf",
    "share/vramwatch/systemd/hooks-network.conf",
    "share/vramwatch/sysusers.d/vramwatch.conf",
    "share/vramwatch/tmpfiles.d/vramwatch.conf",
    "share/vramwatch/journald/vramwatch.catalog",
    "share/doc/vramwatch/examples/config.example.toml",
    "share/doc/vramwatch/examples/50-vramwatch.rules.example",
}


@dataclass(frozen=True)
class Dist:
    path: Path
    output: str  # build's stdout and stderr, the backend's included


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dist]:
    """sdist, then the wheel from the sdist (build's default), from a copy of the tree.

    In build's isolated environment: the newest build backend pip finds, as
    `pip install .` uses it (Debian's own is test_deb's).
    """
    work = tmp_path_factory.mktemp("dist")
    src = work / "src"
    source_copy(src)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "No module named build" in proc.stderr:
        require(commands=("python -m build",))
    assert 0 == proc.returncode, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield Dist(work / "dist", proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def dist(built: Dist) -> Path:
    return built.path


def test_build_prints_no_warning(built: Dist) -> None:
    """No deprecation warning from the newest backend (setuptools >= 77 warned on every build)."""
    assert [] == warning_lines(built.output), built.output[-3000:]


def test_wheel_carries_the_data_files_and_the_command(dist: Path) -> None:
    (wheel,) = dist.glob("vramwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    prefix = f"{wheel.name.split('-py3')[0]}.data/data/"

    assert set() == {prefix + d for d in DATA} - names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "vramwatch = vramwatch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_sdist_carries_what_the_debian_build_needs(dist: Path) -> None:
    """Every tracked file of the package's sources: debian/ too, so the .deb builds from it."""
    (sdist,) = dist.glob("vramwatch-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    tracked = subprocess.run(
        ["git", "ls-files", "debian", "man", "packaging", "vramwatch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    assert {"pyproject.toml", "README.md", "config.example.toml", "debian/rules"} <= names
    assert set() == set(tracked) - names


def test_pip_install_puts_command_unit_and_man_pages_under_the_prefix(
    dist: Path, tmp_path: Path
) -> None:
    require(commands=("man",))
    (wheel,) = dist.glob("vramwatch-*.whl")
    prefix = tmp_path / "prefix"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--prefix",
            str(prefix),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )

    assert (prefix / "bin" / "vramwatch").is_file()
    assert set() == {d for d in DATA if not (prefix / d).is_file()}
    assert (ROOT / "packaging/systemd/vramwatch.service").read_bytes() == (
        prefix / "share/vramwatch/systemd/vramwatch.service"
    ).read_bytes()
    page = subprocess.run(
        ["man", "-M", str(prefix / "share/man"), "8", "vramwatch"],
        capture_output=True,
        text=True,
        env={"MANPAGER": "cat", "PATH": "/usr/bin:/bin"},
    )
    assert 0 == page.returncode, page.stderr
    assert "vramwatch - GPU VRAM and host RAM watchdog for shared NVIDIA hosts" in page.stdout
