"""Reaction: from a VRAM floor breach to the restart job, on a real systemd manager.

    VRAMWATCH_VENV=/opt/vw-bench ./scripts/bootstrap     # as root; after code changes
    VRAMWATCH_VENV=/opt/vw-bench /opt/vw-bench/bin/python -m bench.reaction [--trials 10]

The real daemon (``vramwatch run`` from ``$VRAMWATCH_VENV``, as the sandbox
user) on the end-to-end test bed's private ``systemd --user`` manager
(tests/e2e), the real pynvml over the fake libnvidia-ml.so.1, tenant units
running tests/e2e/tenant.py. Each trial makes one tenant's process declare
14000 MiB on a 15360 MiB GPU with a 2 GiB floor, at a random phase of the tick
grid: the breach instant is the atomic rename of that declaration, which the
fake driver reads on its next call.

Reported per trial, from the breach:

- to the ``restart`` event, which the daemon logs right before it sends
  ``RestartUnit`` (the event's own timestamp);
- to the unit leaving the active state (``ActiveExitTimestampMonotonic``,
  stamped by the manager when the restart job starts stopping it: the job
  was sent and taken);

against the bound grace + interval + 0.1 s. "Wait for a tick" is the restart
time less grace: how long the breach waited for the first tick that saw it
(at most one interval, as ticks are stamped with their slot on the grid),
plus the tick's own run time.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime

from tests.e2e.harness import Bed, installed_vramwatch, prepare
from tests.sandbox import Sandbox

MIB = 1024 * 1024
SLACK_S = 0.1


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def config(names: list[str], interval_s: float, grace_s: float) -> str:
    return f"""
[daemon]
interval = "{interval_s:g}s"
bus = "user"
cooldown = "10m"
reclaim_timeout = "20s"

[gpu]
min_free_vram = "2GiB"
grace = "{grace_s:g}s"

[host]
min_available_ram = "1MiB"
""" + "".join(f'\n[[tenant]]\nunit = "{n}"\nvram = "1000MiB"\n' for n in names)


def run(bed: Bed, trials: int, interval_s: float, grace_s: float) -> tuple[list[str], int]:
    bound = grace_s + interval_s + SLACK_S
    names = [f"react-{i}.service" for i in range(trials)]
    for name in names:
        bed.tenant(name, vram_mib=0, ram_mib=8, once=False)
    bed.gpu(total_mib=15360)
    daemon = bed.run_daemon(bed.config(config(names, interval_s, grace_s), "react.toml"))
    daemon.wait_event("started")
    time.sleep(interval_s)
    rows = [
        "| trial | wait for a tick s | to restart event s | to unit leaving active s | bound s |",
        "|---:|---:|---:|---:|---:|",
    ]
    seen: list[float] = []
    sent: list[float] = []
    taken: list[float] = []
    for i, name in enumerate(names):
        before = bed.sb.unit_state(name)
        time.sleep(random.uniform(0, interval_s))  # a random phase of the tick grid
        tmp = bed.procdir / f".bench.{before.main_pid}"
        tmp.write_text(f"proc 0 {before.main_pid} {14000 * MIB} compute\n")
        os.replace(tmp, bed.procdir / str(before.main_pid))
        t0_wall, t0_mono = time.time(), time.monotonic()
        event = daemon.wait_event("restart", timeout=grace_s + 3 * interval_s, unit=name)
        bed.restarted(name, before)
        left = int(bed.sb.unit_property(name, "ActiveExitTimestampMonotonic")) / 1e6
        sent.append(epoch(event["timestamp"]) - t0_wall)
        seen.append(sent[-1] - grace_s)
        taken.append(left - t0_mono)
        rows.append(f"| {i + 1} | {seen[-1]:.3f} | {sent[-1]:.3f} | {taken[-1]:.3f} | {bound:g} |")
        if max(sent[-1], taken[-1]) > bound:
            print(f"trial {i + 1} over the bound; daemon log:\n{daemon.log()}", file=sys.stderr)
        daemon.wait_event("reclaimed", timeout=15, unit=name)
    daemon.stop()
    rows.append(f"| max | {max(seen):.3f} | {max(sent):.3f} | {max(taken):.3f} | {bound:g} |")
    rows.append(
        f"| median | {statistics.median(seen):.3f} | {statistics.median(sent):.3f} "
        f"| {statistics.median(taken):.3f} | |"
    )
    within = sum(1 for s, t in zip(sent, taken, strict=True) if max(s, t) <= bound)
    return rows, within


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--interval", type=float, default=2.0, help="seconds")
    ap.add_argument("--grace", type=float, default=4.0, help="seconds")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.reaction: run as root (it starts a sandbox user manager)", file=sys.stderr)
        return 1
    vramwatch = installed_vramwatch("bench.reaction")
    if vramwatch is None:
        return 1
    sb = Sandbox().start()
    try:
        bed = Bed(sb, prepare(sb), vramwatch)
        print(
            f"reaction, interval {args.interval:g} s, grace {args.grace:g} s, "
            f"bound grace + interval + {SLACK_S:g} s ({vramwatch}):"
        )
        rows, within = run(bed, args.trials, args.interval, args.grace)
        print("\n".join(rows))
        print(f"within the bound: {within} of {args.trials}", flush=True)
        bed.close()
        sb.reset()
    finally:
        sb.stop()
    return 0 if within == args.trials else 2


if __name__ == "__main__":
    sys.exit(main())
