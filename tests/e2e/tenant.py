#!/usr/bin/env python3
"""A tenant's main process for the end-to-end tests (standard library only).

    tenant.py --procdir DIR [--vram-mib N] [--gpu I] [--vram-once MARKER] -- HOG ARGS...

Declares N MiB of VRAM on fake GPU I for its own PID (a "proc" line in
DIR/<pid>, which the fake libnvidia-ml.so.1 reads and reaps when the PID is
gone), then execs the RAM hog with the same PID. With --vram-once, only the
first process ever started declares VRAM (the MARKER file remembers), so a
restarted unit comes back clean; without it every start re-grabs VRAM, like a
service whose leak returns at once (a restart storm).
"""

from __future__ import annotations

import argparse
import os
import sys

MIB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procdir", required=True)
    ap.add_argument("--vram-mib", type=int, default=0)
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--vram-once")
    ap.add_argument("hog", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    declare = args.vram_mib > 0
    if declare and args.vram_once:
        try:
            fd = os.open(args.vram_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
        except FileExistsError:
            declare = False
    if declare:
        pid = os.getpid()
        tmp = os.path.join(args.procdir, f".{pid}.tmp")
        with open(tmp, "w") as handle:
            handle.write(f"proc {args.gpu} {pid} {args.vram_mib * MIB} compute\n")
        os.replace(tmp, os.path.join(args.procdir, str(pid)))
    hog = [a for a in args.hog if a != "--"]
    os.execv(sys.executable, [sys.executable, *hog])


if __name__ == "__main__":
    main()
