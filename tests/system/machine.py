"""A real Debian system, booted under systemd as PID 1, for tests/system.

``tree(release)`` debootstraps a minimal Debian tree once and keeps it under
/var/cache/vramwatch-tests (an optimisation only: a machine without the cache
builds it, about 2 minutes a release). ``Machine`` boots a throwaway copy of it
with ``systemd-nspawn --volatile=overlay`` (the tree is mounted read-only
under a tmpfs overlay, so the cache is never written) and runs commands inside
with ``nsenter``, as root of the booted system: systemctl, journalctl and apt
there talk to that system's own manager, bus and journal.

Every step has a timeout; ``Machine.stop`` powers the system off and, if that
hangs, kills its PID 1 and nspawn, so a hung boot fails the test and leaves
nothing behind. Nothing is created on the host's /run/systemd.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

CACHE = Path(os.environ.get("VRAMWATCH_SYSTEM_CACHE", "/var/cache/vramwatch-tests"))
MIRROR = "http://deb.debian.org/debian"
# What a boot needs, nothing that vramwatch's own installation brings.
INCLUDE = ("systemd", "systemd-sysv", "dbus")
# Bump to rebuild every cached tree (the recipe below changed).
RECIPE = 1
# A cached tree older than this is rebuilt: its apt lists and packages age.
MAX_AGE_S = 14 * 24 * 3600
RELEASES = {"bookworm": "12", "trixie": "13"}
# Oldest first, as the booted-system tests are parametrised.
BY_VERSION: list[str] = sorted(RELEASES, key=RELEASES.__getitem__)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class MachineError(RuntimeError):
    """The system could not be built, booted or driven (the message says where)."""


def tree_path(release: str) -> Path:
    return CACHE / f"debian-{release}-minbase-r{RECIPE}"


def lock_path(release: str) -> Path:
    """flock()ed exclusively while the tree is built, shared while it is booted."""
    return CACHE / f"{tree_path(release).name}.lock"


def _fresh(path: Path) -> bool:
    stamp = path / ".vramwatch-tests-built"
    return stamp.exists() and time.time() - stamp.stat().st_mtime < MAX_AGE_S


def tree(release: str, *, log: Path | None = None) -> tuple[Path, float]:
    """The cached tree of ``release`` (built first if missing or stale) and the
    seconds spent building it (0 when cached). Safe against concurrent runs."""
    if release not in RELEASES:
        raise ValueError(f"unknown release {release!r}: one of {sorted(RELEASES)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    path = tree_path(release)
    with open(lock_path(release), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _fresh(path):
            return path, 0.0
        started = time.monotonic()
        build = CACHE / f".{path.name}.build-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDE)}",
            release,
            str(build),
            MIRROR,
        ]
        with open(log or os.devnull, "a") as out:
            proc = subprocess.run(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                env={"PATH": PATH, "LC_ALL": "C.UTF-8"},
            )
        if proc.returncode != 0:
            shutil.rmtree(build, ignore_errors=True)
            raise MachineError(f"debootstrap {release} failed (exit {proc.returncode}): see {log}")
        _prepare(build)
        (build / ".vramwatch-tests-built").write_text(f"{release} recipe {RECIPE}\n")
        old = CACHE / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            path.rename(old)
        build.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path, time.monotonic() - started


def _prepare(root: Path) -> None:
    """What a booted container needs beyond debootstrap's tree."""
    # No login prompt on the console: nothing reads it.
    for unit in ("console-getty.service", "getty@.service"):
        link = root / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to("/dev/null")


class Machine:
    """One boot of a cached tree: ``start()``, ``run()`` commands inside, ``stop()``.

    ``binds`` maps host paths to paths inside, bound read-only (the package,
    the fake NVML library, the test's scripts); ``results`` is a host directory
    bound read-write at /results. The console goes to ``log_dir/console.log``;
    every command run inside is appended, with its output, to
    ``log_dir/commands.log``.
    """

    def __init__(
        self,
        release: str,
        root: Path,
        log_dir: Path,
        *,
        binds: Mapping[Path, str] = {},
    ) -> None:
        self.release = release
        self.root = root
        self.log_dir = log_dir
        self.binds = dict(binds)
        self.name = f"vramwatch-{release}-{os.getpid()}"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.boot_seconds = 0.0

    def start(self, timeout: float = 90) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(self.root),
            # The tree read-only under a tmpfs overlay: the cache is never written.
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            f"--machine={self.name}",
            "--console=read-only",
            # The container shares the host's network (apt, PyPI), and nspawn
            # then drops CAP_NET_ADMIN: systemd 257 would run PrivateNetwork=
            # units without a network namespace ("proceeding without"), which a
            # real host's PID 1, holding every capability, never does.
            "--capability=CAP_NET_ADMIN",
        ]
        cmd += [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        cmd.append("--boot")
        env = {"PATH": PATH, "LC_ALL": "C.UTF-8"}
        # systemd 257 (Debian 13) boots only on the unified hierarchy; this
        # host's own is hybrid. Debian 12's systemd 252 boots either way.
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        started = time.monotonic()
        with open(self.log_dir / "console.log", "ab") as console:
            self.nspawn = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = started + timeout
        while not self.leader:
            if self.nspawn.poll() is not None:
                raise MachineError(self._died("exited while booting"))
            if time.monotonic() > deadline:
                raise MachineError(self._died(f"no PID 1 after {timeout:.0f}s"))
            self.leader = self._pid1()
            time.sleep(0.1)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MachineError(self._died(f"not booted after {timeout:.0f}s"))
            state = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=left
            ).stdout.strip()
            if state in ("running", "degraded"):
                break
            if self.nspawn.poll() is not None:
                raise MachineError(self._died(f"exited while booting ({state})"))
            time.sleep(0.2)  # not yet listening on its private bus
        self.boot_seconds = time.monotonic() - started
        # apt's daily timers would take the dpkg lock in the middle of a test.
        self.run("systemctl", "mask", "--now", "apt-daily.timer", "apt-daily-upgrade.timer")

    def _pid1(self) -> int:
        """The container's PID 1: nspawn's child once it runs the system's systemd."""
        assert self.nspawn is not None
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text()
            for pid in children.split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        except OSError:
            pass
        return 0

    def _died(self, what: str) -> str:
        tail = (self.log_dir / "console.log").read_text(errors="replace")[-3000:]
        return f"{self.name}: {what}; console ({self.log_dir / 'console.log'}):\n{tail}"

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: Mapping[str, str] = {},
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as root inside the booted system (its mounts, PID namespace,
        cgroup namespace, root), with a clean environment."""
        if not self.leader:
            raise MachineError(f"{self.name} is not running")
        ns = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-p", "-C", "-r", "-w"]
        clean = {"PATH": PATH, "LC_ALL": "C.UTF-8", "TERM": "dumb", "HOME": "/root"}
        clean.update(env)
        cmd = [*ns, "--", "env", "-i", *(f"{k}={v}" for k, v in clean.items()), *argv]
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env={"PATH": PATH},
            )
        except subprocess.TimeoutExpired as e:
            self._log(argv, f"TIMEOUT after {timeout:.0f}s", str(e.stdout or ""), str(e.stderr))
            raise MachineError(f"{self.name}: {' '.join(argv)}: no answer in {timeout:.0f}s") from e
        took = f"exit {proc.returncode} in {time.monotonic() - started:.1f}s"
        self._log(argv, took, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise MachineError(
                f"{self.name}: {' '.join(argv)}: exit {proc.returncode}\n"
                f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        return proc

    def _log(self, argv: tuple[str, ...], result: str, out: str, err: str) -> None:
        with open(self.log_dir / "commands.log", "a") as log:
            log.write(f"# {' '.join(argv)}: {result}\n{out}")
            if err:
                log.write(f"[stderr]\n{err}")
            log.write("\n")

    def write(self, path: str, text: str, mode: str = "644") -> None:
        """Write a file inside (through the system's own tee, as root)."""
        self.run("install", "-d", "-m", "755", os.path.dirname(path))
        self.run("tee", path, input=text)
        self.run("chmod", mode, path)

    def stop(self, timeout: float = 30) -> None:
        """Power off; if that hangs, kill PID 1 (the whole namespace) and nspawn."""
        if self.nspawn is None:
            return
        try:
            if self.leader and self.nspawn.poll() is None:
                with contextlib.suppress(MachineError, OSError):
                    self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
                try:
                    self.nspawn.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.nspawn.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    if self.leader:
                        os.kill(self.leader, 9)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.nspawn.pid, 9)
                self.nspawn.wait(10)
            self.leader = 0
            # nspawn's per-machine directory for mount propagation.
            with contextlib.suppress(OSError):
                Path(f"/run/systemd/nspawn/propagate/{self.name}").rmdir()
