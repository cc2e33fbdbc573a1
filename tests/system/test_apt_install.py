"""docs/install.md on a booted Debian 12 and 13: `apt install ./vramwatch_*.deb`,
the hardened unit under the real system manager, then least privilege.

Each release boots once (module fixture ``system``) and the tests run in file
order on it, as an operator would go: install and configure, a breach and
the restart it causes, the status line, the journal, a rejected reload, the
watchdog, then the least-privilege drop-in with the polkit rule. The only
difference from a GPU host is the fake libnvidia-ml.so.1 and the test-only
drop-in that tells it where its state file is.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs import INSTALL, steps
from tests.fakenvml import mib
from tests.packaging.debbuild import Build
from tests.system.conftest import boot
from tests.system.machine import BY_VERSION, Machine
from tests.system.service import (
    DEB_DIR,
    DRIVER_LIB,
    FAKE_DIR,
    PAYLOAD,
    events,
    identity,
    security_exposure,
    show,
    tenant_unit,
    wait_event,
    wait_for,
    wait_restarted,
)

GPU_MIB = 15360
CONFIG = """# /etc/vramwatch.toml, as edited by the operator (docs/install.md, 2.)
[daemon]
interval = "1s"
dry_run = false
bus = "system"
cooldown = "1m"
reclaim_timeout = "20s"

[gpu]
min_free_vram = "2GiB"
grace = "2s"

[host]
min_available_ram = "1MiB"
{extra}
[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
ram = "1GiB"

[[tenant]]
unit = "whisper.service"
vram = "2000MiB"
ram = "1GiB"

[[tenant]]
unit = "frigate.service"
vram = "2000MiB"
"""
# Added after the polkit rule was generated: docs/install.md's warning.
INTRUDER = """
[[tenant]]
unit = "intruder.service"
vram = "1000MiB"
"""
# TEST ONLY. The one line in which this system differs from a GPU host: the
# fake libnvidia-ml.so.1 reads its GPUs from this file. /var/lib is readable
# under the unit's ProtectSystem=strict, PrivateTmp= and PrivateUsers=.
FAKE_NVML_DROP_IN = f"""# TEST ONLY (tests/system): where the fake NVML driver reads its state.
[Service]
Environment=FAKE_NVML_STATE={FAKE_DIR}/state
"""
DROP_INS = "/etc/systemd/system/vramwatch.service.d"
# systemd-analyze security on the live unit (docs/install.md).
ROOT_EXPOSURE_MAX = 0.9
LEAST_PRIVILEGE_EXPOSURE_MAX = 0.5
figures: dict[str, dict[str, float]] = {}
installed: dict[str, dict[str, str]] = {}  # the unit right after apt install


@pytest.fixture(scope="module", params=BY_VERSION)
def system(
    request: pytest.FixtureRequest,
    deb_build: Build,
    payload: Path,
    trees: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Machine]:
    """Booted, with the package installed as docs/install.md says (the install
    steps are checked by the first test)."""
    release = request.param
    logs = tmp_path_factory.mktemp(f"system-deb-{release}")
    binds = {deb_build.deb.parent: DEB_DIR, payload: PAYLOAD}
    with boot(release, trees[release], logs, binds) as m:
        m.run("apt-get", "update", "-qq", timeout=300)
        # docs/install.md, 1.: sudo apt install ./vramwatch_0.1.0_all.deb
        m.run(
            "apt",
            "install",
            "-y",
            f"{DEB_DIR}/{deb_build.deb.name}",
            timeout=600,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
        installed[release] = show(m, "vramwatch", "UnitFileState", "ActiveState")
        # The driver's library, where the NVIDIA driver package puts it.
        m.run("install", "-m", "644", f"{PAYLOAD}/libnvidia-ml.so.1", DRIVER_LIB)
        m.run("install", "-d", "-m", "755", f"{FAKE_DIR}/procs")
        m.write(f"{FAKE_DIR}/state", f"gpu GPU-0 {GPU_MIB}MiB\nprocdir {FAKE_DIR}/procs\nreap\n")
        m.write(f"{DROP_INS}/test-fake-nvml.conf", FAKE_NVML_DROP_IN)
        m.write("/etc/vramwatch.toml", CONFIG.format(extra=""), mode="644")
        for name in ("immich-ml", "whisper", "frigate", "intruder"):
            vram = {"whisper": 1000}.get(name, 13000)
            m.write(f"/etc/systemd/system/{name}.service", tenant_unit(name, vram))
        m.run("systemctl", "daemon-reload")
        m.run("vramwatch", "check")
        m.run("systemctl", "enable", "--now", "vramwatch")
        m.run("systemctl", "restart", "vramwatch")
        yield m
    print(f"\n{release}: systemd-analyze security {figures.get(release)}", file=sys.stderr)


def test_the_package_installs_enabled_and_running_as_the_docs_say(system: Machine) -> None:
    m = system
    unit = show(m, "vramwatch", "UnitFileState", "ActiveState", "FragmentPath", "DropInPaths")

    # Enabled and started by the package itself, with the example config (dry run).
    assert {"UnitFileState": "enabled", "ActiveState": "active"} == installed[m.release]
    assert ("enabled", "active") == (unit["UnitFileState"], unit["ActiveState"])
    assert unit["FragmentPath"] in (
        "/lib/systemd/system/vramwatch.service",
        "/usr/lib/systemd/system/vramwatch.service",
    )
    assert f"{DROP_INS}/test-fake-nvml.conf" == unit["DropInPaths"]
    assert "vramwatch" == m.run("id", "-un", "vramwatch").stdout.strip()  # sysusers.d
    assert (
        "root"
        == m.run(
            "stat", "-c", "%U", "/proc/" + show(m, "vramwatch", "MainPID")["MainPID"]
        ).stdout.strip()
    )


def test_the_hardening_holds_under_the_real_manager(system: Machine) -> None:
    """Every sandboxing line is in force on the live process, and none of them
    keeps NVML, /proc, the bus or the journal from working."""
    m = system
    pid = show(m, "vramwatch", "MainPID")["MainPID"]
    status = m.run("cat", f"/proc/{pid}/status").stdout
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
    ns = {
        kind: m.run("readlink", f"/proc/{pid}/ns/{kind}", f"/proc/1/ns/{kind}").stdout.split()
        for kind in ("net", "ipc", "user", "uts")
    }
    uid_map = m.run("cat", f"/proc/{pid}/uid_map").stdout.split()
    mounts = m.run("cat", f"/proc/{pid}/mountinfo").stdout
    mount_points = {line.split()[4] for line in mounts.splitlines()}
    ro = {line.split()[4] for line in mounts.splitlines() if " ro," in f" {line.split()[5]},"}
    journal = m.run("journalctl", "-u", "vramwatch", "-o", "cat", "--no-pager").stdout
    sampled = wait_for(
        "a status line with the GPU",
        lambda: "GPU0 free" in (s := show(m, "vramwatch", "StatusText")["StatusText"]) and s,
        15,
    )

    assert ("0000000000000000", "1", "2") == (
        fields["CapEff"],
        fields["NoNewPrivs"],
        fields["Seccomp"],
    )
    # PrivateNetwork=, PrivateIPC=, PrivateUsers=, ProtectHostname=: namespaces of its own.
    assert [] == [kind for kind, (unit, pid1) in ns.items() if unit == pid1]
    assert ["0", "0", "1"] == uid_map  # PrivateUsers=yes: root alone is mapped
    assert {"/usr", "/etc"} <= ro or "/" in ro  # ProtectSystem=strict
    assert {"/tmp", "/var/tmp", "/home", "/root"} <= mount_points  # PrivateTmp=, ProtectHome=
    # NVML (through the driver's library path), /proc and the journal work.
    assert sampled.startswith(f"GPU0 free {GPU_MIB // 1024} GiB; RAM available ")
    assert "vramwatch started" in journal
    # No directive was silently dropped by the manager.
    assert [] == [
        line for line in journal.splitlines() if "proceeding without" in line or "ignoring" in line
    ]


def test_the_over_budget_tenant_is_restarted_by_the_system_manager(system: Machine) -> None:
    m = system
    m.run("systemctl", "start", "whisper", "immich-ml")
    whisper = identity(m, "whisper.service")
    hog = identity(m, "immich-ml.service")

    restart = wait_event(m, "restart", "VRAMWATCH_UNIT=immich-ml.service", timeout=20)
    reclaimed = wait_event(m, "reclaimed", "VRAMWATCH_UNIT=immich-ml.service", timeout=20)
    after = wait_restarted(m, "immich-ml.service", hog)
    # The manager's own account of it, in the tenant's journal.
    tenant_log = m.run("journalctl", "-u", "immich-ml", "-o", "cat", "--no-pager").stdout

    assert "active" == after[0]
    assert (True, True) == (after[1] != hog[1], after[2] != hog[2])
    assert whisper == identity(m, "whisper.service")
    expected = {
        "VRAMWATCH_RESOURCE": "vram",
        "VRAMWATCH_GPU": "0",
        "VRAMWATCH_USED_BYTES": str(mib(13000)),
        "VRAMWATCH_BUDGET_BYTES": str(mib(3000)),
        "VRAMWATCH_FREE_BYTES": str(mib(GPU_MIB - 13000 - 1000)),
        "VRAMWATCH_FLOOR_BYTES": str(mib(2048)),
        "OBJECT_SYSTEMD_UNIT": "immich-ml.service",
        "_SYSTEMD_UNIT": "vramwatch.service",
    }
    assert expected == {k: restart.get(k) for k in expected}
    assert restart["MESSAGE"].startswith("restarting immich-ml.service: GPU 0 free 1.3 GiB")
    assert str(mib(13000)) == reclaimed["VRAMWATCH_FREED_BYTES"]
    assert (
        "Stopping immich-ml.service" in tenant_log or "Stopping vramwatch test tenant" in tenant_log
    )
    # Root mode: journald trusts OBJECT_SYSTEMD_UNIT=, so the tenant's log shows why.
    assert "restarting immich-ml.service: GPU 0 free" in tenant_log
    assert [] == events(m, "action_failed")


def test_systemctl_status_shows_the_status_line(system: Machine) -> None:
    shown = system.run("systemctl", "status", "vramwatch", "--no-pager", check=False).stdout

    assert re.search(r'Status: "GPU0 free [0-9.]+ GiB; RAM available [0-9.]+ GiB"', shown), shown


def test_journalctl_x_explains_the_restart_with_the_catalog(system: Machine) -> None:
    shown = system.run(
        "journalctl", "-x", "-u", "vramwatch", "VRAMWATCH_EVENT=restart", "--no-pager"
    ).stdout
    text = " ".join(shown.split())

    assert "vramwatch restarted an over-budget tenant" in text, shown  # the catalog's Subject
    assert f"it used {mib(13000)} bytes against a budget of" in text


def test_a_broken_file_on_reload_is_rejected_and_the_running_config_kept(
    system: Machine,
) -> None:
    m = system
    before = identity(m, "vramwatch.service")
    rejected = len(events(m, "config_rejected"))
    m.write("/etc/vramwatch.toml", CONFIG.format(extra="") + "\n[gpu\n", mode="644")
    reload = m.run("systemctl", "reload", "vramwatch", check=False)

    entry = wait_event(m, "config_rejected", count=rejected + 1, timeout=15)
    still = identity(m, "vramwatch.service")
    reloaded = len(events(m, "config_reloaded"))
    m.write("/etc/vramwatch.toml", CONFIG.format(extra=""), mode="644")
    m.run("systemctl", "reload", "vramwatch")
    wait_event(m, "config_reloaded", count=reloaded + 1, timeout=15)

    assert 0 == reload.returncode, reload.stderr
    assert before == still  # same process, still active
    assert entry["MESSAGE"].startswith(
        "reload rejected, keeping the running config: /etc/vramwatch.toml: not valid TOML"
    ), entry["MESSAGE"]


def test_the_watchdog_restarts_a_vramwatch_that_stops_answering(system: Machine) -> None:
    m = system
    drop_in = f"{DROP_INS}/test-watchdog.conf"
    m.write(drop_in, "# TEST ONLY: a short watchdog\n[Service]\nWatchdogSec=3s\nRestartSec=1s\n")
    m.run("systemctl", "daemon-reload")
    m.run("systemctl", "restart", "vramwatch")
    before = show(m, "vramwatch", "MainPID", "NRestarts")
    m.run("kill", "-STOP", before["MainPID"])
    seen: set[str] = set()  # Result= while it goes down and comes back
    restarts = [int(before["NRestarts"])]

    def restarted() -> bool:
        now = show(m, "vramwatch", "MainPID", "NRestarts", "Result", "ActiveState")
        seen.add(now["Result"])
        restarts.append(int(now["NRestarts"]))
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])

    try:
        wait_for("a restart by the watchdog", restarted, 20, every=0.2)
    finally:
        m.run("rm", "-f", drop_in)
        m.run("systemctl", "daemon-reload")
        m.run("systemctl", "restart", "vramwatch")
    log = m.run("journalctl", "-u", "vramwatch", "-o", "cat", "--no-pager").stdout

    assert "watchdog" in seen, seen
    assert "vramwatch.service: Watchdog timeout (limit 3s)!" in log
    assert restarts[0] + 1 == max(restarts)  # Restart=on-failure, by the manager


# TEST ONLY: a notifier hook that tells a listener on this host's own network
# address which event it was started for (a webhook, in miniature).
NOTIFY_HOOK = """#!/usr/bin/python3
import os, socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(("%s %s\\n" % (os.environ["VRAMWATCH_EVENT"], os.environ["VRAMWATCH_UNIT"])).encode())
"""
LISTENER = """import socket, sys
server = socket.create_server((sys.argv[1], 0))
open(sys.argv[2] + ".port", "w").write(str(server.getsockname()[1]))
while True:
    conn, _ = server.accept()
    with conn, open(sys.argv[2], "ab") as out:
        out.write(conn.recv(4096))
"""
HOOKED = """
[hooks]
after_action = ["/usr/local/bin/notify-test", "{ip}", "{port}"]

[[tenant]]
unit = "notify-a.service"
vram = "1000MiB"

[[tenant]]
unit = "notify-b.service"
vram = "1000MiB"
"""


def test_a_hook_reaches_the_network_only_with_hooks_network_conf(system: Machine) -> None:
    """Issue 23, item 19: under the shipped unit a notifier hook has no network
    (hook_failed); with docs/install.md section 7 followed verbatim it reaches a
    listener on the host's own address."""
    m = system
    (ip, *_) = [a for a in m.run("hostname", "-I").stdout.split() if "." in a]
    log = "/run/test-listener.log"
    m.run("systemd-run", "--unit=test-listener", "python3", "-c", LISTENER, ip, log)
    port = wait_for(
        "the listener's port", lambda: m.run("cat", f"{log}.port", check=False).stdout, 10
    )
    m.write("/usr/local/bin/notify-test", NOTIFY_HOOK, mode="755")
    for name in ("notify-a", "notify-b"):
        m.write(f"/etc/systemd/system/{name}.service", tenant_unit(name, 13000))
    m.run("systemctl", "daemon-reload")
    reloaded = len(events(m, "config_reloaded"))
    failed = len(events(m, "hook_failed"))
    m.write("/etc/vramwatch.toml", CONFIG.format(extra=HOOKED.format(ip=ip, port=port)))
    m.run("systemctl", "reload", "vramwatch")
    wait_event(m, "config_reloaded", count=reloaded + 1, timeout=15)
    try:
        m.run("systemctl", "start", "notify-a")
        wait_event(m, "restart", "VRAMWATCH_UNIT=notify-a.service", timeout=20)
        no_network = wait_event(m, "hook_failed", count=failed + 1, timeout=20)
        m.run("bash", "-c", "set -eux\n" + steps(INSTALL, "7. Hooks that notify over the network"))
        unit = show(m, "vramwatch", "DropInPaths", "ActiveState")
        m.run("systemctl", "start", "notify-b")
        wait_event(m, "restart", "VRAMWATCH_UNIT=notify-b.service", timeout=20)
        heard = wait_for("the hook's message", lambda: m.run("cat", log, check=False).stdout, 20)
        after = len(events(m, "hook_failed"))
    finally:
        m.run("rm", "-f", f"{DROP_INS}/hooks-network.conf")
        m.write("/etc/vramwatch.toml", CONFIG.format(extra=""))
        m.run("systemctl", "daemon-reload")
        m.run("systemctl", "restart", "vramwatch")
        m.run("systemctl", "stop", "notify-a", "notify-b", "test-listener", check=False)

    assert "restart" == no_network["VRAMWATCH_FOR_EVENT"]
    # RestrictAddressFamilies=AF_UNIX: the hook cannot even open an IP socket.
    assert "Address family not supported" in no_network["VRAMWATCH_OUTPUT"]
    assert "active" == unit["ActiveState"]
    assert f"{DROP_INS}/hooks-network.conf" in unit["DropInPaths"].split()
    assert "restart notify-b.service\n" == heard
    assert failed + 1 == after


def test_security_exposure_as_root(system: Machine) -> None:
    exposure = security_exposure(system)
    figures.setdefault(system.release, {})["root"] = exposure

    assert exposure <= ROOT_EXPOSURE_MAX


def test_least_privilege_restarts_a_configured_tenant_and_is_refused_for_another(
    system: Machine,
) -> None:
    """docs/install.md, 3.: the polkit rule, least-privilege.conf; then a tenant
    added without regenerating the rule, as the docs warn."""
    m = system
    rule = m.run("vramwatch", "polkit-rule").stdout
    m.write("/etc/polkit-1/rules.d/50-vramwatch.rules", rule)
    m.run("cp", "/usr/share/vramwatch/systemd/least-privilege.conf", f"{DROP_INS}/")
    m.run("systemctl", "daemon-reload")
    m.run("systemctl", "restart", "vramwatch")
    pid = show(m, "vramwatch", "MainPID")["MainPID"]
    user = m.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip()
    figures.setdefault(m.release, {})["least-privilege"] = security_exposure(m)

    m.run("systemctl", "start", "frigate")
    frigate = identity(m, "frigate.service")
    restart = wait_event(m, "restart", "VRAMWATCH_UNIT=frigate.service", timeout=20)
    wait_event(m, "reclaimed", "VRAMWATCH_UNIT=frigate.service", timeout=20)
    allowed = wait_restarted(m, "frigate.service", frigate)

    reloaded = len(events(m, "config_reloaded"))
    m.write("/etc/vramwatch.toml", CONFIG.format(extra=INTRUDER), mode="644")
    m.run("systemctl", "reload", "vramwatch")
    wait_event(m, "config_reloaded", count=reloaded + 1, timeout=15)
    m.run("systemctl", "start", "intruder")
    intruder = identity(m, "intruder.service")
    failed = wait_event(m, "action_failed", "VRAMWATCH_UNIT=intruder.service", timeout=20)

    assert "vramwatch" == user
    assert (True, True) == (allowed[1] != frigate[1], allowed[2] != frigate[2])
    assert restart["_UID"] == m.run("id", "-u", "vramwatch").stdout.strip()
    assert intruder == identity(m, "intruder.service")
    # polkit leaves it to an administrator (docs/install.md, 3.).
    assert (
        "restart intruder.service failed: Interactive authentication required."
        == (failed["MESSAGE"])
    )
    assert "active" == show(m, "vramwatch", "ActiveState")["ActiveState"]


def test_security_exposure_with_least_privilege(system: Machine) -> None:
    exposure = figures[system.release]["least-privilege"]

    assert exposure <= LEAST_PRIVILEGE_EXPOSURE_MAX
