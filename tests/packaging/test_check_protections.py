"""`vramwatch check` reads the tenants' memory limits from a real systemd manager.

Runs the installed vramwatch as the sandbox user against its `systemd --user`
manager (bus = "user"), with units started with and without MemoryMax=/
MemoryHigh=, and on a bus that does not exist.
"""

from __future__ import annotations

from tests.e2e.conftest import Bed

CONFIG = """\
[daemon]
bus = "user"

[[tenant]]
unit = "stt-worker.service"
ram = "512MiB"

[[tenant]]
unit = "photos-ml.service"
ram = "512MiB"

[[tenant]]
unit = "llm-server.service"
vram = "5000MiB"

[[tenant]]
unit = "video-analytics.service"
ram = "1GiB"

[[tenant]]
unit = "not-installed.service"
ram = "1GiB"
"""


def test_check_advises_on_missing_memory_limits(bed: Bed) -> None:
    bed.gpu()
    bed.tenant("stt-worker")
    bed.tenant("photos-ml", properties={"MemoryHigh": "600M"})
    bed.tenant("llm-server")
    bed.tenant("video-analytics", properties={"MemoryMax": "512M"})
    config = bed.config(CONFIG)

    result = bed.cli("check", "-c", str(config))

    advice = [line for line in result.stderr.splitlines() if line.startswith("vramwatch: advice: ")]
    assert 0 == result.returncode, result.stderr
    assert [
        (
            "vramwatch: advice: stt-worker.service: RAM budget 512 MiB but no MemoryMax= or "
            "MemoryHigh= on the unit: nothing stops it before vramwatch's next sample; e.g. "
            "systemctl set-property stt-worker.service MemoryMax=640M"
        ),
        (
            "vramwatch: advice: video-analytics.service: MemoryMax=512 MiB is below its RAM "
            "budget 1 GiB: the kernel's OOM killer acts inside the unit first"
        ),
        (
            "vramwatch: advice: not-installed.service: the user manager has no such unit "
            "(LoadState=not-found); vramwatch can report it but not act on it"
        ),
    ] == advice


def test_check_without_a_bus_notes_it_and_still_succeeds(bed: Bed) -> None:
    bed.gpu()
    config = bed.config(CONFIG)
    env = bed.env() | {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}

    result = bed.sb.run([str(bed.vramwatch), "check", "-c", str(config)], env=env, check=False)

    assert 0 == result.returncode, result.stderr
    assert (
        "vramwatch: note: kernel protections not checked: cannot connect to the user bus: "
        in result.stderr
    )
    assert "advice" not in result.stderr
