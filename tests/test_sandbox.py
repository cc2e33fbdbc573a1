"""Proves the systemd test sandbox (tests/sandbox) does what daemon tests rely on."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.sandbox import Sandbox, wait_for
from tests.sandbox.fixtures import in_ci, require_sandbox

# Fixtures "sandbox" (session) and "clean_sandbox" (reset after each test) come
# from the tests.sandbox.fixtures plugin, registered in tests/conftest.py.

VENV_PYTHON = sys.executable  # has jeepney, psutil (and systemd-python when installed)
PRINT_IDENTITY = (
    "import os, sys; print(os.getpid(), os.getuid(), os.environ['DBUS_SESSION_BUS_ADDRESS'],"
    " os.environ['VW_EXTRA'], file=sys.stderr)"
)


def proc_cgroup_lines(pid: int) -> dict[str, str]:
    """hierarchy id:controllers -> path, e.g. {"name=systemd": "/...", "0:": "/..."}."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        out["0:" if hid == "0" else controllers] = path
    return out


def start_hog(sb: Sandbox, unit: str, mib: int = 16) -> tuple[int, Path]:
    pidfile = Path(sb.home) / f"{unit}.pid"
    st = sb.start_unit(
        unit,
        [sb.python, sb.hog_path, "--ram-mib", str(mib), "--pidfile", str(pidfile)],
        properties={"Type": "notify"},
    )
    assert st.active_state == "active", st
    assert st.main_pid > 0 and st.invocation_id
    return st.main_pid, pidfile


def test_startup_time(sandbox: Sandbox) -> None:
    print(f"sandbox start-up: {sandbox.startup_seconds:.3f}s")
    assert sandbox.startup_seconds < 10
    assert sandbox.bus_address == f"unix:path=/run/user/{sandbox.uid}/bus"
    assert sandbox.runtime_dir == f"/run/user/{sandbox.uid}"
    assert sandbox.journal_dir == f"/run/log/journal/{sandbox.machine_id}"


def test_user_bus_answers_jeepney(clean_sandbox: Sandbox) -> None:
    sb = clean_sandbox
    script = Path(sb.workdir) / "bus_probe.py"
    script.write_text(
        textwrap.dedent("""\
        import json, os
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        mgr = DBusAddress("/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1",
                          interface="org.freedesktop.systemd1.Manager")
        with open_dbus_connection(bus="SESSION") as conn:
            units = conn.send_and_get_reply(new_method_call(mgr, "ListUnits")).body[0]
            path = conn.send_and_get_reply(
                new_method_call(mgr, "GetUnit", "s", ("dbus.socket",))).body[0]
        print(json.dumps({"uid": os.getuid(), "units": [u[0] for u in units], "path": path}))
    """)
    )
    script.chmod(0o644)
    r = sb.run([VENV_PYTHON, str(script)])
    out = json.loads(r.stdout)
    assert out["uid"] == sb.uid
    assert "dbus.socket" in out["units"] and "init.scope" in out["units"]
    assert out["path"] == "/org/freedesktop/systemd1/unit/dbus_2esocket"


def test_unit_runs_in_its_own_cgroup(clean_sandbox: Sandbox) -> None:
    sb = clean_sandbox
    unit = "vwtest-hog.service"
    pid, pidfile = start_hog(sb, unit, mib=32)
    assert int(pidfile.read_text()) == pid
    lines = proc_cgroup_lines(pid)
    print("cgroup lines:", lines)
    expected_tail = f"/user@{sb.uid}.service/app.slice/{unit}"
    assert lines["name=systemd"] == f"/{sb.name}.slice{expected_tail}"
    if "0:" in lines and Path("/sys/fs/cgroup/unified").is_dir():
        assert lines["0:"].endswith(expected_tail)
    assert sb.unit_property(unit, "ControlGroup").endswith(expected_tail)
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1])
    assert rss_kib >= 32 * 1024
    assert Path(f"/proc/{pid}/status").stat().st_uid == sb.uid
    # The unit's stdout reaches the sandbox journal, attributed to the user unit.
    entries = wait_for(
        lambda: [e for e in sb.journal_entries(_SYSTEMD_USER_UNIT=unit) if e["MESSAGE"] == "ready"],
        what="hog's 'ready' in the journal",
    )
    assert entries[0]["_PID"] == str(pid)


def test_restart_unit_over_dbus_changes_invocation(clean_sandbox: Sandbox) -> None:
    sb = clean_sandbox
    unit = "vwtest-restart.service"
    start_hog(sb, unit)
    before = sb.unit_state(unit)
    sb.run(
        [
            "busctl",
            "--user",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "RestartUnit",
            "ss",
            unit,
            "replace",
        ]
    )

    def restarted() -> bool:
        s = sb.unit_state(unit)
        return (
            s.active_state == "active"
            and s.invocation_id != before.invocation_id
            and s.main_pid not in (0, before.main_pid)
        )

    wait_for(restarted, what="new invocation")
    after = sb.unit_state(unit)
    assert after.main_pid != before.main_pid
    assert sb.unit_property(unit, "NRestarts") == "0"  # D-Bus restarts are not counted
    assert (
        not Path(f"/proc/{before.main_pid}").exists()
        or proc_cgroup_lines(before.main_pid).get("name=systemd", "").find(unit) < 0
    )


def test_failed_unit_stays_loaded_unless_collected(clean_sandbox: Sandbox) -> None:
    sb = clean_sandbox
    sb.start_unit("vwtest-fails", ["/bin/false"])
    wait_for(lambda: sb.unit_state("vwtest-fails").active_state == "failed", what="failed")
    assert sb.unit_property("vwtest-fails", "Result") == "exit-code"
    sb.start_unit("vwtest-collected", ["/bin/false"], collect=True)
    wait_for(
        lambda: sb.unit_property("vwtest-collected", "LoadState") == "not-found", what="collected"
    )


def test_mem_available_only_inside_namespace(clean_sandbox: Sandbox) -> None:
    sb = clean_sandbox
    fake = 987_654 * 1024  # a whole number of KiB, as /proc/meminfo reports
    sb.set_mem_available(fake)
    inside = sb.run(["cat", "/proc/meminfo"]).stdout
    host = Path("/proc/meminfo").read_text()

    def field(text: str, name: str) -> int:
        return int(next(x for x in text.splitlines() if x.startswith(name + ":")).split()[1])

    assert field(inside, "MemAvailable") * 1024 == fake
    assert field(host, "MemAvailable") * 1024 != fake
    assert field(inside, "MemTotal") == field(host, "MemTotal")
    assert len(inside.splitlines()) == len(host.splitlines())
    r = sb.run([VENV_PYTHON, "-c", "import psutil; print(psutil.virtual_memory().available)"])
    assert int(r.stdout) == fake
    sb.set_mem_available(fake // 2)  # stacks
    assert field(sb.run(["cat", "/proc/meminfo"]).stdout, "MemAvailable") * 1024 == fake // 2
    sb.restore_meminfo()
    assert field(sb.run(["cat", "/proc/meminfo"]).stdout, "MemAvailable") * 1024 != fake // 2


def test_journal_entry_with_custom_field(clean_sandbox: Sandbox) -> None:
    sb = clean_sandbox
    token = secrets.token_hex(8)
    sb.send_journal("hello from the sandbox", VWTEST_TOKEN=token, PRIORITY="4")
    entries = wait_for(lambda: sb.journal_entries(VWTEST_TOKEN=token), what="logger entry")
    assert len(entries) == 1
    e = entries[0]
    assert e["MESSAGE"] == "hello from the sandbox"
    assert e["_UID"] == str(sb.uid) and e["PRIORITY"] == "4"
    # The socket a daemon's journal.send() uses exists and is writable by the user.
    sb.run(["test", "-S", sb.journal_socket, "-a", "-w", sb.journal_socket])


def test_systemd_python_journal_send(clean_sandbox: Sandbox) -> None:
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        if in_ci():
            pytest.fail("systemd-python is not installed (pip install '.[test]')")
        pytest.skip("systemd-python not installed")
    sb = clean_sandbox
    token = secrets.token_hex(8)
    code = (
        "import sys; from systemd import journal; "
        "journal.send('from systemd-python', VWTEST_TOKEN=sys.argv[1], "
        "VRAMWATCH_UNIT='tenant.service')"
    )
    sb.run([VENV_PYTHON, "-c", code, token])
    e = wait_for(lambda: sb.journal_entries(VWTEST_TOKEN=token), what="journal.send entry")[0]
    assert e["MESSAGE"] == "from systemd-python"
    assert e["VRAMWATCH_UNIT"] == "tenant.service" and e["_UID"] == str(sb.uid)


def test_popen_runs_program_as_user_with_bus_env(clean_sandbox: Sandbox) -> None:
    sb = clean_sandbox
    p = sb.popen(
        [VENV_PYTHON, "-c", PRINT_IDENTITY],
        env={"VW_EXTRA": "yes"},
        stderr=subprocess.PIPE,
    )
    _, err = p.communicate(timeout=30)
    pid, uid, bus, extra = err.split()
    assert int(pid) == p.pid  # nsenter/setpriv exec: signals reach the program itself
    assert int(uid) == sb.uid and bus == sb.bus_address and extra == "yes"
    r = sb.run(["id", "-u"], as_user=False)
    assert r.stdout.strip() == "0"


# ------------------------------------------------------------------ teardown
def _host_mounts() -> set[str]:
    return {
        " ".join(line.split()[4:]) for line in Path("/proc/self/mountinfo").read_text().splitlines()
    }


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (init may reap orphans lazily)."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _assert_nothing_left(sb: Sandbox, pids: list[int], mounts_before: set[str]) -> None:
    for pid in pids:
        assert not _alive(pid), pid
    for d in sorted(Path("/proc").iterdir()):
        if d.name.isdigit():
            try:
                if d.stat().st_uid == sb.uid:
                    assert not _alive(int(d.name)), f"process {d.name} of the user survived"
            except FileNotFoundError:
                pass
    for cg in sb.cgroup_dirs:
        assert not Path(cg).exists(), cg
    with pytest.raises(KeyError):
        pwd.getpwnam(sb.user)
    assert subprocess.run(["getent", "group", sb.user], capture_output=True).returncode != 0
    assert not Path(sb.workdir).exists()
    assert _host_mounts() == mounts_before
    assert not Path(f"/run/user/{sb.uid}").exists()


@pytest.mark.parametrize("how", ["stop", "anchor-killed"])
def test_stop_leaves_nothing(how: str) -> None:
    require_sandbox()
    mounts_before = _host_mounts()
    sb = Sandbox()
    t0 = time.monotonic()
    with sb:
        pid, _ = start_hog(sb, "vwtest-left.service")
        sleeper = sb.popen(["sleep", "300"])
        sb.set_mem_available(1 << 30)
        pids = [pid, sleeper.pid, sb.manager_pid, sb.journald_pid, sb.anchor_pid]
        assert all(Path(f"/proc/{p}").exists() for p in pids)
        assert _host_mounts() == mounts_before  # the sandbox's mounts are private
        if how == "anchor-killed":
            os.kill(sb.anchor_pid, signal.SIGKILL)
            wait_for(lambda: not _alive(sb.anchor_pid), what="anchor death")
    print(f"{how}: start+stop {time.monotonic() - t0:.2f}s")
    assert sb.stop_errors == []
    _assert_nothing_left(sb, pids, mounts_before)
    sb.stop()  # idempotent


@pytest.mark.parametrize(("until_available_mib", "grows"), [(0, True), (1 << 30, False)])
def test_the_hog_stops_growing_once_memavailable_is_down_to_its_mark(
    until_available_mib: int, grows: bool
) -> None:
    """bench.footprint's pressure hog: a size worked out from MemAvailable beforehand
    stopped short of the floor when the kernel's estimate moved, so the hog watches it."""
    hog = Path(__file__).parent / "sandbox" / "hog.py"
    argv = [sys.executable, str(hog), "--ram-mib", "8", "--grow-mib-per-s", "200"]
    argv += ["--max-mib", "64", "--until-available-mib", str(until_available_mib)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "ready" == proc.stdout.readline().strip()
        time.sleep(1.0)  # 200 MiB/s: at its 64 MiB ceiling in 0.3 s unless it stopped
        rss_kib = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    assert (rss_kib > 48 * 1024) == grows, rss_kib
