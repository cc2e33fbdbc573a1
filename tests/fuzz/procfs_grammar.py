"""Hostile /proc and cgroupfs fixture trees, and what the sampler must make of them.

A tree has ``meminfo``, ``pressure/memory``, ``uptime``, a few ``/proc/PID``
directories (``cgroup``, ``comm``, ``stat``, ``statm``, ``status``) and a cgroup v2
tree of slices and units (``cgroup.procs``, ``memory.stat``). Contents mix the
right grammar with garbage: comm with ``)`` and newlines, 4 KiB lines, cgroup
names with newlines, non-UTF-8 bytes and Unicode digits, numbers too big for
any counter; entries vanish (a file left out) and some reads fail with
``EACCES`` (root ignores file modes, so ``os.open`` is made to refuse them).

Whatever the tree: ``Sampler.sample`` returns a ``Snapshot``, and
``ProcFs.host()`` and ``ProcFs.top_ram_owners()`` return values.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from vramwatch import config as cfg
from vramwatch.model import GpuProcess, GpuSample, Snapshot
from vramwatch.sampler import Sampler
from vramwatch.sources.cgroups import CgroupLayout
from vramwatch.sources.procfs import ProcFs

# Above the kernel's pid_max (2**22): pidfd_open() can never reach a real process.
PID_BASE = 5_000_000
TENANTS = ("a.service", "b.service", "c.scope")
CONFIG = cfg.parse(
    '[host]\nmin_available_ram = "99%"\n'  # breached: top_ram_owners runs too
    + "".join(
        f'[[tenant]]\nunit = "{u}"\nvram = "1GiB"\nram = "1GiB"\n'
        + ('action = "stop"\n' if u.endswith(".scope") else "")
        for u in TENANTS
    ),
    "/fuzz.toml",
)

ODD = ["\n", ")", ") Z (", "\x00", "\x1b[2J", "²", "٣", "\u00a0", " ", "\t", "-", "1e99", "nan"]
NUMBER_TEXT = st.one_of(
    st.integers(min_value=0, max_value=2**40).map(str),
    st.sampled_from(["", "0", "-1", "18446744073709551615", "9" * 30, "9" * 5000, "max"]),
    st.sampled_from(ODD),
    st.text(max_size=12),
)
NAME = st.one_of(
    st.sampled_from([*TENANTS, "other.service", "user@1000.service", "x.slice"]),
    st.sampled_from([o for o in ODD if o != "\x00"]).map(lambda odd: f"a{odd}.service"),
    st.text(min_size=1, max_size=40).map(
        lambda t: t.replace("/", "_").replace("\x00", "_") + ".service"
    ),
    st.binary(min_size=1, max_size=20).map(
        lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_").decode("latin-1") + ".scope"
    ),
)
CGROUP_PATH = st.one_of(
    st.lists(NAME, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["/", "", "/system.slice/a.service (deleted)", "x" * 4096]),
    st.text(max_size=60),
)


_CHOICES: dict[tuple[Any, ...], st.SearchStrategy[Any]] = {}


def choose(options: list[Any], weights: list[int]) -> st.SearchStrategy[Any]:
    """One of ``options`` by weight (built once: strategies are dear to build in a draw)."""
    key = (*options, *weights)
    if key not in _CHOICES:
        pool = [o for o, w in zip(options, weights, strict=True) for _ in range(w)]
        _CHOICES[key] = st.sampled_from(pool)
    return _CHOICES[key]


def rarely(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n + 1``."""
    return choose([False, True], [n, 1])


@st.composite
def meminfo(draw: st.DrawFn) -> str:
    lines = []
    for name in ("MemTotal", "MemFree", "MemAvailable", "SwapTotal", "SwapFree"):
        how = draw(choose(["kB", "bare", "odd", "gone"], [12, 1, 2, 1]))
        if how == "gone":
            continue
        number = draw(st.integers(0, 2**36).map(str)) if how != "odd" else draw(NUMBER_TEXT)
        lines.append(f"{name}:  {number}" + (" kB" if how != "bare" else ""))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=50)))
    return "\n".join(lines) + "\n"


@st.composite
def psi(draw: st.DrawFn) -> str:
    def line(kind: str) -> str:
        avg = draw(st.one_of(st.floats(0, 100).map(lambda f: f"{f:.2f}"), NUMBER_TEXT))
        return f"{kind} avg10={avg} avg60=0.00 avg300=0.00 total={draw(NUMBER_TEXT)}"

    return "\n".join([line("some"), line("full"), draw(st.text(max_size=20))]) + "\n"


@st.composite
def stat_line(draw: st.DrawFn, pid: int) -> str:
    comm = draw(COMM)
    fields = ["1"] * 50
    for index, odd in draw(ODD_FIELDS):
        fields[index] = odd
    return f"{pid} ({comm}) S {' '.join(fields)}\n"


COMM = st.one_of(st.sampled_from(["python3", "a) Z (b", "x\ny", ")"]), st.text(max_size=30))
ODD_FIELDS = st.lists(st.tuples(st.integers(0, 49), NUMBER_TEXT), max_size=3)


COMM_FILE = st.one_of(st.sampled_from(ODD), st.text(max_size=64), st.just("x" * 4096))
STATM_ODD = st.lists(NUMBER_TEXT, min_size=0, max_size=7)
PAGES = st.integers(0, 2**30)


@dataclass
class Tree:
    """What to write: relative path -> bytes (None: a directory); and the paths to refuse."""

    files: dict[str, bytes | None] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    gpu_pids: tuple[int, ...] = ()


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


@st.composite
def tree(draw: st.DrawFn) -> Tree:
    t = Tree()
    t.files["proc/meminfo"] = _text(draw(meminfo()))
    if draw(st.booleans()):
        t.files["proc/pressure/memory"] = _text(draw(psi()))
    if not draw(rarely(4)):
        t.files["proc/uptime"] = _text(draw(st.one_of(st.just("12345.67 100.00\n"), NUMBER_TEXT)))
    t.files["cgroup/cgroup.controllers"] = b"memory\n"
    t.files["cgroup/system.slice"] = None
    units = draw(st.lists(NAME, min_size=1, max_size=4, unique=True))
    pids = [PID_BASE + i for i in range(draw(st.integers(1, 4)))]
    t.gpu_pids = tuple(pids)
    for unit in units:
        base = f"cgroup/system.slice/{unit}"
        t.files[base] = None
        procs = draw(st.lists(st.sampled_from(pids), max_size=3))
        mode = draw(choose(["pids", "number", "text"], [6, 1, 1]))
        if mode == "pids":
            listing = "\n".join(map(str, procs)) + "\n"
        elif mode == "number":
            listing = draw(NUMBER_TEXT) + "\n"
        else:
            listing = draw(st.text(max_size=30))
        t.files[f"{base}/cgroup.procs"] = _text(listing)
        if not draw(rarely(4)):
            number = st.one_of(st.integers(0, 2**40).map(str), NUMBER_TEXT)
            stat = (
                f"anon {draw(number)}\nfile {draw(number)}\nshmem {draw(number)}\n"
                if not draw(rarely(5))
                else draw(st.text(max_size=60))
            )
            t.files[f"{base}/memory.stat"] = _text(stat)
        if draw(rarely(5)):
            t.files[f"{base}/sub"] = None
            t.files[f"{base}/sub/cgroup.procs"] = _text(draw(NUMBER_TEXT))
    for pid in pids:
        d = f"proc/{pid}"
        t.files[d] = None
        unit = draw(st.sampled_from(units))
        cgroup = f"/system.slice/{unit}" if not draw(rarely(4)) else draw(CGROUP_PATH)
        mode = draw(choose(["v2", "v1", "text"], [6, 1, 1]))
        if mode == "v2":
            lines = f"0::{cgroup}\n"
        elif mode == "v1":
            lines = f"1:name=systemd:{cgroup}\n0::/\n"
        else:
            lines = draw(st.text(max_size=50))
        files = {
            "cgroup": _text(lines),
            "comm": _text(draw(COMM_FILE) + "\n"),
            "stat": _text(draw(stat_line(pid))),
            "statm": _text(
                " ".join(draw(STATM_ODD)) + "\n"
                if draw(rarely(5))
                else f"1000 {draw(PAGES)} 50 10 0 200 0\n"
            ),
            "status": _text(
                draw(st.text(max_size=80))
                if draw(rarely(5))
                else f"Name:\tx\nRssAnon:\t{draw(PAGES)} kB\nRssFile:\t4 kB\n"
                f"RssShmem:\t{draw(st.one_of(PAGES.map(str), NUMBER_TEXT))} kB\n"
            ),
        }
        for name, content in files.items():
            fate = draw(choose(["ok", "gone", "denied"], [10, 1, 1]))
            if fate != "gone":
                t.files[f"{d}/{name}"] = content
            if fate == "denied":
                t.denied.add(f"{d}/{name}")
    readable = sorted(path for path, content in t.files.items() if content is not None)
    t.denied.update(draw(st.lists(st.sampled_from(readable), max_size=1)))  # any file may refuse
    return t


def write_tree(root: Path, t: Tree) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    for rel, content in sorted(t.files.items(), key=lambda kv: kv[0].count("/")):
        path = os.path.join(os.fsencode(root), _text(rel))
        if content is None:
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(content)


@contextmanager
def refusing(root: Path, denied: set[str]) -> Iterator[None]:
    """``os.open``/``open`` of the ``denied`` paths (under ``root``) fail with EACCES."""
    refused = {os.fsencode(root) + b"/" + _text(rel) for rel in denied}
    real_open = os.open

    def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        if os.fsencode(path) in refused:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    os.open = fake_open
    try:
        yield
    finally:
        os.open = real_open


class FixedGpus:
    """One GPU listing the tree's PIDs, as NVML would."""

    def __init__(self, pids: tuple[int, ...]) -> None:
        self.pids = pids

    def sample(self, now_ns: int) -> tuple[tuple[GpuSample, ...], str | None]:
        procs = tuple(GpuProcess(pid, 2**30, "compute", "", None) for pid in self.pids)
        return (GpuSample(0, "GPU-0", "T4", 16 * 2**30, 8 * 2**30, 8 * 2**30, procs),), None

    def close(self) -> None:
        pass


def check_procfs(root: Path, t: Tree, sample: Callable[[Sampler], Snapshot] | None = None) -> str:
    """Sample the tree: a Snapshot whatever it holds; returns a word on what was known."""
    write_tree(root, t)
    cgroup = root / "cgroup"
    with refusing(root, t.denied):
        procfs = ProcFs(root / "proc", layout=CgroupLayout("v2", cgroup, cgroup))
        host = procfs.host()
        procfs.top_ram_owners()
        sampler = Sampler(FixedGpus(t.gpu_pids), procfs)
        try:
            snapshot = sampler.sample(CONFIG, 10**9)
            snapshot = sampler.sample(CONFIG, 2 * 10**9)  # again, with what it cached
        finally:
            sampler.close()
    assert isinstance(snapshot, Snapshot)
    assert set(TENANTS) == set(snapshot.units)
    for usage in snapshot.units.values():
        assert usage.ram_bytes is None or usage.ram_bytes >= 0
    if host.error is not None:
        return "host unknown"
    known = sum(1 for u in snapshot.units.values() if u.ram_bytes)
    return f"{known} tenants with RAM"
