"""`journalctl -x` explains a real restart entry with vramwatch's catalog."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.e2e.conftest import Bed
from tests.fakenvml import mib

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
[daemon]
interval = "1s"
bus = "user"
[gpu]
min_free_vram = "2GiB"
grace = "1s"
[host]
min_available_ram = "1MiB"
[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
"""


def test_journalctl_x_explains_a_restart_with_the_units_numbers(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    bed.tenant("immich-ml.service", vram_mib=14000)
    daemon = bed.run_daemon(bed.config(CONFIG), journal=True)
    bed.journal("restart")
    daemon.stop()
    # Compile the catalog as the package's postinst would, into a scratch root;
    # journalctl -x reads /var/lib/systemd/catalog/database whatever --root says,
    # so bind it there inside the sandbox's private mount namespace only.
    root = bed.dir / "root"
    catalog_dir = root / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    shutil.copy(REPO / "packaging/journald/vramwatch.catalog", catalog_dir)
    subprocess.run(["journalctl", "--update-catalog", f"--root={root}"], check=True)
    database = root / "var/lib/systemd/catalog"
    bed.sb.run(["mount", "--bind", str(database), "/var/lib/systemd/catalog"], as_user=False)
    try:
        shown = bed.sb.run(
            [
                "journalctl",
                f"--directory={bed.sb.journal_dir}",
                "-x",
                "--no-pager",
                "VRAMWATCH_EVENT=restart",
            ],
            as_user=False,
        ).stdout
    finally:
        bed.sb.run(["umount", "/var/lib/systemd/catalog"], as_user=False)

    assert "restarting immich-ml.service: GPU 0 free 1.3 GiB < floor 2 GiB" in shown
    assert "vramwatch restarted an over-budget tenant" in shown  # the catalog's Subject
    assert f"it used {mib(14000)} bytes against a budget of" in " ".join(shown.split()), (
        shown
    )  # @VRAMWATCH_USED_BYTES@ filled in from the entry
    assert "What to do: find out why immich-ml.service grew past its budget" in " ".join(
        shown.split()
    )
