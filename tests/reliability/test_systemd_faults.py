"""The D-Bus boundary under faults, on a real systemd --user manager.

vramwatch's SystemdClient runs inside the sandbox (tests/reliability/busdriver.py,
with the installed vramwatch) and is driven one call at a time. Every failure
must come back as a JobOutcome with the reason, never as an exception, and the
next action must work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Bed, venv

HERE = Path(__file__).resolve().parent


class Driver:
    def __init__(self, bed: Bed, job_timeout_s: float = 30) -> None:
        script = bed.dir / "busdriver.py"
        shutil.copy(HERE / "busdriver.py", script)
        script.chmod(0o755)
        self.proc = bed.sb.popen(
            [str(venv() / "bin" / "python"), str(script), str(job_timeout_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def __call__(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"bus driver died on {line!r} (rc={self.proc.poll()})"
        result: dict[str, Any] = json.loads(answer)
        return result


def sleeper(bed: Bed, unit: str, **properties: str) -> None:
    bed.sb.start_unit(unit, ["/bin/sleep", "infinity"], properties=properties)


def test_restart_works_after_the_manager_re_executes(bed: Bed) -> None:
    """daemon-reexec gives systemd a new unique bus name: JobRemoved must still be seen."""
    sleeper(bed, "victim.service")
    drive = Driver(bed, job_timeout_s=10)
    first = drive("act victim.service restart")
    owner_before = drive("owner")["owner"]

    bed.sb.run(["systemctl", "--user", "daemon-reexec"])
    second = drive("act victim.service restart")
    owner_after = drive("owner")["owner"]

    assert (True, "done") == (first["ok"], first["result"])
    assert (True, "done") == (second["ok"], second["result"]), second
    assert second["took"] < 5
    assert owner_before != owner_after
    assert "active" == bed.sb.unit_state("victim.service").active_state


def test_a_bus_dropped_between_calls_is_reconnected(bed: Bed) -> None:
    sleeper(bed, "victim.service")
    drive = Driver(bed)
    drive("act victim.service restart")

    drive("drop")
    again = drive("act victim.service restart")

    assert (True, "done") == (again["ok"], again["result"])


def test_a_bus_dropped_while_waiting_for_the_job_is_an_outcome_then_reconnects(bed: Bed) -> None:
    # ExecStop takes 2 s, so the restart job is still running when the socket goes.
    sleeper(bed, "slowstop.service", ExecStop="/bin/sleep 2", TimeoutStopSec="30")
    drive = Driver(bed)

    dropped = drive("act_drop slowstop.service restart 0.5")
    bed.sb.wait_for(lambda: bed.sb.unit_state("slowstop.service").active_state == "active")
    again = drive("act slowstop.service restart")

    assert (False, "disconnected") == (dropped["ok"], dropped["result"])
    assert dropped["detail"].startswith("lost the bus waiting for the job: ")
    assert (True, "done") == (again["ok"], again["result"])


def counted_sleeper(bed: Bed, unit: str, **properties: str) -> Path:
    """A unit that appends a line to a file each time it starts: counts the restarts sent."""
    starts = bed.procdir / f"{unit}.starts"
    bed.sb.start_unit(
        unit,
        ["/bin/sh", "-c", f"echo start >> {starts}; exec sleep infinity"],
        properties=properties,
    )
    return starts


def starts_of(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_a_bus_dropped_after_systemd_accepted_the_restart_is_an_accepted_outcome(
    bed: Bed,
) -> None:
    """The job runs on in systemd: the outcome says it was accepted, and it is not re-sent."""
    starts = counted_sleeper(bed, "victim.service")
    drive = Driver(bed)

    dropped = drive("act_drop_accepted victim.service restart")
    bed.sb.wait_for(lambda: starts_of(starts) >= 2)
    again = drive("act victim.service restart")
    bed.sb.wait_for(lambda: starts_of(starts) >= 3)

    assert (False, "disconnected", True) == (
        dropped["ok"],
        dropped["result"],
        dropped["accepted"],
    ), dropped
    assert dropped["detail"].startswith("lost the bus waiting for the job: ")
    assert (True, "done", True) == (again["ok"], again["result"], again["accepted"])
    assert 3 == starts_of(starts)  # the first start, the dropped restart, the next one


def test_a_bus_dropped_before_the_reply_to_restart_is_never_re_sent(bed: Bed) -> None:
    """Before this fix the client re-sent RestartUnit on a new connection, then died
    waiting on the closed one (ValueError: I/O operation on closed epoll object)."""
    starts = counted_sleeper(bed, "victim.service")
    drive = Driver(bed)

    dropped = drive("act_drop_sent victim.service restart")
    bed.sb.wait_for(lambda: starts_of(starts) >= 2)
    bed.sb.wait_for(lambda: bed.sb.unit_state("victim.service").active_state == "active")
    restarts_sent = starts_of(starts) - 1
    again = drive("act victim.service restart")

    assert 1 == restarts_sent
    # Sent, and here systemd did restart it: an answer lost with the bus may hide a
    # queued job, so the outcome counts as accepted (in flight until settled).
    assert (False, "disconnected", True) == (
        dropped["ok"],
        dropped["result"],
        dropped["accepted"],
    ), dropped
    assert "not re-sent, job state unknown" in dropped["detail"]
    assert (True, "done") == (again["ok"], again["result"])


def test_an_unexpected_error_while_waiting_for_the_job_is_an_unknown_outcome(bed: Bed) -> None:
    sleeper(bed, "victim.service")
    drive = Driver(bed)

    broken = drive("act_raise victim.service restart")
    again = drive("act victim.service restart")

    assert (False, "unknown", True) == (broken["ok"], broken["result"], broken["accepted"])
    assert (
        "RestartUnit victim.service: unexpected error, job state unknown: "
        "RuntimeError('scripted bug while waiting')"
    ) == broken["detail"]
    assert (True, "done") == (again["ok"], again["result"])


def test_a_job_that_outlives_the_job_timeout_is_a_timeout_outcome(bed: Bed) -> None:
    sleeper(bed, "slowstop.service", ExecStop="/bin/sleep 5", TimeoutStopSec="30")
    drive = Driver(bed, job_timeout_s=1)

    outcome = drive("act slowstop.service restart")

    assert (False, "timeout", "RestartUnit job still running after 1s") == (
        outcome["ok"],
        outcome["result"],
        outcome["detail"],
    )
    assert 1 <= outcome["took"] < 3


UNIT_DIR = "{home}/.config/systemd/user"
REFUSING_UNIT = """[Unit]
RefuseManualStart=yes
RefuseManualStop=yes
[Service]
ExecStart=/bin/sleep infinity
"""


@pytest.mark.parametrize(
    ("setup", "unit", "error"),
    [
        ("mask", "masked.service", "org.freedesktop.systemd1.UnitMasked"),
        ("refuse", "refused.service", "org.freedesktop.systemd1.OnlyByDependency"),
        ("none", "no-such-unit.service", "org.freedesktop.systemd1.NoSuchUnit"),
    ],
)
def test_a_refused_restart_is_an_outcome_with_the_dbus_error(
    bed: Bed, setup: str, unit: str, error: str
) -> None:
    """The user manager has no polkit: masking and RefuseManualStart= are its real denials."""
    if setup == "mask":
        bed.sb.run(["systemctl", "--user", "mask", unit])
    elif setup == "refuse":
        # A transient unit cannot carry RefuseManualStart= (its own start is manual).
        bed.sb.run(["mkdir", "-p", UNIT_DIR.format(home=bed.sb.home)])
        bed.sb.run(
            ["sh", "-c", f"cat > {UNIT_DIR.format(home=bed.sb.home)}/{unit}"],
            input=REFUSING_UNIT,
        )
        bed.sb.run(["systemctl", "--user", "daemon-reload"])
    drive = Driver(bed)
    try:
        outcome = drive(f"act {unit} restart")
    finally:
        if setup == "mask":
            bed.sb.run(["systemctl", "--user", "unmask", unit])
        elif setup == "refuse":
            bed.sb.run(["rm", "-f", f"{UNIT_DIR.format(home=bed.sb.home)}/{unit}"])
            bed.sb.run(["systemctl", "--user", "daemon-reload"])

    assert (False, error) == (outcome["ok"], outcome["result"]), outcome
    assert outcome["detail"]
