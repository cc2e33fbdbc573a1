"""sources/procfs.py on fixture /proc and cgroup trees under tmp_path."""

from __future__ import annotations

import builtins
import errno
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


def add_pid(
    proc: Path,
    pid: int,
    cgroup: str | None = None,
    comm: str | None = "python3\n",
    rss_pages: int | None = 25,
) -> None:
    """A /proc/PID directory; a file left as None is missing (the process is exiting)."""
    (proc / str(pid)).mkdir(parents=True)
    if cgroup is not None:
        write(proc / str(pid) / "cgroup", cgroup)
    if comm is not None:
        write(proc / str(pid) / "comm", comm)
    if rss_pages is not None:
        write(proc / str(pid) / "statm", f"100000 {rss_pages} 50 10 0 2000 0\n")


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
        (
            v2("/user.slice/user-1000.slice/user@1000.service/app.slice"),
            Owner("/user.slice/user-1000.slice/user@1000.service/app.slice", None, "user@1000"),
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
        # a service's own sub-cgroups belong to it; a scope inside it is innermost
        (v2(SYSTEM_FOO + "/worker/3"), Owner(SYSTEM_FOO + "/worker/3", "foo.service", "system")),
        (
            v2(SYSTEM_FOO + "/payload.scope"),
            Owner(SYSTEM_FOO + "/payload.scope", "payload.scope", "system"),
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
    write(tmp_path / "proc" / "pressure" / "memory", "")
    real_open = builtins.open

    def psi_disabled_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("pressure/memory"):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(procfs, "open", psi_disabled_open, raising=False)

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
    ("statm", "expected"),
    [
        ("100000 25 50 10 0 2000 0\n", 25 * PAGE_SIZE),
        ("0 0 0 0 0 0 0\n", 0),  # a kernel thread
        ("", None),
        ("100000\n", None),
    ],
)
def test_rss_bytes_is_resident_pages_times_page_size(
    tmp_path: Path, statm: str, expected: int | None
) -> None:
    write(tmp_path / "proc" / "42" / "statm", statm)

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


# units: locate, pids, RAM ---------------------------------------------------------------


def unit_dir(root: Path, cgroup: str, procs: str = "", current: str | None = None) -> Path:
    directory = root / cgroup.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    write(directory / "cgroup.procs", procs)
    if current is not None:
        write(directory / "memory.current", current)
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


def test_unit_ram_on_v2_is_memory_current(tmp_path: Path) -> None:
    fs = v2_fs(tmp_path)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "10\n", current="734003200\n")
    add_pid(fs.proc, 10, v2(SYSTEM_FOO), rss_pages=1)

    actual = fs.unit_ram(SYSTEM_FOO, [10])

    assert (734003200, "memory.current") == actual


@pytest.mark.parametrize("make", [v2_fs, v1_fs], ids=["v2 without memory.current", "v1"])
def test_unit_ram_without_memory_current_is_summed_rss(tmp_path: Path, make: Any) -> None:
    """Summed RSS: pages from statm times PAGE_SIZE; a PID that exited counts nothing."""
    fs = make(tmp_path)
    unit_dir(fs.layout.tracking, SYSTEM_FOO, "10\n11\n12\n")
    add_pid(fs.proc, 10, v1(SYSTEM_FOO), rss_pages=1000)
    add_pid(fs.proc, 11, v1(SYSTEM_FOO), rss_pages=24)
    add_pid(fs.proc, 12, v1(SYSTEM_FOO), rss_pages=None)

    actual = fs.unit_ram(SYSTEM_FOO, [10, 11, 12, 13])

    assert (1024 * PAGE_SIZE, "rss") == actual


def test_unit_ram_on_hybrid_reads_the_unified_tree_when_it_has_memory_current(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    fs = ProcFs(
        tmp_path / "proc", layout=CgroupLayout("hybrid", root / "systemd", root / "unified")
    )
    unit_dir(root / "systemd", SYSTEM_FOO, "10\n")
    unit_dir(root / "unified", SYSTEM_FOO, "10\n", current="4096\n")

    actual = fs.unit_ram(SYSTEM_FOO, [10])

    assert (4096, "memory.current") == actual


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

    assert CgroupLayout("hybrid", tmp_path / "systemd", tmp_path / "unified") == actual


def test_detect_legacy_v1(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    (tmp_path / "memory").mkdir()

    actual = CgroupLayout.detect(tmp_path)

    assert CgroupLayout("v1", tmp_path / "systemd", None) == actual


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


def test_garbage_statm_cgroup_procs_and_memory_current_are_unknown_not_errors(
    tmp_path: Path,
) -> None:
    fs = v2_fs(tmp_path)
    add_pid(tmp_path / "proc", 42, v2(SYSTEM_FOO), rss_pages=None)
    write(tmp_path / "proc" / "42" / "statm", "100 J 5\n")
    unit = tmp_path / "cgroup" / "system.slice" / "foo.service"
    write(unit / "cgroup.procs", "42\n٣\nx\n" + "9" * 5000 + "\n")
    write(unit / "memory.current", "9" * 5000 + "\n")

    pids = fs.unit_pids(SYSTEM_FOO)
    ram = fs.unit_ram(SYSTEM_FOO, pids)

    assert ((42,), None, (0, "rss")) == (pids, fs.rss_bytes(42), ram)


def deny(monkeypatch: pytest.MonkeyPatch, *suffixes: str) -> None:
    """os.open of paths ending in ``suffixes`` fails with EACCES (root ignores modes)."""
    real_open = procfs.os.open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(suffixes):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(procfs.os, "open", refusing)


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
