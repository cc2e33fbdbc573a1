"""The Debian package: `dpkg-buildpackage -us -uc -b` on a copy of the tree.

One build per session (about 10 s, tests/packaging/debbuild.py), then its
contents, maintainer scripts, lintian's verdict, and the packaged code run by
Debian's own python3 with only the Depends installed (python3-structlog 22.3
on Debian 12, older than pip's pin) and the vendored NVML binding.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.packaging.conftest import ROOT, warning_lines
from tests.packaging.debbuild import DEBIAN_PATH, Build


@pytest.fixture(scope="module")
def build(deb_build: Build) -> Build:
    """One build per session, shared with tests/system (tests/packaging/debbuild.py)."""
    return deb_build


def test_build_is_quick(build: Build) -> None:
    assert build.seconds < 180


def test_build_prints_no_warning(build: Build) -> None:
    """Debian 12's own backend, run by pybuild, warns of nothing (setuptools 66 did)."""
    assert [] == warning_lines(build.output), build.output[-4000:]


def test_package_installs_the_code_unit_pages_config_and_snippets(build: Build) -> None:
    files = {
        "/" + str(p.relative_to(build.tree))
        for p in build.tree.rglob("*")
        if p.is_file() and "DEBIAN" not in p.parts
    }

    assert {
        "/usr/bin/vramwatch",
        "/usr/lib/python3/dist-packages/vramwatch/cli.py",
        "/usr/lib/python3/dist-packages/vramwatch/polkit.py",
        "/usr/share/vramwatch/vendor/pynvml.py",
        "/lib/systemd/system/vramwatch.service",
        "/usr/share/vramwatch/systemd/least-privilege.conf",
        "/usr/share/vramwatch/systemd/metrics.conf",
        "/usr/share/vramwatch/systemd/release.conf",
        "/usr/share/vramwatch/systemd/containers.conf",
        "/usr/share/vramwatch/systemd/hooks-network.conf",
        "/usr/lib/sysusers.d/vramwatch.conf",
        "/usr/lib/tmpfiles.d/vramwatch.conf",
        "/usr/lib/systemd/catalog/vramwatch.catalog",
        "/usr/share/man/man8/vramwatch.8.gz",
        "/usr/share/man/man5/vramwatch.toml.5.gz",
        "/etc/vramwatch.toml",
        "/usr/share/doc/vramwatch/examples/config.example.toml",
        "/usr/share/doc/vramwatch/examples/50-vramwatch.rules.example",
        "/usr/share/doc/vramwatch/copyright",
    } <= files
    assert not any(f.endswith(".catalog") and "/systemd/catalog/" not in f for f in files)
    assert (ROOT / "packaging/systemd/vramwatch.service").read_text() == (
        build.tree / "lib/systemd/system/vramwatch.service"
    ).read_text()


def test_config_is_a_conffile_and_the_unit_is_enabled_on_install(build: Build) -> None:
    control = build.tree / "DEBIAN"
    postinst = (control / "postinst").read_text()

    assert "/etc/vramwatch.toml\n" == (control / "conffiles").read_text()
    assert "deb-systemd-helper enable 'vramwatch.service'" in postinst
    assert "systemd-sysusers" in postinst and "vramwatch.conf" in postinst
    assert "systemd-tmpfiles" in postinst


def test_depends_are_debian_12_packages(build: Build) -> None:
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(build.deb), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    depends = {d.strip().split(" ")[0] for d in fields.replace("|", ",").split(",")}

    assert {
        "polkitd",
        "procps",  # /bin/kill, the unit's ExecReload=: not in a minimal Debian
        "python3-jeepney",
        "python3-prometheus-client",
        "python3-psutil",
        "python3-structlog",
        "python3-systemd",
    } <= depends
    assert not any("nvidia" in d or "pynvml" in d for d in depends)


def test_lintian_is_clean(build: Build) -> None:
    proc = subprocess.run(
        ["lintian", "--info", "--display-info", str(build.changes)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": DEBIAN_PATH, "LC_ALL": "C.UTF-8"},
    )
    tags = [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:", "I:", "X:")]

    assert (0, []) == (proc.returncode, tags), proc.stdout + proc.stderr


def packaged_env(build: Build) -> dict[str, str]:
    """Debian's python3 with the unpacked package's directories as if installed."""
    tree = build.tree
    return {
        "PATH": DEBIAN_PATH,
        "PYTHONPATH": f"{tree}/usr/lib/python3/dist-packages:{tree}/usr/share/vramwatch/vendor",
        "LC_ALL": "C.UTF-8",
    }


def packaged(build: Build, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The packaged /usr/bin/vramwatch, on Debian's python3, from the unpacked tree."""
    return subprocess.run(
        ["/usr/bin/python3", str(build.tree / "usr/bin/vramwatch"), *args],
        capture_output=True,
        text=True,
        env=packaged_env(build),
        timeout=timeout,
    )


def test_packaged_code_runs_on_debian_python_with_the_vendored_nvml(build: Build) -> None:
    """check and a short dry run, with python3-* from Debian and no pip packages."""
    check = packaged(build, "check", "-c", str(build.tree / "etc/vramwatch.toml"))
    state = build.deb.parent / "state"
    state.mkdir()
    run = subprocess.Popen(
        [
            "/usr/bin/python3",
            str(build.tree / "usr/bin/vramwatch"),
            "run",
            "--dry-run",
            "-c",
            str(build.tree / "etc/vramwatch.toml"),
            "--state-dir",
            str(state),
            "--log-target",
            "stderr",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=packaged_env(build),
    )
    time.sleep(3)
    run.terminate()
    _, err = run.communicate(timeout=10)
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]

    assert 0 == check.returncode, check.stderr
    assert "valid: 3 tenants, bus system, dry run" in check.stdout
    assert "No module named" not in check.stderr
    assert (0, "started") == (run.returncode, events[0]), err
    assert "stopping" in events


def test_launcher_puts_the_vendored_pynvml_first(build: Build) -> None:
    proc = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            (
                "import runpy, sys; sys.argv = ['vramwatch', '--version'];"
                f"runpy.run_path('{build.tree}/usr/bin/vramwatch', run_name='__main__')"
            ),
        ],
        capture_output=True,
        text=True,
        env={"PATH": DEBIAN_PATH, "PYTHONPATH": f"{build.tree}/usr/lib/python3/dist-packages"},
    )

    assert "vramwatch 0.1.0\n" == proc.stdout
    assert (
        'sys.path.insert(1, "/usr/share/vramwatch/vendor")'
        in (build.tree / "usr/bin/vramwatch").read_text()
    )
