"""Record during a real restart on the systemd user manager, then replay the trace:
the same decision, at the same sample, with the same message; with a bigger budget,
no restart (SPEC "Record and replay")."""

from __future__ import annotations

import datetime as dt
import json

from tests.e2e.conftest import Bed
from tests.e2e.test_restart import CONFIG, GRACE_S, INTERVAL_S


def events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def when(stamp: object) -> float:
    return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def test_a_recorded_restart_replays_as_the_same_decision_and_not_with_a_bigger_budget(
    bed: Bed,
) -> None:
    bed.gpu(total_mib=15360)
    bed.tenant("immich-ml.service", vram_mib=10700)
    bed.tenant("llama.service", vram_mib=2500)
    bed.tenant("whisper.service", vram_mib=1000)
    trace = bed.state_dir() / "trace.jsonl.gz"
    daemon = bed.run_daemon(bed.config(CONFIG), "--record", str(trace))
    logged = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 4)
    daemon.wait_event("reclaimed", timeout=10)
    assert 0 == daemon.stop()  # SIGTERM: the trace is finished and closed

    replayed = bed.cli("replay", str(trace), "--json")
    bigger = bed.config(CONFIG.replace('vram = "3000MiB"', 'vram = "12000MiB"'), name="bigger.toml")
    other = bed.cli("replay", str(trace), "-c", str(bigger), "--json")

    assert 0 == replayed.returncode, replayed.stderr
    restarts = [e for e in events(replayed.stdout) if e.get("event") == "restart"]
    assert 1 == len(restarts)
    again = restarts[0]
    assert (logged["message"], logged["unit"], logged["used_bytes"], logged["free_bytes"]) == (
        again["message"],
        again["unit"],
        again["used_bytes"],
        again["free_bytes"],
    )
    # The sample it decided on was taken at most one interval before the daemon logged.
    assert 0 <= when(logged["timestamp"]) - when(again["timestamp"]) < INTERVAL_S + 0.5
    # The start is stamped with its time, not 1970-01-01 (issue 23 item 5).
    started = [e for e in events(replayed.stdout) if e.get("event") == "started"]
    assert 1 == len(started)
    assert abs(when(daemon.named("started")[0]["timestamp"]) - when(started[0]["timestamp"])) < 1
    summary = events(replayed.stdout)[-1]["summary"]
    assert {"immich-ml.service": {"restart": 1}} == summary["actions"]  # type: ignore[index]
    assert 0 == other.returncode, other.stderr
    assert [] == [e for e in events(other.stdout) if e.get("event") in ("restart", "stop")]
    assert ["no_candidate"] == [
        e["event"] for e in events(other.stdout) if e.get("event") == "no_candidate"
    ]
