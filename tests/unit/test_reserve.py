"""Budgets that are guarantees (SPEC; issue 14 part 1): ``reserve`` and ``gpu``.

The incident: on a 16 GB T4 the LLM server needed 4.4 GiB free to load its model
while free VRAM sat at 2.2 GiB for hours, above any plain 1-2 GiB floor.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.test_policy import (
    UUID0,
    UUID1,
    acted,
    cfg,
    gpu,
    named,
    names,
    proc,
    run,
    snap,
    tenant,
    usage,
)
from vramwatch import config as config_mod
from vramwatch import policy
from vramwatch.config import Config, Tenant
from vramwatch.model import GpuProcess, GpuSample, Snapshot
from vramwatch.policy import gpu_floor
from vramwatch.units import GIB, MIB

LLAMA, IMMICH, FRIGATE = "llama-swap.service", "immich-ml.service", "frigate.service"
WHISPER = "whisper.service"
T4 = 15360 * MIB
BASE = 300 * MIB


def t4_snap(now_s: float, immich_mib: int, llama_mib: int = 0, frigate_mib: int = 1500) -> Snapshot:
    units = [
        usage(LLAMA, vram=llama_mib * MIB),
        usage(IMMICH, vram=immich_mib * MIB),
        usage(FRIGATE, vram=frigate_mib * MIB),
    ]
    used = BASE + (immich_mib + llama_mib + frigate_mib) * MIB
    procs = [proc(100 + i, u.vram_bytes, u.unit) for i, u in enumerate(units) if u.vram_bytes]
    return snap(now_s, units=units, gpus=[gpu(T4 - used, total=T4, processes=procs)])


def incident_config(reserve: bool) -> Config:
    llama = replace(tenant(LLAMA, vram=5000 * MIB), reserve=reserve)
    return cfg(
        llama,
        tenant(IMMICH, vram=3000 * MIB),
        tenant(FRIGATE, vram=2000 * MIB),
        gpu_floor="1GiB",
    )


def test_an_idle_reserving_tenant_keeps_its_budget_free_and_the_hog_is_restarted() -> None:
    decisions = run(incident_config(True), t4_snap(0, 10700), t4_snap(10, 10700))

    assert [IMMICH] == acted(decisions)
    assert (
        f"restarting {IMMICH}: GPU 0 free 2.8 GiB < floor 5.9 GiB (1 GiB + 4.9 GiB reserved "
        f"for {LLAMA}, idle) for 10s; unit uses 10.4 GiB VRAM, budget 2.9 GiB"
    ) == decisions[-1].actions[0].message
    breached = named(decisions, "floor_breached")[0]
    assert (5000 * MIB, [LLAMA]) == (
        breached.fields["reserved_bytes"],
        breached.fields["reserved_for"],
    )


def test_without_reserve_nothing_is_restarted_which_is_why_reserve_exists() -> None:
    decisions = run(incident_config(False), t4_snap(0, 10700), t4_snap(10, 10700))

    assert [] == acted(decisions)
    assert [] == named(decisions, "floor_breached")


def test_only_the_unused_part_of_the_budget_is_reserved() -> None:
    """llama-swap loaded 4000 of its 5000 MiB: 1000 MiB more are reserved, no more."""
    config = incident_config(True)
    s = t4_snap(0, 1000, llama_mib=4000)

    assert 1 * GIB + 1000 * MIB == gpu_floor(config, s, s.gpus[0])


def test_a_reserving_tenant_within_budget_is_never_the_victim() -> None:
    """An unlisted process breaches the reserved floor; every tenant is within budget."""
    config = incident_config(True)
    units = [usage(LLAMA, vram=100 * MIB), usage(IMMICH, vram=2900 * MIB)]
    procs = [
        proc(1, 100 * MIB, LLAMA),
        proc(2, 2900 * MIB, IMMICH),
        proc(3, 8 * GIB, "ollama.service"),
    ]
    gpus = [gpu(T4 - BASE - 100 * MIB - 2900 * MIB - 8 * GIB, total=T4, processes=procs)]

    decisions = run(config, snap(0, units=units, gpus=gpus), snap(10, units=units, gpus=gpus))

    assert [] == acted(decisions)
    assert 1 == len(named(decisions, "no_candidate"))


def test_a_pinned_tenant_reserves_on_its_gpu_and_its_budget_counts_only_there() -> None:
    """llama-swap pinned to GPU 1 reserves there; its 4 GiB on GPU 0 do not count."""
    llama = replace(tenant(LLAMA, vram=5000 * MIB), reserve=True, gpu=UUID1)
    config = cfg(llama, tenant(IMMICH, vram=3000 * MIB), gpu_floor="1GiB")
    units = [
        usage(LLAMA, vram=8 * GIB, by_gpu={UUID0: 4 * GIB, UUID1: 4 * GIB}),
        usage(IMMICH, vram=9 * GIB, by_gpu={UUID1: 9 * GIB}),
    ]
    gpus = [
        gpu(12 * GIB, processes=[proc(1, 4 * GIB, LLAMA)]),
        gpu(1536 * MIB, 1, UUID1, processes=[proc(2, 4 * GIB, LLAMA), proc(3, 9 * GIB, IMMICH)]),
    ]

    decisions = run(config, snap(0, units=units, gpus=gpus), snap(10, units=units, gpus=gpus))

    assert [IMMICH] == acted(decisions)
    assert "(1 GiB + 904 MiB reserved for llama-swap.service, uses 4 GiB)" in (
        decisions[-1].actions[0].message
    )
    assert (12 * GIB // 10 * 0 + 1 * GIB) == gpu_floor(
        config, snap(0, units=units, gpus=gpus), gpus[0]
    )


CHECK = """
[gpu]
min_free_vram = "1GiB"
[[tenant]]
unit = "llama-swap.service"
vram = "{budget}"
reserve = true
{gpu}
"""


@pytest.mark.parametrize(
    ("budget", "pin", "gpus", "expected"),
    [
        ("5000MiB", "", [(0, "GPU-a", T4)], []),
        (
            "15000MiB",
            "",
            [(0, "GPU-a", T4)],
            [
                (
                    "GPU 0: min_free_vram (1 GiB) plus the budgets reserved on it (14.6 GiB "
                    "for llama-swap.service) exceed its 15 GiB"
                )
            ],
        ),
        (
            "5000MiB",
            "",
            [(0, "GPU-a", T4), (1, "GPU-b", T4)],
            [
                (
                    "tenant[0].gpu: llama-swap.service reserves VRAM and 2 GPUs are present: "
                    "say which one (an index or a GPU-/MIG- UUID)"
                )
            ],
        ),
        ("5000MiB", 'gpu = "GPU-b"', [(0, "GPU-a", T4), (1, "GPU-b", T4)], []),
        ("5000MiB", "gpu = 3", [(0, "GPU-a", T4)], ["tenant[0].gpu: no GPU 3 is present"]),
    ],
)
def test_check_refuses_reservations_that_cannot_be_honoured(
    budget: str, pin: str, gpus: list[tuple[int, str, int]], expected: list[str]
) -> None:
    config = config_mod.parse(CHECK.format(budget=budget, gpu=pin), "/etc/vramwatch.toml")
    present = [GpuSample(i, uuid, "Tesla T4", total, 0, total) for i, uuid, total in gpus]

    assert expected == config_mod.reserve_fit_errors(config, present)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "reserve = true",
            "tenant[0].reserve: needs a vram budget: the unused part of it is reserved",
        ),
        ("gpu = -1", "tenant[0].gpu: expected an index from 0 to 63, got -1"),
        ("gpu = true", 'tenant[0].gpu: expected an index such as 0 or a UUID "GPU-...", got true'),
        (
            'gpu = "0"',
            'tenant[0].gpu: expected a UUID such as "GPU-8f1c2a3e-..." or "MIG-...", got "0"',
        ),
    ],
)
def test_reserve_and_gpu_mistakes_name_the_key(body: str, problem: str) -> None:
    text = f'[[tenant]]\nunit = "a.service"\n{body}\n'

    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.parse(text, "/etc/vramwatch.toml")

    assert f"/etc/vramwatch.toml: {problem}" == str(caught.value)


def test_a_mig_uuid_is_a_gpu() -> None:
    mig = "MIG-4d6a2c1e-0000-1111-2222-333344445555"
    text = f'[[tenant]]\nunit = "a.service"\nvram = "1GiB"\ngpu = "{mig}"\n'

    actual = config_mod.parse(text, "/etc/vramwatch.toml").tenants[0]

    assert (
        Tenant("a.service", vram_bytes=GIB, gpu="MIG-4d6a2c1e-0000-1111-2222-333344445555")
        == actual
    )


# --------------------------------------------------------------------------
# MIG (issue 22, item 2): on a GPU in MIG mode every MIG device carries its GPU's
# index; an index or the GPU's GPU- UUID means all of them, usage and budget summed.

PARENT = "GPU-a1000000-0000-0000-0000-000000000000"
MIG0 = "MIG-a1000000-0000-0000-0000-000000000000"
MIG1 = "MIG-a1000000-0000-0000-0000-000000000001"
SLICE = 40 * GIB  # each MIG device of the A100; a 10% floor is 4 GiB


def a100(
    free0: int, free1: int, procs0: list[GpuProcess], procs1: list[GpuProcess]
) -> list[GpuSample]:
    """GPU 0 in MIG mode: MIG 0 and MIG 1, each 40 GiB with its own floor."""
    return [
        replace(gpu(free0, 0, MIG0, SLICE, procs0), parent_uuid=PARENT, mig_index=0),
        replace(gpu(free1, 0, MIG1, SLICE, procs1), parent_uuid=PARENT, mig_index=1),
    ]


@pytest.mark.parametrize("pin", [0, PARENT])
def test_a_tenant_pinned_to_a_mig_gpu_counts_its_usage_on_every_mig_device_of_it(
    pin: int | str,
) -> None:
    """whisper (gpu = 0, or the A100's GPU- UUID) uses 2 GiB on MIG 0 and 2.5 GiB on MIG 1:
    4.5 GiB against 3 GiB, 1.5 GiB over. immich is 1 GiB over, on MIG 1 only. MIG 1
    is breached: whisper is the tenant most over its budget, not immich."""
    whisper = replace(tenant(WHISPER, vram=3 * GIB), gpu=pin)
    config = cfg(whisper, tenant(IMMICH, vram=3 * GIB), gpu_floor="10%")
    units = [
        usage(WHISPER, vram=int(4.5 * GIB), by_gpu={MIG0: 2 * GIB, MIG1: int(2.5 * GIB)}),
        usage(IMMICH, vram=4 * GIB, by_gpu={MIG1: 4 * GIB}),
    ]
    gpus = a100(
        30 * GIB,
        2 * GIB,
        [proc(1, 2 * GIB, WHISPER)],
        [proc(2, int(2.5 * GIB), WHISPER), proc(3, 4 * GIB, IMMICH)],
    )

    decisions = run(config, *(snap(t, units=units, gpus=gpus) for t in (0, 10)))

    assert [WHISPER] == acted(decisions)
    assert (
        f"restarting {WHISPER}: GPU 0 MIG 1 free 2 GiB < floor 4 GiB for 10s; unit uses "
        "4.5 GiB VRAM, budget 3 GiB; also over budget on GPU 0 MIG 0, held until this settles"
    ) == decisions[-1].actions[0].message


def test_a_reserve_is_kept_on_the_mig_device_its_mig_uuid_names_and_never_on_a_whole_gpu() -> None:
    """llama (gpu = "MIG-...1", idle) keeps its 5 GiB free on MIG 1 only; frigate (gpu = 0,
    the whole A100) names no MIG device and reserves nowhere (check refuses it, run warns),
    rather than its whole budget on every MIG device."""
    llama = replace(tenant(LLAMA, vram=5 * GIB), reserve=True, gpu=MIG1)
    frigate = replace(tenant(FRIGATE, vram=6 * GIB), reserve=True, gpu=0)
    config = cfg(llama, frigate, gpu_floor="10%")
    units = [usage(LLAMA, vram=0), usage(FRIGATE, vram=0)]
    s = snap(0, units=units, gpus=a100(30 * GIB, 30 * GIB, [], []))

    assert [4 * GIB, 4 * GIB + 5 * GIB] == [gpu_floor(config, s, g) for g in s.gpus]


# --------------------------------------------------------------------------
# Unknown is never zero (issue 22, item 8): a reserving tenant whose VRAM use is not
# known reserves nothing; a breach only its reserve would make is said once as unprovable.


def unknown_llama_snap(now_s: float, free_mib: int, llama_known_mib: int = 0) -> Snapshot:
    """The T4 with immich 500 MiB over its 3000 MiB budget and llama-swap (reserving 5000
    MiB) holding memory NVML cannot attribute (per-process usage N/A)."""
    units = [
        usage(LLAMA, vram=None, by_gpu={UUID0: llama_known_mib * MIB} if llama_known_mib else {}),
        usage(IMMICH, vram=3500 * MIB),
    ]
    procs = [proc(1, None, LLAMA), proc(2, 3500 * MIB, IMMICH)]
    return snap(now_s, units=units, gpus=[gpu(free_mib * MIB, total=T4, processes=procs)])


def test_a_reserving_tenant_of_unknown_use_adds_nothing_to_the_floor_and_nobody_is_restarted() -> (
    None
):
    """llama-swap holds memory NVML cannot attribute: read as 0 B, its whole budget
    went onto the floor (5.9 GiB > 2.7 GiB free) and immich was restarted for nothing."""
    config = incident_config(True)
    snaps = [unknown_llama_snap(t, 2800) for t in (0, 10, 20, 30)]

    decisions = run(config, *snaps)

    assert [] == acted(decisions)
    assert [] == named(decisions, "floor_breached")
    assert 1 * GIB == gpu_floor(config, snaps[0], snaps[0].gpus[0])


def test_a_breach_only_an_unknown_reserve_would_make_is_said_once_per_episode_as_unprovable() -> (
    None
):
    config = incident_config(True)
    dip = [unknown_llama_snap(t, 2800) for t in (0, 10, 20)]
    back = unknown_llama_snap(30, 7000)  # above even the full 5.9 GiB: the episode ends
    again = [unknown_llama_snap(t, 2800, llama_known_mib=1000) for t in (40, 50)]

    decisions = run(config, *dip, back, *again)

    unprovable = named(decisions, "floor_unprovable")
    assert [1, 5] == [i for i, d in enumerate(decisions) if "floor_unprovable" in names(d)]
    assert [
        (
            f"GPU 0 free 2.7 GiB would be under floor 5.9 GiB for 10s only with the 4.9 GiB "
            f"reserved for {LLAMA}, whose VRAM use is unknown; without it, floor 1 GiB: no "
            "action until that use is known"
        ),
        (
            f"GPU 0 free 2.7 GiB would be under floor 4.9 GiB for 10s only with the 3.9 GiB "
            f"reserved for {LLAMA}, whose VRAM use is unknown; without it, floor 1 GiB: no "
            "action until that use is known"
        ),
    ] == [e.message for e in unprovable]
    assert [
        (2800 * MIB, 1 * GIB, 5000 * MIB, [LLAMA]),
        (2800 * MIB, 1 * GIB, 4000 * MIB, [LLAMA]),
    ] == [
        (
            e.fields["free_bytes"],
            e.fields["floor_bytes"],
            e.fields["unproven_bytes"],
            e.fields["unproven_for"],
        )
        for e in unprovable
    ]
    assert [] == acted(decisions)


MIG_CHECK = """
[gpu]
min_free_vram = "10%"
[[tenant]]
unit = "llama-swap.service"
vram = "{budget}"
reserve = true
{gpu}
"""
WHOLE_A100 = (
    f"tenant[0].gpu: llama-swap.service reserves VRAM on GPU 0, which is in MIG mode: name one "
    f"of its MIG devices by its UUID ({MIG0}, {MIG1}); until then nothing is reserved for it"
)


@pytest.mark.parametrize(
    ("budget", "pin", "expected"),
    [
        ("5GiB", "gpu = 0", [WHOLE_A100]),
        ("5GiB", f'gpu = "{PARENT}"', [WHOLE_A100]),
        ("5GiB", f'gpu = "{MIG1}"', []),
        (
            "5GiB",
            "",
            [
                (
                    "tenant[0].gpu: llama-swap.service reserves VRAM and 2 GPUs are present: "
                    "say which one (an index or a GPU-/MIG- UUID; on a GPU in MIG mode, a MIG- "
                    "UUID)"
                )
            ],
        ),
        (
            "37GiB",
            f'gpu = "{MIG1}"',
            [
                (
                    "GPU 0 MIG 1: min_free_vram (4 GiB) plus the budgets reserved on it (37 GiB "
                    "for llama-swap.service) exceed its 40 GiB"
                )
            ],
        ),
    ],
)
def test_check_refuses_a_reserve_on_a_whole_mig_gpu_and_fits_one_on_its_mig_device(
    budget: str, pin: str, expected: list[str]
) -> None:
    """On a GPU in MIG mode the room must be kept on one MIG device, named by its MIG- UUID;
    gpu = 0 or the GPU- UUID of the GPU mean all of them (issue 22, item 2)."""
    config = config_mod.parse(MIG_CHECK.format(budget=budget, gpu=pin), "/etc/vramwatch.toml")
    present = a100(SLICE, SLICE, [], [])

    assert expected == config_mod.reserve_fit_errors(config, present)


def test_the_decision_publishes_each_floor_as_it_read_it() -> None:
    """Metrics, status and the debug tick read these instead of working a floor out."""
    config = incident_config(True)
    decisions = run(config, t4_snap(0, 10700), t4_snap(10, 10700))

    used = BASE + (10700 + 1500) * MIB
    assert [
        ("gpu:" + UUID0, T4 - used, 1 * GIB + 5000 * MIB, 5000 * MIB, [LLAMA], 0, 0),
        ("ram", 32 * GIB, 4 * GIB, 0, [], 0, None),
    ] == [
        (
            r.key,
            r.free_bytes,
            r.floor_bytes,
            r.reserved_bytes,
            r.floor.reserved_for,
            r.unproven_bytes,
            r.breached_since_ns,
        )
        for r in decisions[-1].readings
    ]


def test_a_reserve_of_unknown_use_is_published_as_unproven_not_reserved() -> None:
    config = incident_config(True)
    s = t4_snap(0, 1000)
    blind = replace(s, units={**s.units, LLAMA: replace(s.units[LLAMA], vram_bytes=None)})

    (reading,) = [r for r in policy.readings(config, blind) if r.gpu is not None]
    assert (1 * GIB, 0, 5000 * MIB, [LLAMA]) == (
        reading.floor_bytes,
        reading.reserved_bytes,
        reading.unproven_bytes,
        reading.floor.unproven_for,
    )
