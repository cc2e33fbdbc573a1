"""`vramwatch check`, `status` and the systemd client, on the real user manager."""

from __future__ import annotations

import json
import textwrap
import time

from tests.e2e.conftest import Bed, venv
from tests.fakenvml import mib

CONFIG = """
[daemon]
bus = "user"

[gpu]
min_free_vram = "2GiB"

[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
ram = "1GiB"

[[tenant]]
unit = "llama.service"
vram = "5000MiB"
protected = true

[[tenant]]
unit = "gone.service"
vram = "1000MiB"
"""


def test_status_json_shows_tenants_states_and_who_else_holds_the_gpu(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    immich = bed.tenant("immich-ml.service", vram_mib=10700, ram_mib=50)
    bed.tenant("llama.service", vram_mib=2500)
    intruder = bed.tenant("intruder.service", vram_mib=900)

    result = bed.cli("status", "--json", "-c", str(bed.config(CONFIG)))

    assert 0 == result.returncode, result.stderr
    report = json.loads(result.stdout)
    gpu = report["gpus"][0]
    assert (mib(15360), mib(15360 - 10700 - 2500 - 900), mib(2048), True) == (
        gpu["total_bytes"],
        gpu["free_bytes"],
        gpu["floor_bytes"],
        gpu["below_floor"],
    )
    assert [(intruder.main_pid, "intruder.service", mib(900), True)] == [
        (p["pid"], p["owner"], p["used_bytes"], "tenant.py --procdir" in p["cmdline"])
        for p in gpu["other_processes"]
    ]
    tenants = {t["unit"]: t for t in report["tenants"]}
    assert ("active", immich.main_pid, mib(10700), mib(3000)) == (
        tenants["immich-ml.service"]["active_state"],
        tenants["immich-ml.service"]["main_pid"],
        tenants["immich-ml.service"]["vram_bytes"],
        tenants["immich-ml.service"]["vram_budget_bytes"],
    )
    assert tenants["immich-ml.service"]["ram_bytes"] > mib(50)
    assert ("inactive", "not-found", 0) == (
        tenants["gone.service"]["active_state"],
        tenants["gone.service"]["load_state"],
        tenants["gone.service"]["vram_bytes"],
    )
    assert True is tenants["llama.service"]["protected"]


def test_status_text_marks_over_budget_tenants(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    bed.tenant("immich-ml.service", vram_mib=10700)

    result = bed.cli("status", "-c", str(bed.config(CONFIG)))

    assert 0 == result.returncode, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("immich-ml.service"))
    assert "10.4 GiB / 2.9 GiB  OVER" in line


def test_status_without_a_gpu_still_reports_host_ram(bed: Bed) -> None:
    result = bed.cli("status", "-c", str(bed.config(CONFIG)))

    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith(
        "GPUs: NVIDIA driver not loaded (nvidia.ko); guarding host RAM only\nhost RAM: available "
    )


def test_check_accepts_a_valid_config_and_warns_when_budgets_do_not_fit(bed: Bed) -> None:
    bed.gpu(total_mib=8192)  # 9000 MiB of budgets cannot fit 8 GiB minus a 2 GiB floor

    result = bed.cli("check", "-c", str(bed.config(CONFIG)))

    assert 0 == result.returncode, result.stderr
    assert f"{bed.dir}/vramwatch.toml: valid: 3 tenants, bus user\n" == result.stdout
    assert "warning: VRAM budgets sum to 8.8 GiB but the 1 GPU(s) present leave 6 GiB" in (
        result.stderr
    )


def test_check_with_a_hung_driver_answers_after_nvml_timeout(bed: Bed) -> None:
    bed.gpu(total_mib=15360, delays={"nvmlDeviceGetMemoryInfo_v2": 20_000})
    path = bed.config(CONFIG.replace('min_free_vram = "2GiB"', 'nvml_timeout = "500ms"'))

    t0 = time.monotonic()
    result = bed.cli("check", "-c", str(path))
    took = time.monotonic() - t0

    assert 0 == result.returncode, result.stderr
    assert "vramwatch: note: NVML did not answer within nvml_timeout (0.5s)\n" in result.stderr
    assert took < 10


def test_check_and_run_refuse_a_bad_config_with_exit_78(bed: Bed) -> None:
    path = bed.config(CONFIG.replace('vram = "1000MiB"', 'vram = "8G"'))

    check = bed.cli("check", "-c", str(path))
    run = bed.cli("run", "-c", str(path))

    expected = (
        f'vramwatch: {path}: tenant[2].vram: expected a size such as "3000MiB" or '
        '"2GiB", got "8G"\n'
    )
    assert (78, expected) == (check.returncode, check.stderr)
    assert (78, expected) == (run.returncode, run.stderr)


CLIENT = textwrap.dedent("""
    import json, sys
    from vramwatch.model import Verb
    from vramwatch.actuators.systemd import SystemdClient
    client = SystemdClient("user")
    out = {}
    for unit, verb in [("nosuch.service", Verb.RESTART), ("immich-ml.service", Verb.RESTART),
                       ("whisper.service", Verb.STOP)]:
        o = client.act(unit, verb)
        out[unit + ":" + verb.value] = [o.ok, o.result]
    s = client.unit_state("immich-ml.service")
    out["state"] = [s.load_state, s.active_state, s.main_pid, s.memory_max]
    print(json.dumps(out))
""")


def test_systemd_client_restarts_stops_and_reports_missing_units(bed: Bed) -> None:
    before = bed.tenant("immich-ml.service", properties={"MemoryMax": "1G"})
    bed.tenant("whisper.service")

    result = bed.sb.run([str(venv() / "bin" / "python"), "-c", CLIENT])

    out = json.loads(result.stdout)
    after = bed.sb.unit_state("immich-ml.service")
    assert {
        "nosuch.service:restart": [False, "org.freedesktop.systemd1.NoSuchUnit"],
        "immich-ml.service:restart": [True, "done"],
        "whisper.service:stop": [True, "done"],
        "state": ["loaded", "active", after.main_pid, 1024**3],
    } == out
    assert before.invocation_id != after.invocation_id
    assert "inactive" == bed.sb.unit_state("whisper.service").active_state
