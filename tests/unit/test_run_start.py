"""`vramwatch run` in a subprocess over the fake NVML, with NOTIFY_SOCKET pointed at a socket
this test reads: what systemd hears from the start of the process (issue 22, items 4 and 5).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakenvml import FakeGpu, FakeNvmlState, gib, subprocess_env

REPO = Path(__file__).resolve().parents[2]
MAIN = "import sys; from vramwatch import cli; sys.exit(cli.main(sys.argv[1:]))"

# Far past any wait below: the driver never answers while the test looks.
HUNG_MS = 600_000
# A start that does not block on NVML is up in well under this, even on a loaded host.
READY_WITHIN_S = 30.0


class Run:
    """A `vramwatch run` and the datagrams it sends to its NOTIFY_SOCKET, with their times."""

    def __init__(self, tmp_path: Path, lib_dir: Path, config: str, **env: str) -> None:
        tmp_path.chmod(0o755)
        path = tmp_path / "vramwatch.toml"
        path.write_text(config)
        path.chmod(0o644)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"vramwatch-test-{os.getpid()}-{id(self)}"
        self.sock.bind("\0" + name)
        base = os.environ | {"PYTHONPATH": str(REPO), "NOTIFY_SOCKET": "@" + name, **env}
        for key in ("WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID"):
            base.pop(key, None)
        if "WATCHDOG_USEC" not in env:
            base.pop("WATCHDOG_USEC", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MAIN, "run", "-c", str(path)]
            + ["--state-dir", str(tmp_path / "state"), "--log-target", "stderr"]
            + ["--log-format", "json"],
            env=subprocess_env(lib_dir, tmp_path / "nvml-state", base),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        self.received: list[tuple[float, str]] = []  # (seconds since the start, datagram)

    def until(self, state: str, limit_s: float) -> bool:
        """Read datagrams until one holds ``state`` (a line such as READY=1) or the limit."""
        deadline = self.started + limit_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                return False
            self.received.append((time.monotonic() - self.started, data))
            if state in data.splitlines():
                return True
        return False

    def close(self) -> str:
        """Stop it (SIGTERM, then SIGKILL); its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        self.sock.close()
        return err.decode(errors="replace")


@pytest.fixture
def hung_driver(fake_nvml_lib: Path, tmp_path: Path) -> Iterator[Path]:
    """The fake driver, every call of which (nvmlInit too) blocks: a driver after an Xid."""
    FakeNvmlState(tmp_path / "nvml-state").write(
        [FakeGpu("GPU-00000000-0000-0000-0000-000000000000", gib(16))],
        delays={"*": HUNG_MS},
    )
    yield fake_nvml_lib


def test_a_driver_hung_at_start_does_not_hold_ready(hung_driver: Path, tmp_path: Path) -> None:
    """Before: cmd_run sampled NVML once without the deadline, to warn about floors: with
    the driver hung, no READY=1, no host-RAM guard, and the start timed out over and over."""
    run = Run(tmp_path, hung_driver, '[gpu]\nnvml_timeout = "1s"\n')
    try:
        ready = run.until("READY=1", READY_WITHIN_S)
        took = time.monotonic() - run.started
    finally:
        err = run.close()

    assert True is ready, err
    assert took < READY_WITHIN_S
    assert '"event": "nvml_hung"' in err  # it did start ticking with the GPUs unknown


def test_systemd_hears_keep_alives_while_the_first_tick_waits_for_a_hung_driver(
    hung_driver: Path, tmp_path: Path
) -> None:
    """WatchdogSec=2s (WATCHDOG_USEC), nvml_timeout 6s: the first tick waits 6 s for NVML.
    Before: nothing reached systemd in that time, and a watchdog shorter than nvml_timeout
    killed vramwatch at every start."""
    run = Run(tmp_path, hung_driver, '[gpu]\nnvml_timeout = "6s"\n', WATCHDOG_USEC="2000000")
    try:
        ready = run.until("READY=1", READY_WITHIN_S + 5)
    finally:
        err = run.close()

    before_ready = [t for t, data in run.received if "WATCHDOG=1" in data.splitlines()]
    assert True is ready, err
    # Every 1 s (WatchdogSec/2) through the 6 s wait, before READY=1; never 2 s apart.
    assert len(before_ready) >= 4, run.received
    gaps = [b - a for a, b in zip(before_ready, before_ready[1:], strict=False)]
    assert max(gaps) < 2.0, run.received
