"""sources/kernfs.py: reading kernel files whole, and the parsers of /proc's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vramwatch.sources import kernfs

KB = 1024

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

    actual = kernfs.parse_meminfo(MEMINFO)

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
    actual = kernfs.parse_psi(text)

    assert expected == actual


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
    actual = kernfs.parse_meminfo(text)

    assert expected == actual


@pytest.mark.parametrize(
    "text",
    ["some avg10=x avg60=0\nfull avg10= avg60=0\n", "some avg10=ýµ\n", "full avg10=1e\n"],
)
def test_parse_psi_skips_a_value_that_is_not_a_number(text: str) -> None:
    actual = kernfs.parse_psi(text)

    assert (None, None) == actual


# reading ------------------------------------------------------------------------------


def test_a_file_read_short_of_half_a_page_takes_one_read_and_a_longer_one_reads_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seq_file stops a read short where its page-sized buffer filled with whole
    records (cgroup.procs, PID by PID): such a read goes on to the end; a read
    shorter than half a page is the whole file (issue 17: one syscall per file)."""
    small = tmp_path / "memory.stat"
    small.write_text("anon 4096\nshmem 0\n")
    # A cgroup.procs as seq_file hands it out: a page less a partial record, the rest.
    pids = "".join(f"{pid}\n" for pid in range(100_000, 100_000 + kernfs.PAGE_SIZE // 7 + 10))
    cut = pids.rfind("\n", 0, kernfs.PAGE_SIZE) + 1
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
    text = kernfs.read(small)
    one = len(reads)
    monkeypatch.setattr(os, "pread", seq_pread)
    whole = kernfs.pread(0)
    monkeypatch.setattr(os, "pread", real_pread)

    assert ("anon 4096\nshmem 0\n", 1) == (text, one)
    assert (pids, 2) == (whole, len(reads) - one)  # a page cut at a record, then the rest


# uptime, stat, mountinfo ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.50 40.00\n", int(12.5 * kernfs.CLK_TCK)),
        ("", None),
        ("x 1\n", None),
        ("inf 1\n", None),  # float() takes it, int() does not
        ("nan 1\n", None),
    ],
)
def test_uptime_is_clock_ticks_since_boot_or_unknown(text: str, expected: int | None) -> None:
    actual = kernfs.parse_uptime_ticks(text)

    assert expected == actual


def stat_line(comm: str, start: str) -> str:
    """/proc/PID/stat: pid, (comm), then fields 3 to 21, field 22 (starttime), more."""
    return f"42 ({comm}) S {' '.join(['0'] * 18)} {start} 0 0\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (stat_line("python3", "12345"), 12345),
        (stat_line("a) S 1 2 (b", "777"), 777),  # comm with ")" and spaces
        (stat_line("x", "z"), None),
        ("42 (x) S 1 2\n", None),  # cut short
        ("", None),
    ],
)
def test_start_time_is_field_22_after_the_last_parenthesis(text: str, expected: int | None) -> None:
    actual = kernfs.parse_start_ticks(text)

    assert expected == actual


def test_cgroup2_mounts_are_read_with_their_octal_escapes_undone() -> None:
    text = (
        "24 1 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"
        "25 24 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "26 1 0:24 / /mnt/with\\040space rw - cgroup2 none rw\n"
        "27 1 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
        "28 1 0:26 / /tmp/x rw - tmpfs cgroup2 rw\n"  # "cgroup2" as a source: a tmpfs
        "garbage\n"
    )

    actual = kernfs.parse_cgroup2_mounts(text)

    assert frozenset({"/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/mnt/with space"}) == actual
