"""SPEC's promises where the parts meet (issue 10): the real Daemon, policy and
Sampler over a moving fixture host (tests/meet/world.py) and a scripted systemd.

Each test is one way the promise "never the wrong unit, never blind" broke
when the modules were driven together; each failed before the fix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.meet.world import GIB, MIB, Bed, make_bed
from tests.unit.builders import notified
from vramwatch.model import JobOutcome, Verb
from vramwatch.state import StateStore

BASE = """
[daemon]
interval = "2s"
cooldown = "{cooldown}"
max_restarts = {max_restarts}
restart_window = "1h"
reclaim_timeout = "{reclaim}"
dry_run = {dry_run}
[gpu]
min_free_vram = "2GiB"
grace = "4s"
[host]
min_available_ram = "8GiB"
grace = "4s"
"""


def config(
    *tenants: str,
    cooldown: str = "2m",
    max_restarts: int = 3,
    reclaim: str = "30s",
    dry_run: bool = False,
) -> str:
    head = BASE.format(
        cooldown=cooldown,
        max_restarts=max_restarts,
        reclaim=reclaim,
        dry_run="true" if dry_run else "false",
    )
    return head + "".join(tenants)


def tenant(unit: str, vram: str | None = None, ram: str | None = None, extra: str = "") -> str:
    lines = [f'\n[[tenant]]\nunit = "{unit}"\n']
    if vram is not None:
        lines.append(f'vram = "{vram}"\n')
    if ram is not None:
        lines.append(f'ram = "{ram}"\n')
    return "".join(lines) + extra


A, B, T, U = "a.service", "b.service", "t.service", "u.service"
EVERY_2S = [0, 2, 4, 6, 8, 10, 12]


# 2. one incident, one victim ---------------------------------------------------------------


def test_one_incident_over_two_resources_restarts_one_tenant(tmp_path: Path) -> None:
    """A is over its VRAM and RAM budgets, B 1 GiB over RAM; both floors breached.
    Restarting A frees both: B is left alone."""
    bed = make_bed(tmp_path, config(tenant(A, vram="3GiB", ram="8GiB"), tenant(B, ram="4GiB")))
    bed.world.spawn(A, {0: 14 * GIB + 500 * MIB}, ram=44 * GIB)
    bed.world.spawn(B, ram=5 * GIB)

    bed.ticks(EVERY_2S)

    assert [A] == bed.acted()
    assert frozenset({"gpu:GPU-00000000-0000-0000-0000-000000000000", "ram"}) == (
        bed.actuator.calls[0].over
    )
    assert [] == bed.named("no_candidate")


def test_a_breach_held_by_the_victim_is_waiting_not_no_candidate(tmp_path: Path) -> None:
    """B within budget: the RAM breach waits for A's action, and never claims that no
    tenant is over its RAM budget (A is)."""
    bed = make_bed(tmp_path, config(tenant(A, vram="3GiB", ram="8GiB"), tenant(B, ram="8GiB")))
    bed.world.spawn(A, {0: 14 * GIB + 500 * MIB}, ram=44 * GIB)
    bed.world.spawn(B, ram=5 * GIB)

    bed.ticks([0, 2, 4])

    assert [A] == bed.acted()
    waiting = bed.named("waiting")
    assert [("ram", A)] == [(e["resource"], e["unit"]) for e in waiting]
    assert [] == bed.named("no_candidate")


def test_a_tensor_parallel_tenant_breaching_two_gpus_is_the_only_victim(tmp_path: Path) -> None:
    """T spans GPU 0 and GPU 1 and breaches both; U on GPU 1 is slightly over."""
    bed = make_bed(tmp_path, config(tenant(T, vram="12GiB"), tenant(U, vram="3GiB")), gpus=2)
    bed.world.spawn(T, {0: 14 * GIB, 1: 10 * GIB + 512 * MIB})
    bed.world.spawn(U, {1: 3 * GIB + 512 * MIB})

    bed.ticks(EVERY_2S)

    assert [T] == bed.acted()


# 3. the re-check looks at the floor too ---------------------------------------------------


def test_the_recheck_cancels_when_the_floor_is_no_longer_breached(tmp_path: Path) -> None:
    """A (VRAM victim, no RAM budget) holds 40 GiB of RAM; B is 1 GiB over its RAM budget.
    Restarting A gives the host its RAM back: B's restart is cancelled, not sent."""
    bed = make_bed(tmp_path, config(tenant(A, vram="3GiB"), tenant(B, ram="4GiB")))
    bed.world.spawn(A, {0: 14 * GIB + 500 * MIB}, ram=44 * GIB)
    bed.world.spawn(B, ram=5 * GIB)

    bed.ticks([0, 2, 4])

    assert [A] == bed.acted()
    cancelled = bed.named("action_cancelled")
    assert [B] == [e["unit"] for e in cancelled]
    assert str(cancelled[0]["reason"]).startswith("host MemAvailable ")
    assert str(cancelled[0]["reason"]).endswith(" is back above floor 8 GiB")


# 4 and 5. an accepted job stays in flight; the actuator never kills the loop --------------


def two_on_one_gpu(tmp_path: Path, **kw: Any) -> Bed:
    bed = make_bed(tmp_path, config(tenant(A, vram="3GiB"), tenant(B, vram="3GiB"), **kw))
    bed.world.spawn(A, {0: 10 * GIB})
    bed.world.spawn(B, {0: 5 * GIB})
    return bed


def test_a_job_whose_wait_timed_out_stays_in_flight_until_reclaim_timeout(
    tmp_path: Path,
) -> None:
    bed = two_on_one_gpu(tmp_path)
    bed.actuator.script = ["timeout"]

    bed.ticks(range(0, 34, 2))

    assert [A] == bed.acted()
    assert ["timeout"] == [e["result"] for e in bed.named("action_unconfirmed")]
    assert [] == bed.named("action_failed")


def test_when_the_slow_job_finishes_the_memory_is_reclaimed_and_nobody_else_is_restarted(
    tmp_path: Path,
) -> None:
    bed = two_on_one_gpu(tmp_path)
    bed.actuator.script = ["disconnected"]
    bed.ticks([0, 2, 4, 6, 8])

    bed.actuator.finish_pending()
    bed.ticks([10, 12, 14, 40, 42])

    assert [A] == bed.acted()
    assert [A] == [e["unit"] for e in bed.named("reclaimed")]


def test_an_actuator_that_raises_never_kills_the_loop_and_the_action_stays_in_flight(
    tmp_path: Path,
) -> None:
    """jeepney's "I/O operation on closed epoll object" from a dropped bus."""
    bed = two_on_one_gpu(tmp_path)
    bed.actuator.script = ["raise"]

    bed.ticks(range(0, 20, 2))

    assert [A] == bed.acted()
    unconfirmed = bed.named("action_unconfirmed")
    assert ["unknown"] == [e["result"] for e in unconfirmed]
    assert "ValueError('I/O operation on closed epoll object')" in str(unconfirmed[0]["error"])


def test_a_refused_call_frees_the_incident_for_the_next_tenant(tmp_path: Path) -> None:
    """Never accepted (NoSuchUnit): nothing runs, so B may be acted on next."""
    bed = two_on_one_gpu(tmp_path)
    bed.actuator.script = ["refused"]

    bed.ticks([0, 2, 4, 6])

    assert [A, B] == bed.acted()
    assert [A] == [e["unit"] for e in bed.named("action_failed")]


# 6. a lost GPU blinds only itself ----------------------------------------------------------


def test_a_lost_gpu_leaves_the_healthy_gpu_guarded(tmp_path: Path) -> None:
    """GPU 1 is lost; on GPU 0, A is 11 GiB over budget: known usage proves it."""
    bed = make_bed(tmp_path, config(tenant(A, vram="3GiB"), tenant(B, vram="3GiB")), gpus=2)
    bed.world.spawn(A, {0: 14 * GIB, 1: 1 * GIB})
    bed.world.spawn(B, {1: 2 * GIB})
    bed.world.gpu_errors[1] = "GPU_IS_LOST: GPU is lost"

    bed.ticks([0, 2, 4])

    assert [A] == bed.acted()
    restart = bed.named("restart")[0]
    assert "unit uses at least 14 GiB VRAM, budget 3 GiB" in str(restart["message"])
    assert [] == bed.named("no_candidate")


# 7. a tick with no sample ends the grace streak ------------------------------------------


def test_a_tick_whose_sample_raised_ends_every_grace_streak(tmp_path: Path) -> None:
    bed = two_on_one_gpu(tmp_path)

    bed.tick_at(0)
    bed.world.sampler_raises = True
    bed.tick_at(2)
    bed.world.sampler_raises = False
    bed.ticks([4, 6])

    assert [] == bed.acted()  # samples at 0 and 4 only: breached for 2 s of the 4 s grace
    bed.tick_at(8)
    assert [A] == bed.acted()


# 8. dry run never counts against enforcement ------------------------------------------------


def test_dry_run_then_enforce_starts_with_a_clean_slate(tmp_path: Path) -> None:
    text = config(tenant(A, vram="3GiB"), cooldown="10s", reclaim="5s", dry_run=True)
    state = StateStore(tmp_path / "state")
    (tmp_path / "state").mkdir()
    bed = make_bed(tmp_path, text, state=state)
    bed.daemon.restore_state()
    bed.world.spawn(A, {0: 14 * GIB})

    bed.ticks(range(0, 30, 2))
    would = len(bed.named("would_restart"))
    bed.reload(text.replace("dry_run = true", "dry_run = false"))
    bed.ticks([30, 32])

    assert 3 == would
    assert [A] == bed.acted()
    assert [] == bed.named("rate_limited")
    assert {A: 1} == {u: len(t) for u, t in state.load().actions_ns.items()}


# 9. reclaimed means the memory came back ----------------------------------------------------


def test_an_orphan_keeping_the_memory_is_not_reclaimed_and_nobody_else_is_restarted(
    tmp_path: Path,
) -> None:
    bed = two_on_one_gpu(tmp_path, cooldown="0s")
    bed.actuator.script = ["orphan"]

    bed.ticks(range(0, 34, 2))
    assert [A] == bed.acted()
    assert [] == bed.named("reclaimed")

    bed.ticks([34, 36])
    assert [A, B] == bed.acted()  # reclaim_timeout passed: not_reclaimed, then the next
    assert [A] == [e["unit"] for e in bed.named("not_reclaimed")]


# 10. a reload cannot split measuring from acting -------------------------------------------


def test_a_reload_that_changes_the_bus_is_rejected(tmp_path: Path) -> None:
    text = config(tenant(A, vram="3GiB"))
    bed = make_bed(tmp_path, text)
    before = bed.daemon.config

    bed.reload(text.replace('interval = "2s"', 'interval = "2s"\nbus = "user"'))

    assert before is bed.daemon.config
    assert (
        f'{bed.config_path}: daemon.bus: cannot change from "system" to "user" on reload; '
        "restart vramwatch to use another bus"
    ) == bed.named("config_rejected")[0]["error"]


# 13. READY before the first action --------------------------------------------------------


def test_ready_is_sent_after_the_first_sample_and_before_acting(tmp_path: Path) -> None:
    """A breach present at start: a restart job of minutes must not delay READY=1."""
    states: list[str] = []
    text = config(tenant(A, vram="3GiB")).replace('grace = "4s"', 'grace = "0s"')
    bed = make_bed(tmp_path, text, notifier=notified(states))
    bed.world.spawn(A, {0: 15 * GIB})
    seen_at_act: list[list[str]] = []

    def act(unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        seen_at_act.append(list(states))
        bed.daemon.stop()
        return JobOutcome(True, "done", "", accepted=True)

    bed.actuator.act = act  # type: ignore[method-assign]
    thread = threading.Thread(target=bed.daemon.run)
    thread.start()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert 1 == len(seen_at_act)
    assert "READY=1" in seen_at_act[0]
