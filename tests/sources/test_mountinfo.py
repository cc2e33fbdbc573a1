"""Reading /proc/self/mountinfo to the end, on the real kernel.

A procfs read returns at most a page of whole records, so a short read is not
always the end: a read that stops before a record too long to fit in what is
left of the page can be far shorter than half a page. Docker's overlay mounts
(one lowerdir per image layer) make such records on exactly the hosts whose
containers are tenants. Here, in a private mount namespace: a record of about
4000 bytes, one of 1500 (a read of its own, since the 3000 after it does not
fit), one of 3000, then a cgroup2 mount: it must be found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, os, subprocess, sys
from vramwatch.sources.kernfs import cgroup2_mounts

base = sys.argv[1]

def deep(name, length):
    # a mount point path of about `length` characters, in 200-character components
    path = os.path.join(base, name)
    while len(path) < length:
        path = os.path.join(path, "d" * min(200, length - len(path)))
    os.makedirs(path)
    return path

for name, length in (("long", 3900), ("medium", 1400), ("long2", 2900)):
    subprocess.run(["mount", "-t", "tmpfs", "none", deep(name, length)], check=True)
cg = os.path.join(base, "cg")
os.makedirs(cg)
subprocess.run(["mount", "-t", "cgroup2", "none", cg], check=True)
print(json.dumps({"cg": cg, "found": sorted(cgroup2_mounts())}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root")
def test_a_cgroup2_mount_after_long_mount_records_is_found(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            SCRIPT,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert 0 == proc.returncode, proc.stderr
    seen = json.loads(proc.stdout)

    assert seen["cg"] in seen["found"]
