"""vramwatch guarding a simulated shared 16 GB GPU, for about half a minute.

Real parts: a private systemd user manager (the test bed's sandbox), three
tenant units holding real RAM, NVIDIA's pynvml loading a fake
libnvidia-ml.so.1, and the installed `vramwatch run` acting over D-Bus. One
tenant (immich-ml) leaks VRAM; the LLM server is protected; the speech-to-text
worker stays within budget. Run it with ./scripts/demo (as root).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.harness import Bed, prepare  # noqa: E402
from tests.sandbox import Sandbox  # noqa: E402

GPU_MIB = 15360  # a 16 GB Tesla T4 shows 15360 MiB
CONFIG = """\
[daemon]
interval = "1s"
bus = "user"          # the demo's own systemd user manager
cooldown = "1m"
reclaim_timeout = "15s"

[gpu]
min_free_vram = "2GiB"
grace = "3s"

[host]
min_available_ram = "5%"

[[tenant]]
unit = "llama-server.service"
vram = "5000MiB"
protected = true      # never restarted: it is the service the others must not starve

[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"      # its CUDA arena grows and never shrinks

[[tenant]]
unit = "whisper.service"
vram = "2000MiB"
ram = "1GiB"
"""

# (unit, initial VRAM MiB, leak MiB/s, RAM MiB)
TENANTS = [
    ("llama-server.service", 4400, 0, 64),
    ("immich-ml.service", 2000, 450, 64),
    ("whisper.service", 1500, 0, 128),
]

COLOURS = {"error": "\033[31m", "warning": "\033[33m", "info": "\033[32m"}


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long to run (default 30)")
    ap.add_argument(
        "--venv",
        default=os.environ.get("VRAMWATCH_VENV", "/opt/vramwatch-venv"),
        help="the virtual environment vramwatch is installed in",
    )
    args = ap.parse_args()
    vramwatch = Path(args.venv) / "bin" / "vramwatch"
    colour = sys.stdout.isatty()

    say("== vramwatch demo: a shared 16 GB GPU, three tenants, one of them leaking ==")
    sb = Sandbox()
    sb.start()
    try:
        say(f"private systemd --user manager up as user {sb.user} ({sb.startup_seconds:.2f}s)")
        bed = Bed(sb, prepare(sb), vramwatch)
        bed.gpu(total_mib=GPU_MIB)
        config = bed.config(CONFIG)
        for unit, vram, leak, ram in TENANTS:
            bed.tenant(unit, vram_mib=vram, ram_mib=ram, leak_mib_per_s=leak)
            what = f"leaks {leak} MiB/s" if leak else "steady"
            say(f"started {unit:<22} VRAM {vram} MiB, {what}")

        check = bed.cli("check", "-c", str(config))
        say(f"\n$ vramwatch check\n{(check.stdout + check.stderr).strip()}")
        status = bed.cli("status", "-c", str(config))
        say(f"\n$ vramwatch status\n{status.stdout.rstrip()}\n")
        before = {u: sb.unit_state(u) for u, *_ in TENANTS}

        say(f"$ vramwatch run   (for {args.seconds:.0f}s; decisions as they happen)")
        daemon = bed.run_daemon(config, "--state-dir", str(bed.state_dir()))
        t0 = time.monotonic()
        shown = 0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(0.1)
            for event in daemon.events[shown:]:  # the harness collects them as they come
                tag = f"{event['event']:<16}"
                if colour:
                    tag = f"{COLOURS.get(event.get('level', ''), '')}{tag}\033[0m"
                say(f"  +{event['_t'] - t0:5.1f}s {tag} {event.get('message', '')}")
            shown = len(daemon.events)
        rc = daemon.stop()
        counts = Counter(str(e["event"]) for e in daemon.events)

        say(f"\n== summary (vramwatch exited {rc}) ==")
        for unit, *_ in TENANTS:
            now = sb.unit_state(unit)
            restarted = now.invocation_id != before[unit].invocation_id
            say(
                f"  {unit:<22} {'RESTARTED' if restarted else 'untouched':<10} "
                f"(main PID {before[unit].main_pid} -> {now.main_pid})"
            )
        say("  events: " + ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())))
        status = bed.cli("status", "-c", str(config))
        say(f"\n$ vramwatch status\n{status.stdout.rstrip()}")
        say(
            "\nOn a real host the same decisions go to the journal: "
            "journalctl -u vramwatch VRAMWATCH_EVENT=restart"
        )
        return 0
    finally:
        sb.stop()


if __name__ == "__main__":
    sys.exit(main())
