"""sources/procfs.py on fixture /proc and cgroup trees under tmp_path."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from vramwatch.model import HostSample, Owner
from vramwatch.sources import procfs
from vramwatch.sources.procfs import PAGE_SIZE, CgroupLayout, ProcFs

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


# /proc/PID/cgroup ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (v2(SYSTEM_FOO), Owner(SYSTEM_FOO, "foo.service", "system")),
        (v1(SYSTEM_FOO), Owner(SYSTEM_FOO, "foo.service", "system")),
        # hybrid: systemd tracks units in name=systemd; the v2 line is "/" or a mirror
        (v1(SYSTEM_FOO, unified="/"), Owner(SYSTEM_FOO, "foo.service", "system")),
        (v1(SYSTEM_FOO, unified=SYSTEM_FOO), Owner(SYSTEM_FOO, "foo.service", "system")),
        (v2(USER_X), Owner(USER_X, "x.service", "user@1000")),
        (v1(USER_X), Owner(USER_X, "x.service", "user@1000")),
        (
            v2("/user.slice/user-1000.slice/user@1000.service/init.scope"),
            Owner(
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                "init.scope",
                "user@1000",
            ),
        ),
        # no user unit can be named: the process is the system unit user@1000.service's
        (
            v2("/user.slice/user-1000.slice/user@1000.service/app.slice"),
            Owner(
                "/user.slice/user-1000.slice/user@1000.service/app.slice",
                "user@1000.service",
                "system",
            ),
        ),
        (
            v2("/user.slice/user-1000.slice/user@1000.service/worker/3"),
            Owner(
                "/user.slice/user-1000.slice/user@1000.service/worker/3",
                "user@1000.service",
                "system",
            ),
        ),
        # the user manager itself is a system unit
        (
            v2("/user.slice/user-1000.slice/user@1000.service"),
            Owner("/user.slice/user-1000.slice/user@1000.service", "user@1000.service", "system"),
        ),
        (
            v2("/user.slice/user-1000.slice/session-3.scope"),
            Owner("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", "system"),
        ),
        (
            v2("/system.slice/docker-4f3c2a.scope"),
            Owner("/system.slice/docker-4f3c2a.scope", "docker-4f3c2a.scope", "system"),
        ),
        # the first unit below the slices owns every cgroup below it, whatever its name
        # (systemd's cg_path_get_unit): a Delegate=yes unit's payload is its own
        (v2(SYSTEM_FOO + "/worker/3"), Owner(SYSTEM_FOO + "/worker/3", "foo.service", "system")),
        (
            v2(SYSTEM_FOO + "/payload.scope"),
            Owner(SYSTEM_FOO + "/payload.scope", "foo.service", "system"),
        ),
        (
            v2("/system.slice/batch.service/ollama.service"),
            Owner("/system.slice/batch.service/ollama.service", "batch.service", "system"),
        ),
        (
            v1("/system.slice/batch.service/ollama.service"),
            Owner("/system.slice/batch.service/ollama.service", "batch.service", "system"),
        ),
        # a user manager below a delegated unit is that unit's payload, no user manager
        (
            v2("/system.slice/batch.service/user@1000.service/app.slice/x.service"),
            Owner(
                "/system.slice/batch.service/user@1000.service/app.slice/x.service",
                "batch.service",
                "system",
            ),
        ),
        # an nspawn container's whole tree, its own slices and services included
        (
            v2("/machine.slice/systemd-nspawn@c1.service/payload/system.slice/ollama.service"),
            Owner(
                "/machine.slice/systemd-nspawn@c1.service/payload/system.slice/ollama.service",
                "systemd-nspawn@c1.service",
                "system",
            ),
        ),
        # every unit type systemd puts processes in, not only services and scopes
        (
            v2("/system.slice/sshd.socket"),
            Owner("/system.slice/sshd.socket", "sshd.socket", "system"),
        ),
        (
            v2("/system.slice/mnt-data.mount"),
            Owner("/system.slice/mnt-data.mount", "mnt-data.mount", "system"),
        ),
        (
            v2("/system.slice/dev-sda2.swap"),
            Owner("/system.slice/dev-sda2.swap", "dev-sda2.swap", "system"),
        ),
        # a user unit below its own delegated sub-cgroups and user slices
        (
            v2(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/"
                "app-gnome.slice/llm.service/runner/ollama.service"
            ),
            Owner(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/"
                "app-gnome.slice/llm.service/runner/ollama.service",
                "llm.service",
                "user@1000",
            ),
        ),
        # a first component that is no slice and no unit: systemd names no unit
        (v2("/kthreadd"), Owner("/kthreadd", None, "system")),
        (
            v2("/docker/4f3c2a/system.slice/foo.service"),
            Owner("/docker/4f3c2a/system.slice/foo.service", None, "system"),
        ),
        (
            v2("/system.slice/foo@.service"),  # a template is no unit
            Owner("/system.slice/foo@.service", None, "system"),
        ),
        (
            v2("/system.slice/worker@2.service"),
            Owner("/system.slice/worker@2.service", "worker@2.service", "system"),
        ),
        (v2(SYSTEM_FOO + " (deleted)"), Owner(SYSTEM_FOO, "foo.service", "system")),
        (v2("/"), Owner("/", None, "system")),
        (v2("/init.scope"), Owner("/init.scope", "init.scope", "system")),
        (
            v2("/kubepods.slice/kubepods-pod1.slice"),
            Owner("/kubepods.slice/kubepods-pod1.slice", None, "system"),
        ),
        # colons are legal in unit names and cgroup paths
        (
            v2("/system.slice/a:b.service"),
            Owner("/system.slice/a:b.service", "a:b.service", "system"),
        ),
        ("", None),
        ("12:memory:/system.slice/foo.service\n", None),
    ],
)
def test_parse_proc_cgroup_finds_the_innermost_unit_and_its_manager(
    text: str, expected: Owner | None
) -> None:
    actual = procfs.parse_proc_cgroup(text)

    assert expected == actual


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (Owner(SYSTEM_FOO, "foo.service", "system"), "foo.service"),
        (Owner("/", None, "system"), "cgroup /"),
    ],
)
def test_owner_label_is_the_unit_or_the_cgroup(owner: Owner, expected: str) -> None:
    assert expected == owner.label()


def test_parse_proc_cgroup_unescapes_systemd_cgroup_names() -> None:
    """systemd escapes unit cgroups that start with "_" or "." or a controller name."""
    actual = procfs.parse_proc_cgroup(v2("/system.slice/_cpu.service"))

    assert "cpu.service" == actual.unit  # type: ignore[union-attr]


def test_parse_proc_cgroup_unescapes_slices_before_skipping_them() -> None:
    actual = procfs.parse_proc_cgroup(v2("/_cpu.slice/_io.service/x.service"))

    assert Owner("/_cpu.slice/_io.service/x.service", "io.service", "system") == actual


@pytest.mark.parametrize(
    ("owner", "manager", "expected"),
    [
        (Owner(SYSTEM_FOO, "foo.service", "system"), "system", "foo.service"),
        (Owner(SYSTEM_FOO, "foo.service", "system"), "user@1000", None),
        # on the system manager every process of a user manager is user@UID.service's
        (Owner(USER_X, "x.service", "user@1000"), "system", "user@1000.service"),
        (Owner(USER_X, "x.service", "user@1000"), "user@1000", "x.service"),
        (Owner(USER_X, "x.service", "user@1000"), "user@1001", None),
        (Owner("/", None, "system"), "system", None),
    ],
)
def test_owner_unit_for_a_manager(owner: Owner, manager: str, expected: str | None) -> None:
    assert expected == owner.unit_for(manager)


# meminfo and PSI --------------------------------------------------------------------

MEMINFO = """\
MemTotal:       65772132 kB
MemFree:         1234567 kB
MemAvailable:    3145728 kB
Buffers:          123456 kB
SwapTotal:       8388604 kB
SwapFree:        8388000 kB
HugePages_Total:       4
Hugepagesize:       2048 kB
Garbage line without a colon
Weird:          notanumber kB
"""

PSI = """\
some avg10=1.25 avg60=0.50 avg300=0.10 total=123456
full avg10=0.40 avg60=0.20 avg300=0.05 total=65432
"""


def test_parse_meminfo_gives_bytes_by_field() -> None:
    expected = {
        "MemTotal": 65772132 * KB,
        "MemFree": 1234567 * KB,
        "MemAvailable": 3145728 * KB,
        "Buffers": 123456 * KB,
        "SwapTotal": 8388604 * KB,
        "SwapFree": 8388000 * KB,
        "HugePages_Total": 4,
        "Hugepagesize": 2048 * KB,
    }

    actual = procfs.parse_meminfo(MEMINFO)

    assert expected == actual


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PSI, (1.25, 0.40)),
        ("some avg10=3.00 avg60=0.00 avg300=0.00 total=1\n", (3.0, None)),  # pre-5.x: no "full"
        ("", (None, None)),
        ("some total=1\n", (None, None)),
    ],
)
def test_parse_psi_gives_some_and_full_avg10(
    text: str, expected: tuple[float | None, float | None]
) -> None:
    actual = procfs.parse_psi(text)

    assert expected == actual


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
@pytest.mark.parametrize(
    ("unit", "manager", "expected"),
    [
        ("foo.service", "system", SYSTEM_FOO),
        ("x.service", "user@1000", USER_X),
        ("init.scope", "system", "/init.scope"),
        ("session-3.scope", "system", "/user.slice/user-1000.slice/session-3.scope"),
        ("docker-4f3c2a.scope", "system", "/system.slice/docker-4f3c2a.scope"),
        ("nested.service", "system", "/system.slice/a.slice/a-b.slice/nested.service"),
        ("x.service", "system", None),  # only the user manager runs x.service
        ("foo.service", "user@1000", None),  # only the system manager runs foo.service
        ("x.service", "user@1001", None),
        ("worker", "system", None),  # a sub-cgroup of foo.service, not a unit
        ("absent.service", "system", None),
        # a delegated unit's sub-cgroups are its payload, never a unit of their own
        ("ollama.service", "system", None),
        ("batch.service", "system", "/system.slice/batch.service"),
        ("y.service", "user@1000", None),  # a user manager inside batch.service is no manager
        # the user manager and a container are system units owning their whole tree
        ("user@1000.service", "system", "/user.slice/user-1000.slice/user@1000.service"),
        ("systemd-nspawn@c1.service", "system", "/machine.slice/systemd-nspawn@c1.service"),
        ("inner.service", "system", None),
        ("sshd.socket", "system", "/system.slice/sshd.socket"),
    ],
)
def test_locate_unit_finds_system_and_user_units(
    tmp_path: Path, make: Any, unit: str, manager: str, expected: str | None
) -> None:
    fs = make(tmp_path)
    root = fs.layout.tracking
    for cgroup in (
        SYSTEM_FOO,
        SYSTEM_FOO + "/worker",
        USER_X,
        "/init.scope",
        "/user.slice/user-1000.slice/session-3.scope",
        "/user.slice/user-1001.slice/user@1001.service/app.slice",
        "/system.slice/docker-4f3c2a.scope",
        "/system.slice/a.slice/a-b.slice/nested.service",
        "/system.slice/batch.service/ollama.service",
        "/system.slice/batch.service/user@1000.service/app.slice/y.service",
        "/machine.slice/systemd-nspawn@c1.service/payload/system.slice/inner.service",
        "/system.slice/sshd.socket",
    ):
        unit_dir(root, cgroup)

    actual = fs.locate_unit(unit, manager, now_ns=0)

    assert expected == actual


def test_locate_unit_finds_a_user_manager_under_a_plain_directory(tmp_path: Path) -> None:
    """Test beds and containers put user@UID.service below a directory that is no slice."""
    fs = v2_fs(tmp_path)
    unit_dir(fs.layout.tracking, "/sandbox/payload/user@1000.service/app.slice/x.service")

    actual = fs.locate_unit("x.service", "user@1000", now_ns=0)

    assert "/sandbox/payload/user@1000.service/app.slice/x.service" == actual


def test_locate_unit_retries_a_missing_unit_only_every_ten_seconds(tmp_path: Path) -> None:
    fs = v2_fs(tmp_path)
    root = fs.layout.tracking
    (root / "system.slice").mkdir()

    first = fs.locate_unit("foo.service", "system", now_ns=0)
    unit_dir(root, SYSTEM_FOO)  # the unit starts
    soon = fs.locate_unit("foo.service", "system", now_ns=procfs.LOCATE_RETRY_NS - 1)
    later = fs.locate_unit("foo.service", "system", now_ns=procfs.LOCATE_RETRY_NS)

    assert (None, None, SYSTEM_FOO) == (first, soon, later)


def test_locate_unit_follows_a_unit_that_moved_and_forget_drops_the_cache(tmp_path: Path) -> None:
    fs = v2_fs(tmp_path)
    root = fs.layout.tracking
    old = unit_dir(root, SYSTEM_FOO)
    assert SYSTEM_FOO == fs.locate_unit("foo.service", "system", now_ns=0)

    old.joinpath("cgroup.procs").unlink()
    old.rmdir()
    unit_dir(root, "/system.slice/app.slice/foo.service")
    moved = fs.locate_unit("foo.service", "system", now_ns=1)
    fs.forget("foo.service", "system")
    again = fs.locate_unit("foo.service", "system", now_ns=2)

    assert ("/system.slice/app.slice/foo.service",) * 2 == (moved, again)


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


# CgroupLayout.detect ----------------------------------------------------------------------


def test_detect_pure_v2(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "cpuset cpu io memory pids\n")

    actual = CgroupLayout.detect(tmp_path)

    assert CgroupLayout("v2", tmp_path, tmp_path) == actual


def test_detect_hybrid(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    (tmp_path / "memory").mkdir()
    write(tmp_path / "unified" / "cgroup.controllers", "")

    actual = CgroupLayout.detect(tmp_path)

    expected = CgroupLayout(
        "hybrid", tmp_path / "systemd", tmp_path / "unified", tmp_path / "memory"
    )
    assert expected == actual


def test_detect_legacy_v1(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    (tmp_path / "memory").mkdir()

    actual = CgroupLayout.detect(tmp_path)

    assert CgroupLayout("v1", tmp_path / "systemd", None, tmp_path / "memory") == actual


def test_detect_falls_back_to_v2_on_an_unknown_tree(tmp_path: Path) -> None:
    actual = CgroupLayout.detect(tmp_path)

    assert CgroupLayout("v2", tmp_path, tmp_path) == actual


def test_procfs_detects_the_layout_of_its_cgroup_root(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()

    actual = ProcFs(tmp_path / "proc", cgroup_root=tmp_path).layout

    assert CgroupLayout("v1", tmp_path / "systemd", None) == actual


def test_on_a_v2_host_the_0_line_wins_over_a_stray_name_systemd_hierarchy() -> None:
    """LXC and old systemd containers mount name=systemd on v2 hosts; it says "/" for all."""
    text = "9:name=systemd:/\n0::/system.slice/llama.service\n"

    unified = procfs.parse_proc_cgroup(text, unified=True)
    hybrid = procfs.parse_proc_cgroup(text)

    assert "llama.service" == unified.unit  # type: ignore[union-attr]
    assert None is hybrid.unit  # type: ignore[union-attr]


# hostile contents (found by tests/fuzz/procfs_grammar.py) --------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MemTotal: ² kB\nMemAvailable: 5 kB\n", {"MemAvailable": 5 * KB}),  # isdigit() took it
        ("MemTotal: ١٠ kB\n", {}),
        ("MemTotal: " + "9" * 5000 + " kB\n", {}),  # int() refuses over 4300 digits
        ("MemTotal: 18446744073709551615\n", {"MemTotal": 2**64 - 1}),
    ],
)
def test_parse_meminfo_skips_what_is_not_a_counter(text: str, expected: dict[str, int]) -> None:
    actual = procfs.parse_meminfo(text)

    assert expected == actual


@pytest.mark.parametrize(
    "text",
    ["some avg10=x avg60=0\nfull avg10= avg60=0\n", "some avg10=ýµ\n", "full avg10=1e\n"],
)
def test_parse_psi_skips_a_value_that_is_not_a_number(text: str) -> None:
    actual = procfs.parse_psi(text)

    assert (None, None) == actual


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


def test_a_file_read_short_of_half_a_page_takes_one_read_and_a_longer_one_reads_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seq_file stops a read short where its page-sized buffer filled with whole
    records (cgroup.procs, PID by PID): such a read goes on to the end; a read
    shorter than half a page is the whole file (issue 17: one syscall per file)."""
    small = tmp_path / "memory.stat"
    small.write_text("anon 4096\nshmem 0\n")
    # A cgroup.procs as seq_file hands it out: a page less a partial record, the rest.
    pids = "".join(f"{pid}\n" for pid in range(100_000, 100_000 + procfs.PAGE_SIZE // 7 + 10))
    cut = pids.rfind("\n", 0, procfs.PAGE_SIZE) + 1
    reads: list[int] = []
    real_read, real_pread = os.read, os.pread

    def read(fd: int, n: int) -> bytes:
        reads.append(fd)
        return real_read(fd, n)

    def seq_pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(fd)
        data = pids.encode()
        return data[offset:cut] if offset < cut else data[offset : offset + n]

    monkeypatch.setattr(os, "read", read)
    text = procfs._read(small)
    one = len(reads)
    monkeypatch.setattr(os, "pread", seq_pread)
    whole = procfs._pread(0)
    monkeypatch.setattr(os, "pread", real_pread)

    assert ("anon 4096\nshmem 0\n", 1) == (text, one)
    assert (pids, 2) == (whole, len(reads) - one)  # a page cut at a record, then the rest
