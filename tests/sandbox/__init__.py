"""A real ``systemd --user`` manager, user bus and journald for tests.

The host's PID 1 need not be systemd.  :class:`Sandbox` starts an *anchor*
process (``anchor.py``) in a private mount namespace; it creates a throwaway
user, tmpfs mounts on /run/systemd, /run/log, /run/user and /var/log/journal
(visible only inside the namespace), a standalone systemd-journald and a
``systemd --user`` manager in its own cgroup
(``<hierarchy>/<name>.slice/user@UID.service``), so transient units land in
``.../user@UID.service/app.slice/NAME.service`` as on a real host.

Everything that should talk to the sandbox runs inside the namespace through
:meth:`Sandbox.run` / :meth:`Sandbox.popen` (``nsenter --mount`` and, by
default, ``setpriv`` to the throwaway user, with ``XDG_RUNTIME_DIR`` and
``DBUS_SESSION_BUS_ADDRESS`` set).  Files a sandboxed process must read have
to be readable by that user: :attr:`Sandbox.workdir` (mode 755, under /tmp)
is, /root is not.

:meth:`Sandbox.stop` (also run at interpreter exit, and by the anchor itself
when its stdin closes, e.g. when the test process is killed) kills every
process of the namespace and of the user, removes the cgroup directories and
deletes the user.  A later :meth:`Sandbox.start` reaps sandboxes whose anchor
died without cleaning up.

Example (tests get it from the ``sandbox`` fixture in ``sandbox.fixtures``)::

    st = sb.start_unit("tenant", [sb.python, sb.hog_path, "--ram-mib", "64"],
                       properties={"Type": "notify", "Restart": "on-failure"})
    sb.set_mem_available(256 * 2**20)          # what the daemon will read
    daemon = sb.popen([sys.executable, "-m", "vramwatch", ...],
                      env={"PYTHONPATH": "/work/main"}, stderr=subprocess.PIPE)
    sb.wait_for(lambda: sb.unit_state("tenant").invocation_id != st.invocation_id)
    sb.journal_entries(VRAMWATCH_UNIT="tenant.service")

Units land in ``/<name>.slice/user@UID.service/app.slice/NAME.service`` in the
``name=systemd`` line and the ``0::`` line of /proc/PID/cgroup.  The user
manager logs to the sandbox journal (``USER_UNIT=``, ``USER_INVOCATION_ID=``);
unit output carries ``_SYSTEMD_USER_UNIT=``.  ``journalctl --user-unit`` does
not work for root here (it also matches ``_UID=0``): match fields instead.

``Sandbox(cgroup_mode="v2")`` (opt-in) makes the namespace look like a pure
cgroup v2 host: /sys/fs/cgroup is the cgroup2 hierarchy (on a hybrid host the
one at /sys/fs/cgroup/unified), systemd runs in unified mode and units are
only tracked there (``0::/<name>.slice/user@UID.service/app.slice/NAME.service``).
On a hybrid host the kernel still prints a ``name=systemd`` line for every
process, with the anchor's v1 path (not the unit's).  :attr:`Sandbox.cgroup_dirs`
are host paths (under /sys/fs/cgroup/unified on a hybrid host).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from . import anchor as _anchor

__all__ = [
    "Sandbox",
    "SandboxError",
    "UnitState",
    "missing_prerequisites",
    "wait_for",
]

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
SYSTEMD = "/usr/lib/systemd/systemd"

# Commands the sandbox needs (package in brackets, Debian 12):
REQUIRED_COMMANDS = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "setpriv": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "useradd": "passwd",
    "userdel": "passwd",
    "groupdel": "passwd",
    "getent": "libc-bin",
    "systemd-run": "systemd",
    "systemctl": "systemd",
    "busctl": "systemd",
    "journalctl": "systemd",
    "logger": "bsdutils",
    "dbus-daemon": "dbus-daemon",
}
REQUIRED_FILES = {
    SYSTEMD: "systemd",
    "/usr/lib/systemd/user/dbus.socket": "dbus-user-session",
}


class SandboxError(RuntimeError):
    pass


@dataclass(frozen=True)
class UnitState:
    active_state: str
    main_pid: int
    invocation_id: str


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
        time.sleep(interval)


def missing_prerequisites() -> list[str]:
    """Why a sandbox cannot run here (empty if it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root")
    for cmd, pkg in REQUIRED_COMMANDS.items():
        if shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            problems.append(f"{cmd} missing (apt install {pkg})")
    for path, pkg in REQUIRED_FILES.items():
        if not os.path.exists(path):
            problems.append(f"{path} missing (apt install {pkg})")
    if not any(os.access(p, os.X_OK) for p in _anchor.JOURNALD_CANDIDATES):
        problems.append("systemd-journald missing (apt install systemd)")
    if not _anchor.cgroup_hierarchies():
        problems.append("no name=systemd (v1) or cgroup2 hierarchy mounted under /sys/fs/cgroup")
    if not problems:
        r = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True
        )
        if r.returncode != 0:
            problems.append(f"cannot create a mount namespace: {r.stderr.strip()}")
    return problems


def _normalize_unit(name: str) -> str:
    return name if "." in name else f"{name}.service"


def _journal_value(v: object) -> str:
    """journalctl -o json: str, null (too long), [ints] (binary) or a list (repeated field)."""
    if v is None:
        return ""
    if isinstance(v, list):
        if v and all(isinstance(x, int) for x in v):
            return bytes(v).decode("utf-8", "replace")
        return _journal_value(v[0]) if v else ""
    return str(v)


class Sandbox:
    """A throwaway user with its own systemd user manager, user bus and journald."""

    def __init__(
        self,
        *,
        name: str | None = None,
        start_timeout: float = 30.0,
        cgroup_mode: str | None = None,
    ) -> None:
        if cgroup_mode not in (None, "v2"):
            raise ValueError(f"cgroup_mode must be None or 'v2', not {cgroup_mode!r}")
        self.cgroup_mode = cgroup_mode
        self.name = name or f"vwtest-{secrets.token_hex(4)}"
        self.user = self.name
        self.start_timeout = start_timeout
        self.uid = -1
        self.gid = -1
        self.home = ""
        self.runtime_dir = ""
        self.bus_address = ""
        self.journal_dir = ""
        self.journal_socket = _anchor.JOURNAL_SOCKET
        self.machine_id = ""
        self.anchor_pid = -1
        self.manager_pid = -1
        self.journald_pid = -1
        self.cgroup_dirs: list[str] = []
        self.startup_seconds = 0.0
        self.workdir = Path()
        self.hog_path = ""
        # A python the throwaway user can run (hog.py needs only the stdlib).
        self.python = (
            "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        )
        self._mnt_ns: str | None = None
        self._anchor: subprocess.Popen[str] | None = None
        self._meminfo_layers = 0
        self._units: set[str] = set()
        self._popens: list[subprocess.Popen[str]] = []
        self._started = False
        self._stopped = False
        self.stop_errors: list[str] = []

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Sandbox:
        if self._started:
            return self
        problems = missing_prerequisites()
        if problems:
            raise SandboxError("sandbox unavailable: " + "; ".join(problems))
        self._started = True
        t0 = time.monotonic()
        _anchor.reap_stale()
        self.workdir = Path(tempfile.mkdtemp(prefix="vwtest-", dir="/tmp"))
        self.workdir.chmod(0o755)
        shutil.copy(HERE / "hog.py", self.workdir / "hog.py")
        (self.workdir / "hog.py").chmod(0o755)
        self.hog_path = str(self.workdir / "hog.py")
        atexit.register(self.stop)
        try:
            self._anchor = subprocess.Popen(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    str(HERE / "anchor.py"),
                    "--name",
                    self.name,
                    "--workdir",
                    str(self.workdir),
                    *(["--cgroup-mode", self.cgroup_mode] if self.cgroup_mode else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                close_fds=True,
                env=os.environ | {_anchor.MARKER_VAR: self.name},
            )
            self.anchor_pid = self._anchor.pid
            self._mnt_ns = None
            facts = self._read_anchor_line(self.start_timeout)
            if "error" in facts:
                raise SandboxError(
                    f"sandbox set-up failed: {facts['error']} (logs in {self.workdir})"
                )
            self._mnt_ns = str(facts["mnt_ns"])
            self.uid = int(facts["uid"])
            self.gid = int(facts["gid"])
            self.home = str(facts["home"])
            self.machine_id = str(facts["machine_id"])
            self.journal_dir = str(facts["journal_dir"])
            self.manager_pid = int(facts["manager_pid"])
            self.journald_pid = int(facts["journald_pid"])
            self.cgroup_dirs = [str(d) for d in facts["cgroup_dirs"]]
            self.runtime_dir = f"/run/user/{self.uid}"
            self.bus_address = f"unix:path={self.runtime_dir}/bus"
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _read_anchor_line(self, timeout: float) -> dict[str, Any]:
        assert self._anchor is not None and self._anchor.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self._anchor.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise SandboxError(f"sandbox anchor gave no answer within {timeout:g}s")
        finally:
            sel.close()
        line = self._anchor.stdout.readline()
        if not line:
            raise SandboxError(f"sandbox anchor exited (rc={self._anchor.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        """Tear everything down; idempotent, safe after a failed start."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        errors: list[str] = []
        for p in self._popens:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                errors.append(f"pid {p.pid} did not exit")
        a = self._anchor
        if a is not None and a.poll() is None:
            try:
                assert a.stdin is not None
                a.stdin.write("stop\n")
                a.stdin.close()
            except OSError:
                pass
            try:
                a.wait(timeout=30)
            except subprocess.TimeoutExpired:
                errors.append("anchor did not stop within 30 s; killed")
                a.kill()
                a.wait()
        clean = False
        if a is not None and a.stdout is not None:
            for line in a.stdout.read().splitlines():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("stopped"):
                    clean = True
                    errors += [str(e) for e in msg.get("errors") or []]
            a.stdout.close()
        if not clean:
            # The anchor died before cleaning up (or never started): do it from
            # the host.  Only then, since after a clean stop the uid and the
            # namespace id may already belong to another sandbox.
            errors += _anchor.teardown(self.name, self.uid if self.uid >= 0 else None, self._mnt_ns)
        for p in self._popens:
            if p.poll() is None:
                errors.append(f"pid {p.pid} did not exit")
        if self.workdir != Path() and self.workdir.is_dir():
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)
        self.stop_errors = errors
        if errors:
            raise SandboxError("sandbox teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Between tests: kill popen()ed processes, stop started units, restore meminfo."""
        for p in self._popens:
            if p.poll() is None:
                p.kill()
                p.wait()
        self._popens.clear()
        for unit in sorted(self._units):
            self.run(["systemctl", "--user", "stop", unit], check=False)
            self.run(["systemctl", "--user", "reset-failed", unit], check=False)
        self._units.clear()
        self.restore_meminfo()

    # ------------------------------------------------------------- commands
    def user_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        base = {
            "HOME": self.home,
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": "/bin/sh",
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": self.runtime_dir,
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
        }
        return base | dict(env or {})

    def command(
        self, argv: Sequence[str], *, as_user: bool = True, env: Mapping[str, str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run ``argv`` inside the sandbox."""
        if not self._started or self._stopped or self.anchor_pid < 0:
            raise SandboxError("sandbox is not running")
        cmd = ["nsenter", f"--target={self.anchor_pid}", "--mount", "--"]
        if as_user:
            cmd += [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--init-groups",
                "--",
            ]
            full_env = self.user_env(env)
        else:
            full_env = dict(os.environ) | dict(env or {})
        full_env[_anchor.MARKER_VAR] = self.name  # lets a later reap find strays
        return cmd + [str(a) for a in argv], full_env

    def run(
        self,
        argv: Sequence[str],
        *,
        as_user: bool = True,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd, full_env = self.command(argv, as_user=as_user, env=env)
        r = subprocess.run(
            cmd,
            env=full_env,
            text=True,
            capture_output=True,
            timeout=timeout,
            input=input,
            cwd=str(self.workdir),
        )
        if check and r.returncode != 0:
            raise SandboxError(
                f"{' '.join(map(str, argv))!r} failed with {r.returncode}:\n{r.stdout}{r.stderr}"
            )
        return r

    def popen(
        self,
        argv: Sequence[str],
        *,
        as_user: bool = True,
        env: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` in the sandbox; the Popen's pid is the program's own pid."""
        cmd, full_env = self.command(argv, as_user=as_user, env=env)
        kw.setdefault("text", True)
        kw.setdefault("cwd", str(self.workdir))
        p: subprocess.Popen[str] = subprocess.Popen(cmd, env=full_env, **kw)
        self._popens.append(p)
        return p

    # ---------------------------------------------------------------- units
    def start_unit(
        self,
        name: str,
        argv: Sequence[str],
        *,
        properties: Mapping[str, str] = {},  # noqa: B006 (never mutated)
        env: Mapping[str, str] = {},  # noqa: B006
        collect: bool = False,
        timeout: float = 30,
    ) -> UnitState:
        """``systemd-run --user --unit=NAME -p K=V ... -- argv``; returns once started.

        Without ``collect`` a failed unit stays loaded (state ``failed``) so that
        tests can inspect it; :meth:`reset` or :meth:`reset_failed` clears it.
        With ``properties={"Type": "notify"}`` and hog.py, this returns only
        after hog has allocated its memory.
        """
        unit = _normalize_unit(name)
        cmd = ["systemd-run", "--user", "--quiet", f"--unit={unit}"]
        if collect:
            cmd.append("--collect")
        cmd += [f"--property={k}={v}" for k, v in properties.items()]
        cmd += [f"--setenv={k}={v}" for k, v in env.items()]
        self._units.add(unit)
        self.run([*cmd, "--", *argv], timeout=timeout)
        return self.unit_state(unit)

    def stop_unit(self, name: str) -> None:
        r = self.run(["systemctl", "--user", "stop", _normalize_unit(name)], check=False)
        if r.returncode != 0 and "not loaded" not in r.stderr:
            raise SandboxError(f"stopping {name} failed: {r.stderr.strip()}")

    def reset_failed(self, name: str) -> None:
        self.run(["systemctl", "--user", "reset-failed", _normalize_unit(name)], check=False)

    def unit_properties(self, name: str, *props: str) -> dict[str, str]:
        r = self.run(["systemctl", "--user", "show", "-p", ",".join(props), _normalize_unit(name)])
        out = {}
        for line in r.stdout.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                out[k] = v
        return out

    def unit_property(self, name: str, prop: str) -> str:
        return self.unit_properties(name, prop).get(prop, "")

    def unit_state(self, name: str) -> UnitState:
        p = self.unit_properties(name, "ActiveState", "MainPID", "InvocationID")
        return UnitState(
            active_state=p.get("ActiveState", ""),
            main_pid=int(p.get("MainPID") or 0),
            invocation_id=p.get("InvocationID", ""),
        )

    # -------------------------------------------------------------- meminfo
    def set_mem_available(self, n_bytes: int) -> None:
        """Make /proc/meminfo in the namespace report MemAvailable = n_bytes.

        The host's /proc/meminfo is unchanged.  Each call stacks one bind
        mount (atomic for readers); :meth:`restore_meminfo` removes them all.
        """
        real = Path("/proc/meminfo").read_text(encoding="ascii")  # host view: real values
        new, n = re.subn(
            r"^(MemAvailable:\s*)\d+( kB)$",
            lambda m: f"{m.group(1)}{max(0, n_bytes) // 1024}{m.group(2)}",
            real,
            flags=re.MULTILINE,
        )
        if n != 1:
            raise SandboxError("no MemAvailable line in /proc/meminfo")
        path = self.workdir / f"meminfo.{self._meminfo_layers}"
        path.write_text(new, encoding="ascii")
        path.chmod(0o644)
        self.run(["mount", "--bind", str(path), "/proc/meminfo"], as_user=False)
        self._meminfo_layers += 1

    def restore_meminfo(self) -> None:
        while self._meminfo_layers > 0:
            self.run(["umount", "/proc/meminfo"], as_user=False)
            self._meminfo_layers -= 1

    # -------------------------------------------------------------- journal
    def journal_entries(self, **matches: str) -> list[dict[str, str]]:
        """Entries of the sandbox journal matching FIELD=VALUE (all, oldest first).

        Repeated fields give their first value; binary ones are decoded as UTF-8.
        """
        argv = [
            "journalctl",
            f"--directory={self.journal_dir}",
            "-o",
            "json",
            "--all",
            "--no-pager",
            "-q",
        ]
        argv += [f"{k}={v}" for k, v in matches.items()]
        r = self.run(argv, as_user=False)
        entries = []
        for line in r.stdout.splitlines():
            if line.strip():
                raw = json.loads(line)
                entries.append({k: _journal_value(v) for k, v in raw.items()})
        return entries

    def send_journal(self, message: str, *, as_user: bool = True, **fields: str) -> None:
        """Log one structured entry from inside the sandbox (``logger --journald``)."""
        lines = [f"MESSAGE={message}"] + [f"{k}={v}" for k, v in fields.items()]
        if any("\n" in x for x in lines):
            raise ValueError("multi-line values are not supported by logger --journald")
        self.run(["logger", "--journald"], as_user=as_user, input="\n".join(lines) + "\n")

    wait_for = staticmethod(wait_for)
