"""packaging/systemd/vramwatch.service: its shape, and its systemd-analyze exposure.

`systemd-analyze security --offline=true` scores a unit file without a running
systemd (>= 250) and reads drop-ins from FILE.d/ beside it, exactly as the
manager would apply them. The thresholds are the scores measured when the
unit was written; a change that loosens it must change them here, on purpose.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import ROOT, require

SYSTEMD_DIR = ROOT / "packaging" / "systemd"
UNIT = SYSTEMD_DIR / "vramwatch.service"

# Settings deliberately left open (each justified at the top of the unit):
# it reads /proc of every process and /dev/nvidia*, and talks over AF_UNIX.
OPEN_BY_DESIGN = {
    "RootDirectory=/RootImage=",
    "PrivateDevices=",
    "RestrictAddressFamilies=~AF_UNIX",
    "ProtectProc=",
    "ProcSubset=",
    "DeviceAllow=",
}


def unit_with(tmp_path: Path, *dropins: str) -> Path:
    """A copy of the unit with the named files of packaging/systemd as drop-ins."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    unit = tmp_path / "vramwatch.service"
    shutil.copy(UNIT, unit)
    if dropins:
        d = tmp_path / "vramwatch.service.d"
        d.mkdir()
        for name in dropins:
            shutil.copy(SYSTEMD_DIR / name, d / name)
    return unit


def security(unit: Path, threshold: int) -> tuple[int, float, set[str]]:
    """(exit status under --threshold, overall exposure, names of the open settings)."""
    require(commands=("systemd-analyze",))
    base = ["systemd-analyze", "security", "--offline=true", "--no-pager"]
    checked = subprocess.run(
        [*base, f"--threshold={threshold}", str(unit)], capture_output=True, text=True
    )
    overall = re.search(r"Overall exposure level for \S+: (\d+\.\d)", checked.stdout)
    assert overall is not None, checked.stdout + checked.stderr
    table = subprocess.run(
        [*base, "--json=short", str(unit)], capture_output=True, text=True, check=True
    )
    open_settings = {row["name"] for row in json.loads(table.stdout) if row["exposure"]}
    return checked.returncode, float(overall.group(1)), open_settings


def test_root_unit_scores_safe(tmp_path: Path) -> None:
    """As root, with no capabilities and no network: 0.9 ("SAFE")."""
    rc, exposure, open_settings = security(unit_with(tmp_path), threshold=9)

    assert (0, 0.9) == (rc, exposure)
    assert OPEN_BY_DESIGN | {"User=/DynamicUser="} == open_settings


def test_least_privilege_dropin_scores_safe(tmp_path: Path) -> None:
    """As the vramwatch user: 0.5, and only the settings the job needs stay open."""
    rc, exposure, open_settings = security(unit_with(tmp_path, "least-privilege.conf"), threshold=5)

    assert (0, 0.5) == (rc, exposure)
    assert OPEN_BY_DESIGN == open_settings


def test_metrics_dropin_opens_only_ip_sockets(tmp_path: Path) -> None:
    """The exporter drop-in costs IP sockets (1.6 as root, 1.3 as the vramwatch user)."""
    root = security(unit_with(tmp_path / "r", "metrics.conf"), threshold=16)
    least = security(
        unit_with(tmp_path / "l", "metrics.conf", "least-privilege.conf"), threshold=13
    )

    assert (0, 1.6) == root[:2]
    assert (0, 1.3) == least[:2]
    assert {"RestrictAddressFamilies=~AF_(INET|INET6)", "PrivateNetwork="} <= least[2]


def test_containers_dropin_costs_only_the_socket_group_and_user_namespace(tmp_path: Path) -> None:
    """The Engine API drop-in: 1.1 as root, 0.7 as the vramwatch user. The score cannot
    see what the socket grants (root-equivalent); the drop-in and install.md say it."""
    root = security(unit_with(tmp_path / "r", "containers.conf"), threshold=11)
    least = security(
        unit_with(tmp_path / "l", "containers.conf", "least-privilege.conf"), threshold=7
    )

    assert (0, 1.1) == root[:2]
    assert (0, 0.7) == least[:2]
    assert OPEN_BY_DESIGN | {"PrivateUsers=", "SupplementaryGroups="} == least[2]
    assert ["docker"] == directives(SYSTEMD_DIR / "containers.conf")["SupplementaryGroups"]


def test_threshold_fails_a_looser_unit(tmp_path: Path) -> None:
    """The CI check can fail: a unit without the hardening block exceeds the threshold."""
    unit = tmp_path / "vramwatch.service"
    text = UNIT.read_text()
    unit.write_text(text[: text.index("# No capabilities")] + "\n[Install]\n")

    rc, exposure, _ = security(unit, threshold=9)

    assert 0 != rc
    assert exposure > 5.0


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_service_contract() -> None:
    """Type=notify with a watchdog, SIGHUP reload, no crash loop on a bad config (exit 78)."""
    d = directives(UNIT)

    assert ["notify"] == d["Type"]
    assert ["/usr/bin/vramwatch run"] == d["ExecStart"]
    assert ["/bin/kill -HUP $MAINPID"] == d["ExecReload"]
    assert ["on-failure"] == d["Restart"]
    assert ["78"] == d["RestartPreventExitStatus"]
    assert ["vramwatch"] == d["StateDirectory"]
    assert [""] == d["CapabilityBoundingSet"]
    assert ["multi-user.target"] == d["WantedBy"]


def test_the_oom_killer_takes_a_tenant_first_but_can_still_take_vramwatch() -> None:
    """Under memory pressure the guard must outlive its tenants (issue 17); -1000 would
    make a leaking vramwatch unkillable, so everything else would go first."""
    (adjust,) = directives(UNIT)["OOMScoreAdjust"]

    assert (True, True) == (int(adjust) <= -500, int(adjust) > -1000)
    assert "MemoryMin" not in directives(UNIT)  # ineffective without protected ancestors


def test_watchdog_outlasts_the_longest_silence_between_keepalives() -> None:
    """Keep-alives are sent during restart jobs; the longest silence is one tick that
    re-initialises NVML on 8 GPUs (3 s each) and waits out a D-Bus call."""
    from vramwatch.actuators.systemd import CALL_TIMEOUT_S

    (watchdog,) = directives(UNIT)["WatchdogSec"]
    seconds = int(watchdog.removesuffix("min")) * 60

    assert seconds > 8 * 3 + CALL_TIMEOUT_S + 10


def test_release_dropin_opens_only_loopback_ip_sockets(tmp_path: Path) -> None:
    """Release commands reach tenants on loopback: the same cost as the exporter."""
    root = security(unit_with(tmp_path / "r", "release.conf"), threshold=16)
    least = security(
        unit_with(tmp_path / "l", "release.conf", "least-privilege.conf"), threshold=13
    )

    assert (0, 1.6) == root[:2]
    assert (0, 1.3) == least[:2]


def test_hooks_network_dropin_opens_ip_sockets_to_any_address(tmp_path: Path) -> None:
    """A notifier hook runs in vramwatch's sandbox: to reach a webhook the unit gets IP
    sockets to any address (1.7 as root, 1.3 as the vramwatch user). The score hardly
    sees "any address"; the drop-in and install.md say what it costs."""
    root = security(unit_with(tmp_path / "r", "hooks-network.conf"), threshold=17)
    least = security(
        unit_with(tmp_path / "l", "hooks-network.conf", "least-privilege.conf"), threshold=13
    )
    d = directives(SYSTEMD_DIR / "hooks-network.conf")

    assert (0, 1.7) == root[:2]
    assert (0, 1.3) == least[:2]
    opened = {"RestrictAddressFamilies=~AF_(INET|INET6)", "PrivateNetwork=", "IPAddressDeny="}
    assert OPEN_BY_DESIGN | opened == least[2]
    assert (["no"], ["any"]) == (d["PrivateNetwork"], d["IPAddressAllow"])


@pytest.mark.parametrize(
    "name",
    [
        "least-privilege.conf",
        "metrics.conf",
        "release.conf",
        "containers.conf",
        "hooks-network.conf",
    ],
)
def test_dropins_are_service_sections(name: str) -> None:
    text = (SYSTEMD_DIR / name).read_text()

    assert "[Service]" in text
    assert "[Unit]" not in text and "[Install]" not in text
