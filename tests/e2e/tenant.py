#!/usr/bin/env python3
"""A tenant's main process for the end-to-end tests and the demo (stdlib only).

    tenant.py --procdir DIR [--vram-mib N] [--vram-grow-mib-per-s X] [--vram-max-mib M]
              [--gpu I[:M]] [--vram-once MARKER] [--ram-mib R] [--orphan-s T]
              [--ram-grow-mib-per-s G] [--ram-sawtooth-mib A --sawtooth-s P]

Holds R MiB of real, touched RAM and declares N MiB of VRAM on fake GPU I for
its own PID (a "proc" line in DIR/<pid>, which the fake libnvidia-ml.so.1
reads, and reaps when the PID is gone), optionally growing it by X MiB/s up
to M (a leak). With --vram-once, only the first process ever started declares
VRAM (the MARKER file remembers), so a restarted unit comes back clean;
without it every start re-grabs its VRAM at once (a restart storm). With
--orphan-s, the VRAM is held by a child that, when the unit is stopped,
leaves the unit's cgroup for a plain sibling directory (as a double-forked
helper of a delegated unit can) and keeps the memory for T more seconds: an
orphan outside the unit. --ram-grow-mib-per-s G adds G MiB of touched RAM
a second (a leak); --ram-sawtooth-mib A idles for half of every P seconds,
then takes up to A MiB and gives it all back (a worker pool's batches, no leak). Sends READY=1 when
$NOTIFY_SOCKET is set; exits 0 on SIGTERM. Runs from the sandbox's work
directory, beside tests/sandbox/hog.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from types import FrameType

# hog.py (the sandbox's RAM hog) is copied beside this file.
from hog import sd_notify, touch  # type: ignore[import-not-found]

MIB = 1024 * 1024


def declare(procdir: str, gpu: str, mib: float) -> None:
    pid = os.getpid()
    tmp = os.path.join(procdir, f".{pid}.tmp")
    with open(tmp, "w") as handle:
        handle.write(f"proc {gpu} {pid} {int(mib * MIB)} compute\n")
    os.replace(tmp, os.path.join(procdir, str(pid)))


def escape_cgroup() -> None:
    """Move this process out of its unit into ``<parent>/escaped`` in every hierarchy
    that tracks units (name=systemd on v1 and hybrid hosts, the unified one)."""
    roots = {"name=systemd": "/sys/fs/cgroup/systemd", "": None}
    with open("/proc/self/cgroup") as handle:
        lines = handle.read().splitlines()
    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers not in roots:
            continue
        if controllers == "":
            base = "/sys/fs/cgroup/unified"
            root = base if os.path.isdir(base) else "/sys/fs/cgroup"
        else:
            root = roots[controllers] or ""
        target = os.path.join(root + os.path.dirname(path), "escaped")
        try:
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, "cgroup.procs"), "w") as handle:
                handle.write(str(os.getpid()))
        except OSError:
            pass  # that hierarchy does not track this unit (e.g. v2 line on a hybrid host)


def orphan(procdir: str, gpu: str, mib: float, seconds: float) -> int:
    """A child that holds the VRAM and, when the unit stops, hands it to a process
    outside the unit that keeps it for ``seconds`` (a driver context that outlives the
    unit's processes). The keeper is a new PID, so what is seen is its cgroup today,
    not what the same PID was a moment ago."""
    child = os.fork()
    if child:
        return child
    try:
        escaped = False

        def on_term(_signum: int, _frame: FrameType | None) -> None:
            nonlocal escaped
            escaped = True

        signal.signal(signal.SIGTERM, on_term)
        declare(procdir, gpu, mib)
        while not escaped:
            time.sleep(0.05)
        escape_cgroup()
        if os.fork() == 0:  # the keeper, born outside the unit
            try:
                declare(procdir, gpu, mib)
                time.sleep(seconds)
            finally:
                os._exit(0)
        time.sleep(0.2)  # the keeper has declared: now the old holder goes
    finally:
        os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procdir", required=True)
    ap.add_argument("--vram-mib", type=float, default=0)
    ap.add_argument("--vram-grow-mib-per-s", type=float, default=0)
    ap.add_argument("--vram-max-mib", type=float, default=float("inf"))
    ap.add_argument("--gpu", default="0", help="GPU index, or INDEX:MIG for a MIG device")
    ap.add_argument("--vram-once")
    ap.add_argument("--ram-mib", type=float, default=8)
    ap.add_argument("--orphan-s", type=float, default=0)
    ap.add_argument("--ram-grow-mib-per-s", type=float, default=0)
    ap.add_argument("--ram-sawtooth-mib", type=float, default=0)
    ap.add_argument("--sawtooth-s", type=float, default=4)
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
    if grabs and args.orphan_s:
        orphan(args.procdir, args.gpu, vram, args.orphan_s)
        grabs = False
    elif grabs:
        declare(args.procdir, args.gpu, vram)
    sd_notify("READY=1")
    last = time.monotonic()
    started = last
    grown: list[bytearray] = []  # the leak, never given back
    batch: list[bytearray] = []  # the sawtooth, given back every --sawtooth-s
    leaked = 0.0
    while not stop:
        time.sleep(0.25)
        now = time.monotonic()
        if args.ram_grow_mib_per_s:
            due = args.ram_grow_mib_per_s * (now - started) - leaked
            if due >= 1:
                grown.append(touch(int(due) * MIB))  # whole MiB: what is counted is what is held
                leaked += int(due)
        if args.ram_sawtooth_mib:
            # Idle for the first half of each period, then a batch that grows to A MiB
            # and is given back at once: a trough in every period, as in a worker pool.
            phase = ((now - started) % args.sawtooth_s) / args.sawtooth_s
            want = int(args.ram_sawtooth_mib * max(0.0, 2 * phase - 1))
            if want < len(batch):
                batch.clear()  # the batch is done: all of it goes back
            while len(batch) < want:
                batch.append(touch(MIB))
        if grabs and args.vram_grow_mib_per_s > 0 and vram < args.vram_max_mib:
            now = time.monotonic()
            vram = min(args.vram_max_mib, vram + args.vram_grow_mib_per_s * (now - last))
            last = now
            declare(args.procdir, args.gpu, vram)
    del ram


if __name__ == "__main__":
    main()
