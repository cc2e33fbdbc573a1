"""docs/install.md's pip path on a booted Debian 12 and 13, word for word.

The shell block under "### With pip" is taken from the document itself and
run as root (``sudo`` dropped) in a copy of the source tree inside the booted
system, which shares the host's network for apt and PyPI. Then the same core
check as the package's: a breach, and the over-budget tenant restarted by the
system manager, explained by `journalctl -x`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs import INSTALL, steps
from tests.fakenvml import mib
from tests.packaging.debbuild import source_copy
from tests.system.conftest import boot
from tests.system.machine import BY_VERSION, Machine
from tests.system.service import (
    DRIVER_LIB,
    FAKE_DIR,
    PAYLOAD,
    events,
    identity,
    show,
    tenant_unit,
    wait_event,
    wait_restarted,
)
from tests.system.test_apt_install import CONFIG, DROP_INS, FAKE_NVML_DROP_IN, GPU_MIB

SOURCE = "/mnt/vramwatch-src"
# The host's CA bundle, for pip inside: where egress goes through a TLS proxy,
# only the host's own trust store knows its CA (pip otherwise uses certifi's).
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_CA_INSIDE = "/mnt/vramwatch-host-ca/ca-certificates.crt"


def pip_steps() -> str:
    """The commands of docs/install.md's "With pip" block, as root runs them."""
    return steps(INSTALL, "With pip")


@pytest.fixture(scope="module", params=BY_VERSION)
def system(
    request: pytest.FixtureRequest,
    payload: Path,
    trees: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Machine]:
    release = request.param
    logs = tmp_path_factory.mktemp(f"system-pip-{release}")
    src = tmp_path_factory.mktemp(f"pip-src-{release}") / "vramwatch"
    source_copy(src)
    binds = {src: SOURCE, payload: PAYLOAD}
    if HOST_CA.exists():
        binds[HOST_CA.parent] = Path(HOST_CA_INSIDE).parent.as_posix()
    with boot(release, trees[release], logs, binds) as m:
        yield m


def test_the_documented_pip_install_runs_the_service(system: Machine) -> None:
    m = system
    m.run("apt-get", "update", "-qq", timeout=300)
    m.run("cp", "-a", SOURCE, "/root/vramwatch")
    script = "set -eux\ncd /root/vramwatch\n" + pip_steps()
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if HOST_CA.exists():
        env["PIP_CERT"] = HOST_CA_INSIDE
    m.run("bash", "-c", script, timeout=900, env=env)
    unit = show(m, "vramwatch", "UnitFileState", "FragmentPath", "ExecStart")
    usr_bin = m.run("ls", "/usr/bin/vramwatch", check=False)

    assert ("enabled", "/etc/systemd/system/vramwatch.service") == (
        unit["UnitFileState"],
        unit["FragmentPath"],
    )
    # The pip.conf drop-in runs the link in /usr/local/bin; /usr/bin is dpkg's.
    assert "argv[]=/usr/local/bin/vramwatch run " in unit["ExecStart"]
    assert 0 != usr_bin.returncode


def test_a_breach_restarts_the_over_budget_tenant(system: Machine) -> None:
    m = system
    m.run("install", "-m", "644", f"{PAYLOAD}/libnvidia-ml.so.1", DRIVER_LIB)
    m.run("install", "-d", "-m", "755", f"{FAKE_DIR}/procs")
    m.write(f"{FAKE_DIR}/state", f"gpu GPU-0 {GPU_MIB}MiB\nprocdir {FAKE_DIR}/procs\nreap\n")
    m.write(f"{DROP_INS}/test-fake-nvml.conf", FAKE_NVML_DROP_IN)
    m.write("/etc/vramwatch.toml", CONFIG.format(extra=""))
    for name, vram in (("immich-ml", 13000), ("whisper", 1000)):
        m.write(f"/etc/systemd/system/{name}.service", tenant_unit(name, vram))
    m.run("systemctl", "daemon-reload")
    m.run("vramwatch", "check")
    m.run("systemctl", "restart", "vramwatch")
    m.run("systemctl", "start", "whisper", "immich-ml")
    whisper = identity(m, "whisper.service")
    hog = identity(m, "immich-ml.service")

    restart = wait_event(m, "restart", "VRAMWATCH_UNIT=immich-ml.service", timeout=20)
    after = wait_restarted(m, "immich-ml.service", hog)
    explained = m.run(
        "journalctl", "-x", "-u", "vramwatch", "VRAMWATCH_EVENT=restart", "--no-pager"
    ).stdout

    assert ("active", True, True) == (after[0], after[1] != hog[1], after[2] != hog[2])
    assert whisper == identity(m, "whisper.service")
    assert str(mib(13000)) == restart["VRAMWATCH_USED_BYTES"]
    assert restart["MESSAGE"].startswith("restarting immich-ml.service: GPU 0 free 1.3 GiB")
    assert "vramwatch restarted an over-budget tenant" in explained  # the catalog
    assert [] == events(m, "action_failed")
