"""Tenants' cgroups held open between ticks on cgroup v2 (issue 17), on real cgroups.

Read again through held descriptors a tick gives what reading afresh gives; a
restarted unit (systemd removes its directory and makes a new one) is read with
its new processes on the next tick; a stopped one is inactive; no descriptor
outlives its tenant (reload, close) or the budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakenvml import FakeGpu, FakeNvmlState, mib
from tests.sources.cgroups import Units
from vramwatch import config as cfg
from vramwatch import sampler as sampler_module
from vramwatch.model import Snapshot
from vramwatch.sampler import Sampler
from vramwatch.sources.cgroups import CgroupLayout
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
S = 10**9


def config(*units: str) -> cfg.Config:
    return cfg.parse(
        "".join(f'[[tenant]]\nunit = "{u}"\nvram = "1GiB"\nram = "1GiB"\n' for u in units),
        "<test>",
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def usage(snapshot: Snapshot) -> dict[str, tuple[tuple[int, ...], str, bool]]:
    """What a tick says of each tenant's cgroup: PIDs, RAM source, and whether RAM is known."""
    return {
        unit: (tuple(sorted(u.pids)), u.ram_source, u.ram_bytes is not None)
        for unit, u in snapshot.units.items()
    }


def test_a_held_unit_is_read_again_without_opening_or_stating_a_file(
    units: Units, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = units.spawn(), units.spawn()
    units.place("a.service", first)
    fs = ProcFs(layout=units.layout)
    fs.hold(64)
    cgroup = fs.locate_unit("a.service", "system", 0)
    assert cgroup is not None
    fs.unit_pids(cgroup)
    units.place("a.service", second)  # a new process: the held file must show it
    calls: list[str] = []
    real_open, real_stat = os.open, os.stat

    def opening(path: str, *args: Any) -> int:
        calls.append(str(path))
        return real_open(path, *args)

    def stating(path: str, *args: Any) -> os.stat_result:
        calls.append(str(path))
        return real_stat(path, *args)

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "stat", stating)

    again = fs.locate_unit("a.service", "system", S)
    assert again is not None
    pids = fs.unit_pids(again)
    monkeypatch.undo()
    fs.close()

    assert (cgroup.cgroup, [first, second], []) == (again.cgroup, sorted(pids), calls)


def test_a_held_cgroup_asked_for_by_its_path_is_read_as_it_is_now(units: Units) -> None:
    """Issue 24, item 6: a check through held descriptors read the unit's cgroup.procs
    and left it for the next unit_pids() of that path, however much later: a process
    that joined since was missed. Now the read travels in the value locate_unit()
    returns; a cgroup asked for by its path is read as it is."""
    first, second = units.spawn(), units.spawn()
    units.place("a.service", first)
    fs = ProcFs(layout=units.layout)
    fs.hold(64)
    fs.locate_unit("a.service", "system", 0)  # found by a walk, and held
    fs.locate_unit("a.service", "system", S)  # its held cgroup.procs read
    units.place("a.service", second)  # a process joins

    actual = fs.unit_pids(f"/{units.slice.name}/a.service")
    fs.close()

    assert [first, second] == sorted(actual)


def test_ticks_read_through_held_cgroups_are_what_reading_afresh_gives(
    units: Units, fake_nvml: FakeNvmlState, monkeypatch: pytest.MonkeyPatch
) -> None:
    a1, a2, b1, w1 = (units.spawn() for _ in range(4))
    units.place("a.service", a1, a2)
    units.place("b.service", b1)
    units.place("b.service/worker", w1)  # a sub-cgroup: walked, as before
    fake_nvml.write([FakeGpu(UUID, mib(16000))])
    conf = config("a.service", "b.service", "c.service")
    held = Sampler(NvmlSource(), ProcFs(layout=units.layout))
    monkeypatch.setattr(sampler_module, "cgroup_fd_budget", lambda: 0)
    afresh = Sampler(NvmlSource(), ProcFs(layout=units.layout))
    steps: list[Callable[[], object]] = [
        lambda: None,
        lambda: units.place("b.service", a2),  # a process moves between units
        lambda: units.place("c.service", units.spawn()),  # a unit starts
        lambda: units.remove("a.service"),  # a unit stops
        lambda: units.place("a.service", units.spawn()),  # and starts again
    ]
    try:
        expected, actual = [], []
        for tick, step in enumerate(steps):
            step()
            # Beyond LOCATE_RETRY_NS: a unit not found is looked for again.
            now = tick * 11 * S
            actual.append(usage(held.sample(conf, now)))
            expected.append(usage(afresh.sample(conf, now)))
    finally:
        held.close()
        afresh.close()

    assert expected == actual
    assert "inactive" == actual[3]["a.service"][1] != actual[4]["a.service"][1]


def test_a_restarted_unit_is_read_with_its_new_processes_on_the_next_tick(
    units: Units, fake_nvml: FakeNvmlState
) -> None:
    old, new = units.spawn(), units.spawn()
    units.place("a.service", old)
    fake_nvml.write([FakeGpu(UUID, mib(16000))])
    sampler = Sampler(NvmlSource(), ProcFs(layout=units.layout))
    conf = config("a.service")
    try:
        before = sampler.sample(conf, 0).units["a.service"].pids
        sampler.sample(conf, S)  # read through the held cgroup
        units.remove("a.service")
        units.place("a.service", new)  # the same path, a new directory
        after = sampler.sample(conf, 2 * S).units["a.service"].pids
    finally:
        sampler.close()

    assert ((old,), (new,)) == (before, after)


def test_a_stopped_unit_is_inactive_and_its_descriptors_are_closed(
    units: Units, fake_nvml: FakeNvmlState
) -> None:
    units.place("a.service", units.spawn())
    fake_nvml.write([FakeGpu(UUID, mib(16000))])
    sampler = Sampler(NvmlSource(), ProcFs(layout=units.layout))
    try:
        sampler.sample(config(), 0)
        without = open_fds()
        sampler.sample(config("a.service"), S)
        units.remove("a.service")
        gone = sampler.sample(config("a.service"), 2 * S).units["a.service"]
        after = open_fds()
    finally:
        sampler.close()

    assert ((), 0, "inactive", without) == (gone.pids, gone.ram_bytes, gone.ram_source, after)


def test_a_reload_dropping_a_tenant_closes_its_descriptors_and_close_closes_all(
    units: Units, fake_nvml: FakeNvmlState
) -> None:
    units.place("a.service", units.spawn())
    units.place("b.service", units.spawn())
    fake_nvml.write([FakeGpu(UUID, mib(16000))])
    start = open_fds()
    sampler = Sampler(NvmlSource(), ProcFs(layout=units.layout))
    try:
        sampler.sample(config("a.service"), 0)
        only_a = open_fds()
        sampler.sample(config("a.service", "b.service"), S)
        both = open_fds()
        sampler.sample(config("a.service"), 2 * S)
        dropped = open_fds()
    finally:
        sampler.close()
    closed = open_fds()

    assert both > only_a  # b's cgroup was held
    assert (only_a, start) == (dropped, closed)


def test_no_more_descriptors_are_held_than_the_budget_and_the_rest_read_afresh(
    units: Units,
) -> None:
    pids = {f"u{i}.service": units.spawn() for i in range(4)}
    for unit, pid in pids.items():
        units.place(unit, pid)
    fs = ProcFs(layout=units.layout)
    fs.hold(5)  # two or three descriptors a unit: one unit's worth
    start = open_fds()
    read = {}
    for tick in range(2):
        for unit in pids:
            cgroup = fs.locate_unit(unit, "system", tick * S)
            assert cgroup is not None
            read[unit] = fs.unit_pids(cgroup)
    held = open_fds() - start
    fs.close()

    assert {u: (p,) for u, p in pids.items()} == read
    assert 0 < held <= 5
    assert start == open_fds()


def test_a_tree_that_is_not_a_cgroup_v2_mount_is_read_afresh(tmp_path: Path) -> None:
    unit = tmp_path / "cg" / "system.slice" / "a.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.procs").write_text("10\n")
    fs = ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", tmp_path / "cg", tmp_path / "cg"))
    fs.hold(64)
    start = open_fds()
    cgroup = fs.locate_unit("a.service", "system", 0)
    assert cgroup is not None
    fs.unit_pids(cgroup)
    (unit / "cgroup.procs").unlink()  # a fixture rewritten as a new file
    (unit / "cgroup.procs").write_text("11\n")

    pids = fs.unit_pids(fs.locate_unit("a.service", "system", S) or "")

    assert ((11,), start) == (pids, open_fds())


def test_without_pids_a_held_unit_is_checked_without_reading_its_cgroup_procs(
    units: Units, fake_nvml: FakeNvmlState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's tick (no PIDs wanted) with RAM from a memory.stat outside the
    tracking tree (bench.tick's v2 layout): a held unit is proven there by a lookup
    in its held directory, never by reading cgroup.procs (the kernel walks its
    processes for that); it still goes inactive when stopped and is read again
    when started in a new directory."""
    memory = tmp_path / "memory"
    stat = memory / units.slice.name / "a.service" / "memory.stat"
    stat.parent.mkdir(parents=True)
    stat.write_text("anon 4096\nshmem 4096\n")
    units.place("a.service", units.spawn())
    fake_nvml.write([FakeGpu(UUID, mib(16000))])
    sampler = Sampler(NvmlSource(), ProcFs(layout=CgroupLayout("v2", units.root, memory)))
    conf = config("a.service")
    reads: list[str] = []
    real_open, real_pread = os.open, os.pread

    def opening(path: Any, *args: Any, **kwargs: Any) -> int:
        reads.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    def pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(f"fd {fd}")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "pread", pread)
    try:
        sampler.sample(conf, 0)  # located and held
        reads.clear()
        held = sampler.sample(conf, S).units["a.service"]
        held_reads = [r for r in reads if "cgroup.procs" in r or r.startswith("fd")]
        units.remove("a.service")
        stopped = sampler.sample(conf, 2 * S).units["a.service"]
        units.place("a.service", units.spawn())  # the same path, a new directory
        again = sampler.sample(conf, 13 * S).units["a.service"]  # past LOCATE_RETRY_NS
    finally:
        sampler.close()

    assert [] == held_reads
    assert [((), 8192, "memory.stat"), ((), 0, "inactive"), ((), 8192, "memory.stat")] == [
        (u.pids, u.ram_bytes, u.ram_source) for u in (held, stopped, again)
    ]
