"""scripts/bootstrap's own output: what is being installed, one line a step, and
the venv's path on stdout; apt's and pip's chatter only in $VENV/bootstrap.log,
which a failing step names along with its last lines.

The real script runs with stand-ins for what it calls: `id` says root,
`dpkg-query` reports the packages in FAKE_MISSING (every package: "all") as not installed,
`apt-cache` knows the installed systemd's version unless FAKE_APT_GONE, `apt-get`
and the venv's `pip` print what the real ones print on this machine (pip's
index notes, a backend's deprecation warning, debconf's complaints) and fail
when told to. No root, no network, about a second.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "scripts" / "bootstrap"
VENV_LINE = "bootstrap: venv {venv}: installing vramwatch and its test tools (pip)"
WARNING = re.compile(r"warn|deprecat", re.IGNORECASE)

SHIMS = {
    "id": "echo 0\n",
    "dpkg-query": """
pkg="${!#}"
case "$*" in *Version*) echo 252.39-1~deb12u1; exit 0;; esac
[ "${FAKE_MISSING:-}" = all ] && exit 1
for m in $FAKE_MISSING; do [ "$m" = "$pkg" ] && exit 1; done
echo "install ok installed"
""",
    "apt-get": """
echo "apt-get $*"
echo "W: https://deb.example/ bookworm InRelease: Key is stored in legacy trusted.gpg keyring" >&2
echo "debconf: delaying package configuration, since apt-utils is not installed" >&2
if [ -n "${FAKE_APT_FAIL:-}" ] && [ "$1" = install ]; then
    echo "E: Could not get lock /var/lib/dpkg/lock-frontend" >&2
    exit 100
fi
""",
    "apt-cache": """
[ -z "${FAKE_APT_GONE:-}" ] || exit 100
echo "Package: ${2%%=*}"
""",
    "systemctl": "exit 0\n",
}

PIP = """#!/bin/sh
echo "pip $*"
echo "WARNING: Location 'file:///opt/pypi-more/simple/pip/' is ignored:" \
     "it is neither a file nor a directory." >&2
echo "  SetuptoolsDeprecationWarning: \\`project.license\\` as a TOML table is deprecated" >&2
case "$*" in *"$FAKE_PIP_FAIL_ON"*)
    if [ -n "${FAKE_PIP_FAIL_ON:-}" ]; then
        echo "ERROR: No matching distribution found for ruff>=0.4" >&2
        exit 1
    fi;;
esac
"""


def bootstrap(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    for name, body in SHIMS.items():
        (shims / name).write_text("#!/bin/bash\n" + body)
        (shims / name).chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    (venv / "bin" / "pip").write_text(PIP)
    for name in ("python", "pip"):
        (venv / "bin" / name).chmod(0o755)
    proc = subprocess.run(
        [str(BOOTSTRAP)],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": f"{shims}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "VRAMWATCH_VENV": str(venv),
            **env,
        },
    )
    return proc, venv


def test_warm_run_says_what_it_installs_and_prints_the_venv(tmp_path: Path) -> None:
    proc, venv = bootstrap(tmp_path)

    assert (0, f"{venv}\n") == (proc.returncode, proc.stdout)
    assert [VENV_LINE.format(venv=venv)] == proc.stderr.splitlines()
    log = (venv / "bootstrap.log").read_text()
    assert "pip install .[test]" in log
    assert "SetuptoolsDeprecationWarning" in log


def test_missing_packages_are_one_line_and_apt_says_nothing(tmp_path: Path) -> None:
    proc, venv = bootstrap(tmp_path, FAKE_MISSING="gcc mandoc libsystemd-dev")

    assert 0 == proc.returncode, proc.stderr
    assert [
        "bootstrap: apt: installing 3 packages (gcc mandoc libsystemd-dev)",
        VENV_LINE.format(venv=venv),
    ] == proc.stderr.splitlines()
    assert [] == [line for line in proc.stderr.splitlines() if WARNING.search(line)]
    log = (venv / "bootstrap.log").read_text()
    assert "libsystemd-dev=252.39-1~deb12u1" in log
    assert "debconf: delaying package configuration" in log


def test_failing_pip_step_names_the_log_and_shows_its_last_lines(tmp_path: Path) -> None:
    proc, venv = bootstrap(tmp_path, FAKE_PIP_FAIL_ON=".[test]")
    lines = proc.stderr.splitlines()

    # Nothing on stdout: `VENV="$(./scripts/bootstrap)"` in scripts/demo and
    # scripts/test gets no path, and their `set -e` stops them with this status.
    assert (1, "") == (proc.returncode, proc.stdout)
    assert VENV_LINE.format(venv=venv) == lines[0]
    assert f"bootstrap: venv failed (exit 1): {venv}/bin/pip install .[test]" == lines[1]
    assert "  | ERROR: No matching distribution found for ruff>=0.4" in lines
    assert f"bootstrap: full log: {venv}/bootstrap.log" == lines[-1]
    # The failing step's lines, not the earlier steps' that succeeded.
    assert "--upgrade pip" not in proc.stderr
    assert "ERROR: No matching distribution" in (venv / "bootstrap.log").read_text()


def test_failing_apt_step_names_the_log_and_stops_before_pip(tmp_path: Path) -> None:
    proc, venv = bootstrap(tmp_path, FAKE_MISSING="mandoc", FAKE_APT_FAIL="1")
    lines = proc.stderr.splitlines()

    assert (100, "") == (proc.returncode, proc.stdout)
    assert "bootstrap: apt: installing 1 package (mandoc)" == lines[0]
    assert lines[1].startswith("bootstrap: apt failed (exit 100): apt-get install ")
    assert "  | E: Could not get lock /var/lib/dpkg/lock-frontend" in lines
    assert f"bootstrap: full log: {venv}/bootstrap.log" == lines[-1]
    assert "pip install" not in (venv / "bootstrap.log").read_text()
    assert not any(line.startswith("bootstrap: venv") for line in lines)


def apt_install_words(venv: Path) -> list[str]:
    log = (venv / "bootstrap.log").read_text().splitlines()
    (install,) = [line for line in log if line.startswith("apt-get install")]
    return install.split()


def fresh_machine_packages(tmp_path: Path) -> list[str]:
    """What bootstrap has apt install on a machine that has none of its packages."""
    proc, venv = bootstrap(tmp_path, FAKE_MISSING="all")
    assert 0 == proc.returncode, proc.stderr
    words = apt_install_words(venv)
    packages = words[words.index("--no-install-recommends") + 1 :]
    return [w.split("=")[0] for w in packages]


def test_systemds_own_packages_are_pinned_to_the_installed_systemd(tmp_path: Path) -> None:
    # Debian 12.13 moved systemd-container to 252.39 while the machine ran
    # 252.38: unpinned, apt could not resolve libsystemd-shared and stopped.
    proc, venv = bootstrap(tmp_path, FAKE_MISSING="systemd-container libsystemd-dev gcc")

    assert 0 == proc.returncode, proc.stderr
    words = apt_install_words(venv)
    assert "systemd-container=252.39-1~deb12u1" in words
    assert "libsystemd-dev=252.39-1~deb12u1" in words
    assert "gcc" in words
    assert "systemd" not in words


def test_when_the_archive_lost_the_installed_version_systemd_is_upgraded_too(
    tmp_path: Path,
) -> None:
    proc, venv = bootstrap(
        tmp_path, FAKE_MISSING="systemd-container libsystemd-dev", FAKE_APT_GONE="1"
    )

    assert 0 == proc.returncode, proc.stderr
    words = apt_install_words(venv)
    assert ["libsystemd-dev", "systemd-container", "systemd"] == words[-3:]
