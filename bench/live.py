"""Footprint and reaction time of the installed daemon on a real systemd user manager.

    VRAMWATCH_VENV=/opt/vw-bench ./scripts/bootstrap     # as root; after code changes
    VRAMWATCH_VENV=/opt/vw-bench /opt/vw-bench/bin/python -m bench.live [--trials 6]

Uses the end-to-end test bed (tests/e2e): ``vramwatch run`` from
``$VRAMWATCH_VENV`` as the sandbox user, the real pynvml over the fake
libnvidia-ml.so.1, tenant units running tests/e2e/tenant.py.

Footprint: the daemon at ``interval = "2s"`` with 10 tenants (4 running) on one
fake GPU, and ``earlyoom`` (Debian package; installed with apt-get when
missing) with its default settings, both sampled once a second over the same
window: RSS from /proc/PID/status, CPU share from utime+stime in
/proc/PID/stat.

Reaction: for each trial one tenant's process declares 14000 MiB on a
15360 MiB GPU with a 2 GiB floor, at a random phase of the tick grid. Reported
from that write to the ``restart`` event (logged right before RestartUnit is
called; its timestamp is the daemon's), and to the new process being active
(the unit's ActiveEnterTimestampMonotonic), against grace + interval.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tests.e2e.conftest import Bed, venv
from tests.fakenvml import build
from tests.sandbox import Sandbox

E2E_DIR = Path(__file__).resolve().parent.parent / "tests" / "e2e"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def ensure_earlyoom() -> str:
    path = shutil.which("earlyoom")
    if path is None:
        print("bench.live: installing earlyoom (apt-get install -y earlyoom)", file=sys.stderr)
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "earlyoom"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        path = shutil.which("earlyoom")
        assert path is not None
    return path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def footprint(pids: dict[str, int], seconds: float) -> list[str]:
    rss: dict[str, list[int]] = {name: [] for name in pids}
    cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        for name, pid in pids.items():
            rss[name].append(rss_kib(pid))
    elapsed = time.monotonic() - t0
    rows = [
        "| process | RSS median MiB | RSS max MiB | CPU s over window | CPU share |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, pid in pids.items():
        used = cpu_s(pid) - cpu0[name]
        rows.append(
            f"| {name} | {statistics.median(rss[name]) / 1024:.1f} | {max(rss[name]) / 1024:.1f} "
            f"| {used:.2f} of {elapsed:.0f} | {100 * used / elapsed:.3f} % |"
        )
    return rows


FOOTPRINT_CONFIG = """
[daemon]
interval = "2s"
bus = "user"

[gpu]
min_free_vram = "2GiB"
grace = "10s"

[host]
min_available_ram = "1MiB"
"""

REACTION = {"interval_s": 2, "grace_s": 4}


def tenants_toml(names: list[str], vram: str) -> str:
    return "".join(f'\n[[tenant]]\nunit = "{n}"\nvram = "{vram}"\n' for n in names)


def run_footprint(bed: Bed, seconds: float) -> list[str]:
    earlyoom = ensure_earlyoom()
    names = [f"fp-{i}.service" for i in range(10)]
    for name in names[:4]:
        bed.tenant(name, vram_mib=1000, ram_mib=16)
    bed.gpu(total_mib=81920)
    daemon = bed.run_daemon(bed.config(FOOTPRINT_CONFIG + tenants_toml(names, "4GiB"), "fp.toml"))
    daemon.wait_event("started")
    oom = subprocess.Popen([earlyoom], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(4)  # past start-up: imports done, first ticks run
        return footprint({"vramwatch run": daemon.proc.pid, "earlyoom": oom.pid}, seconds)
    finally:
        oom.terminate()
        oom.wait()
        daemon.stop()


def iso_to_epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_reaction(bed: Bed, trials: int) -> list[str]:
    interval, grace = REACTION["interval_s"], REACTION["grace_s"]
    names = [f"react-{i}.service" for i in range(trials)]
    for name in names:
        bed.tenant(name, vram_mib=0, ram_mib=8, once=False)
    bed.gpu(total_mib=15360)
    config = f"""
[daemon]
interval = "{interval}s"
bus = "user"
cooldown = "10m"
reclaim_timeout = "20s"

[gpu]
min_free_vram = "2GiB"
grace = "{grace}s"

[host]
min_available_ram = "1MiB"
""" + tenants_toml(names, "1000MiB")
    daemon = bed.run_daemon(bed.config(config, "react.toml"))
    daemon.wait_event("started")
    time.sleep(interval)
    rows = [
        "| trial | to restart event s | to new process active s | bound grace + interval s |",
        "|---:|---:|---:|---:|",
    ]
    to_restart: list[float] = []
    to_up: list[float] = []
    for i, name in enumerate(names):
        before = bed.sb.unit_state(name)
        time.sleep(random.uniform(0, interval))  # a random phase of the tick grid
        tmp = bed.procdir / f".bench.{before.main_pid}"
        tmp.write_text(f"proc 0 {before.main_pid} {14000 * MIB} compute\n")
        os.replace(tmp, bed.procdir / str(before.main_pid))
        t0_wall, t0_mono = time.time(), time.monotonic()
        event = daemon.wait_event("restart", timeout=grace + 3 * interval, unit=name)
        bed.restarted(name, before)
        entered = int(bed.sb.unit_property(name, "ActiveEnterTimestampMonotonic")) / 1e6
        to_restart.append(iso_to_epoch(event["timestamp"]) - t0_wall)
        to_up.append(entered - t0_mono)
        rows.append(f"| {i + 1} | {to_restart[-1]:.3f} | {to_up[-1]:.3f} | {grace + interval} |")
        if to_restart[-1] > grace + interval + 0.2:
            # Over the bound: keep the evidence (which ticks saw what) for whoever looks next.
            print(f"trial {i + 1} over the bound; daemon log:\n{daemon.log()}", file=sys.stderr)
        daemon.wait_event("reclaimed", timeout=15, unit=name)
    rows.append(f"| max | {max(to_restart):.3f} | {max(to_up):.3f} | {grace + interval} |")
    daemon.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--footprint-s", type=float, default=60)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--skip", choices=["footprint", "reaction"], action="append", default=[])
    args = ap.parse_args(argv)
    vramwatch = venv() / "bin" / "vramwatch"
    if not os.access(vramwatch, os.X_OK):
        print(
            f"bench.live: no {vramwatch}: run VRAMWATCH_VENV=... ./scripts/bootstrap",
            file=sys.stderr,
        )
        return 1
    sb = Sandbox().start()
    try:
        lib = build(sb.workdir / "nvml-lib")
        for p in (lib, *lib.iterdir()):
            p.chmod(0o755)
        shutil.copy(E2E_DIR / "tenant.py", sb.workdir / "tenant.py")
        (sb.workdir / "tenant.py").chmod(0o755)
        if "footprint" not in args.skip:
            bed = Bed(sb, lib, vramwatch)
            print(f"footprint over {args.footprint_s:.0f} s ({vramwatch}):")
            print("\n".join(run_footprint(bed, args.footprint_s)), flush=True)
            bed.close()
            sb.reset()
        if "reaction" not in args.skip:
            bed = Bed(sb, lib, vramwatch)
            print(
                f"\nreaction, interval {REACTION['interval_s']} s, grace {REACTION['grace_s']} s:"
            )
            print("\n".join(run_reaction(bed, args.trials)), flush=True)
            bed.close()
            sb.reset()
    finally:
        sb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
