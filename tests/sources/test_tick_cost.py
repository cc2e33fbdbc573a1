"""What a tick saves (issue 17), and that each saving gives what the full work gave.

The saving itself is asserted where it is visible (no directory scan for a
unit without sub-cgroups, the same value handed out for an unchanged GPU
process); the result against the reference (the code before the saving) for
any input.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakenvml import FakeGpu, FakeNvmlState, FakeProcess, mib
from vramwatch import config as cfg
from vramwatch.sampler import Sampler
from vramwatch.sources import cgroups, kernfs
from vramwatch.sources.cgroups import CgroupLayout
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
S = 10**9


def reference_stat_fields(text: str, keys: tuple[str, ...]) -> list[int] | None:
    """cgroups.stat_fields before issue 17: every line split."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        number = kernfs.counter(value.strip()) if name in keys else None
        if number is not None:
            found[name] = number
    if len(found) != len(keys):
        return None
    return [found[k] for k in keys]


# memory.stat-like text: the wanted keys, their look-alikes, odd line breaks and spaces.
_words = st.sampled_from(
    ["anon", "shmem", "anon_thp", "shmem_thp", "total_rss", "total_shmem", "file", "xanon", ""]
)
_values = st.sampled_from(["0", "4096", " 12 ", "-1", "1e3", "²", "99999999999999999999999", ""])
_breaks = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\x0b", "\x1e", "\x85", "\u2028"])
_stat_text = st.lists(
    st.tuples(_words, st.sampled_from([" ", "  ", "\t", ""]), _values, _breaks)
).map(lambda lines: "".join(f"{w}{sep}{v}{b}" for w, sep, v, b in lines))


@given(_stat_text, st.sampled_from([("anon", "shmem"), ("total_rss", "total_shmem")]))
def test_memory_stat_fields_are_what_splitting_every_line_gives(
    text: str, keys: tuple[str, ...]
) -> None:
    expected = reference_stat_fields(text, keys)

    actual = cgroups.stat_fields(text, keys)

    assert expected == actual


_meminfo_text = st.lists(
    st.tuples(
        st.sampled_from(
            ["MemTotal", "MemAvailable", "SwapTotal", "SwapFree", "MemFree", " MemTotal "]
        ),
        st.sampled_from([": 100 kB", ":   7", ": x kB", ":", " 5 kB", ": 3 MB"]),
        _breaks,
    )
).map(lambda lines: "".join(f"{n}{v}{b}" for n, v, b in lines))


@given(_meminfo_text)
def test_meminfo_restricted_to_keys_is_the_full_parse_restricted(text: str) -> None:
    keys = frozenset(("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"))
    expected = {k: v for k, v in kernfs.parse_meminfo(text).items() if k in keys}

    actual = kernfs.parse_meminfo(text, keys)

    assert expected == actual


@given(st.lists(st.sampled_from(["1", "42", "007", "²", "x", "", "123456789012345678901"])))
def test_cgroup_procs_parse_skips_what_is_not_a_pid(tokens: list[str]) -> None:
    text = "".join(f"{t}\n" for t in tokens)
    expected = tuple(p for t in text.split() if (p := kernfs.counter(t)) is not None)

    actual = cgroups.parse_procs(text)

    assert expected == actual


def v2_unit(tmp_path: Path, subs: tuple[str, ...]) -> ProcFs:
    unit = tmp_path / "cg" / "system.slice" / "foo.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.procs").write_text("10\n11\n")
    for i, sub in enumerate(subs):
        (unit / sub).mkdir()
        (unit / sub / "cgroup.procs").write_text(f"{20 + i}\n")
    return ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", tmp_path / "cg", tmp_path / "cg"))


def test_a_unit_without_sub_cgroups_is_read_without_a_directory_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = v2_unit(tmp_path, ())
    cgroup = fs.locate_unit("foo.service", "system", 0)
    assert cgroup is not None
    scans: list[object] = []
    real = os.scandir

    def scanning(path: str) -> Iterator[os.DirEntry[str]]:
        scans.append(path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scanning)

    pids = fs.unit_pids(cgroup)

    assert ((10, 11), []) == (pids, scans)


def test_a_unit_with_sub_cgroups_still_counts_their_processes(tmp_path: Path) -> None:
    fs = v2_unit(tmp_path, ("a", "b"))
    cgroup = fs.locate_unit("foo.service", "system", 0)
    assert cgroup is not None

    pids = fs.unit_pids(cgroup)

    assert [10, 11, 20, 21] == sorted(pids)


def test_an_unchanged_gpu_process_is_the_same_value_and_a_changed_one_is_new(
    fake_nvml: FakeNvmlState,
) -> None:
    child = subprocess.Popen(["sleep", "60"])
    time.sleep(0.05)  # older than the NVML list by more than one clock tick (10 ms)
    fake_nvml.write([FakeGpu(UUID, mib(16000), processes=(FakeProcess(child.pid, mib(100)),))])
    sampler = Sampler(NvmlSource(), ProcFs())
    config = cfg.parse("", "<test>")
    try:
        first = sampler.sample(config, 0).gpus[0].processes[0]
        second = sampler.sample(config, S).gpus[0].processes[0]
        fake_nvml.write([FakeGpu(UUID, mib(16000), processes=(FakeProcess(child.pid, mib(300)),))])
        third = sampler.sample(config, 2 * S).gpus[0].processes[0]

        assert first is second
        assert (mib(300), first.owner, first.name) == (third.used_bytes, third.owner, third.name)
    finally:
        child.kill()
        child.wait()
        sampler.close()


def test_a_reload_that_adds_a_container_tenant_opens_the_engine_api(
    tmp_path: Path, fake_nvml: FakeNvmlState
) -> None:
    """Whether the config has container tenants is kept per Config object: a
    reloaded config (a new object) is looked at afresh."""
    from tests.sources.test_container_sources import CONFIG, UNITS_ONLY, engine_with, world

    fake_nvml.write([FakeGpu(UUID, mib(16000))])
    opened: list[str] = []

    def engine(socket: str):  # type: ignore[no-untyped-def]
        opened.append(socket)
        return engine_with()

    sampler = Sampler(NvmlSource(), world(tmp_path), engine=engine)
    try:
        sampler.sample(UNITS_ONLY, 0)
        sampler.sample(UNITS_ONLY, S)
        before = list(opened)

        sampler.sample(CONFIG, 2 * S)

        assert ([], [CONFIG.containers.socket]) == (before, opened)
    finally:
        sampler.close()


def test_the_tenants_keys_are_not_parsed_again_each_tick(
    tmp_path: Path, fake_nvml: FakeNvmlState, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vramwatch.model import TenantId

    fake_nvml.write([FakeGpu(UUID, mib(16000))])
    fs = v2_unit(tmp_path, ())
    config = cfg.parse('[[tenant]]\nunit = "foo.service"\nvram = "1GiB"\n', "<test>")
    sampler = Sampler(NvmlSource(), fs)
    parsed: list[str] = []
    real = TenantId.from_key

    def parsing(key: str, *args: Any) -> TenantId:
        parsed.append(key)
        return real(key, *args)

    try:
        sampler.sample(config, 0)
        monkeypatch.setattr(TenantId, "from_key", staticmethod(parsing))

        sampler.sample(config, S)
        sampler.sample(config, 2 * S)

        assert [] == parsed
    finally:
        sampler.close()
