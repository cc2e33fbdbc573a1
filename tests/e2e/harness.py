"""The end-to-end harness, shared by the tests and the demo.

A :class:`Bed` is one world-readable directory inside a sandbox: the fake GPU
state (``reap`` and a ``procdir`` where tenant programs declare their VRAM),
configs, tenant units (tests/e2e/tenant.py), and ``vramwatch run`` as a
subprocess whose JSON events a :class:`Daemon` collects.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.fakenvml import FakeGpu, FakeNvmlState, FakeProcess, build, mib
from tests.sandbox import Sandbox, UnitState

HERE = Path(__file__).resolve().parent
T4_UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"


def venv() -> Path:
    """The virtual environment whose installed vramwatch is under test."""
    return Path(os.environ.get("VRAMWATCH_VENV", "/opt/vramwatch-venv"))


def installed_vramwatch(caller: str) -> Path | None:
    """The venv's ``vramwatch`` executable; None, having said how to install it, if absent."""
    vramwatch = venv() / "bin" / "vramwatch"
    if os.access(vramwatch, os.X_OK):
        return vramwatch
    print(f"{caller}: no {vramwatch}: run VRAMWATCH_VENV=... ./scripts/bootstrap", file=sys.stderr)
    return None


def prepare(sandbox: Sandbox) -> Path:
    """Build the fake NVML where the sandbox user can load it; copy tenant.py beside hog.py."""
    lib = build(sandbox.workdir / "nvml-lib")
    for p in (lib, *lib.iterdir()):
        p.chmod(0o755)
    shutil.copy(HERE / "tenant.py", sandbox.workdir / "tenant.py")
    (sandbox.workdir / "tenant.py").chmod(0o755)
    return lib


class Daemon:
    """``vramwatch run`` as a subprocess in the sandbox, its JSON events collected."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.raw.append(line)
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                event["_t"] = time.monotonic()
                self.events.append(event)

    def named(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]

    def wait_event(self, name: str, timeout: float = 15, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.named(name, **fields)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no {name} event with {fields} within {timeout}s; daemon rc={self.proc.poll()}; "
            f"log:\n{''.join(self.raw[-40:])}"
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)
        return self.proc.returncode

    def log(self) -> str:
        return "".join(self.raw)


class Bed:
    def __init__(self, sandbox: Sandbox, lib: Path, vramwatch: Path) -> None:
        self.sb = sandbox
        self.lib = lib
        self.vramwatch = vramwatch
        self.dir = sandbox.workdir / f"t-{secrets.token_hex(3)}"
        self.dir.mkdir(mode=0o755)
        self.procdir = self.dir / "procs"
        self.procdir.mkdir()
        os.chown(self.procdir, sandbox.uid, sandbox.gid)
        self.state = FakeNvmlState(self.dir / "nvml-state")
        self.daemons: list[Daemon] = []

    def gpu(
        self,
        total_mib: int = 15360,
        others: Mapping[int, int] | None = None,
        errors: Mapping[str, str] | None = None,
        delays: Mapping[str, int] | None = None,
    ) -> None:
        """One fake GPU; ``others`` are extra (pid -> MiB) processes; tenants declare theirs."""
        procs = tuple(FakeProcess(pid, mib(n)) for pid, n in (others or {}).items())
        self.gpus([FakeGpu(T4_UUID, mib(total_mib), processes=procs)], errors, delays)

    def gpus(
        self,
        gpus: list[FakeGpu],
        errors: Mapping[str, str] | None = None,
        delays: Mapping[str, int] | None = None,
    ) -> None:
        """Any fake GPUs (lost ones, MIG instances); tenants declare their VRAM."""
        self.state.write(gpus, errors=errors, delays=delays, reap=True, procdir=self.procdir)
        os.chmod(self.state.path, 0o644)

    def config(self, text: str, name: str = "vramwatch.toml") -> Path:
        path = self.dir / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def tenant(
        self,
        unit: str,
        *,
        vram_mib: int = 0,
        ram_mib: int = 8,
        once: bool = True,
        leak_mib_per_s: float = 0,
        leak_max_mib: int = 12000,
        gpu: int | str = 0,
        orphan_s: float = 0,
        extra: tuple[str, ...] = (),
        properties: Mapping[str, str] | None = None,
    ) -> UnitState:
        """A unit holding real RAM and declaring fake VRAM (tests/e2e/tenant.py).

        ``once``: only the first process declares VRAM, so a restart frees it;
        ``leak_mib_per_s``: the VRAM grows (a CUDA arena that never shrinks);
        ``gpu``: its GPU index, or ``"I:M"`` for MIG device M of GPU I; ``orphan_s``: a
        child holds the VRAM and outlives the unit's stop by that long, outside the unit.
        """
        argv = [
            self.sb.python,
            str(self.sb.workdir / "tenant.py"),
            "--procdir",
            str(self.procdir),
            "--vram-mib",
            str(vram_mib),
            "--ram-mib",
            str(ram_mib),
            "--gpu",
            str(gpu),
        ]
        if orphan_s:
            argv += ["--orphan-s", str(orphan_s)]
        argv += extra  # more tenant.py options (RAM growth, sawtooth)
        if once:
            argv += ["--vram-once", str(self.procdir / f".once-{unit}")]
        if leak_mib_per_s:
            argv += [
                "--vram-grow-mib-per-s",
                str(leak_mib_per_s),
                "--vram-max-mib",
                str(leak_max_mib),
            ]
        props = {"Type": "notify"} | dict(properties or {})
        return self.sb.start_unit(unit, argv, properties=props)

    def restarted(self, unit: str, before: UnitState, timeout: float = 10) -> UnitState:
        """Wait until the unit runs a new invocation (the restart job may still be running)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.sb.unit_state(unit)
            if now.invocation_id != before.invocation_id and now.active_state == "active":
                return now
            if time.monotonic() > deadline:
                raise AssertionError(f"{unit} was not restarted: still {now}")
            time.sleep(0.1)

    def env(self) -> dict[str, str]:
        return {"LD_LIBRARY_PATH": str(self.lib), "FAKE_NVML_STATE": str(self.state.path)}

    def run_daemon(self, config: Path, *args: str, journal: bool = False) -> Daemon:
        """``vramwatch run``; its events as JSON on stderr, or (``journal``) in the journal."""
        logging = (
            ["--log-target", "journal"]
            if journal
            else ["--log-target", "stderr", "--log-format", "json"]
        )
        proc = self.sb.popen(
            [str(self.vramwatch), "run", "-c", str(config), *logging, *args],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        daemon = Daemon(proc)
        self.daemons.append(daemon)
        return daemon

    def state_dir(self) -> Path:
        """A directory the daemon (as the sandbox user) may keep its restart history in."""
        path = self.dir / "state"
        path.mkdir(mode=0o700, exist_ok=True)
        os.chown(path, self.sb.uid, self.sb.gid)
        return path

    def journal(self, event: str, timeout: float = 10) -> list[dict[str, str]]:
        """The sandbox journal's entries for one VRAMWATCH_EVENT, once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.sb.journal_entries(VRAMWATCH_EVENT=event)
            if entries or time.monotonic() > deadline:
                return entries
            time.sleep(0.2)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.sb.run([str(self.vramwatch), *args], env=self.env(), check=check)

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
