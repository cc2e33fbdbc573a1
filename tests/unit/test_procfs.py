"""sources/procfs.py (ProcFs, what the sampler reads through) on fixture /proc and
cgroup trees under tmp_path; the fixture helpers of tests/unit/test_cgroups.py too."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_kernfs import MEMINFO, PSI
from vramwatch.model import HostSample, Owner
from vramwatch.sources.cgroups import CgroupLayout
from vramwatch.sources.kernfs import PAGE_SIZE
from vramwatch.sources.procfs import ProcFs

KB = 1024
SYSTEM_FOO = "/system.slice/foo.service"
USER_X = "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def status(anon_kib: int, shmem_kib: int = 0, file_kib: int = 0) -> str:
    """/proc/PID/status as the kernel writes it (the fields around the Rss* ones)."""
    return (
        "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  900000 kB\n"
        f"VmRSS:\t{anon_kib + shmem_kib + file_kib} kB\nRssAnon:\t{anon_kib} kB\n"
        f"RssFile:\t{file_kib} kB\nRssShmem:\t{shmem_kib} kB\nVmData:\t  400000 kB\n"
        "Threads:\t4\n"
    )


def add_pid(
    proc: Path,
    pid: int,
    cgroup: str | None = None,
    comm: str | None = "python3\n",
    rss_pages: int | None = 25,
    shmem_kib: int = 0,
    file_kib: int = 0,
) -> None:
    """A /proc/PID directory; a file left as None is missing (the process is exiting).

    ``rss_pages`` is its anonymous memory, in pages."""
    (proc / str(pid)).mkdir(parents=True)
    if cgroup is not None:
        write(proc / str(pid) / "cgroup", cgroup)
    if comm is not None:
        write(proc / str(pid) / "comm", comm)
    if rss_pages is not None:
        write(proc / str(pid) / "status", status(rss_pages * PAGE_SIZE // KB, shmem_kib, file_kib))


def deny_reads(monkeypatch: pytest.MonkeyPatch, under: Path, error: int = errno.EACCES) -> None:
    """Opening anything below ``under`` fails with ``error``, as under hidepid=1 or
    ProtectProc=invisible for another user's process (EACCES), or a dying disk (EIO).
    The tests run as root, which no file mode stops."""
    real_open = os.open
    prefix = os.fspath(under) + "/"

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path).startswith(prefix):
            raise OSError(error, os.strerror(error), os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


def v2(path: str) -> str:
    return f"0::{path}\n"


def v1(path: str, unified: str | None = None) -> str:
    """cgroup v1 with the name=systemd hierarchy; with ``unified``, a hybrid host."""
    lines = [
        f"12:memory:{path}",
        "11:cpu,cpuacct:/",
        f"1:name=systemd:{path}",
    ]
    if unified is not None:
        lines.append(f"0::{unified}")
    return "\n".join(lines) + "\n"


def v2_fs(tmp_path: Path) -> ProcFs:
    root = tmp_path / "cgroup"
    root.mkdir()
    return ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", root, root))


def v1_fs(tmp_path: Path) -> ProcFs:
    root = tmp_path / "cgroup"
    (root / "systemd").mkdir(parents=True)
    return ProcFs(tmp_path / "proc", layout=CgroupLayout("v1", root / "systemd", None))


# host ------------------------------------------------------------------------------------


def test_host_reads_meminfo_and_pressure(tmp_path: Path) -> None:
    write(tmp_path / "proc" / "meminfo", MEMINFO)
    write(tmp_path / "proc" / "pressure" / "memory", PSI)
    expected = HostSample(
        mem_total_bytes=65772132 * KB,
        mem_available_bytes=3145728 * KB,
        swap_total_bytes=8388604 * KB,
        swap_free_bytes=8388000 * KB,
        psi_some_avg10=1.25,
        psi_full_avg10=0.40,
    )

    actual = v2_fs(tmp_path).host()

    assert expected == actual
    assert actual.ok


def test_host_without_pressure_has_no_psi(tmp_path: Path) -> None:
    write(tmp_path / "proc" / "meminfo", "MemTotal: 1000 kB\nMemAvailable: 500 kB\n")

    actual = v2_fs(tmp_path).host()

    assert HostSample(1000 * KB, 500 * KB) == actual


@pytest.mark.parametrize(
    ("meminfo", "expected_error"),
    [
        (None, "cannot read {proc}/meminfo"),
        ("MemTotal: 1000 kB\nMemFree: 500 kB\n", "MemTotal/MemAvailable missing from meminfo"),
        ("", "MemTotal/MemAvailable missing from meminfo"),
    ],
)
def test_host_reports_what_it_cannot_read_as_an_error_not_an_exception(
    tmp_path: Path, meminfo: str | None, expected_error: str
) -> None:
    (tmp_path / "proc").mkdir()
    if meminfo is not None:
        write(tmp_path / "proc" / "meminfo", meminfo)

    actual = v2_fs(tmp_path).host()

    assert HostSample(None, None, error=expected_error.format(proc=tmp_path / "proc")) == actual
    assert not actual.ok


def test_host_with_psi_disabled_by_the_kernel_has_no_psi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels built with CONFIG_PSI_DEFAULT_DISABLED answer reads with EOPNOTSUPP."""
    write(tmp_path / "proc" / "meminfo", "MemTotal: 1000 kB\nMemAvailable: 500 kB\n")
    write(tmp_path / "proc" / "pressure" / "memory", PSI)
    real_read = os.read
    psi = os.fspath(tmp_path / "proc" / "pressure" / "memory")

    def psi_disabled_read(fd: int, n: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}") == psi:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", psi_disabled_read)

    actual = v2_fs(tmp_path).host()

    assert HostSample(1000 * KB, 500 * KB) == actual


# processes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("comm", "expected"),
    [
        ("python3\n", "python3"),
        ("foo) Z\n", "foo) Z"),  # would break a naive /proc/PID/stat parser
        ("a\nb\n", "a\nb"),
        ("\n", ""),
        (None, ""),  # exited
    ],
)
def test_comm_keeps_hostile_names_as_they_are(
    tmp_path: Path, comm: str | None, expected: str
) -> None:
    add_pid(tmp_path / "proc", 42, v2(SYSTEM_FOO), comm=comm)

    actual = v2_fs(tmp_path).comm(42)

    assert expected == actual


def test_a_hostile_comm_does_not_change_attribution(tmp_path: Path) -> None:
    add_pid(tmp_path / "proc", 42, v2(SYSTEM_FOO), comm="x) R 1 2 3\n0::/evil.service\n")

    actual = v2_fs(tmp_path).owner(42)

    assert Owner(SYSTEM_FOO, "foo.service", "system") == actual


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a mapped model file (RssFile) is page cache the kernel can drop: not counted
        (status(anon_kib=1000, shmem_kib=24, file_kib=4_000_000), 1024 * KB),
        ("Name:\tkthreadd\nState:\tS (sleeping)\n", 0),  # a kernel thread: no Rss*
        ("", 0),
        ("RssAnon:\t\n", 0),
    ],
)
def test_rss_bytes_is_anonymous_plus_shmem_from_status(
    tmp_path: Path, text: str, expected: int
) -> None:
    write(tmp_path / "proc" / "42" / "status", text)

    actual = v2_fs(tmp_path).rss_bytes(42)

    assert expected == actual


def test_a_pid_that_vanished_reads_as_nothing(tmp_path: Path) -> None:
    fs = v2_fs(tmp_path)
    (tmp_path / "proc" / "42").mkdir(parents=True)

    assert (None, "", None) == (fs.owner(42), fs.comm(42), fs.rss_bytes(42))
    assert (None, "", None) == (fs.owner(43), fs.comm(43), fs.rss_bytes(43))


def test_pids_lists_numeric_entries_only(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid in (1, 42, 1000):
        add_pid(proc, pid, v2("/"))
    write(proc / "meminfo", MEMINFO)
    (proc / "self").mkdir()
    (proc / "sys").mkdir()

    actual = sorted(v2_fs(tmp_path).pids())

    assert [1, 42, 1000] == actual


def test_pids_of_a_missing_proc_is_empty(tmp_path: Path) -> None:
    actual = list(ProcFs(tmp_path / "nope", layout=CgroupLayout("v2", tmp_path, tmp_path)).pids())

    assert [] == actual


def test_top_ram_owners_sums_rss_per_unit_and_skips_vanished_pids(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    add_pid(proc, 1, v2("/init.scope"), rss_pages=10)
    add_pid(proc, 2, v2(SYSTEM_FOO), rss_pages=100)
    add_pid(proc, 3, v2(SYSTEM_FOO + "/worker"), rss_pages=50)
    add_pid(proc, 4, v2(USER_X), rss_pages=120)
    add_pid(proc, 5, v2("/"), rss_pages=7)
    add_pid(proc, 6, None, rss_pages=999)  # exited: no cgroup file
    add_pid(proc, 7, v2(SYSTEM_FOO), rss_pages=None)  # exited: no statm
    add_pid(proc, 8, v2("/kthreadd"), rss_pages=0)  # kernel thread
    expected = [
        ("foo.service", 150 * PAGE_SIZE),
        ("x.service (user@1000)", 120 * PAGE_SIZE),
        ("init.scope", 10 * PAGE_SIZE),
        ("cgroup /", 7 * PAGE_SIZE),
    ]

    actual = v2_fs(tmp_path).top_ram_owners()

    assert expected == actual


@pytest.mark.parametrize("error", [errno.EACCES, errno.EIO], ids=["EACCES", "EIO"])
def test_top_ram_owners_leaves_out_only_a_process_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """hidepid=1, ProtectProc=invisible, or running as the vramwatch user: one
    process's status or cgroup refuses reads (issue 10, item 7)."""
    proc = tmp_path / "proc"
    add_pid(proc, 2, v2(SYSTEM_FOO), rss_pages=100)
    add_pid(proc, 3, v2("/system.slice/secret.service"), rss_pages=500)
    add_pid(proc, 4, v2(USER_X), rss_pages=120)
    deny_reads(monkeypatch, proc / "3", error)

    actual = v2_fs(tmp_path).top_ram_owners()

    assert [("x.service (user@1000)", 120 * PAGE_SIZE), ("foo.service", 100 * PAGE_SIZE)] == actual


def test_top_ram_owners_of_an_unlistable_proc_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "proc").mkdir()
    real_scandir = os.scandir

    def refusing_scandir(path: Any) -> Any:
        if os.fspath(path) == os.fspath(tmp_path / "proc"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)

    actual = v2_fs(tmp_path).top_ram_owners()

    assert [] == actual


def test_top_ram_owners_keeps_a_user_unit_apart_from_the_system_unit_of_its_name(
    tmp_path: Path,
) -> None:
    """Issue 10, item 12: a user's llm.service is not the system's llm.service."""
    proc = tmp_path / "proc"
    add_pid(proc, 2, v2("/system.slice/llm.service"), rss_pages=300)
    add_pid(proc, 3, v2(USER_X.replace("x.service", "llm.service")), rss_pages=200)
    other_user = USER_X.replace("1000", "1001").replace("x.service", "llm.service")
    add_pid(proc, 4, v2(other_user), rss_pages=100)

    actual = v2_fs(tmp_path).top_ram_owners()

    assert [
        ("llm.service", 300 * PAGE_SIZE),
        ("llm.service (user@1000)", 200 * PAGE_SIZE),
        ("llm.service (user@1001)", 100 * PAGE_SIZE),
    ] == actual


def test_top_ram_owners_counts_no_file_backed_memory(tmp_path: Path) -> None:
    """A server that maps an 8 GiB model file holds page cache the kernel can drop."""
    proc = tmp_path / "proc"
    add_pid(proc, 2, v2("/system.slice/llm.service"), rss_pages=10, file_kib=8 * 2**20)
    add_pid(proc, 3, v2(SYSTEM_FOO), rss_pages=20)

    actual = v2_fs(tmp_path).top_ram_owners()

    assert [("foo.service", 20 * PAGE_SIZE), ("llm.service", 10 * PAGE_SIZE)] == actual


def test_host_of_an_unreadable_meminfo_is_an_error_not_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "proc" / "meminfo", "MemTotal: 1000 kB\nMemAvailable: 500 kB\n")
    deny_reads(monkeypatch, tmp_path / "proc", errno.EIO)

    actual = v2_fs(tmp_path).host()

    assert (False, True) == (actual.ok, "Input/output error" in (actual.error or ""))


# units: locate, pids, RAM ---------------------------------------------------------------


def memory_stat_v2(anon: int, shmem: int, file: int = 0) -> str:
    """A cgroup v2 memory.stat (the first fields of a 6.x kernel's)."""
    return (
        f"anon {anon}\nfile {file}\nkernel 1048576\nkernel_stack 65536\npagetables 131072\n"
        f"sec_pagetables 0\npercpu 0\nsock 0\nvmalloc 0\nshmem {shmem}\n"
        f"file_mapped {file}\nfile_dirty 0\nanon_thp 0\ninactive_anon {anon}\n"
    )


def memory_stat_v1(rss: int, shmem: int, cache: int = 0) -> str:
    """A cgroup v1 memory.stat: its own counters, then the hierarchical total_* ones."""
    return (
        f"cache {cache}\nrss 4096\nrss_huge 0\nshmem 0\nmapped_file {cache}\n"
        "swap 0\nhierarchical_memory_limit 9223372036854771712\n"
        f"total_cache {cache}\ntotal_rss {rss}\ntotal_rss_huge 0\ntotal_shmem {shmem}\n"
        f"total_mapped_file {cache}\ntotal_swap 0\n"
    )


def unit_dir(root: Path, cgroup: str, procs: str = "", stat: str | None = None) -> Path:
    directory = root / cgroup.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    write(directory / "cgroup.procs", procs)
    if stat is not None:
        write(directory / "memory.stat", stat)
    return directory


@pytest.mark.parametrize("make", [v2_fs, v1_fs], ids=["v2", "v1"])
def test_unit_pids_include_every_sub_cgroup(tmp_path: Path, make: Any) -> None:
    fs = make(tmp_path)
    root = fs.layout.tracking
    unit_dir(root, SYSTEM_FOO, "10\n11\n")
    unit_dir(root, SYSTEM_FOO + "/worker", "12\n")
    unit_dir(root, SYSTEM_FOO + "/worker/deep", "13\n14\n")
    unit_dir(root, SYSTEM_FOO + "/empty", "")
    unit_dir(root, "/system.slice/bar.service", "99\n")

    actual = sorted(fs.unit_pids(SYSTEM_FOO))

    assert [10, 11, 12, 13, 14] == actual


def test_unit_pids_of_a_vanished_unit_is_empty(tmp_path: Path) -> None:
    actual = v2_fs(tmp_path).unit_pids(SYSTEM_FOO)

    assert () == actual


def test_a_cgroup_s_pids_are_read_as_it_is_now_whatever_locate_unit_read_before(
    tmp_path: Path,
) -> None:
    """Issue 24, item 6: locate_unit() kept what it read (the directory's link count:
    no sub-cgroup) for the next unit_pids() of that path to take, whoever called it
    and however much later. What it read is now in the value it returns; a cgroup
    asked for by its path is read as it is."""
    fs = v2_fs(tmp_path)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "10\n")
    fs.locate_unit("foo.service", "system", 0)  # found by a walk
    fs.locate_unit("foo.service", "system", 1, pids=False)  # found where it was: one stat
    unit_dir(fs.layout.tracking, SYSTEM_FOO + "/worker", "11\n")  # then a sub-cgroup

    actual = fs.unit_pids(SYSTEM_FOO)

    assert [10, 11] == sorted(actual)


def test_a_located_cgroup_is_read_with_what_locating_it_read_in_any_order(
    tmp_path: Path,
) -> None:
    """Two units located, then read the other way round: each value reads its own."""
    fs = v2_fs(tmp_path)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "10\n")
    unit_dir(fs.layout.tracking, SYSTEM_FOO + "/worker", "11\n")
    unit_dir(fs.layout.tracking, "/system.slice/bar.service", "20\n")
    for now in (0, 1):  # the second time, each is found where it was
        foo = fs.locate_unit("foo.service", "system", now)
        bar = fs.locate_unit("bar.service", "system", now)
    assert foo is not None and bar is not None

    actual = (fs.unit_pids(bar), sorted(fs.unit_pids(foo)))

    assert ((20,), [10, 11]) == actual


def test_unit_ram_on_v2_is_anon_plus_shmem_of_memory_stat(tmp_path: Path) -> None:
    """Page cache (a mapped model file) is not the unit's RAM: the kernel drops it."""
    fs = v2_fs(tmp_path)
    stat = memory_stat_v2(anon=700 * 2**20, shmem=2**30, file=8 * 2**30)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "10\n", stat=stat)
    add_pid(fs.proc, 10, v2(SYSTEM_FOO), rss_pages=1)

    actual = fs.unit_ram(SYSTEM_FOO, [10])

    assert (700 * 2**20 + 2**30, "memory.stat") == actual


def test_a_worker_pool_sharing_memory_reads_its_memory_cgroup_not_the_sum_per_worker(
    tmp_path: Path,
) -> None:
    """Four workers mapping one 2 GiB shared segment: the cgroup charges it once,
    where summing per process counts it four times (issue 10, item 11)."""
    fs = v2_fs(tmp_path)
    pids = [10, 11, 12, 13]
    real = 4 * 130 * 2**20 + 2 * 2**30
    stat = memory_stat_v2(anon=4 * 130 * 2**20, shmem=2 * 2**30, file=3 * 2**30)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "".join(f"{p}\n" for p in pids), stat=stat)
    for pid in pids:
        add_pid(
            fs.proc,
            pid,
            v2(SYSTEM_FOO),
            rss_pages=130 * 2**20 // PAGE_SIZE,
            shmem_kib=2 * 2**20,
            file_kib=3 * 2**20,
        )

    ram, source = fs.unit_ram(SYSTEM_FOO, pids)

    assert (real, "memory.stat") == (ram, source)


@pytest.mark.parametrize("make", [v2_fs, v1_fs], ids=["v2 without memory.stat", "v1"])
def test_unit_ram_without_a_memory_cgroup_is_anon_plus_shmem_of_its_processes(
    tmp_path: Path, make: Any
) -> None:
    """RssAnon + RssShmem from status; a PID that exited counts nothing; RssFile never."""
    fs = make(tmp_path)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "10\n11\n12\n")
    add_pid(fs.proc, 10, v1(SYSTEM_FOO), rss_pages=1000, file_kib=4 * 2**20)
    add_pid(fs.proc, 11, v1(SYSTEM_FOO), rss_pages=0, shmem_kib=24 * PAGE_SIZE // KB)
    add_pid(fs.proc, 12, v1(SYSTEM_FOO), rss_pages=None)

    actual = fs.unit_ram(SYSTEM_FOO, [10, 11, 12, 13])

    assert (1024 * PAGE_SIZE, "rss-anon+shmem") == actual


def test_unit_ram_on_hybrid_reads_the_unified_tree_when_it_has_memory_stat(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    fs = ProcFs(
        tmp_path / "proc",
        layout=CgroupLayout("hybrid", root / "systemd", root / "unified", root / "memory"),
    )
    unit_dir(root / "systemd", SYSTEM_FOO, "10\n")
    unit_dir(root / "unified", SYSTEM_FOO, "10\n", stat=memory_stat_v2(4096, 8192))
    unit_dir(root / "memory", SYSTEM_FOO, "10\n", stat=memory_stat_v1(1, 1))

    actual = fs.unit_ram(SYSTEM_FOO, [10])

    assert (12288, "memory.stat") == actual


@pytest.mark.parametrize("mode", ["hybrid", "v1"])
def test_unit_ram_on_v1_reads_total_rss_plus_total_shmem_of_the_memory_hierarchy(
    tmp_path: Path, mode: str
) -> None:
    """total_* are hierarchical: a delegated unit's sub-cgroups count; cache never."""
    root = tmp_path / "cgroup"
    unified = root / "unified" if mode == "hybrid" else None
    fs = ProcFs(
        tmp_path / "proc", layout=CgroupLayout(mode, root / "systemd", unified, root / "memory")
    )
    unit_dir(root / "systemd", SYSTEM_FOO, "10\n")
    if unified is not None:
        unit_dir(unified, SYSTEM_FOO, "10\n")  # no memory controller on v2: no memory.stat
    stat = memory_stat_v1(rss=3 * 2**30, shmem=2**30, cache=6 * 2**30)
    unit_dir(root / "memory", SYSTEM_FOO, "", stat=stat)
    add_pid(fs.proc, 10, v1(SYSTEM_FOO), rss_pages=1)

    actual = fs.unit_ram(SYSTEM_FOO, [10])

    assert (4 * 2**30, "memory.stat (v1)") == actual


def test_unit_ram_on_v1_without_the_units_memory_cgroup_sums_its_processes(
    tmp_path: Path,
) -> None:
    """systemd makes a v1 memory cgroup only for units with memory accounting on."""
    root = tmp_path / "cgroup"
    fs = ProcFs(
        tmp_path / "proc", layout=CgroupLayout("v1", root / "systemd", None, root / "memory")
    )
    unit_dir(root / "systemd", SYSTEM_FOO, "10\n")
    unit_dir(root / "memory", "/system.slice", "10\n", stat=memory_stat_v1(9 * 2**30, 0))
    add_pid(fs.proc, 10, v1(SYSTEM_FOO), rss_pages=3)

    actual = fs.unit_ram(SYSTEM_FOO, [10])

    assert (3 * PAGE_SIZE, "rss-anon+shmem") == actual


def test_an_unreadable_process_costs_only_itself_in_a_units_sum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = v1_fs(tmp_path)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "10\n11\n")
    add_pid(fs.proc, 10, v1(SYSTEM_FOO), rss_pages=5)
    add_pid(fs.proc, 11, v1(SYSTEM_FOO), rss_pages=7)
    deny_reads(monkeypatch, fs.proc / "11")

    actual = fs.unit_ram(SYSTEM_FOO, [10, 11])

    assert (5 * PAGE_SIZE, "rss-anon+shmem (partial)") == actual


def test_a_memory_stat_without_its_fields_is_unknown(tmp_path: Path) -> None:
    fs = v2_fs(tmp_path)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "10\n", stat="file 4096\n")
    add_pid(fs.proc, 10, v2(SYSTEM_FOO), rss_pages=1)

    actual = fs.unit_ram(SYSTEM_FOO, [10])

    assert (None, "") == actual


# the layout -----------------------------------------------------------------------------


def test_procfs_detects_the_layout_of_its_cgroup_root(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()

    actual = ProcFs(tmp_path / "proc", cgroup_root=tmp_path).layout

    assert CgroupLayout("v1", tmp_path / "systemd", None) == actual


# hostile contents (found by tests/fuzz/procfs_grammar.py) --------------------------


def test_garbage_status_cgroup_procs_and_memory_stat_are_unknown_not_errors(
    tmp_path: Path,
) -> None:
    """Unicode digits ("٣", "²" pass str.isdigit()), words and 5000-digit numbers."""
    fs = v2_fs(tmp_path)
    add_pid(tmp_path / "proc", 42, v2(SYSTEM_FOO), rss_pages=None)
    write(tmp_path / "proc" / "42" / "status", "RssAnon:\t²\tkB\nRssShmem:\tJ kB\n")
    unit = tmp_path / "cgroup" / "system.slice" / "foo.service"
    write(unit / "cgroup.procs", "42\n٣\nx\n" + "9" * 5000 + "\n")
    write(unit / "memory.stat", "anon " + "9" * 5000 + "\nshmem ٣\n")

    pids = fs.unit_pids(SYSTEM_FOO)
    ram = fs.unit_ram(SYSTEM_FOO, pids)

    assert ((42,), 0, (None, "")) == (pids, fs.rss_bytes(42), ram)


def deny(monkeypatch: pytest.MonkeyPatch, *suffixes: str) -> None:
    """os.open of paths ending in ``suffixes`` fails with EACCES (root ignores modes)."""
    real_open = os.open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(suffixes):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)


def test_an_unreadable_meminfo_is_a_host_error_not_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "proc" / "meminfo", "MemTotal: 1000 kB\nMemAvailable: 500 kB\n")
    fs = v2_fs(tmp_path)
    deny(monkeypatch, "meminfo")

    actual = fs.host()

    assert f"cannot read {tmp_path / 'proc' / 'meminfo'}: Permission denied" == actual.error


def test_an_unreadable_process_costs_only_that_process_in_top_ram_owners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hidepid or ProtectProc=invisible: the others are still counted."""
    fs = v2_fs(tmp_path)
    add_pid(tmp_path / "proc", 42, v2(SYSTEM_FOO), rss_pages=10)
    add_pid(tmp_path / "proc", 43, v2("/system.slice/bar.service"), rss_pages=20)
    deny(monkeypatch, "/43/cgroup")

    actual = fs.top_ram_owners()

    assert [("foo.service", 10 * PAGE_SIZE)] == actual
