"""status.py: other users' process names and command lines cannot forge lines or
drive root's terminal in text output; JSON keeps them exact."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from vramwatch import config
from vramwatch.model import GpuProcess, GpuSample, HostSample, Owner, Snapshot
from vramwatch.status import CMDLINE_MAX, printable, render_text, report

GIB = 1024**3
FORGED = "\nGPU 9 H100: free 80 GiB of 80 GiB, floor 1 GiB\x1b]0;pwned\x07\x1b[2J"
CONFIG = config.parse("", "/etc/vramwatch.toml")


@pytest.fixture
def hostile() -> Iterator[subprocess.Popen[bytes]]:
    """A real process whose argv carries a forged status line and terminal escapes."""
    proc = subprocess.Popen(
        ["py", "-c", "import time; time.sleep(60)", FORGED, "x" * 5000], executable=sys.executable
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def snapshot(pid: int) -> Snapshot:
    owner = Owner("/user.slice/evil\x1b[31m.scope", "evil\x1b[31m\n.scope", "system")
    gpu = GpuSample(
        0,
        "GPU-0",
        "Tesla T4",
        16 * GIB,
        GIB,
        15 * GIB,
        (GpuProcess(pid, GIB, "compute", "py\nthon\x1b[0m", owner),),
    )
    return Snapshot(0, (gpu,), HostSample(64 * GIB, 32 * GIB), {})


def test_status_text_escapes_a_forged_line_and_terminal_escapes(
    hostile: subprocess.Popen[bytes],
) -> None:
    rep = report(CONFIG, snapshot(hostile.pid), {}, None)

    text = render_text(rep)

    lines = text.splitlines()
    assert 3 == len(lines), text  # GPU 0, the process, host RAM: nothing forged
    assert [] == [ch for ch in text if ch in "\x1b\x07\r" or ord(ch) < 0x20 and ch != "\n"]
    process = lines[1]
    assert process.startswith(
        f"  not a tenant: pid {hostile.pid} 'py\\nthon\\x1b[0m' 1 GiB in evil\\x1b[31m\\n.scope: "
    )
    assert "\\nGPU 9 H100: free 80 GiB of 80 GiB, floor 1 GiB\\x1b]0;pwned\\x07\\x1b[2J" in process
    assert process.endswith("…")
    assert CMDLINE_MAX == len(process.split(".scope: ", 1)[1])


def test_status_json_keeps_the_command_line_exact(hostile: subprocess.Popen[bytes]) -> None:
    rep = report(CONFIG, snapshot(hostile.pid), {}, None)

    decoded = json.loads(json.dumps(rep))

    process = decoded["gpus"][0]["other_processes"][0]
    assert (
        f"py -c import time; time.sleep(60) {FORGED} {'x' * 5000}",
        "py\nthon\x1b[0m",
        "evil\x1b[31m\n.scope",
    ) == (process["cmdline"], process["name"], process["owner"])


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("plain text", 20, "plain text"),
        ("tab\there", 20, "tab\\there"),
        ("back\\slash", 20, "back\\\\slash"),
        ("bidi \u202etxt.exe", 30, "bidi \\u202etxt.exe"),
        ("line\u2028sep", 20, "line\\u2028sep"),
        ("c1 \x9b31m", 20, "c1 \\x9b31m"),
        ("del \x7f", 20, "del \\x7f"),
        ("ünïcödé ok", 20, "ünïcödé ok"),
        ("x" * 10, 10, "x" * 10),
        ("x" * 11, 10, "x" * 9 + "…"),
        ("xxxxxxx\x1b", 10, "xxxxxxx…"),  # an escape is never cut in half
    ],
)
def test_printable(text: str, limit: int, expected: str) -> None:
    actual = printable(text, limit)

    assert expected == actual
