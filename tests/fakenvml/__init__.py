"""A fake NVIDIA driver library (libnvidia-ml.so.1) for tests without a GPU.

The real ``pynvml`` binding loads the fake and calls it through ctypes, so the
binding's struct layouts, buffer-size protocol and error classes are the real
ones.  The fake is told what to report by a text file named by the environment
variable ``FAKE_NVML_STATE``; the library re-reads it on every call, so a test
can change GPU state or inject faults while the code under test is running.

Two ways to use it:

* In-process (pytest): ``lib_dir = build(tmp)`` then ``preload(lib_dir)``;
  pynvml's later ``CDLL("libnvidia-ml.so.1")`` gets the preloaded fake.
  ``FAKE_NVML_STATE`` may be set in ``os.environ`` (the C side calls getenv).
  See ``tests/fakenvml/fixtures.py`` for ready fixtures.
* Subprocess: run it with ``subprocess_env(lib_dir, state_path)`` (prepends
  ``lib_dir`` to ``LD_LIBRARY_PATH`` and sets ``FAKE_NVML_STATE``).

State file grammar (``FakeNvmlState.write`` produces it; full reference at the
top of ``fakenvml.c``).  One directive a line, blank-separated tokens,
``"quoted tokens"`` may contain blanks, ``#`` starts a comment::

    driver VERSION                   # default 550.54.15
    nvml VERSION                     # default 12.<driver>
    cuda INT                         # default 12040
    gpu UUID TOTAL ["NAME"]          # index = order of gpu lines; name "Tesla T4"
    used IDX SIZE                    # used memory not owned by a listed process
    reserved IDX SIZE                # driver/firmware reservation (memory info v2)
    proc IDX[:M] PID SIZE|na [KINDS] # on MIG device M with :M; KINDS: compute,graphics,mps
    error FUNC[@IDX] CODE [COUNT]    # FUNC returns CODE (COUNT times, or always)
    grow FUNC[@IDX] N [SIZE|na]      # process list grows by N during the size race
    delay FUNC[@IDX] MS              # FUNC sleeps MS milliseconds
    lost UUID [CODE]                 # that GPU keeps its index; every call on it fails
    mig IDX MIG_UUID TOTAL ["NAME"]  # a MIG device on GPU IDX (which is then in MIG mode)

SIZE is an integer with an optional unit B/KiB/MiB/GiB/TiB.  CODE is
``GPU_IS_LOST``, ``NVML_ERROR_GPU_IS_LOST`` or a number.  FUNC is an exported
NVML symbol, ``PREFIX*`` or ``*`` (wildcards never match nvmlShutdown or
nvmlErrorString; nvmlInit, nvmlInit_v2 and nvmlInitWithFlags count as one
function).  A missing file means "no driver" (init: NVML_ERROR_DRIVER_NOT_LOADED).

Memory: v1 ``used`` = reserved + used + process usage (``na`` counts 0), v2
``used`` excludes reserved; ``free`` = total - all of it, never below 0.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KINDS",
    "SONAME",
    "SOURCE",
    "STATE_ENV",
    "FakeGpu",
    "FakeMig",
    "FakeNvmlBuildError",
    "FakeNvmlState",
    "FakeProcess",
    "build",
    "gib",
    "mib",
    "preload",
    "render_state",
    "reset",
    "state_error",
    "subprocess_env",
]

SOURCE = Path(__file__).with_name("fakenvml.c")
SONAME = "libnvidia-ml.so.1"
STATE_ENV = "FAKE_NVML_STATE"
KINDS = frozenset({"compute", "graphics", "mps"})

_FUNC_RE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\*?|\*)(?:@[0-9]+)?")
_CODE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_TOKEN_RE = re.compile(r"[^\s\"#][^\s\"]*")
_generation = itertools.count(1)
_preloaded: tuple[Path, ctypes.CDLL] | None = None


class FakeNvmlBuildError(RuntimeError):
    """The fake library could not be compiled (no gcc, or a compile error)."""


def mib(n: int) -> int:
    """``n`` MiB in bytes."""
    return n * 1024 * 1024


def gib(n: int) -> int:
    """``n`` GiB in bytes."""
    return n * 1024 * 1024 * 1024


def build(out_dir: Path, *, hide_symbols: Iterable[str] = (), cc: str | None = None) -> Path:
    """Compile the fake into ``out_dir/libnvidia-ml.so.1`` and return ``out_dir``.

    ``hide_symbols`` leaves those NVML functions out of the dynamic symbol
    table (a linker version script), imitating an older driver: pynvml then
    raises ``NVMLError_FunctionNotFound`` (or ``NVMLLibraryMismatchError`` from
    its unversioned wrappers).  Use a separate ``out_dir`` for such a variant:
    a process can hold only one library with this SONAME.
    """
    compiler = cc or shutil.which("gcc")
    if compiler is None:
        raise FakeNvmlBuildError(
            "gcc not found on PATH: the fake NVML library is compiled from "
            f"{SOURCE} (Debian: apt-get install gcc)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / SONAME
    # Build under a temporary name and rename: overwriting a .so that a
    # running process has mapped would crash that process.
    fd, tmp_name = tempfile.mkstemp(prefix=".libnvidia-ml.", suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [
        compiler,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-Wl,-soname,{SONAME}",
        "-o",
        tmp_name,
        str(SOURCE),
    ]
    hidden = sorted(set(hide_symbols))
    script = out_dir / "hidden-symbols.map"
    if hidden:
        for name in hidden:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"not a C symbol name: {name!r}")
        script.write_text(
            "{ global: *; local: " + " ".join(f"{n};" for n in hidden) + " };\n",
            encoding="ascii",
        )
        cmd.insert(-1, f"-Wl,--version-script,{script}")
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as e:
            raise FakeNvmlBuildError(f"cannot run the C compiler {compiler!r}: {e}") from e
        if proc.returncode != 0:
            raise FakeNvmlBuildError(f"compiling {SOURCE} failed ({' '.join(cmd)}):\n{proc.stderr}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return out_dir


def preload(lib_dir: Path) -> None:
    """Load the fake into this process so ``CDLL("libnvidia-ml.so.1")`` finds it.

    glibc reads ``LD_LIBRARY_PATH`` only at process start, but a later
    ``dlopen`` of a SONAME that is already loaded returns the loaded object.
    Call this before pynvml loads its library.  Raises ``RuntimeError`` if a
    different ``libnvidia-ml.so.1`` (for instance a real driver) is already
    loaded, or if another fake build was preloaded before.
    """
    global _preloaded
    path = (Path(lib_dir) / SONAME).resolve()
    if _preloaded is not None:
        if _preloaded[0] == path:
            return
        raise RuntimeError(
            f"a fake NVML from {_preloaded[0]} is already loaded in this process; "
            f"cannot load {path} too (use a subprocess for variants)"
        )
    lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    by_soname = ctypes.CDLL(SONAME)
    if by_soname._handle != lib._handle or not hasattr(by_soname, "fakeNvmlReset"):
        raise RuntimeError(
            f"dlopen({SONAME!r}) does not return the fake loaded from {path}; "
            "is another NVML library already loaded?"
        )
    _preloaded = (path, lib)


def _lib() -> ctypes.CDLL:
    if _preloaded is None:
        raise RuntimeError("the fake NVML is not preloaded in this process (call preload())")
    return _preloaded[1]


def reset() -> None:
    """In-process only: forget all nvmlInit calls and the cached state file.

    For test isolation; pynvml's own refcount is bookkeeping it never checks.
    """
    _lib().fakeNvmlReset()


def state_error() -> str:
    """In-process only: the state file's syntax error, or "" when it parsed."""
    fn = _lib().fakeNvmlStateError
    fn.restype = ctypes.c_char_p
    value = fn()
    return value.decode() if isinstance(value, bytes) else ""


def subprocess_env(
    lib_dir: Path, state_path: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a subprocess that should load the fake NVML."""
    env = dict(os.environ if base is None else base)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(lib_dir) + (os.pathsep + old if old else "")
    env[STATE_ENV] = str(state_path)
    return env


def _token(value: str, what: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"{what} must be one token without blanks, quotes or '#': {value!r}")
    return value


@dataclass(frozen=True)
class FakeProcess:
    """A process on a fake GPU; ``used_bytes=None`` is "not available".

    ``kind`` is ``compute``, ``graphics``, ``mps`` or a comma list of them: the
    process then appears in each list but counts once in device memory.
    """

    pid: int
    used_bytes: int | None
    kind: str = "compute"

    def __post_init__(self) -> None:
        if not 0 <= self.pid <= 0xFFFFFFFF:
            raise ValueError(f"pid out of range: {self.pid}")
        if self.used_bytes is not None and not 0 <= self.used_bytes < 2**64 - 1:
            raise ValueError(f"used_bytes out of range: {self.used_bytes}")
        kinds = self.kind.split(",")
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"kind must be a comma list of {sorted(KINDS)}: {self.kind!r}")


@dataclass(frozen=True)
class FakeMig:
    """A MIG device (GPU instance) of a :class:`FakeGpu`; its MIG index is its position."""

    uuid: str
    total_bytes: int
    name: str = "MIG 1g.10gb"
    processes: tuple[FakeProcess, ...] = ()

    def __post_init__(self) -> None:
        _token(self.uuid, "uuid")
        if '"' in self.name or "\n" in self.name or len(self.name) >= 95:
            raise ValueError(f"bad MIG device name: {self.name!r}")
        if not 0 <= self.total_bytes < 2**64 - 1:
            raise ValueError(f"total_bytes out of range: {self.total_bytes}")


@dataclass(frozen=True)
class FakeGpu:
    """A fake GPU.  Its index is its position in the list given to ``write``.

    ``lost``: ``"GPU_IS_LOST"`` (fallen off the bus) or ``"RESET_REQUIRED"``:
    the GPU keeps its index and place in the count, but its handle and every
    call on it fail with that code.  Leaving a GPU out of the list is a
    hot-unplug (later GPUs shift down); adding one is a hot-add.

    ``mig``: MIG devices (at most 7): the GPU is then in MIG mode, reports the
    sum of its instances and lists their processes with usage not available.
    """

    uuid: str
    total_bytes: int
    name: str = "Tesla T4"
    base_used_bytes: int = 0
    processes: tuple[FakeProcess, ...] = ()
    reserved_bytes: int = 0
    lost: str | None = None
    mig: tuple[FakeMig, ...] = ()

    def __post_init__(self) -> None:
        if len(self.mig) > 7:
            raise ValueError(f"at most 7 MIG devices per GPU, got {len(self.mig)}")
        _token(self.uuid, "uuid")
        if self.lost is not None and not _CODE_RE.fullmatch(self.lost):
            raise ValueError(f"lost must be an NVML error name: {self.lost!r}")
        if '"' in self.name or "\n" in self.name or len(self.name) >= 95:
            raise ValueError(f"bad GPU name: {self.name!r}")
        for field in ("total_bytes", "base_used_bytes", "reserved_bytes"):
            value = getattr(self, field)
            if not 0 <= value < 2**64 - 1:
                raise ValueError(f"{field} out of range: {value}")


def render_state(
    gpus: Sequence[FakeGpu],
    errors: Mapping[str, str] | None = None,
    grow: Mapping[str, int] | None = None,
    *,
    delays: Mapping[str, int] | None = None,
    driver_version: str = "550.54.15",
    nvml_version: str | None = None,
    cuda_version: int = 12040,
    reap: bool = False,
    procdir: Path | None = None,
) -> str:
    """The state-file text for these GPUs and faults (see ``FakeNvmlState.write``)."""
    lines = [
        "# fake NVML state written by tests.fakenvml",
        f"# generation {os.getpid()}-{next(_generation)}",
        f"driver {_token(driver_version, 'driver_version')}",
        f"cuda {int(cuda_version)}",
    ]
    if nvml_version is not None:
        lines.append(f"nvml {_token(nvml_version, 'nvml_version')}")
    if reap:
        lines.append("reap")
    if procdir is not None:
        lines.append(f"procdir {_token(str(procdir), 'procdir')}")
    seen: set[str] = set()
    for gpu in gpus:
        if gpu.uuid in seen:
            raise ValueError(f"duplicate GPU uuid {gpu.uuid}")
        seen.add(gpu.uuid)
        lines.append(f'gpu {gpu.uuid} {gpu.total_bytes} "{gpu.name}"')
        if gpu.lost is not None:
            lines.append(f"lost {gpu.uuid} {gpu.lost}")
    for idx, gpu in enumerate(gpus):
        if gpu.base_used_bytes:
            lines.append(f"used {idx} {gpu.base_used_bytes}")
        if gpu.reserved_bytes:
            lines.append(f"reserved {idx} {gpu.reserved_bytes}")
        for p in gpu.processes:
            used = "na" if p.used_bytes is None else str(p.used_bytes)
            lines.append(f"proc {idx} {p.pid} {used} {p.kind}")
        for k, m in enumerate(gpu.mig):
            if m.uuid in seen:
                raise ValueError(f"duplicate GPU uuid {m.uuid}")
            seen.add(m.uuid)
            lines.append(f'mig {idx} {m.uuid} {m.total_bytes} "{m.name}"')
            for p in m.processes:
                used = "na" if p.used_bytes is None else str(p.used_bytes)
                lines.append(f"proc {idx}:{k} {p.pid} {used} {p.kind}")
    for func, code in (errors or {}).items():
        parts = code.split()
        if not (
            _FUNC_RE.fullmatch(func)
            and 1 <= len(parts) <= 2
            and _CODE_RE.fullmatch(parts[0])
            and (len(parts) == 1 or parts[1].isdigit())
        ):
            raise ValueError(f"bad error rule {func!r}: {code!r} (want FUNC[@IDX]: CODE [COUNT])")
        lines.append(f"error {func} {' '.join(parts)}")
    for func, n in (grow or {}).items():
        if not _FUNC_RE.fullmatch(func) or n < 0:
            raise ValueError(f"bad grow rule {func!r}: {n!r}")
        lines.append(f"grow {func} {int(n)}")
    for func, ms in (delays or {}).items():
        if not _FUNC_RE.fullmatch(func) or ms < 0:
            raise ValueError(f"bad delay rule {func!r}: {ms!r}")
        lines.append(f"delay {func} {int(ms)}")
    return "\n".join(lines) + "\n"


class FakeNvmlState:
    """The state file the fake library reads (point ``FAKE_NVML_STATE`` at ``path``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(
        self,
        gpus: Sequence[FakeGpu],
        errors: Mapping[str, str] | None = None,
        grow: Mapping[str, int] | None = None,
        driver_present: bool = True,
        *,
        delays: Mapping[str, int] | None = None,
        driver_version: str = "550.54.15",
        nvml_version: str | None = None,
        cuda_version: int = 12040,
        reap: bool = False,
        procdir: Path | None = None,
    ) -> None:
        """Atomically replace the state.

        ``reap``: processes whose PID is gone vanish and free their memory.
        ``procdir``: a directory whose files hold more ``proc`` lines, written
        by test programs that declare their own VRAM (see :func:`declare`).

        ``errors`` maps ``"FUNC"`` or ``"FUNC@IDX"`` (``*`` wildcards allowed)
        to ``"CODE"`` or ``"CODE COUNT"``, e.g.
        ``{"nvmlDeviceGetMemoryInfo@1": "GPU_IS_LOST"}``.  ``grow`` maps a
        process-list function to N extra processes that appear between the
        size query and the fill call.  ``delays`` maps a function to a sleep in
        milliseconds.  ``driver_present=False`` removes the file (no driver).
        Every write reloads the library's state, re-arming counted errors.
        """
        if not driver_present:
            self.remove()
            return
        self.write_text(
            render_state(
                gpus,
                errors,
                grow,
                delays=delays,
                driver_version=driver_version,
                nvml_version=nvml_version,
                reap=reap,
                procdir=procdir,
                cuda_version=cuda_version,
            )
        )

    def write_text(self, text: str) -> None:
        """Atomically replace the file with raw state-file text."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def remove(self) -> None:
        """Delete the file: the fake then behaves as if no driver were loaded."""
        self.path.unlink(missing_ok=True)
