"""vramwatch's memory next to nohang's and earlyoom's, and its reaction under memory pressure.

    VRAMWATCH_VENV=/opt/vw-bench ./scripts/bootstrap     # as root; after code changes
    VRAMWATCH_VENV=/opt/vw-bench /opt/vw-bench/bin/python -m bench.footprint
        [--seconds 60] [--trials 3] [--reserve-mib 1024] [--skip footprint|mlock|pressure]

A script that prints figures (issue 17), run on purpose; not a timed test.
Run as root: it installs nohang and earlyoom with apt-get when they are
missing (Debian 12: nohang 0.2.0, earlyoom 1.7; or ``apt-get install nohang
earlyoom`` beforehand), starts a sandbox (tests/sandbox: a private systemd
user manager and journald) and may lower other processes' oom_score_adj.

footprint: in one window, side by side, each started as its Debian unit
starts it: ``nohang --monitor --config /etc/nohang/nohang.conf`` (root,
mlockall), ``earlyoom -r 3600`` (EARLYOOM_ARGS of /etc/default/earlyoom), and
two ``vramwatch run`` (the installed venv, ``--log-target journal`` as under
systemd, interval 2 s, 3 tenant units holding 1000 MiB each on one fake
15360 MiB GPU: the real pynvml over tests/fakenvml), one with metrics off
(the default) and one with ``[metrics] listen`` and ``textfile`` on, scraped
every 15 s as Prometheus would. After ``--seconds``: VmRSS from
/proc/PID/status, PSS and USS (Private_Clean + Private_Dirty) from
/proc/PID/smaps_rollup, VmLck. RSS does not depend on the machine's load.

mlock: what earlyoom's ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``
would cost vramwatch: the daemon (metrics off) is built as ``vramwatch run``
builds it, calls mlockall with each set of flags right before its loop, and
runs for 10 s; its VmRSS and VmLck are read then.

pressure: a hog tenant (tests/sandbox/hog.py in a unit, RAM budget 64 MiB)
grows at 4 GiB/s until MemAvailable, which it reads every 0.1 s, is down to
``--reserve-mib`` (a size worked out beforehand can stop short: the kernel's
estimate moves by a GiB under pressure). It never takes more than MemAvailable
at the start of the trial, and its oom_score_adj is 1000, so the kernel's OOM
killer would take it first. vramwatch (``[host] min_available_ram = "2GiB"``,
grace 2 s, interval 1 s) runs with the OOMScoreAdjust= of
packaging/systemd/vramwatch.service written to its /proc/PID/oom_score_adj, and
MemoryMin= as memory.min of a cgroup it is moved to where the memory controller
is cgroup v2 (on a cgroup v1 memory controller there is no memory.min: reported
as not applied). Per trial: from the start of the spell below the floor that
lasted until the ``restart`` event (this script polls /proc/meminfo every 10
ms; a spell that ended first, other processes freeing memory, restarted the
daemon's grace) to the event's timestamp, against grace + interval + 0.1 s; the
lowest MemAvailable seen; vramwatch's VmRSS.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from tests.e2e.harness import Bed, installed_vramwatch, prepare, venv
from tests.fakenvml import FakeGpu, FakeNvmlState, build, mib
from tests.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "packaging" / "systemd" / "vramwatch.service"
MIB = 1024 * 1024
PORT = 19835

NOHANG = ["/usr/sbin/nohang", "--monitor", "--config", "/etc/nohang/nohang.conf"]
EARLYOOM = ["/usr/bin/earlyoom", "-r", "3600"]

TENANTS = ["fp-a.service", "fp-b.service", "fp-c.service"]


def ensure_packages() -> None:
    missing = [
        p for p, exe in (("nohang", NOHANG[0]), ("earlyoom", EARLYOOM[0])) if not Path(exe).exists()
    ]
    if not missing:
        return
    print(f"bench.footprint: installing {' '.join(missing)} (apt-get install -y)", file=sys.stderr)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def kib(path: str, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(path).read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def memory(pid: int) -> dict[str, float]:
    """VmRSS, PSS, USS and VmLck of one process, in MiB."""
    rollup = f"/proc/{pid}/smaps_rollup"
    return {
        "rss": kib(f"/proc/{pid}/status", "VmRSS") / 1024,
        "pss": kib(rollup, "Pss") / 1024,
        "uss": (kib(rollup, "Private_Clean") + kib(rollup, "Private_Dirty")) / 1024,
        "lck": kib(f"/proc/{pid}/status", "VmLck") / 1024,
    }


def mem_available() -> int:
    return kib("/proc/meminfo", "MemAvailable") * 1024


def package_version(name: str) -> str:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True
    )
    return r.stdout.strip() or "?"


def unit_setting(key: str) -> str | None:
    for line in UNIT.read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    return None


def tenants_toml(vram: str, ram: str | None = None, names: list[str] = TENANTS) -> str:
    extra = f'ram = "{ram}"\n' if ram else ""
    return "".join(f'\n[[tenant]]\nunit = "{n}"\nvram = "{vram}"\n{extra}' for n in names)


BASE = """
[daemon]
interval = "2s"
bus = "user"

[gpu]
min_free_vram = "2GiB"
grace = "10s"

[host]
min_available_ram = "1MiB"
"""


# ------------------------------------------------------------------ footprint


def run_footprint(bed: Bed, seconds: float) -> list[str]:
    for name in TENANTS:
        bed.tenant(name, vram_mib=1000, ram_mib=16)
    bed.gpu(total_mib=15360)
    off = bed.run_daemon(bed.config(BASE + tenants_toml("4GiB"), "off.toml"), journal=True)
    prom = bed.dir / "metrics"
    prom.mkdir(mode=0o755)
    os.chown(prom, bed.sb.uid, bed.sb.gid)
    metrics = f'\n[metrics]\nlisten = "127.0.0.1:{PORT}"\ntextfile = "{prom}/vramwatch.prom"\n'
    on = bed.run_daemon(bed.config(BASE + metrics + tenants_toml("4GiB"), "on.toml"), journal=True)
    peers = {
        "nohang": subprocess.Popen(NOHANG, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "earlyoom": subprocess.Popen(
            EARLYOOM, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
    }
    pids = {
        "vramwatch run, metrics off": off.proc.pid,
        "vramwatch run, metrics on (scraped every 15 s)": on.proc.pid,
        f"nohang {package_version('nohang')} --monitor": peers["nohang"].pid,
        f"earlyoom {package_version('earlyoom')} -r 3600": peers["earlyoom"].pid,
    }
    samples: dict[str, list[float]] = {name: [] for name in pids}
    try:
        t0 = time.monotonic()
        next_scrape = t0 + 5
        while (elapsed := time.monotonic() - t0) < seconds:
            time.sleep(1)
            if time.monotonic() >= next_scrape:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=5) as r:
                    scraped = r.read()
                next_scrape += 15
            for name, pid in pids.items():
                samples[name].append(memory(pid)["rss"])
        final = {name: memory(pid) for name, pid in pids.items()}
        alive = {"metrics off": off.proc.poll(), "metrics on": on.proc.poll()}
        alive |= {name: proc.poll() for name, proc in peers.items()}
        for name, rc in alive.items():
            if rc is not None:
                raise SystemExit(f"bench.footprint: {name} exited early ({rc})")
    finally:
        for proc in peers.values():
            proc.terminate()
            proc.wait()
        off.stop()
        on.stop()
    assert b"vramwatch_gpu_memory_free_bytes" in scraped
    rows = [
        f"after {elapsed:.0f} s ({len(scraped)} bytes per scrape):",
        "| process | VmRSS MiB | PSS MiB | USS MiB | VmLck MiB | RSS median over the window MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in final.items():
        rows.append(
            f"| {name} | {m['rss']:.1f} | {m['pss']:.1f} | {m['uss']:.1f} | {m['lck']:.1f} "
            f"| {statistics.median(samples[name]):.1f} |"
        )
    return rows


# ---------------------------------------------------------------------- mlock

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4

# Builds the daemon as `vramwatch run` does; mlockall(FLAGS) right before the loop.
MLOCK_PROBE = """
import ctypes, os, sys
from vramwatch import cli, daemon
flags = int(os.environ["MLOCK_FLAGS"])
loop = daemon.Daemon.run
def run(self):
    if flags and ctypes.CDLL(None, use_errno=True).mlockall(flags) != 0:
        sys.exit("mlockall: " + os.strerror(ctypes.get_errno()))
    return loop(self)
daemon.Daemon.run = run
sys.exit(cli.main(sys.argv[1:]))
"""


def run_mlock(workdir: Path) -> list[str]:
    workdir.mkdir(exist_ok=True)
    lib = build(workdir / "nvml-lib")
    state = FakeNvmlState(workdir / "nvml-state")
    state.write([FakeGpu("GPU-8f1c2a3e-0000-0000-0000-000000000000", mib(15360))])
    config = workdir / "mlock.toml"
    config.write_text(BASE.replace('bus = "user"\n', "") + tenants_toml("4GiB"))
    python = venv() / "bin" / "python"
    rows = [
        "| mlockall flags (before the loop, metrics off) | VmRSS MiB | VmLck MiB |",
        "|---|---:|---:|",
    ]
    variants = [
        ("none", 0),
        (
            "MCL_CURRENT \\| MCL_FUTURE \\| MCL_ONFAULT (earlyoom's)",
            MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT,
        ),
        ("MCL_CURRENT \\| MCL_FUTURE", MCL_CURRENT | MCL_FUTURE),
    ]
    for label, flags in variants:
        env = os.environ | {
            "LD_LIBRARY_PATH": str(lib),
            "FAKE_NVML_STATE": str(state.path),
            "MLOCK_FLAGS": str(flags),
        }
        env.pop("PYTHONPATH", None)
        argv = [str(python), "-c", MLOCK_PROBE, "run", "-c", str(config), "--log-target", "stderr"]
        argv += ["--log-format", "json", "--state-dir", str(workdir)]
        proc = subprocess.Popen(argv, env=env, cwd="/", stderr=subprocess.PIPE, text=True)
        time.sleep(10)
        if proc.poll() is not None:
            raise SystemExit(
                f"bench.footprint: mlock probe failed: {proc.stderr.read() if proc.stderr else ''}"
            )
        m = memory(proc.pid)
        proc.terminate()
        proc.communicate(timeout=10)
        rows.append(f"| {label} | {m['rss']:.1f} | {m['lck']:.1f} |")
    return rows


# ------------------------------------------------------------------- pressure

PRESSURE = """
[daemon]
interval = "1s"
bus = "user"
cooldown = "10m"
reclaim_timeout = "20s"

[gpu]
min_free_vram = "2GiB"

[host]
min_available_ram = "2GiB"
grace = "2s"
"""
FLOOR = 2 * 1024 * MIB
GROW_MIB_PER_S = 4096


class MemWatch:
    """Polls MemAvailable every 10 ms: the spells below the floor (wall clock), its lowest."""

    def __init__(self) -> None:
        self.spells: list[list[float]] = []  # [start, end]; end is inf while it lasts
        self.lowest = mem_available()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = mem_available()
            self.lowest = min(self.lowest, now)
            below = bool(self.spells) and self.spells[-1][1] == float("inf")
            if now < FLOOR and not below:
                self.spells.append([time.time(), float("inf")])
            elif now >= FLOOR and below:
                self.spells[-1][1] = time.time()
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def breach_before(self, wall: float) -> float:
        """Start of the spell below the floor that lasted until ``wall``: where grace began.

        Earlier spells that ended (other processes freed memory) restart the
        daemon's grace too, so they do not count.
        """
        return max(start for start, _end in self.spells if start <= wall)


def protect(pid: int) -> list[str]:
    """The unit's OOMScoreAdjust= and MemoryMin= on the daemon's process; what was applied."""
    applied = []
    adjust = unit_setting("OOMScoreAdjust")
    if adjust is not None:
        try:
            Path(f"/proc/{pid}/oom_score_adj").write_text(adjust)
        except PermissionError:  # lowering it takes CAP_SYS_RESOURCE
            applied.append(f"OOMScoreAdjust={adjust} not applied (no CAP_SYS_RESOURCE here)")
        else:
            applied.append(
                f"oom_score_adj {Path(f'/proc/{pid}/oom_score_adj').read_text().strip()}"
            )
    minimum = unit_setting("MemoryMin")
    unified = Path("/sys/fs/cgroup/cgroup.controllers")
    if minimum is not None and unified.exists() and "memory" in unified.read_text().split():
        group = Path(f"/sys/fs/cgroup/vwbench-fp-{os.getpid()}")
        group.mkdir(exist_ok=True)
        (group / "memory.min").write_text(str(systemd_size(minimum)))
        (group / "cgroup.procs").write_text(str(pid))
        applied.append(f"memory.min {minimum}")
    elif minimum is not None:
        applied.append(f"MemoryMin={minimum} not applied (no cgroup v2 memory controller here)")
    else:
        applied.append("no MemoryMin= in the unit (see its comment)")
    return applied


def systemd_size(text: str) -> int:
    """A systemd byte size: 64M is 64 MiB (suffixes K, M, G, T are powers of 1024)."""
    factor = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1:].upper(), 1)
    return int(text.rstrip("KMGTkmgt")) * factor


def unprotect() -> None:
    group = Path(f"/sys/fs/cgroup/vwbench-fp-{os.getpid()}")
    if group.exists():
        for pid in (group / "cgroup.procs").read_text().split():
            Path("/sys/fs/cgroup/cgroup.procs").write_text(pid)
        group.rmdir()


def settle(timeout: float = 60) -> None:
    """Until MemAvailable stops rising: the last hog's 20 GiB take seconds to be freed."""
    deadline = time.monotonic() + timeout
    last = mem_available()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = mem_available()
        if now - last < 64 * MIB:
            return
        last = now


def iso_to_epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_pressure(bed: Bed, trials: int, reserve_mib: int) -> list[str]:
    interval, grace = 1.0, 2.0
    hogs = [f"fp-hog-{i}.service" for i in range(trials)]
    for name in TENANTS[:2]:
        bed.tenant(name, vram_mib=1000, ram_mib=16)
    bed.gpu(total_mib=15360)
    config = (
        PRESSURE + tenants_toml("4GiB", names=TENANTS[:2]) + tenants_toml("1GiB", "64MiB", hogs)
    )
    daemon = bed.run_daemon(
        bed.config(config, "pressure.toml"), "--state-dir", str(bed.state_dir())
    )
    daemon.wait_event("started")
    applied = protect(daemon.proc.pid)
    settle()
    setup = f"floor 2 GiB, grace {grace:g} s, interval {interval:g} s"
    columns = "MemAvailable at start GiB | lowest GiB | breach to restart event s | bound s"
    rows = [
        f"vramwatch: {', '.join(applied)}; {setup}; hog stops at MemAvailable {reserve_mib} MiB",
        f"| trial | {columns} | vramwatch VmRSS MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    try:
        for i, name in enumerate(hogs):
            start = mem_available()
            ceiling = start // MIB
            if ceiling - reserve_mib < 4096:
                raise SystemExit(
                    f"bench.footprint: only {start // MIB} MiB available: no room for a hog"
                )
            flag = bed.procdir / f".grown-{name}"  # the sandbox user's: only the first grows
            hog = f"{bed.sb.python} {bed.sb.hog_path} --ram-mib 8"
            script = (
                f"if [ -e {flag} ]; then exec {hog}; fi; touch {flag}; "
                f"exec {hog} --grow-mib-per-s {GROW_MIB_PER_S} --max-mib {ceiling} "
                f"--until-available-mib {reserve_mib}"
            )
            watch = MemWatch()
            state = bed.sb.start_unit(
                name, ["/bin/sh", "-c", script], properties={"Type": "notify"}
            )
            Path(f"/proc/{state.main_pid}/oom_score_adj").write_text("1000")
            try:
                event = daemon.wait_event(
                    "restart",
                    timeout=ceiling / 100 + 30,
                    unit=name,  # page faults set the pace
                )
                rss = memory(daemon.proc.pid)["rss"]
                # Stopping it now would cancel the restart job: let the restart finish.
                daemon.wait_event("reclaimed", timeout=30, unit=name)
            finally:
                bed.sb.stop_unit(name)
                watch.stop()
            acted = iso_to_epoch(event["timestamp"])
            took = acted - watch.breach_before(acted)
            worst = max(worst, took)
            rows.append(
                f"| {i + 1} | {start / 2**30:.1f} | {watch.lowest / 2**30:.2f} | {took:.3f} "
                f"| {grace + interval + 0.1:.1f} | {rss:.1f} |"
            )
            settle()  # the next hog's ceiling is taken from MemAvailable at its start
    finally:
        unprotect()
        daemon.stop()
    rows.append(f"| max | | | {worst:.3f} | {grace + interval + 0.1:.1f} | |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--reserve-mib", type=int, default=1024)
    ap.add_argument(
        "--skip", choices=["footprint", "mlock", "pressure"], action="append", default=[]
    )
    args = ap.parse_args(argv)
    vramwatch = installed_vramwatch("bench.footprint")
    if vramwatch is None:
        return 1
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"commit {commit}, {vramwatch}, {os.cpu_count()} CPUs, MemTotal "
        f"{kib('/proc/meminfo', 'MemTotal') / 2**20:.1f} GiB, load {os.getloadavg()[0]:.1f}"
    )
    if "footprint" not in args.skip:
        ensure_packages()
    sb = Sandbox().start()
    try:
        lib = prepare(sb)
        if "footprint" not in args.skip:
            bed = Bed(sb, lib, vramwatch)
            print("\nfootprint, side by side:")
            print("\n".join(run_footprint(bed, args.seconds)), flush=True)
            bed.close()
            sb.reset()
        if "mlock" not in args.skip:
            print("\nmlockall:")
            print("\n".join(run_mlock(sb.workdir / "mlock")), flush=True)
        if "pressure" not in args.skip:
            bed = Bed(sb, lib, vramwatch)
            print("\nunder memory pressure:")
            print("\n".join(run_pressure(bed, args.trials, args.reserve_mib)), flush=True)
            bed.close()
            sb.reset()
    finally:
        sb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
