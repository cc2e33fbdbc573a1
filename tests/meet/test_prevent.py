"""Release before restart and the after_action hook (issue 14 parts 2 and 4), through
the real Daemon, policy and Sampler over the moving fixture host."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.meet.world import GIB, Bed, make_bed

A = "a.service"


def config(tenant_extra: str = "", top: str = "", dry_run: bool = False) -> str:
    return f"""
[daemon]
interval = "2s"
dry_run = {"true" if dry_run else "false"}
[gpu]
min_free_vram = "2GiB"
grace = "2s"
{top}
[[tenant]]
unit = "{A}"
vram = "3GiB"
{tenant_extra}
"""


def hog(tmp_path: Path, **kw: Any) -> Bed:
    bed = make_bed(tmp_path, config(**kw))
    bed.world.spawn(A, {0: 14 * GIB})
    return bed


def release(bed: Bed, argv: list[str], timeout: str = "3s") -> str:
    quoted = ", ".join(f'"{a}"' for a in argv)
    return f'release = [{quoted}]\nrelease_timeout = "{timeout}"'


def test_a_release_that_gives_the_memory_back_replaces_the_restart(tmp_path: Path) -> None:
    bed = make_bed(tmp_path, "")
    marker = bed.world.release_marker(A)
    bed.reload(config(release(bed, ["/usr/bin/touch", str(marker)])))
    bed.world.spawn(A, {0: 14 * GIB})

    bed.ticks([0, 2, 4, 6])

    assert [] == bed.acted()
    released = bed.named("released")
    assert [A] == [e["unit"] for e in released]
    assert f"/usr/bin/touch {marker}" == released[0]["command"]
    assert [A] == [e["unit"] for e in bed.named("reclaimed")]
    assert 1 == len(bed.daemon.history.actions_ns[A])  # counts for cooldown and max_restarts


def test_a_failing_release_command_is_release_failed_then_the_restart(tmp_path: Path) -> None:
    bed = make_bed(tmp_path, "")
    bed.reload(config(release(bed, ["/bin/sh", "-c", "echo unload refused >&2; exit 3"])))
    bed.world.spawn(A, {0: 14 * GIB})

    bed.ticks([0, 2])

    assert [A] == bed.acted()
    failed = bed.named("release_failed")[0]
    assert ("exit status 3", 3, "unload refused") == (
        failed["error"],
        failed["returncode"],
        failed["output"],
    )
    assert ["release_failed", "restart"] == [
        n for n in bed.names() if n in ("release_failed", "restart")
    ]


def test_a_release_that_frees_nothing_is_release_failed_after_its_timeout(tmp_path: Path) -> None:
    bed = make_bed(tmp_path, "")
    bed.reload(config(release(bed, ["/bin/true"], timeout="1s")))
    bed.world.spawn(A, {0: 14 * GIB})
    started = time.monotonic()

    bed.ticks([0, 2])

    assert [A] == bed.acted()
    assert 1.0 <= time.monotonic() - started < 5
    assert str(bed.named("release_failed")[0]["error"]).startswith(
        "the memory did not come back within "
    )


def test_dry_run_says_the_release_it_would_run_and_runs_nothing(tmp_path: Path) -> None:
    bed = make_bed(tmp_path, "")
    marker = bed.world.release_marker(A)
    bed.reload(config(release(bed, ["/usr/bin/touch", str(marker)]), dry_run=True))
    bed.world.spawn(A, {0: 14 * GIB})

    bed.ticks([0, 2])

    would = bed.named("would_restart")[0]
    assert str(would["message"]).endswith(f"; would first run release: /usr/bin/touch {marker}")
    assert not marker.exists()
    assert [] == bed.acted()


def wait_for(path: Path) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def test_the_hook_runs_after_an_action_with_the_events_fields(tmp_path: Path) -> None:
    out = tmp_path / "hook.env"
    top = f'[hooks]\nafter_action = ["/bin/sh", "-c", "env > {out}"]\ntimeout = "5s"'
    bed = hog(tmp_path, top=top)

    bed.ticks([0, 2])
    env = dict(line.split("=", 1) for line in wait_for(out).splitlines() if "=" in line)
    bed.tick_at(4)  # reaps it

    assert [A] == bed.acted()
    assert ("restart", A, "vram") == (
        env["VRAMWATCH_EVENT"],
        env["VRAMWATCH_UNIT"],
        env["VRAMWATCH_RESOURCE"],
    )
    assert env["MESSAGE"].startswith(f"restarting {A}: GPU 0 free ")
    assert [] == bed.named("hook_failed")


def test_a_failing_hook_is_logged_once_and_never_delays_guarding(tmp_path: Path) -> None:
    top = '[hooks]\nafter_action = ["/bin/sh", "-c", "sleep 30"]\ntimeout = "1s"'
    bed = hog(tmp_path, top=top.replace("[daemon]", ""))
    bed.reload(
        config(top=top).replace(
            'interval = "2s"', 'interval = "2s"\ncooldown = "0s"\nreclaim_timeout = "1s"'
        )
    )

    started = time.monotonic()
    bed.ticks([0, 2])
    took = time.monotonic() - started
    bed.world.grow(A, gpu=0, vram=14 * GIB)  # regrows: a second restart, a second hook
    time.sleep(1.2)
    bed.ticks([4, 6, 8, 10])
    time.sleep(1.2)
    bed.tick_at(12)

    assert took < 1.0
    assert 2 == len(bed.acted())
    failed = bed.named("hook_failed")
    assert 1 == len(failed)
    assert "still running at its time limit: killed" == failed[0]["error"]
