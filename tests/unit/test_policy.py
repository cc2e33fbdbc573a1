"""policy.decide: literal snapshots, an integer clock, one test per rule of SPEC.md."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramwatch import policy
from vramwatch.config import Config, DaemonConfig, Floor, FloorConfig, Tenant
from vramwatch.model import (
    Action,
    Event,
    GpuProcess,
    GpuSample,
    HostSample,
    Owner,
    Resource,
    Snapshot,
    UnitUsage,
    Verb,
)
from vramwatch.policy import Decision, History, InFlight
from vramwatch.units import GIB, MIB, parse_percent, parse_size

S = 10**9
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"
UUID1 = "GPU-11111111-1111-1111-1111-111111111111"
KEY0 = f"gpu:{UUID0}"
KEY1 = f"gpu:{UUID1}"
TOTAL = 16 * GIB

IMMICH = "immich-machine-learning.service"
LLAMA = "llama-swap.service"
WHISPER = "whisper.service"
OLLAMA = "ollama.service"  # runs on the GPU but is no tenant
SELF = "vramwatch.service"


# builders ------------------------------------------------------------------------


def floor(text: str) -> Floor:
    percent = parse_percent(text)
    if percent is not None:
        return Floor(text, percent=percent)
    return Floor(text, bytes=parse_size(text))


def tenant(
    unit: str,
    vram: int | None = None,
    ram: int | None = None,
    protected: bool = False,
    verb: Verb = Verb.RESTART,
) -> Tenant:
    return Tenant(unit, vram_bytes=vram, ram_bytes=ram, verb=verb, protected=protected)


def cfg(
    *tenants: Tenant,
    gpu_floor: str = "2GiB",
    grace_s: int = 10,
    host_floor: str = "4GiB",
    host_grace_s: int = 10,
    dry_run: bool = False,
    cooldown_s: int = 120,
    max_restarts: int = 3,
    window_s: int = 3600,
    reclaim_s: int = 30,
) -> Config:
    return Config(
        path="/x/vramwatch.toml",
        daemon=DaemonConfig(
            interval_ns=2 * S,
            dry_run=dry_run,
            bus="system",
            cooldown_ns=cooldown_s * S,
            max_restarts=max_restarts,
            restart_window_ns=window_s * S,
            reclaim_timeout_ns=reclaim_s * S,
        ),
        gpu=FloorConfig(floor(gpu_floor), grace_s * S),
        host=FloorConfig(floor(host_floor), host_grace_s * S),
        tenants=tenants,
    )


def usage(
    unit: str,
    vram: int | None = 0,
    ram: int | None = 0,
    by_gpu: Mapping[str, int] | None = None,
) -> UnitUsage:
    """A unit's usage; its VRAM sits on GPU 0 unless ``by_gpu`` says otherwise."""
    if by_gpu is None:
        by_gpu = {UUID0: vram} if vram else {}
    return UnitUsage(unit, vram, dict(by_gpu), ram, pids=(100,), ram_source="memory.current")


def proc(pid: int, used: int | None, unit: str | None = None, cgroup: str = "") -> GpuProcess:
    owner = Owner(cgroup or f"/system.slice/{unit}", unit, "system") if unit or cgroup else None
    return GpuProcess(pid, used, "compute", "python3", owner)


def gpu(
    free: int | None,
    index: int = 0,
    uuid: str = UUID0,
    total: int | None = TOTAL,
    processes: Iterable[GpuProcess] = (),
    error: str | None = None,
) -> GpuSample:
    used = None if free is None or total is None else total - free
    return GpuSample(index, uuid, "Tesla T4", total, used, free, tuple(processes), error)


def snap(
    now_s: float = 0,
    gpu_free: int | None = 8 * GIB,
    units: Iterable[UnitUsage] = (),
    gpus: Iterable[GpuSample] | None = None,
    avail: int | None = 32 * GIB,
    mem_total: int = 64 * GIB,
    host_error: str | None = None,
    nvml_error: str | None = None,
    self_unit: str | None = None,
    ram_top: Iterable[tuple[str, int]] = (),
) -> Snapshot:
    """One GPU (index 0) with ``gpu_free`` free, whose processes are the units' VRAM."""
    unit_map = {u.unit: u for u in units}
    if gpus is None:
        procs = [
            proc(100 + i, u.vram_by_gpu[UUID0], u.unit)
            for i, u in enumerate(unit_map.values())
            if u.vram_by_gpu.get(UUID0)
        ]
        gpus = (gpu(gpu_free, processes=procs),)
    return Snapshot(
        now_ns=int(now_s * S),
        gpus=tuple(gpus),
        host=HostSample(mem_total, avail, error=host_error),
        units=unit_map,
        nvml_error=nvml_error,
        self_unit=self_unit,
        ram_top=tuple(ram_top),
    )


def run(config: Config, *snaps: Snapshot, history: History | None = None) -> list[Decision]:
    """decide() over a sequence of snapshots, threading the history."""
    decisions = []
    history = history or History()
    for s in snaps:
        decision = policy.decide(config, s, history)
        history = decision.history
        decisions.append(decision)
    return decisions


def names(decision: Decision) -> list[str]:
    return [e.name for e in decision.events]


def named(decisions: Iterable[Decision], name: str) -> list[Event]:
    return [e for d in decisions for e in d.events if e.name == name]


def acted(decisions: Iterable[Decision]) -> list[str]:
    return [a.unit for d in decisions for a in d.actions]


LOW = int(1.2 * GIB)  # under the 2 GiB floor
HIGH = 8 * GIB

# The SPEC example: immich's onnxruntime arena grew to 10.5 GiB on a 16 GiB T4.
SPEC_CONFIG = cfg(
    tenant(IMMICH, vram=3000 * MIB, ram=6 * GIB), tenant(LLAMA, vram=5000 * MIB, protected=True)
)
IMMICH_GREW = usage(IMMICH, vram=int(10.5 * GIB))
LLAMA_OK = usage(LLAMA, vram=2 * GIB)


# the restart decision and its message ---------------------------------------------


def test_spec_example_restarts_the_over_budget_tenant_with_a_readable_message() -> None:
    expected = Action(
        unit=IMMICH,
        verb=Verb.RESTART,
        resource=Resource.VRAM,
        resource_key=KEY0,
        gpu=0,
        used_bytes=int(10.5 * GIB),
        budget_bytes=3000 * MIB,
        free_bytes=LOW,
        floor_bytes=2 * GIB,
        message=(
            "restarting immich-machine-learning.service: GPU 0 free 1.2 GiB < floor 2 GiB "
            "for 10s; unit uses 10.5 GiB VRAM, budget 2.9 GiB"
        ),
    )
    units = (IMMICH_GREW, LLAMA_OK)

    decisions = run(SPEC_CONFIG, snap(0, LOW, units), snap(10, LOW, units))

    assert (expected,) == decisions[-1].actions


def test_the_breach_is_announced_with_its_numbers_when_grace_has_passed() -> None:
    expected = (
        Event(
            "floor_breached",
            "warning",
            "GPU 0 free 1.2 GiB < floor 2 GiB for 10s",
            {
                "breached_ns": 10 * S,
                "resource": "vram",
                "free_bytes": LOW,
                "floor_bytes": 2 * GIB,
                "gpu": 0,
                "gpu_uuid": UUID0,
            },
        ),
    )
    units = (IMMICH_GREW, LLAMA_OK)

    decisions = run(SPEC_CONFIG, snap(0, LOW, units), snap(10, LOW, units))

    assert () == decisions[0].events
    assert expected == decisions[-1].events


def test_action_stop_gives_the_stop_verb_and_says_stopping() -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB, verb=Verb.STOP))

    decision = run(config, snap(0, LOW, [IMMICH_GREW]), snap(10, LOW, [IMMICH_GREW]))[-1]

    assert [(IMMICH, Verb.STOP)] == [(a.unit, a.verb) for a in decision.actions]
    assert decision.actions[0].message.startswith(f"stopping {IMMICH}: GPU 0 free 1.2 GiB")


# grace --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grace_s", "times", "expected"),
    [
        (10, [0, 9], []),
        (10, [0, 2, 4, 6, 8], []),
        (10, [0, 9.999], []),
        (10, [0, 10], [IMMICH]),
        (10, [0, 2, 4, 6, 8, 10], [IMMICH]),
        (10, [0, 25], [IMMICH]),
        (0, [0], [IMMICH]),
        (3, [0, 2], []),
        (3, [0, 2, 3], [IMMICH]),
    ],
)
def test_grace_the_floor_must_be_breached_for_at_least_grace(
    grace_s: int, times: list[float], expected: list[str]
) -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB), grace_s=grace_s)

    decisions = run(config, *(snap(t, LOW, [IMMICH_GREW]) for t in times))

    assert expected == acted(decisions)


INTERRUPTIONS = {
    "above the floor": snap(5, HIGH, [IMMICH_GREW]),
    "a GPU read error": snap(5, gpus=[gpu(LOW, error="Unknown Error")], units=[IMMICH_GREW]),
    "unknown free memory": snap(5, gpus=[gpu(None)], units=[IMMICH_GREW]),
    "unknown total memory": snap(5, gpus=[gpu(LOW, total=None)], units=[IMMICH_GREW]),
    "NVML down": snap(5, LOW, [IMMICH_GREW], nvml_error="NVML Shared Library Not Found"),
    "the GPU missing": snap(5, gpus=[], units=[IMMICH_GREW]),
}


@pytest.mark.parametrize("interruption", INTERRUPTIONS.values(), ids=INTERRUPTIONS.keys())
def test_a_sample_that_is_not_breached_restarts_the_grace_streak(interruption: Snapshot) -> None:
    """Unknown is not breached: every sample of the grace window must show the breach."""
    config = cfg(tenant(IMMICH, vram=3000 * MIB))
    before = [snap(t, LOW, [IMMICH_GREW]) for t in (0, 2, 4)]
    after = [snap(t, LOW, [IMMICH_GREW]) for t in (6, 10, 15)]

    decisions = run(config, *before, interruption, *after, snap(16, LOW, [IMMICH_GREW]))

    assert [IMMICH] == acted(decisions)
    assert decisions[-1].actions


@pytest.mark.parametrize(
    "interruption",
    [
        snap(5, HIGH, [usage(WHISPER, ram=20 * GIB)], avail=8 * GIB),
        snap(5, HIGH, [usage(WHISPER, ram=20 * GIB)], avail=None),
        snap(5, HIGH, [usage(WHISPER, ram=20 * GIB)], host_error="cannot read /proc/meminfo"),
    ],
    ids=["above the floor", "unknown MemAvailable", "meminfo unreadable"],
)
def test_a_host_sample_that_is_not_breached_restarts_the_ram_grace_streak(
    interruption: Snapshot,
) -> None:
    config = cfg(tenant(WHISPER, ram=6 * GIB))
    hog = [usage(WHISPER, ram=20 * GIB)]

    decisions = run(
        config,
        *(snap(t, HIGH, hog, avail=3 * GIB) for t in (0, 4)),
        interruption,
        *(snap(t, HIGH, hog, avail=3 * GIB) for t in (6, 15, 16)),
    )

    assert [[], [], [], [], [], [WHISPER]] == [[a.unit for a in d.actions] for d in decisions]


# choosing the victim --------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        # over by 1 GiB vs over by 4 GiB, then 3 GiB vs 3 GiB: most over its budget wins
        ([usage(IMMICH, vram=4 * GIB), usage(WHISPER, vram=5 * GIB)], WHISPER),
        ([usage(IMMICH, vram=6 * GIB), usage(WHISPER, vram=4 * GIB)], IMMICH),
        # a tie goes to the first unit name, so the choice is stable
        ([usage(IMMICH, vram=4 * GIB), usage(WHISPER, vram=2 * GIB)], IMMICH),
        # within budget (10 GiB of 12) is never the victim, even when it is the biggest
        ([usage(IMMICH, vram=4 * GIB), usage(LLAMA, vram=10 * GIB)], IMMICH),
    ],
)
def test_the_victim_is_the_tenant_most_over_its_budget(
    units: list[UnitUsage], expected: str
) -> None:
    config = cfg(
        tenant(IMMICH, vram=3 * GIB), tenant(WHISPER, vram=1 * GIB), tenant(LLAMA, vram=12 * GIB)
    )

    decision = run(config, snap(0, LOW, units), snap(10, LOW, units))[-1]

    assert [expected] == [a.unit for a in decision.actions]


def test_vram_over_budget_counts_every_gpu_but_only_tenants_on_the_breached_gpu_are_chosen() -> (
    None
):
    """WHISPER is most over budget but holds nothing on GPU 0: restarting it cannot help."""
    config = cfg(tenant(IMMICH, vram=3 * GIB), tenant(WHISPER, vram=1 * GIB))
    units = [
        usage(IMMICH, vram=4 * GIB, by_gpu={UUID0: 2 * GIB, UUID1: 2 * GIB}),
        usage(WHISPER, vram=9 * GIB, by_gpu={UUID1: 9 * GIB}),
    ]
    gpus = [
        gpu(LOW, processes=[proc(1, 2 * GIB, IMMICH)]),
        gpu(HIGH, 1, UUID1, processes=[proc(2, 2 * GIB, IMMICH), proc(3, 9 * GIB, WHISPER)]),
    ]

    decision = run(config, snap(0, units=units, gpus=gpus), snap(10, units=units, gpus=gpus))[-1]

    assert [(IMMICH, KEY0, 4 * GIB)] == [
        (a.unit, a.resource_key, a.used_bytes) for a in decision.actions
    ]


def test_an_over_budget_tenant_with_nothing_on_the_breached_gpu_is_not_chosen() -> None:
    config = cfg(tenant(WHISPER, vram=1 * GIB))
    units = [usage(WHISPER, vram=9 * GIB, by_gpu={UUID1: 9 * GIB})]
    gpus = [gpu(LOW), gpu(HIGH, 1, UUID1, processes=[proc(3, 9 * GIB, WHISPER)])]

    decision = run(config, snap(0, units=units, gpus=gpus), snap(10, units=units, gpus=gpus))[-1]

    assert () == decision.actions
    assert ["floor_breached", "no_candidate"] == names(decision)


def test_unknown_usage_is_never_acted_on() -> None:
    """NVML could not say (MIG, a GPU read failed) and what is known is within budget:
    not proven over budget, and no_candidate says whose usage is unknown."""
    config = cfg(tenant(IMMICH, vram=3000 * MIB, ram=1 * GIB))
    units = [usage(IMMICH, vram=None, ram=None, by_gpu={UUID0: 2 * GIB})]

    decisions = run(config, *(snap(t, LOW, units, avail=1 * GIB) for t in (0, 10, 20)))

    assert [] == acted(decisions)
    assert ["vram", "ram"] == [e.fields["resource"] for e in named(decisions, "no_candidate")]
    assert (
        "GPU 0 free 1.2 GiB < floor 2 GiB for 10s but no tenant is proven over its VRAM budget "
        f"(usage not fully known for {IMMICH}); biggest users: (unattributed) 12.8 GiB, "
        f"{IMMICH} 2 GiB"
    ) == named(decisions, "no_candidate")[0].message


def test_known_usage_on_healthy_gpus_is_a_lower_bound_that_proves_a_tenant_over() -> None:
    """GPU 1 is unreadable; IMMICH's 9 GiB on the breached GPU 0 is already over 3 GiB."""
    config = cfg(tenant(IMMICH, vram=3 * GIB), tenant(WHISPER, vram=1 * GIB))
    units = [
        usage(IMMICH, vram=None, by_gpu={UUID0: 9 * GIB}),
        usage(WHISPER, vram=None, by_gpu={}),
    ]
    gpus = [
        gpu(LOW, processes=[proc(1, 9 * GIB, IMMICH)]),
        gpu(None, 1, UUID1, total=None, error="GPU_IS_LOST: GPU is lost"),
    ]

    decisions = run(config, *(snap(t, units=units, gpus=gpus) for t in (0, 10)))

    assert [IMMICH] == acted(decisions)
    assert (
        f"restarting {IMMICH}: GPU 0 free 1.2 GiB < floor 2 GiB for 10s; unit uses at least "
        "9 GiB VRAM, budget 3 GiB"
    ) == decisions[-1].actions[0].message


def test_a_tenant_without_a_budget_for_the_resource_is_never_acted_on() -> None:
    config = cfg(tenant(IMMICH, ram=6 * GIB))

    decisions = run(config, *(snap(t, LOW, [IMMICH_GREW]) for t in (0, 10, 20)))

    assert [] == acted(decisions)


def test_units_that_are_not_tenants_are_reported_never_acted_on() -> None:
    config = cfg(tenant(IMMICH, vram=3 * GIB))
    units = [usage(IMMICH, vram=1 * GIB), usage(OLLAMA, vram=14 * GIB)]

    decisions = run(config, *(snap(t, LOW, units) for t in (0, 10, 20)))

    assert [] == acted(decisions)
    assert OLLAMA in named(decisions, "no_candidate")[0].message


def test_vramwatch_never_acts_on_its_own_unit() -> None:
    config = cfg(tenant(SELF, vram=1 * GIB), tenant(IMMICH, vram=3000 * MIB))
    units = [usage(SELF, vram=12 * GIB), usage(IMMICH, vram=4 * GIB)]

    decisions = run(config, *(snap(t, LOW, units, self_unit=SELF) for t in (0, 10)))

    assert [IMMICH] == acted(decisions)
    assert [("self", f"not acting on {SELF}: it is vramwatch's own unit")] == [
        (e.fields["reason"], e.message) for e in named(decisions, "skipped")
    ]


# within budget: no_candidate -------------------------------------------------------

CROWDED = [
    gpu(
        1 * GIB,
        processes=[
            proc(10, 8 * GIB, OLLAMA),
            proc(11, 2 * GIB, IMMICH),
            proc(12, int(1.5 * GIB), LLAMA),
        ],
    )
]
WITHIN = [usage(IMMICH, vram=2 * GIB), usage(LLAMA, vram=int(1.5 * GIB))]


def test_a_breach_with_every_tenant_within_budget_names_the_biggest_users_once() -> None:
    """Non-tenant processes and memory no process accounts for are named too."""
    expected = Event(
        "no_candidate",
        "warning",
        "GPU 0 free 1 GiB < floor 2 GiB for 10s but no tenant is over its VRAM budget; "
        "biggest users: ollama.service 8 GiB, (unattributed) 3.5 GiB, "
        "immich-machine-learning.service 2 GiB",
        {
            "top_users": [
                {"owner": OLLAMA, "bytes": 8 * GIB},
                {"owner": "(unattributed)", "bytes": int(3.5 * GIB)},
                {"owner": IMMICH, "bytes": 2 * GIB},
            ],
            "resource": "vram",
            "free_bytes": 1 * GIB,
            "floor_bytes": 2 * GIB,
            "gpu": 0,
            "gpu_uuid": UUID0,
        },
    )

    decisions = run(SPEC_CONFIG, *(snap(t, units=WITHIN, gpus=CROWDED) for t in (0, 10, 12, 14)))

    assert [] == acted(decisions)
    assert [expected] == named(decisions, "no_candidate")


def test_no_candidate_is_said_again_in_the_next_breach_episode() -> None:
    recovered = [gpu(HIGH, processes=CROWDED[0].processes)]
    snaps = [snap(t, units=WITHIN, gpus=CROWDED) for t in (0, 10, 12)]
    snaps += [snap(14, units=WITHIN, gpus=recovered)]
    snaps += [snap(t, units=WITHIN, gpus=CROWDED) for t in (16, 26, 28)]

    decisions = run(SPEC_CONFIG, *snaps)

    assert [
        [],
        ["floor_breached", "no_candidate"],
        [],
        ["floor_recovered"],
        [],
        ["floor_breached", "no_candidate"],
        [],
    ] == [names(d) for d in decisions]


def test_biggest_users_labels_bare_cgroups_and_vanished_pids() -> None:
    sample = gpu(
        1 * GIB,
        processes=[
            proc(1, 4 * GIB, cgroup="/"),
            proc(2, 3 * GIB),  # exited before /proc/2/cgroup was read
            proc(3, None, OLLAMA),  # NVML_VALUE_NOT_AVAILABLE
            proc(4, 1 * GIB, OLLAMA),
        ],
    )
    expected = [
        ("cgroup /", 4 * GIB),
        ("(unattributed)", 7 * GIB),
        ("pid 2", 3 * GIB),
        (OLLAMA, 1 * GIB),
    ]

    actual = policy.biggest_users(snap(0), sample)

    assert sorted(expected, key=lambda kv: (-kv[1], kv[0])) == actual


# protected -------------------------------------------------------------------------


def test_a_protected_tenant_is_skipped_once_and_the_next_over_budget_tenant_is_chosen() -> None:
    config = cfg(tenant(LLAMA, vram=5000 * MIB, protected=True), tenant(IMMICH, vram=3000 * MIB))
    units = [usage(LLAMA, vram=9 * GIB), usage(IMMICH, vram=4 * GIB)]

    decisions = run(config, *(snap(t, LOW, units) for t in (0, 10)))

    assert [IMMICH] == acted(decisions)
    assert [
        Event(
            "skipped",
            "warning",
            f"not acting on {LLAMA}: protected; it uses 9 GiB VRAM, budget 4.9 GiB",
            {
                "resource": "vram",
                "free_bytes": LOW,
                "floor_bytes": 2 * GIB,
                "gpu": 0,
                "gpu_uuid": UUID0,
                "unit": LLAMA,
                "used_bytes": 9 * GIB,
                "budget_bytes": 5000 * MIB,
                "reason": "protected",
            },
        )
    ] == named(decisions, "skipped")


def test_a_protected_tenant_alone_over_budget_is_skipped_once_per_episode() -> None:
    config = cfg(tenant(LLAMA, vram=5000 * MIB, protected=True))
    units = [usage(LLAMA, vram=13 * GIB)]

    decisions = run(config, *(snap(t, LOW, units) for t in (0, 10, 12, 14, 100)))

    assert [] == acted(decisions)
    assert [[], ["floor_breached", "skipped", "no_candidate"], [], [], []] == [
        names(d) for d in decisions
    ]
    assert named(decisions, "no_candidate")[0].message.startswith(
        "GPU 0 free 1.2 GiB < floor 2 GiB for 10s but every over-budget tenant was refused "
        "(see the skipped/rate_limited entries); biggest users: llama-swap.service 13 GiB"
    )


# one action per resource in flight ------------------------------------------------------


def test_after_acting_the_resource_waits_until_the_memory_is_reclaimed() -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB), tenant(WHISPER, vram=1 * GIB), cooldown_s=0)
    both = [IMMICH_GREW, usage(WHISPER, vram=3 * GIB)]
    shrunk = [usage(IMMICH, vram=1 * GIB), usage(WHISPER, vram=3 * GIB)]

    decisions = run(
        config,
        snap(0, LOW, both),
        snap(10, LOW, both),  # acts on IMMICH
        snap(12, LOW, both),  # IMMICH still over budget: wait
        snap(20, LOW, shrunk),  # IMMICH within budget, but the GPU has not got it back: wait
        snap(22, HIGH, shrunk),  # the memory is back: reclaimed
        snap(24, LOW, shrunk),
        snap(34, LOW, shrunk),  # a new breach: WHISPER is next
    )

    assert [[], [IMMICH], [], [], [], [], [WHISPER]] == [
        [a.unit for a in d.actions] for d in decisions
    ]
    assert [
        Event(
            "reclaimed",
            "info",
            f"{IMMICH} released 9.5 GiB VRAM within 12s: GPU 0 free 8 GiB back above floor "
            "2 GiB; unit now 1 GiB, budget 2.9 GiB",
            {
                "freed_bytes": int(10.5 * GIB) - 1 * GIB,
                "unit": IMMICH,
                "resource": "vram",
                "used_bytes": 1 * GIB,
                "budget_bytes": 3000 * MIB,
                "used_before_bytes": int(10.5 * GIB),
                "gpu": 0,
                "free_bytes": HIGH,
                "floor_bytes": 2 * GIB,
            },
        )
    ] == named(decisions, "reclaimed")


def test_reclaimed_means_the_memory_came_back_not_only_that_the_unit_shrank() -> None:
    """The old process outside the unit still holds 10 GiB: the unit reads 0 but GPU free
    stays at 1.2 GiB. Not reclaimed; WHISPER waits for reclaim_timeout, then is acted on."""
    config = cfg(tenant(IMMICH, vram=3000 * MIB), tenant(WHISPER, vram=1 * GIB), cooldown_s=0)
    both = [IMMICH_GREW, usage(WHISPER, vram=3 * GIB)]
    orphaned = [usage(IMMICH, vram=0), usage(WHISPER, vram=3 * GIB)]

    decisions = run(
        config,
        snap(0, LOW, both),
        snap(10, LOW, both),
        snap(12, LOW, orphaned),
        snap(39, LOW, orphaned),
        snap(40, LOW, orphaned),
    )

    assert [[], [IMMICH], [], [], [WHISPER]] == [[a.unit for a in d.actions] for d in decisions]
    assert [] == named(decisions, "reclaimed")
    assert (
        "GPU 0 free 1.2 GiB still under floor 2 GiB 30s after acting on "
        f"{IMMICH}, which now uses 0 B VRAM (budget 2.9 GiB): the memory it held may be kept "
        "by a process outside the unit (an orphan, a docker-*.scope) or taken by another; "
        "other tenants may now be acted on"
    ) == named(decisions, "not_reclaimed")[0].message


def test_the_overage_visible_as_free_memory_is_reclaimed_even_under_the_floor() -> None:
    """GPU free rose by IMMICH's whole overage, but another tenant grew meanwhile."""
    config = cfg(tenant(IMMICH, vram=3000 * MIB), cooldown_s=0, gpu_floor="10GiB")
    decisions = run(
        config,
        snap(0, LOW, [IMMICH_GREW]),
        snap(10, LOW, [IMMICH_GREW]),
        snap(12, 9 * GIB, [usage(IMMICH, vram=0)]),
    )

    assert ["reclaimed", "no_candidate"] == names(decisions[-1])


def test_after_reclaim_timeout_the_action_is_not_reclaimed_and_others_may_be_acted_on() -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB), tenant(WHISPER, vram=1 * GIB))
    both = [IMMICH_GREW, usage(WHISPER, vram=3 * GIB)]

    decisions = run(config, *(snap(t, LOW, both) for t in (0, 10, 20, 39, 40)))

    assert [[], [IMMICH], [], [], [WHISPER]] == [[a.unit for a in d.actions] for d in decisions]
    assert ["not_reclaimed", "skipped"] == names(decisions[-1])
    assert (
        f"{IMMICH} still uses 10.5 GiB VRAM 30s after the action (budget 2.9 GiB): the memory "
        "may be held outside the unit (e.g. a docker-*.scope); other tenants may now be acted on"
    ) == named(decisions, "not_reclaimed")[0].message
    assert "cooldown" == named(decisions, "skipped")[0].fields["reason"]


def test_gpu_and_ram_are_guarded_independently() -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB), tenant(WHISPER, ram=6 * GIB))
    units = [IMMICH_GREW, usage(WHISPER, ram=20 * GIB)]

    decision = run(config, *(snap(t, LOW, units, avail=3 * GIB) for t in (0, 10)))[-1]

    assert [(IMMICH, "vram", KEY0), (WHISPER, "ram", "ram")] == [
        (a.unit, a.resource, a.resource_key) for a in decision.actions
    ]


def test_an_action_in_flight_on_the_gpu_does_not_hold_back_the_ram_floor() -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB), tenant(WHISPER, ram=6 * GIB))
    units = [IMMICH_GREW, usage(WHISPER, ram=20 * GIB)]

    decisions = run(
        config,
        snap(0, LOW, units),
        snap(10, LOW, units),
        snap(12, LOW, units, avail=3 * GIB),
        snap(22, LOW, units, avail=3 * GIB),
    )

    assert [[], [IMMICH], [], [WHISPER]] == [[a.unit for a in d.actions] for d in decisions]


def test_two_gpus_are_guarded_independently() -> None:
    config = cfg(tenant(IMMICH, vram=3 * GIB), tenant(WHISPER, vram=1 * GIB))
    units = [
        usage(IMMICH, vram=6 * GIB, by_gpu={UUID0: 6 * GIB}),
        usage(WHISPER, vram=9 * GIB, by_gpu={UUID1: 9 * GIB}),
    ]
    gpus = [
        gpu(LOW, processes=[proc(1, 6 * GIB, IMMICH)]),
        gpu(LOW, 1, UUID1, processes=[proc(2, 9 * GIB, WHISPER)]),
    ]

    decision = run(config, snap(0, units=units, gpus=gpus), snap(10, units=units, gpus=gpus))[-1]

    assert [(IMMICH, KEY0, 0), (WHISPER, KEY1, 1)] == [
        (a.unit, a.resource_key, a.gpu) for a in decision.actions
    ]


def test_one_tick_never_acts_twice_on_the_same_unit() -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB, ram=6 * GIB), cooldown_s=0)
    units = [usage(IMMICH, vram=int(10.5 * GIB), ram=20 * GIB)]

    decision = run(config, *(snap(t, LOW, units, avail=3 * GIB) for t in (0, 10)))[-1]

    assert [IMMICH] == [a.unit for a in decision.actions]


# cooldown and max_restarts ----------------------------------------------------------------


def test_cooldown_no_second_action_on_the_same_unit_within_it() -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB), cooldown_s=120)
    shrunk = [usage(IMMICH, vram=1 * GIB)]

    decisions = run(
        config,
        snap(0, LOW, [IMMICH_GREW]),
        snap(10, LOW, [IMMICH_GREW]),  # restart
        snap(12, HIGH, shrunk),  # reclaimed, floor recovered
        snap(20, LOW, [IMMICH_GREW]),  # it grew back
        snap(30, LOW, [IMMICH_GREW]),  # grace passed: in cooldown until 130
        snap(129, LOW, [IMMICH_GREW]),
        snap(130, LOW, [IMMICH_GREW]),
    )

    assert [[], [IMMICH], [], [], [], [], [IMMICH]] == [
        [a.unit for a in d.actions] for d in decisions
    ]
    assert [
        (
            "cooldown",
            "info",
            (
                f"not acting on {IMMICH}: in cooldown for 100s more; "
                "it uses 10.5 GiB VRAM, budget 2.9 GiB"
            ),
        )
    ] == [(e.fields["reason"], e.level, e.message) for e in named(decisions, "skipped")]


def test_max_restarts_per_window_then_rate_limited_logged_once_per_window() -> None:
    """Cooldown 1 s, 2 restarts per 100 s: a unit that regrows every 2 s is a restart storm."""
    config = cfg(
        tenant(IMMICH, vram=3000 * MIB), cooldown_s=1, max_restarts=2, window_s=100, grace_s=0
    )
    shrunk = [usage(IMMICH, vram=1 * GIB)]
    snaps = [
        snap(t, LOW, [IMMICH_GREW]) if t % 2 == 0 else snap(t, HIGH, shrunk) for t in range(0, 111)
    ]

    decisions = run(config, *snaps)

    times = [s.now_ns // S for d, s in zip(decisions, snaps, strict=True) if d.actions]
    storms = [
        s.now_ns // S for d, s in zip(decisions, snaps, strict=True) if "rate_limited" in names(d)
    ]
    assert [0, 2, 100, 102] == times
    assert [4, 104] == storms
    assert (
        f"not acting on {IMMICH}: already acted on 2 times within 100s (max_restarts = 2); "
        "restart storm, fix the unit; it uses 10.5 GiB VRAM, budget 2.9 GiB"
    ) == named(decisions, "rate_limited")[0].message
    assert "error" == named(decisions, "rate_limited")[0].level


# dry run ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "event", "doing"),
    [(Verb.RESTART, "would_restart", "would restart"), (Verb.STOP, "would_stop", "would stop")],
)
def test_dry_run_logs_what_it_would_do_and_never_acts(verb: Verb, event: str, doing: str) -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB, verb=verb), dry_run=True)

    times = [0, 10, 20, 40, 200]

    decisions = run(config, *(snap(t, LOW, [IMMICH_GREW]) for t in times))

    assert [] == acted(decisions)
    # The pretend action is "in flight" for reclaim_timeout and then in cooldown, as for real.
    assert [10, 200] == [t for t, d in zip(times, decisions, strict=True) if event in names(d)]
    would = named(decisions, event)
    assert (
        f"{doing} {IMMICH}: GPU 0 free 1.2 GiB < floor 2 GiB for 10s; unit uses 10.5 GiB VRAM, "
        "budget 2.9 GiB (dry run)"
    ) == would[0].message
    assert (True, "warning") == (would[0].fields["dry_run"], would[0].level)


# floors ---------------------------------------------------------------------------------------

TEN_PERCENT = int(TOTAL * 10 / 100)


@pytest.mark.parametrize(
    ("floor_text", "free", "breached"),
    [
        ("10%", TEN_PERCENT - 1, True),
        ("10%", TEN_PERCENT, False),
        ("10%", int(1.5 * GIB), True),
        ("10%", int(1.7 * GIB), False),
        ("2GiB", 2 * GIB - 1, True),
        ("2GiB", 2 * GIB, False),
        ("50%", 7 * GIB, True),
    ],
)
def test_the_gpu_floor_is_bytes_or_a_percentage_of_the_gpu_total(
    floor_text: str, free: int, breached: bool
) -> None:
    config = cfg(tenant(IMMICH, vram=3000 * MIB), gpu_floor=floor_text, grace_s=0)

    decision = run(config, snap(0, free, [IMMICH_GREW]))[-1]

    assert breached == bool(decision.actions)


def test_the_host_floor_restarts_the_tenant_most_over_its_ram_budget() -> None:
    config = cfg(
        tenant(WHISPER, ram=6 * GIB), tenant(IMMICH, vram=3000 * MIB, ram=6 * GIB), host_floor="10%"
    )
    units = [usage(WHISPER, ram=40 * GIB), usage(IMMICH, vram=1 * GIB, ram=7 * GIB)]

    decision = run(config, *(snap(t, HIGH, units, avail=3 * GIB) for t in (0, 10)))[-1]

    assert [(WHISPER, "ram", "ram", None, 40 * GIB, 6 * GIB, 3 * GIB, int(6.4 * GIB))] == [
        (
            a.unit,
            a.resource,
            a.resource_key,
            a.gpu,
            a.used_bytes,
            a.budget_bytes,
            a.free_bytes,
            a.floor_bytes,
        )
        for a in decision.actions
    ]


def test_the_ram_restart_message_states_the_numbers() -> None:
    config = cfg(tenant(WHISPER, ram=6 * GIB))
    units = [usage(WHISPER, ram=20 * GIB)]

    decision = run(config, *(snap(t, HIGH, units, avail=3 * GIB) for t in (0, 10)))[-1]

    assert decision.actions[0].message.startswith(f"restarting {WHISPER}: host MemAvailable ")
    assert decision.actions[0].message.endswith(
        "3 GiB < floor 4 GiB for 10s; unit uses 20 GiB RAM, budget 6 GiB"
    )


def test_the_ram_restart_message_does_not_call_memavailable_free() -> None:
    config = cfg(tenant(WHISPER, ram=6 * GIB))
    units = [usage(WHISPER, ram=20 * GIB)]

    decision = run(config, *(snap(t, HIGH, units, avail=3 * GIB) for t in (0, 10)))[-1]

    assert (
        f"restarting {WHISPER}: host MemAvailable 3 GiB < floor 4 GiB for 10s; "
        "unit uses 20 GiB RAM, budget 6 GiB"
    ) == decision.actions[0].message


def test_the_host_no_candidate_names_the_biggest_ram_owners_host_wide() -> None:
    config = cfg(tenant(WHISPER, ram=6 * GIB))
    top = [
        ("postgresql.service", 30 * GIB),
        ("session-3.scope (user@1000)", 20 * GIB),
        ("whisper.service", 5 * GIB),
        ("cron.service", 1 * GIB),
    ]

    decisions = run(
        config,
        *(
            snap(t, HIGH, [usage(WHISPER, ram=5 * GIB)], avail=3 * GIB, ram_top=top)
            for t in (0, 10)
        ),
    )

    messages = [e.message for e in named(decisions, "no_candidate")]
    # How the breach itself is worded is the business of the RAM restart message tests.
    assert [
        (
            "3 GiB < floor 4 GiB for 10s but no tenant is over its RAM budget; "
            "biggest users: postgresql.service 30 GiB, session-3.scope (user@1000) 20 GiB, "
            "whisper.service 5 GiB"
        )
    ] == [m.partition("host MemAvailable ")[2].removeprefix("free ") for m in messages]


def test_the_host_no_candidate_falls_back_to_the_tenants_ram() -> None:
    config = cfg(tenant(WHISPER, ram=6 * GIB), tenant(IMMICH, ram=6 * GIB))
    units = [usage(WHISPER, ram=5 * GIB), usage(IMMICH, ram=2 * GIB)]

    decisions = run(config, *(snap(t, HIGH, units, avail=3 * GIB) for t in (0, 10)))

    assert [[{"owner": WHISPER, "bytes": 5 * GIB}, {"owner": IMMICH, "bytes": 2 * GIB}]] == [
        e.fields["top_users"] for e in named(decisions, "no_candidate")
    ]


def test_floor_breached_once_per_episode_with_a_reminder_and_floor_recovered() -> None:
    config = cfg(tenant(LLAMA, vram=5000 * MIB, protected=True))
    units = [usage(LLAMA, vram=2 * GIB)]
    times = [0, 9, 10, 12, 309, 310, 312]
    snaps = [snap(t, LOW, units) for t in times] + [snap(314, 3 * GIB, units)]

    decisions = run(config, *snaps)

    assert [
        "GPU 0 free 1.2 GiB < floor 2 GiB for 10s",
        "still: GPU 0 free 1.2 GiB < floor 2 GiB for 310s",
    ] == [e.message for e in named(decisions, "floor_breached")]
    assert [
        Event(
            "floor_recovered",
            "info",
            "GPU 0 free 3 GiB is back above floor 2 GiB",
            {
                "resource": "vram",
                "free_bytes": 3 * GIB,
                "floor_bytes": 2 * GIB,
                "gpu": 0,
                "gpu_uuid": UUID0,
            },
        )
    ] == named(decisions, "floor_recovered")


def test_a_breach_shorter_than_grace_is_not_an_episode() -> None:
    decisions = run(
        SPEC_CONFIG, snap(0, LOW, [LLAMA_OK]), snap(5, LOW, [LLAMA_OK]), snap(7, HIGH, [LLAMA_OK])
    )

    assert [[], [], []] == [names(d) for d in decisions]


UNTIL_CLEAN = "no action on it until it reads cleanly again"
NO_DRIVER = "vramwatch: cannot load libnvidia-ml.so.1: no NVIDIA driver; guarding host RAM only"


# sampling errors ---------------------------------------------------------------------------------


def test_sampling_error_once_per_distinct_error_and_sampling_recovered() -> None:
    lost = [gpu(None, error="GPU is lost")]
    unknown = [gpu(None, error="Unknown Error")]
    snaps = [
        snap(0, gpus=lost),
        snap(2, gpus=lost),
        snap(4, gpus=unknown),
        snap(6, HIGH),
        snap(8, HIGH),
    ]

    decisions = run(SPEC_CONFIG, *snaps)

    assert [
        [
            (
                "sampling_error",
                "error",
                f"cannot read GPU 0 ({UUID0}): GPU is lost; {UNTIL_CLEAN}",
            )
        ],
        [],
        [
            (
                "sampling_error",
                "error",
                f"cannot read GPU 0 ({UUID0}): Unknown Error; {UNTIL_CLEAN}",
            )
        ],
        [("sampling_recovered", "info")],
        [],
    ] == [
        [(e.name, e.level, e.message)[: 3 if e.name == "sampling_error" else 2] for e in d.events]
        for d in decisions
    ]
    assert {"error": "GPU is lost", "resource": "vram", "gpu": 0, "gpu_uuid": UUID0} == dict(
        decisions[0].events[0].fields
    )


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (
            snap(
                0,
                HIGH,
                nvml_error=NO_DRIVER,
                gpus=[],
            ),
            [
                (
                    "sampling_error",
                    "warning",
                    NO_DRIVER,
                ),
            ],
        ),
        (
            snap(0, HIGH, host_error="cannot read /proc/meminfo", avail=None),
            [
                (
                    "sampling_error",
                    "error",
                    f"cannot read host memory: cannot read /proc/meminfo; {UNTIL_CLEAN}",
                ),
            ],
        ),
    ],
    ids=["nvml", "host"],
)
def test_sampling_error_for_nvml_and_host_and_their_recovery(
    broken: Snapshot, expected: list[tuple[str, str, str]]
) -> None:
    decisions = run(SPEC_CONFIG, broken, snap(2, HIGH, []))

    assert expected == [(e.name, e.level, e.message) for e in decisions[0].events]
    assert ["sampling_recovered"] == names(decisions[1])


def test_a_gpu_error_is_not_recovered_when_nvml_fails_outright() -> None:
    decisions = run(
        SPEC_CONFIG,
        snap(0, gpus=[gpu(None, error="GPU is lost")]),
        snap(2, gpus=[], nvml_error="NVML: Driver/library version mismatch"),
    )

    assert ["sampling_error"] == names(decisions[1])


def test_gpu_sampling_recovered_names_the_gpu_by_index_with_its_fields() -> None:
    decisions = run(SPEC_CONFIG, snap(0, gpus=[gpu(None, error="GPU is lost")]), snap(2, HIGH))

    assert [
        Event(
            "sampling_recovered",
            "info",
            f"GPU 0 ({UUID0}) reads cleanly again",
            {"resource": "vram", "gpu": 0, "gpu_uuid": UUID0},
        )
    ] == list(decisions[1].events)


# helpers for the actuator ----------------------------------------------------------------------


def acted_history(config: Config) -> tuple[History, Action]:
    decision = run(
        config, *(snap(t, LOW, [IMMICH_GREW, usage(WHISPER, vram=3 * GIB)]) for t in (0, 10))
    )[-1]
    return decision.history, decision.actions[0]


TWO = cfg(tenant(IMMICH, vram=3000 * MIB), tenant(WHISPER, vram=1 * GIB))


def test_action_failed_frees_the_resource_but_the_attempt_still_counts() -> None:
    history, action = acted_history(TWO)

    after = policy.action_failed(history, action)
    decision = policy.decide(TWO, snap(12, LOW, [IMMICH_GREW, usage(WHISPER, vram=3 * GIB)]), after)

    assert ({}, (10 * S,)) == (dict(after.in_flight), after.actions_ns[IMMICH])
    assert [WHISPER] == [a.unit for a in decision.actions]


def test_action_cancelled_forgets_the_action_entirely() -> None:
    history, action = acted_history(TWO)

    after = policy.action_cancelled(history, action)
    decision = policy.decide(TWO, snap(12, LOW, [IMMICH_GREW, usage(WHISPER, vram=3 * GIB)]), after)

    assert ({}, ()) == (dict(after.in_flight), after.actions_ns[IMMICH])
    assert [IMMICH] == [a.unit for a in decision.actions]


@pytest.mark.parametrize(
    ("config", "units", "expected"),
    [
        (TWO, [IMMICH_GREW], None),
        (
            cfg(tenant(WHISPER, vram=GIB)),
            [IMMICH_GREW],
            f"{IMMICH} is no longer an unprotected tenant",
        ),
        (
            cfg(tenant(IMMICH, vram=GIB, protected=True)),
            [IMMICH_GREW],
            f"{IMMICH} is no longer an unprotected tenant",
        ),
        (TWO, [], f"{IMMICH} VRAM usage is now unknown"),
        (TWO, [usage(IMMICH, vram=None)], f"{IMMICH} VRAM usage is now unknown"),
        (
            TWO,
            [usage(IMMICH, vram=2 * GIB)],
            f"{IMMICH} now uses 2 GiB VRAM, within budget 2.9 GiB",
        ),
        (
            TWO,
            [usage(IMMICH, vram=3000 * MIB)],
            f"{IMMICH} now uses 2.9 GiB VRAM, within budget 2.9 GiB",
        ),
    ],
)
def test_still_justified_rechecks_an_action_against_a_fresh_snapshot(
    config: Config, units: list[UnitUsage], expected: str | None
) -> None:
    _, action = acted_history(TWO)

    actual = policy.still_justified(config, snap(11, LOW, units), action)

    assert expected == actual


def test_the_history_returned_is_immutable() -> None:
    history, _ = acted_history(TWO)

    with pytest.raises(TypeError):
        history.in_flight["x"] = history.in_flight[KEY0]  # type: ignore[index]
    assert isinstance(history.in_flight[KEY0], InFlight)


def test_decide_never_changes_the_history_it_was_given() -> None:
    history, _ = acted_history(TWO)
    before = repr(history)

    policy.decide(TWO, snap(50, LOW, [IMMICH_GREW]), history)

    assert before == repr(history)


# properties ------------------------------------------------------------------------------------

UNITS = ("a.service", "b.service", "c.service", "d.service")
NOT_TENANT = "e.service"
MAYBE_MIB = st.one_of(st.none(), st.integers(0, 12_000))
BUDGET = st.one_of(st.none(), st.integers(1, 6000).map(lambda m: m * MIB))


@st.composite
def configs(draw: st.DrawFn) -> Config:
    tenants = tuple(
        tenant(
            unit,
            vram=draw(BUDGET),
            ram=draw(BUDGET),
            protected=draw(st.booleans()),
            verb=draw(st.sampled_from(Verb)),
        )
        for unit in UNITS
    )
    return cfg(
        *tenants,
        gpu_floor=draw(st.sampled_from(["2GiB", "10%", "4GiB"])),
        grace_s=draw(st.integers(0, 10)),
        host_floor=draw(st.sampled_from(["4GiB", "10%"])),
        host_grace_s=draw(st.integers(0, 10)),
        dry_run=draw(st.booleans()),
        cooldown_s=draw(st.integers(0, 60)),
        max_restarts=draw(st.integers(1, 3)),
        window_s=draw(st.integers(1, 200)),
        reclaim_s=draw(st.integers(1, 40)),
    )


@st.composite
def snapshots(draw: st.DrawFn, now_s: int) -> Snapshot:
    uuids = (UUID0, UUID1)[: draw(st.integers(0, 2))]
    units = []
    for unit in (*UNITS, NOT_TENANT):
        by_gpu = {u: draw(st.integers(0, 8000)) * MIB for u in uuids}
        known = draw(st.integers(0, 9)) > 0
        ram = draw(MAYBE_MIB)
        units.append(
            UnitUsage(
                unit,
                sum(by_gpu.values()) if known else None,
                by_gpu,
                None if ram is None else ram * MIB,
                pids=(1,),
            )
        )
    gpus = [
        gpu(
            draw(st.integers(0, 16384)) * MIB,
            index=i,
            uuid=u,
            processes=[proc(10 + j, x.vram_by_gpu[u], x.unit) for j, x in enumerate(units)],
            error=draw(st.sampled_from([None] * 9 + ["GPU is lost"])),
        )
        for i, u in enumerate(uuids)
    ]
    return snap(
        now_s,
        units=units,
        gpus=gpus,
        avail=draw(st.integers(0, 65536)) * MIB,
        nvml_error=draw(st.sampled_from([None] * 9 + ["no driver"])),
        self_unit=draw(st.sampled_from([None, *UNITS])),
    )


@st.composite
def runs(draw: st.DrawFn) -> tuple[Config, list[Snapshot]]:
    config = draw(configs())
    now = 0
    snaps = []
    for _ in range(draw(st.integers(1, 25))):
        now += draw(st.integers(1, 20))
        snaps.append(draw(snapshots(now)))
    return config, snaps


def used_for(u: UnitUsage, resource: str) -> int | None:
    """Usage as the policy reads it: known VRAM on readable GPUs is a lower bound."""
    if resource == "vram":
        return u.vram_bytes if u.vram_bytes is not None else sum(u.vram_by_gpu.values())
    return u.ram_bytes


@settings(max_examples=200, deadline=None)
@given(runs())
def test_property_decide_never_breaks_the_rules(case: tuple[Config, list[Snapshot]]) -> None:
    config, snaps = case
    history = History()
    acts: dict[str, list[int]] = {}
    window, cap, cooldown = (
        config.daemon.restart_window_ns,
        config.daemon.max_restarts,
        config.daemon.cooldown_ns,
    )
    for s in snaps:
        decision = policy.decide(config, s, history)
        settled = {
            (e.fields["unit"], e.fields["resource"])
            for e in decision.events
            if e.name in ("reclaimed", "not_reclaimed")
        }
        would = [e for e in decision.events if e.name.startswith("would_")]
        if config.daemon.dry_run:
            assert () == decision.actions
        else:
            assert [] == would
        keys = [a.resource_key for a in decision.actions]
        assert len(set(keys)) == len(keys)
        for a in decision.actions:
            t = config.tenant(a.unit)
            u = s.units[a.unit]
            used = used_for(u, a.resource)
            assert t is not None and not t.protected and a.unit != s.self_unit
            assert used is not None and used > (t.budget(a.resource) or 0) and t.budget(a.resource)
            if a.resource == "vram":
                assert u.vram_by_gpu[a.resource_key[4:]] > 0
            before = history.in_flight.get(a.resource_key)
            assert before is None or (before.unit, before.resource) in settled
            assert decision.history.in_flight[a.resource_key].unit == a.unit
        for a_unit in [a.unit for a in decision.actions] + [e.fields["unit"] for e in would]:
            times = acts.setdefault(a_unit, [])
            if times and cooldown:
                assert s.now_ns - times[-1] >= cooldown
            times.append(s.now_ns)
            assert sum(1 for t in times if s.now_ns - t < window) <= cap
        history = decision.history


@st.composite
def runs_with_reloads_and_failures(
    draw: st.DrawFn,
) -> list[tuple[Config, Snapshot, list[str]]]:
    """Ticks, each under a config that may have been reloaded, with the fate of its actions."""
    config = draw(configs())
    now = 0
    steps = []
    for _ in range(draw(st.integers(1, 30))):
        if draw(st.integers(0, 9)) == 0:
            config = draw(configs())  # SIGHUP: a new config, the history carries over
        now += draw(st.integers(1, 20))
        fates = draw(st.lists(st.sampled_from(["done", "failed", "cancelled"]), max_size=3))
        steps.append((config, draw(snapshots(now)), fates))
    return steps


@settings(max_examples=300, deadline=None)
@given(runs_with_reloads_and_failures())
def test_property_rules_hold_across_reloads_failed_and_cancelled_actions(
    steps: list[tuple[Config, Snapshot, list[str]]],
) -> None:
    """The daemon's use of the policy: reloads, action_failed and action_cancelled."""
    history = History()
    kept: dict[str, list[int]] = {}  # unit -> times of actions not cancelled
    for config, s, fates in steps:
        # Like the policy, forget times older than the window (or cooldown) in force:
        # a reload to a longer restart_window does not bring forgotten actions back.
        keep_ns = max(config.daemon.restart_window_ns, config.daemon.cooldown_ns)
        kept = {u: [x for x in ts if s.now_ns - x < keep_ns] for u, ts in kept.items()}
        decision = policy.decide(config, s, history)
        if config.daemon.dry_run:
            assert () == decision.actions
        history = decision.history
        for i, a in enumerate(decision.actions):
            t = config.tenant(a.unit)
            assert t is not None and not t.protected and a.unit != s.self_unit
            budget = t.budget(a.resource)
            used = used_for(s.units[a.unit], a.resource)
            assert budget is not None and used is not None and used > budget
            times = [
                x
                for x in kept.get(a.unit, [])
                if s.now_ns - x < max(config.daemon.restart_window_ns, config.daemon.cooldown_ns)
            ]
            in_window = [x for x in times if s.now_ns - x < config.daemon.restart_window_ns]
            assert len(in_window) < config.daemon.max_restarts
            assert not times or s.now_ns - times[-1] >= config.daemon.cooldown_ns
            fate = fates[i] if i < len(fates) else "done"
            if fate == "failed":
                history = policy.action_failed(history, a)
            elif fate == "cancelled":
                history = policy.action_cancelled(history, a)
            if fate != "cancelled":
                kept.setdefault(a.unit, []).append(s.now_ns)  # a failed attempt still counts
            else:
                assert a.resource_key not in history.in_flight  # the resource is free again
        for key in {a.resource_key for a in decision.actions}:
            assert 1 == sum(1 for a in decision.actions if a.resource_key == key)
