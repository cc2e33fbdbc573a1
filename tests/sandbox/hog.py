#!/usr/bin/env python3
"""Memory hog to run as a tenant unit's main process (standard library only).

    hog.py --ram-mib N [--pidfile P] [--grow-mib-per-s X] [--max-mib M]
           [--until-available-mib A]

Allocates N MiB and touches every page, writes its pid to P, prints "ready"
(and sends READY=1 when $NOTIFY_SOCKET is set, so ``Type=notify`` units start
only once the memory is resident), optionally keeps growing by X MiB/s up to
M MiB or until the host's MemAvailable is down to A MiB, and sleeps until
SIGTERM/SIGINT, on which it exits 0 at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from types import FrameType

MIB = 1024 * 1024
PAGE = 4096


def touch(n_bytes: int) -> bytearray:
    buf = bytearray(n_bytes)
    buf[::PAGE] = b"\x01" * len(range(0, n_bytes, PAGE))  # fault in every page
    return buf


def mem_available_mib() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def sd_notify(state: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())


def on_term(signum: int, frame: FrameType | None) -> None:
    sys.stdout.flush()
    os._exit(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ram-mib", type=float, required=True)
    ap.add_argument("--pidfile")
    ap.add_argument("--grow-mib-per-s", type=float, default=0.0)
    ap.add_argument("--max-mib", type=float, default=float("inf"))
    # The kernel's MemAvailable is an estimate that moves under pressure (page cache,
    # reclaimable slab): a size worked out from it beforehand can stop short of a floor.
    ap.add_argument("--until-available-mib", type=float, default=0.0)
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    chunks = [touch(int(args.ram_mib * MIB))]
    held = args.ram_mib
    if args.pidfile:
        tmp = f"{args.pidfile}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, args.pidfile)
    print("ready", flush=True)
    sd_notify(f"READY=1\nSTATUS=holding {held:g} MiB\nMAINPID={os.getpid()}")

    step = 0.1
    while True:
        time.sleep(step)
        growing = held < args.max_mib and mem_available_mib() > args.until_available_mib
        if args.grow_mib_per_s > 0 and growing:
            add = min(args.grow_mib_per_s * step, args.max_mib - held)
            chunks.append(touch(int(add * MIB)))
            held += add
        elif args.grow_mib_per_s <= 0:
            signal.pause()


if __name__ == "__main__":
    sys.exit(main())
