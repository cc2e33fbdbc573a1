"""The tree as committed: what no tracked file may hold."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKERS = ("<<<<<<< ", ">>>>>>> ")


def test_no_tracked_file_holds_a_merge_conflict_marker() -> None:
    """A conflict resolved in code but not in a man page still builds and imports:
    only a look at every tracked file finds the markers left behind."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary (gzipped traces, images) or a submodule
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith(MARKERS) or line == "=======":
                found.append(f"{name.decode()}:{number}: {line[:40]}")

    assert [] == found
