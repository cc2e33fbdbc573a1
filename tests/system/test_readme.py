"""The README's install commands, word for word, on a booted Debian 12 and 13.

"Install as a service": the build dependencies, dpkg-buildpackage, `apt install`
of the .deb where the build wrote it, then least privilege. "Install with pip":
its apt line, the venv, `pip install '.[journal]'` (which compiles
systemd-python) and the link, then the commands the README runs next. Each
block is taken from README.md itself and run as root in a copy of the source
tree inside the booted system (``sudo`` dropped; ``sudoedit FILE``, a person
editing, becomes a check that FILE is there: tests/docs.py). The system shares
the host's network for apt and PyPI. docs/install.md's paths are
tests/system/test_apt_install.py and test_pip_install.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs import README, steps
from tests.packaging.debbuild import source_copy
from tests.system.conftest import boot
from tests.system.machine import BY_VERSION, Machine
from tests.system.service import show
from tests.system.test_pip_install import HOST_CA, HOST_CA_INSIDE, SOURCE

CHECKOUT = "/root/vramwatch"


def booted(
    request: pytest.FixtureRequest,
    trees: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    what: str,
) -> Iterator[Machine]:
    release = request.param
    logs = tmp_path_factory.mktemp(f"system-readme-{what}-{release}")
    src = tmp_path_factory.mktemp(f"readme-src-{what}-{release}") / "vramwatch"
    source_copy(src)
    binds = {src: SOURCE}
    if HOST_CA.exists():
        binds[HOST_CA.parent] = Path(HOST_CA_INSIDE).parent.as_posix()
    with boot(release, trees[release], logs, binds) as m:
        m.run("apt-get", "update", "-qq", timeout=300)
        m.run("cp", "-a", SOURCE, CHECKOUT)
        yield m


def follow(m: Machine, commands: str, answers: str = "", timeout: float = 900) -> str:
    """Run a README block from the checkout's root, as the README says to; ``answers``
    is what a person types at the prompts (apt's "Do you want to continue?")."""
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if HOST_CA.exists():
        env["PIP_CERT"] = HOST_CA_INSIDE
    script = f"set -eux\ncd {CHECKOUT}\n{commands}"
    return m.run("bash", "-c", script, timeout=timeout, env=env, input=answers).stdout


@pytest.fixture(scope="module", params=BY_VERSION)
def deb_system(
    request: pytest.FixtureRequest,
    trees: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Machine]:
    yield from booted(request, trees, tmp_path_factory, "deb")


@pytest.fixture(scope="module", params=BY_VERSION)
def pip_system(
    request: pytest.FixtureRequest,
    trees: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Machine]:
    yield from booted(request, trees, tmp_path_factory, "pip")


def test_readme_builds_installs_and_runs_the_package_as_the_vramwatch_user(
    deb_system: Machine,
) -> None:
    """Item 3 (issue 23): it stopped at "Unmet build dependencies", and `apt install
    ./vramwatch_0.1.0_all.deb` looked where dpkg-buildpackage does not write."""
    m = deb_system
    follow(m, steps(README, "Install as a service"), answers="y\n")
    unit = show(m, "vramwatch", "UnitFileState", "ActiveState", "MainPID", "DropInPaths")
    user = m.run("stat", "-c", "%U", f"/proc/{unit['MainPID']}").stdout.strip()
    rule = m.run("cat", "/etc/polkit-1/rules.d/50-vramwatch.rules").stdout
    debs = m.run("sh", "-c", "ls /root/*.deb").stdout.split()
    package = m.run("dpkg-query", "-W", "-f=${Status}", "vramwatch").stdout

    assert ("enabled", "active") == (unit["UnitFileState"], unit["ActiveState"])
    assert "/etc/systemd/system/vramwatch.service.d/least-privilege.conf" == unit["DropInPaths"]
    assert "vramwatch" == user
    assert "org.freedesktop.systemd1.manage-units" in rule
    assert ["/root/vramwatch_0.1.0_all.deb"] == debs
    assert "install ok installed" == package


def test_readme_pip_install_builds_systemd_python_and_the_command_runs(
    pip_system: Machine,
) -> None:
    """Item 2 (issue 23): without python3-dev, `pip install '.[journal]'` stopped at
    Python.h. Then what the README runs next: check, status, a short dry run."""
    m = pip_system
    follow(m, steps(README, "Install with pip"))
    # "Write /etc/vramwatch.toml (start from config.example.toml), then:"
    m.run("install", "-m", "644", f"{CHECKOUT}/config.example.toml", "/etc/vramwatch.toml")
    journal = m.run(
        "/opt/vramwatch/bin/python", "-c", "import systemd.journal; print('ok')"
    ).stdout.strip()
    check = m.run("vramwatch", "check")
    status = m.run("vramwatch", "status")
    # `vramwatch run --dry-run` runs until stopped: stopped after 5 s, it exits 0.
    dry = m.run(
        "timeout",
        "--preserve-status",
        "-s",
        "INT",
        "5",
        "vramwatch",
        "run",
        "--dry-run",
        "--log-target",
        "stderr",
        "--log-format",
        "json",
        "--state-dir",
        "/tmp",
        timeout=30,
    )

    assert "ok" == journal  # the extra was built and installed
    assert "/usr/local/bin/vramwatch" == m.run("sh", "-c", "command -v vramwatch").stdout.strip()
    assert "valid: " in check.stdout
    assert "GPU" in status.stdout or "RAM" in status.stdout
    assert 0 == dry.returncode
    assert '"event": "started"' in dry.stderr
