"""vramwatch on a pure cgroup v2 layout: a sandbox whose /sys/fs/cgroup is the
cgroup2 hierarchy, with systemd --user in unified mode (Sandbox(cgroup_mode="v2")).

The memory controller is not in that hierarchy here (it stays on v1), so there
is no memory.stat and the daemon falls back to its processes' RssAnon + RssShmem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Bed, prepare
from tests.e2e.test_restart import CONFIG, GRACE_S, INTERVAL_S  # the same tenants
from tests.fakenvml import mib
from tests.sandbox import Sandbox
from tests.sandbox.fixtures import running_sandbox


@pytest.fixture(scope="module")
def v2_sandbox() -> Iterator[Sandbox]:
    yield from running_sandbox(cgroup_mode="v2")


@pytest.fixture
def v2_bed(v2_sandbox: Sandbox, vramwatch_bin: Path) -> Iterator[Bed]:
    b = Bed(v2_sandbox, prepare(v2_sandbox), vramwatch_bin)
    try:
        yield b
    finally:
        b.close()
        v2_sandbox.reset()


def test_a_vram_hog_is_restarted_on_a_pure_cgroup_v2_layout(v2_bed: Bed) -> None:
    bed, sb = v2_bed, v2_bed.sb
    layout = sb.run(
        [
            str(bed.vramwatch.parent / "python"),
            "-c",
            "from vramwatch.sources.cgroups import CgroupLayout; print(CgroupLayout.detect().mode)",
        ]
    )
    bed.gpu(total_mib=15360)
    hog = bed.tenant("immich-ml.service", vram_mib=12500, ram_mib=64)
    whisper = bed.tenant("whisper.service", vram_mib=1000, ram_mib=32)
    prefix = f"/{sb.name}.slice/user@{sb.uid}.service/app.slice/"
    hog_cgroup = Path(f"/proc/{hog.main_pid}/cgroup").read_text()

    config = bed.config(CONFIG)
    status = json.loads(bed.cli("status", "--json", "-c", str(config), check=True).stdout)
    daemon = bed.run_daemon(config)
    restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 3)
    daemon.wait_event("reclaimed", timeout=10)

    assert "v2" == layout.stdout.strip()
    # systemd tracks the unit in the cgroup2 tree only: no v1 directory for it.
    assert f"0::{prefix}immich-ml.service" in hog_cgroup.splitlines()
    assert f"{prefix}immich-ml.service" == sb.unit_property("immich-ml.service", "ControlGroup")
    assert not Path(f"/sys/fs/cgroup/systemd/{sb.name}.slice").exists()
    tenants = {t["unit"]: t for t in status["tenants"]}
    assert [hog.main_pid] == tenants["immich-ml.service"]["pids"]
    assert [whisper.main_pid] == tenants["whisper.service"]["pids"]
    assert tenants["immich-ml.service"]["ram_bytes"] >= mib(64)
    assert tenants["whisper.service"]["ram_bytes"] >= mib(32)
    assert (mib(12500), mib(1000)) == (
        tenants["immich-ml.service"]["vram_bytes"],
        tenants["whisper.service"]["vram_bytes"],
    )
    assert ("immich-ml.service", mib(12500)) == (restart["unit"], restart["used_bytes"])
    bed.restarted("immich-ml.service", hog)
    assert whisper == sb.unit_state("whisper.service")
    assert [] == daemon.named("action_failed")
