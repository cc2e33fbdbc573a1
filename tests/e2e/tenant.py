#!/usr/bin/env python3
"""A tenant's main process for the end-to-end tests and the demo (stdlib only).

    tenant.py --procdir DIR [--vram-mib N] [--vram-grow-mib-per-s X] [--vram-max-mib M]
              [--gpu I[:M]] [--vram-once MARKER] [--ram-mib R]

Holds R MiB of real, touched RAM and declares N MiB of VRAM on fake GPU I for
its own PID (a "proc" line in DIR/<pid>, which the fake libnvidia-ml.so.1
reads, and reaps when the PID is gone), optionally growing it by X MiB/s up
to M (a leak). With --vram-once, only the first process ever started declares
VRAM (the MARKER file remembers), so a restarted unit comes back clean;
without it every start re-grabs its VRAM at once (a restart storm). Sends
READY=1 when $NOTIFY_SOCKET is set; exits 0 on SIGTERM. Runs from the
sandbox's work directory, beside tests/sandbox/hog.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from types import FrameType

# hog.py (the sandbox's RAM hog) is copied beside this file.
from hog import sd_notify, touch

MIB = 1024 * 1024


def declare(procdir: str, gpu: str, mib: float) -> None:
    pid = os.getpid()
    tmp = os.path.join(procdir, f".{pid}.tmp")
    with open(tmp, "w") as handle:
        handle.write(f"proc {gpu} {pid} {int(mib * MIB)} compute\n")
    os.replace(tmp, os.path.join(procdir, str(pid)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procdir", required=True)
    ap.add_argument("--vram-mib", type=float, default=0)
    ap.add_argument("--vram-grow-mib-per-s", type=float, default=0)
    ap.add_argument("--vram-max-mib", type=float, default=float("inf"))
    ap.add_argument("--gpu", default="0", help="GPU index, or INDEX:MIG for a MIG device")
    ap.add_argument("--vram-once")
    ap.add_argument("--ram-mib", type=float, default=8)
    args = ap.parse_args()

    stop = False

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    ram = touch(int(args.ram_mib * MIB))

    vram = args.vram_mib
    grabs = vram > 0 or args.vram_grow_mib_per_s > 0
    if grabs and args.vram_once:
        try:
            os.close(os.open(args.vram_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            grabs = False
    if grabs:
        declare(args.procdir, args.gpu, vram)
    sd_notify("READY=1")
    last = time.monotonic()
    while not stop:
        time.sleep(0.25)
        if grabs and args.vram_grow_mib_per_s > 0 and vram < args.vram_max_mib:
            now = time.monotonic()
            vram = min(args.vram_max_mib, vram + args.vram_grow_mib_per_s * (now - last))
            last = now
            declare(args.procdir, args.gpu, vram)
    del ram


if __name__ == "__main__":
    main()
