"""Anchor process of a test sandbox: owns a private mount namespace.

Run as root by :class:`sandbox.Sandbox` as::

    unshare -m --propagation private -- PYTHON anchor.py --name NAME --workdir DIR

It creates a throwaway user NAME, private tmpfs mounts on /run/systemd, /run/log,
/run/user and /var/log/journal, a standalone systemd-journald, cgroup directories
``<hierarchy>/NAME.slice/user@UID.service`` and a ``systemd --user`` manager in
them, waits until the manager answers on the user bus, prints one JSON line
with the facts, then waits on stdin.  On EOF, a ``stop`` line, SIGTERM or
SIGHUP it tears everything down (processes, cgroup dirs, user) and prints a
JSON result line; the mounts vanish with the namespace when it exits.

With ``--cgroup-mode v2`` (opt-in) the anchor first makes /sys/fs/cgroup look
like a pure cgroup v2 host inside the namespace: on a hybrid host it unmounts
the tmpfs with its v1 hierarchies (in the namespace only) and puts the host's
cgroup2 hierarchy (from /sys/fs/cgroup/unified) there, so that journald and
``systemd --user`` run in unified mode and the manager's delegated directory
is ``/sys/fs/cgroup/NAME.slice/user@UID.service`` of that cgroup2 tree.  The
kernel still prints the host's ``name=systemd`` v1 line in /proc/PID/cgroup
(hierarchies are global, not per mount namespace); systemd in unified mode
neither reads nor maintains it, so every sandbox process keeps the anchor's v1
path there.

The teardown helpers are importable so that the host side can repeat them if
the anchor itself died.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

GECOS_PREFIX = "vramwatch-sandbox anchor="
# Every process the sandbox starts as root carries MARKER_VAR=<name>, so that a
# later reap can find them even after the anchor (and its namespace id) is gone.
MARKER_VAR = "VWTEST_SANDBOX"
SYSTEMD = "/usr/lib/systemd/systemd"
JOURNALD_CANDIDATES = ("/usr/lib/systemd/systemd-journald", "/lib/systemd/systemd-journald")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
CGROUP_FS = Path("/sys/fs/cgroup")
# User units shipped by unrelated Debian packages: masked in the sandbox to
# keep start-up quick and the unit list short.
NOISY_USER_UNITS = (
    "gpg-agent.socket",
    "gpg-agent-browser.socket",
    "gpg-agent-extra.socket",
    "gpg-agent-ssh.socket",
    "dirmngr.socket",
    "pk-debconf-helper.socket",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-clean.timer",
)
JOURNALD_CONF = """\
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitIntervalSec=0
"""


class AnchorError(RuntimeError):
    pass


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            if len(fields) >= 5 and len(rfields) >= 3:
                out.append((fields[4], rfields[0], rfields[2]))
    return out


def cgroup_hierarchies() -> list[Path]:
    """Writable hierarchies in which systemd tracks processes.

    Hybrid/legacy hosts: the ``name=systemd`` v1 hierarchy (plus the cgroup2
    one at /sys/fs/cgroup/unified if mounted).  Pure cgroup2 hosts:
    /sys/fs/cgroup itself.
    """
    found: list[Path] = []
    for mnt, fstype, opts in _mounts():
        p = Path(mnt)
        if fstype == "cgroup" and "name=systemd" in opts.split(",") and p.parent == CGROUP_FS:
            found.append(p)
        elif fstype == "cgroup2" and p in (CGROUP_FS, CGROUP_FS / "unified"):
            found.append(p)
    return sorted(set(found), key=lambda p: (p != CGROUP_FS / "systemd", str(p)))


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_status(pid: int) -> dict[str, str]:
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def _is_zombie(pid: int) -> bool:
    return _proc_status(pid).get("State", "").startswith(("Z", "X"))


def _proc_uids(pid: int) -> set[int]:
    return {int(x) for x in _proc_status(pid).get("Uid", "").split()}


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pids_in_cgroups(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        if not d.is_dir():
            continue
        for root, _dirs, _files in os.walk(d):
            try:
                text = Path(root, "cgroup.procs").read_text(encoding="ascii")
            except OSError:
                continue
            pids.update(int(x) for x in text.split())
    return pids


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def pids_to_kill(
    uid: int | None, mnt_ns: str | None, cg_dirs: list[Path], name: str | None = None
) -> set[int]:
    """Processes of the sandbox: in its cgroups, of its user, in its mount
    namespace, or carrying ``VWTEST_SANDBOX=name`` in their environment."""
    me = os.getpid()
    victims = pids_in_cgroups(cg_dirs)
    marker = f"{MARKER_VAR}={name}".encode() if name else None
    for pid in _all_pids():
        if uid is not None and uid in _proc_uids(pid):
            victims.add(pid)
        elif marker is not None and _has_marker(pid, marker):
            victims.add(pid)
        elif mnt_ns is not None:
            try:
                if os.readlink(f"/proc/{pid}/ns/mnt") == mnt_ns:
                    victims.add(pid)
            except OSError:
                pass
    victims.discard(me)
    victims.discard(1)
    # Zombies hold nothing; their parent (maybe the test process) reaps them.
    return {pid for pid in victims if not _is_zombie(pid)}


def kill_all(
    uid: int | None,
    mnt_ns: str | None,
    cg_dirs: list[Path],
    name: str | None = None,
    timeout: float = 10.0,
) -> list[int]:
    """SIGKILL everything of the sandbox until nothing is left; return survivors."""
    deadline = time.monotonic() + timeout
    while True:
        victims = pids_to_kill(uid, mnt_ns, cg_dirs, name)
        if not victims:
            return []
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        # Reap our own children so they do not linger as zombies.
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            return sorted(victims)
        time.sleep(0.02)


def remove_cgroup_dirs(dirs: list[Path], timeout: float = 5.0) -> list[str]:
    errors = []
    for top in dirs:
        if not top.is_dir():
            continue
        deadline = time.monotonic() + timeout
        while top.is_dir():
            subdirs = sorted(
                (Path(root) for root, _d, _f in os.walk(top)),
                key=lambda p: len(p.parts),
                reverse=True,
            )
            last: OSError | None = None
            for d in subdirs:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    last = e
            if not top.is_dir():
                break
            if time.monotonic() > deadline:
                errors.append(f"cannot remove {top}: {last}")
                break
            time.sleep(0.05)
    return errors


def delete_user(name: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pwd.getpwnam(name)
        except KeyError:
            break
        r = subprocess.run(["userdel", name], text=True, capture_output=True)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline:
            return [f"userdel {name} failed: {r.stderr.strip()}"]
        time.sleep(0.1)
    if subprocess.run(["getent", "group", name], capture_output=True).returncode == 0:
        g = subprocess.run(["groupdel", name], text=True, capture_output=True)
        if g.returncode != 0:
            return [f"groupdel {name} failed: {g.stderr.strip()}"]
    return []


def sandbox_cgroup_dirs(name: str) -> list[Path]:
    return [h / f"{name}.slice" for h in cgroup_hierarchies()]


def teardown(name: str, uid: int | None, mnt_ns: str | None) -> list[str]:
    """Kill every process of the sandbox, remove its cgroups and its user."""
    if uid is None:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            pass
        else:
            if pw.pw_gecos.startswith(GECOS_PREFIX):
                uid = pw.pw_uid
    cg = sandbox_cgroup_dirs(name)
    errors = []
    survivors = kill_all(uid, mnt_ns, cg, name)
    if survivors:
        errors.append(f"processes survived SIGKILL: {survivors}")
    errors += remove_cgroup_dirs(cg)
    errors += delete_user(name)
    return errors


def reap_stale() -> list[str]:
    """Tear down sandboxes whose anchor died without cleaning up (e.g. SIGKILL)."""
    reaped = []
    for pw in pwd.getpwall():
        if not pw.pw_gecos.startswith(GECOS_PREFIX):
            continue
        try:
            anchor = int(pw.pw_gecos[len(GECOS_PREFIX) :].split()[0])
        except (ValueError, IndexError):
            continue
        try:
            cmdline = Path(f"/proc/{anchor}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"anchor.py" in cmdline and pw.pw_name.encode() in cmdline:
            continue  # alive: another session's sandbox
        teardown(pw.pw_name, pw.pw_uid, None)
        home = Path(pw.pw_dir)
        if home.name == "home" and home.parent.name.startswith("vwtest-"):
            shutil.rmtree(home.parent, ignore_errors=True)
        reaped.append(pw.pw_name)
    return reaped


def _fstype(path: Path) -> str | None:
    """The fs type of the mount at exactly ``path`` (the last one, if stacked)."""
    found = None
    for mnt, fstype, _opts in _mounts():
        if mnt == str(path):
            found = fstype
    return found


def make_unified_cgroup_fs() -> Path:
    """Inside a private mount namespace: make /sys/fs/cgroup a cgroup2 mount.

    Returns where the host sees the same cgroup2 hierarchy (/sys/fs/cgroup on
    a pure v2 host, where nothing needs doing; /sys/fs/cgroup/unified on a
    hybrid one).  A bind mount, not a fresh ``mount -t cgroup2``: mounting
    cgroup2 again would re-apply its (global) root options such as nsdelegate.
    """
    if _fstype(CGROUP_FS) == "cgroup2":
        return CGROUP_FS
    unified = CGROUP_FS / "unified"
    if _fstype(unified) != "cgroup2":
        raise AnchorError("cgroup v2 mode needs a cgroup2 hierarchy at /sys/fs/cgroup/unified")
    keep = Path("/run/systemd/vwtest-cgroup2")
    keep.mkdir()
    _run(["mount", "--bind", str(unified), str(keep)])
    # Private propagation (unshare --propagation private): the host keeps its mounts.
    _run(["umount", "--recursive", str(CGROUP_FS)])
    _run(["mount", "--move", str(keep), str(CGROUP_FS)])
    keep.rmdir()
    if _fstype(CGROUP_FS) != "cgroup2" or not (CGROUP_FS / "cgroup.controllers").exists():
        raise AnchorError("/sys/fs/cgroup is not cgroup2 after the remount")
    return unified


class Anchor:
    def __init__(self, name: str, workdir: Path, cgroup_mode: str | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.cgroup_mode = cgroup_mode
        # Where the host sees the cgroup2 hierarchy now mounted at /sys/fs/cgroup (v2 mode).
        self.host_cgroup2: Path | None = None
        self.uid = -1
        self.gid = -1
        self.mnt_ns = os.readlink("/proc/self/ns/mnt")
        self.journald: subprocess.Popen[bytes] | None = None
        self.manager: subprocess.Popen[bytes] | None = None
        self.cg_dirs: list[Path] = []

    # ----------------------------------------------------------------- setup
    def setup(self) -> dict[str, object]:
        t0 = time.monotonic()
        try:
            parent_ns = os.readlink(f"/proc/{os.getppid()}/ns/mnt")
        except OSError:
            parent_ns = ""
        if parent_ns == self.mnt_ns:
            raise AnchorError("refusing to run outside a private mount namespace")
        self._create_user()
        self._mounts()
        if self.cgroup_mode == "v2":  # before journald and the manager detect the layout
            self.host_cgroup2 = make_unified_cgroup_fs()
        machine_id = self._machine_id()
        self._start_journald()
        self._cgroups()
        self._start_manager()
        self._wait_manager(deadline=t0 + 30)
        facts: dict[str, object] = {
            "user": self.name,
            "uid": self.uid,
            "gid": self.gid,
            "home": str(self.workdir / "home"),
            "machine_id": machine_id,
            "journal_dir": f"/run/log/journal/{machine_id}",
            "journald_pid": self.journald.pid if self.journald else None,
            "manager_pid": self.manager.pid if self.manager else None,
            "mnt_ns": self.mnt_ns,
            "cgroup_dirs": [str(d) for d in self.cg_dirs],
            "setup_seconds": round(time.monotonic() - t0, 3),
        }
        if self.host_cgroup2 is not None:
            # The host's view of the same directories (the test process runs outside).
            facts["cgroup_dirs"] = [
                str(self.host_cgroup2 / d.relative_to(CGROUP_FS)) for d in self.cg_dirs
            ]
            facts["cgroup_mode"] = "v2"
        return facts

    def _create_user(self) -> None:
        home = self.workdir / "home"
        _run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                f"{GECOS_PREFIX}{os.getpid()}",
                self.name,
            ]
        )
        pw = pwd.getpwnam(self.name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        home.mkdir(mode=0o700)
        os.chown(home, self.uid, self.gid)

    def _mounts(self) -> None:
        tmpfs = ["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs"]
        _run([*tmpfs, "/run/systemd"])
        for d in ("system", "journal", "journald.conf.d", "user"):
            Path("/run/systemd", d).mkdir()
        Path("/run/systemd/journald.conf.d/vwtest.conf").write_text(JOURNALD_CONF)
        for unit in NOISY_USER_UNITS:
            os.symlink("/dev/null", f"/run/systemd/user/{unit}")
        for d in ("/run/log", "/run/user"):
            Path(d).mkdir(exist_ok=True)
            _run([*tmpfs, d])
        Path("/run/log/journal").mkdir()
        if Path("/var/log/journal").is_dir():  # never touch the host's journal
            _run([*tmpfs, "/var/log/journal"])
        rt = Path(f"/run/user/{self.uid}")
        rt.mkdir(mode=0o700)
        os.chown(rt, self.uid, self.gid)

    def _machine_id(self) -> str:
        p = Path("/etc/machine-id")
        try:
            mid = p.read_text(encoding="ascii").strip()
        except OSError:
            mid = ""
        if len(mid) == 32 and all(c in "0123456789abcdef" for c in mid):
            return mid
        mid = secrets.token_hex(16)
        fake = Path("/run/systemd/vwtest-machine-id")
        fake.write_text(mid + "\n")
        fake.chmod(0o444)
        if p.exists():
            _run(["mount", "--bind", str(fake), str(p)])
        else:  # no file to bind over: overlay /etc inside the namespace only
            ov = Path("/run/systemd/vwtest-etc")
            (ov / "upper").mkdir(parents=True)
            (ov / "work").mkdir()
            shutil.copy(fake, ov / "upper" / "machine-id")
            _run(
                [
                    "mount",
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    f"lowerdir=/etc,upperdir={ov}/upper,workdir={ov}/work",
                    "/etc",
                ]
            )
        return mid

    def _start_journald(self) -> None:
        exe = next((c for c in JOURNALD_CANDIDATES if os.access(c, os.X_OK)), None)
        if exe is None:
            raise AnchorError("systemd-journald not found")
        log = open(self.workdir / "journald.log", "wb")  # noqa: SIM115
        self.journald = subprocess.Popen(
            [exe],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            close_fds=True,
            env=os.environ | {MARKER_VAR: self.name},
        )
        log.close()
        deadline = time.monotonic() + 10
        while not os.path.exists(JOURNAL_SOCKET):
            if self.journald.poll() is not None or time.monotonic() > deadline:
                raise AnchorError(f"journald did not start; see {self.workdir}/journald.log")
            time.sleep(0.01)

    def _cgroups(self) -> None:
        hierarchies = cgroup_hierarchies()
        if not hierarchies:
            raise AnchorError("no name=systemd or cgroup2 hierarchy under /sys/fs/cgroup")
        for h in hierarchies:
            svc = h / f"{self.name}.slice" / f"user@{self.uid}.service"
            svc.mkdir(parents=True)
            self.cg_dirs.append(svc.parent)
            os.chown(svc, self.uid, self.gid)
            for f in svc.iterdir():
                if f.is_file():
                    os.chown(f, self.uid, self.gid)

    def _user_env(self) -> dict[str, str]:
        rt = f"/run/user/{self.uid}"
        return {
            "HOME": str(self.workdir / "home"),
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": "/bin/sh",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": rt,
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={rt}/bus",
        }

    def _as_user(self, argv: list[str]) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--init-groups",
            "--",
            *argv,
        ]

    def _start_manager(self) -> None:
        procs = [d / f"user@{self.uid}.service" / "cgroup.procs" for d in self.cg_dirs]

        def enter_cgroups() -> None:  # runs in the child, still as root
            for p in procs:
                with open(p, "w", encoding="ascii") as f:
                    f.write(str(os.getpid()))

        log = open(self.workdir / "manager.log", "wb")  # noqa: SIM115
        self.manager = subprocess.Popen(
            self._as_user([SYSTEMD, "--user"]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # As under user@.service on a real host: the manager logs to the journal.
            env=self._user_env() | {"SYSTEMD_LOG_TARGET": "journal"},
            cwd=str(self.workdir / "home"),
            preexec_fn=enter_cgroups,
            close_fds=True,
        )
        log.close()

    def _wait_manager(self, deadline: float) -> None:
        argv = self._as_user(
            [
                "busctl",
                "--user",
                "get-property",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "SystemState",
            ]
        )
        last = ""
        while True:
            assert self.manager is not None
            if self.manager.poll() is not None:
                raise AnchorError(f"systemd --user exited; see {self.workdir}/manager.log")
            r = subprocess.run(argv, env=self._user_env(), text=True, capture_output=True)
            last = (r.stdout + r.stderr).strip()
            if r.returncode == 0 and ('"running"' in last or '"degraded"' in last):
                return
            if time.monotonic() > deadline:
                raise AnchorError(f"user manager not ready in time: {last}")
            time.sleep(0.02)

    # -------------------------------------------------------------- teardown
    def teardown(self) -> list[str]:
        if self.manager is not None and self.manager.poll() is None:
            self.manager.terminate()  # user manager: SIGTERM = start exit.target
            try:
                self.manager.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        errors = teardown(self.name, self.uid if self.uid >= 0 else None, self.mnt_ns)
        for p in (self.manager, self.journald):
            if p is not None:
                try:
                    p.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    errors.append(f"pid {p.pid} did not exit")
        if self.workdir.name.startswith("vwtest-"):  # created by the host for this sandbox
            shutil.rmtree(self.workdir, ignore_errors=True)
        return errors


def _emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--cgroup-mode", choices=("v2",), default=None)
    args = ap.parse_args()
    path = os.environ.get("PATH", "/usr/bin:/bin").split(":")
    os.environ["PATH"] = ":".join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])

    anchor = Anchor(args.name, args.workdir, args.cgroup_mode)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, on_signal)
    try:
        try:
            facts = anchor.setup()
        except Exception as e:  # noqa: BLE001 (reported, then cleaned up below)
            _emit({"error": f"{type(e).__name__}: {e}"})
        else:
            _emit(facts)
            while True:  # wait for "stop" or EOF (the parent died or closed the pipe)
                line = sys.stdin.readline()
                if not line or line.strip() == "stop":
                    break
    except KeyboardInterrupt:
        pass
    finally:
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        errors = anchor.teardown()
        try:
            _emit({"stopped": True, "errors": errors})
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
