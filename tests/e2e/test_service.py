"""vramwatch as a Type=notify service of the (user) manager, as operators run it."""

from __future__ import annotations

from tests.e2e.conftest import Bed
from tests.fakenvml import mib

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
unit = "vramwatch-under-test.service"
vram = "100MiB"
"""


def test_runs_as_a_notify_service_logs_to_the_journal_and_never_acts_on_itself(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    config = bed.config(CONFIG)

    state = bed.sb.start_unit(
        "vramwatch-under-test.service",
        [str(bed.vramwatch), "run", "-c", str(config)],
        properties={
            "Type": "notify",
            "ExecReload": "/bin/kill -HUP $MAINPID",
            "WatchdogSec": "10s",
        },
        env=bed.env(),
    )
    # Give vramwatch's own PID 14000 MiB of VRAM: it is over its budget, but itself.
    (bed.procdir / "self").write_text(f"proc 0 {state.main_pid} {mib(14000)} compute\n")
    skipped = bed.journal("skipped")
    bed.sb.run(["systemctl", "--user", "reload", "vramwatch-under-test.service"])
    reloaded = bed.journal("config_reloaded")
    status = bed.sb.unit_property("vramwatch-under-test.service", "StatusText")
    after = bed.sb.unit_state("vramwatch-under-test.service")

    assert "active" == state.active_state  # Type=notify: READY=1 was sent
    assert 1 == len(skipped), "no 'skipped' entry for vramwatch's own unit"
    assert ("self", "vramwatch-under-test.service", "vramwatch-under-test.service") == (
        skipped[0]["VRAMWATCH_REASON"],
        skipped[0]["VRAMWATCH_UNIT"],
        skipped[0]["_SYSTEMD_USER_UNIT"],
    )
    assert 1 == len(reloaded)
    assert status.startswith("GPU0 free 1.3 GiB; RAM available ")
    assert (state.main_pid, state.invocation_id) == (after.main_pid, after.invocation_id)
