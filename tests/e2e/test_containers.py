"""Containers are tenants (issue 13), on a real Docker Engine: the installed
``vramwatch run`` in the sandbox names container processes through the Engine
API, finds their RAM in their memory cgroup, restarts the over-budget one
through the API, and keeps guarding units when a container or dockerd goes.

The fake NVML gives VRAM to the containers' host PIDs (a ``proc`` line in the
bed's procdir, as tenant.py writes for units); ``reap`` frees it when the
process dies, as a restart does.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Bed, Dockerd, Podman
from tests.fakenvml import mib

INTERVAL_S = 1
GRACE_S = 2
ML = ("immich", "immich-machine-learning")
# PID 1 of a test container: leaves at once on SIGTERM (a restart takes well under
# stop_timeout), and sleeps in a child so that the shell can take the signal.
IDLE = "trap 'exit 0' TERM; sleep 100000 & wait"
# ...and one that also holds 64 MiB of anonymous memory in the shell itself.
HOG = "x=$(yes | head -c 67108864); trap 'exit 0' TERM; sleep 100000 & wait"


def config(dockerd: Dockerd, tenants: str, *, host_floor: str = "1MiB") -> str:
    return f"""
[daemon]
interval = "{INTERVAL_S}s"
bus = "user"
cooldown = "1m"
reclaim_timeout = "20s"

[gpu]
min_free_vram = "2GiB"
grace = "{GRACE_S}s"

[host]
min_available_ram = "{host_floor}"
grace = "{GRACE_S}s"

[containers]
socket = "{dockerd.socket}"
stop_timeout = "5s"
{tenants}"""


def declare(bed: Bed, pid: int, vram_mib: int) -> None:
    """The fake GPU lists ``pid`` (a container's host PID) holding ``vram_mib``."""
    tmp = bed.procdir / f".{pid}.tmp"
    tmp.write_text(f"proc 0 {pid} {mib(vram_mib)} compute\n")
    tmp.chmod(0o644)
    os.replace(tmp, bed.procdir / str(pid))


def pid_of(c: dict[str, Any]) -> int:
    return int(c["State"]["Pid"])


def test_the_over_budget_compose_container_is_restarted_its_neighbours_untouched(
    bed: Bed, dockerd: Dockerd
) -> None:
    started = time.monotonic()
    bed.gpu(total_mib=15360)
    ml = dockerd.run("immich_ml_1", IDLE, compose=ML)
    frigate = dockerd.run("frigate", IDLE, compose=("frigate", "frigate"))
    llama = bed.tenant("llama.service", vram_mib=2500)
    declare(bed, pid_of(ml), 10000)
    declare(bed, pid_of(frigate), 1500)
    tenants = """
[[tenant]]
compose = "immich/immich-machine-learning"
vram = "3000MiB"

[[tenant]]
container = "frigate"
vram = "2000MiB"

[[tenant]]
unit = "llama.service"
vram = "5000MiB"
"""
    daemon = bed.run_daemon(bed.config(config(dockerd, tenants)))

    restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 8)
    daemon.wait_event("reclaimed", timeout=15)
    after = dockerd.inspect(ml["Id"])

    assert {
        "tenant": "compose:immich/immich-machine-learning",
        "compose": "immich/immich-machine-learning",
        "container": "immich_ml_1",
        "container_id": ml["Id"],
        "resource": "vram",
    } == {k: restart.get(k) for k in ("tenant", "compose", "container", "container_id", "resource")}
    assert "unit" not in restart
    # Restarted, not re-created: same id, a new process, a new start time.
    assert (ml["Id"], True, True) == (
        after["Id"],
        pid_of(after) != pid_of(ml),
        after["State"]["StartedAt"] != ml["State"]["StartedAt"],
    )
    assert frigate["State"]["StartedAt"] == dockerd.inspect(frigate["Id"])["State"]["StartedAt"]
    assert llama.invocation_id == bed.sb.unit_state("llama.service").invocation_id
    assert [] == daemon.named("action_failed") + daemon.named("restart", tenant="llama.service")
    print(f"\ncompose restart end to end: {time.monotonic() - started:.1f}s")


def test_a_container_over_its_ram_budget_is_found_through_its_memory_cgroup(
    bed: Bed, dockerd: Dockerd
) -> None:
    bed.gpu(total_mib=15360)
    hog = dockerd.run("stt_workers", HOG)
    dockerd.run("quiet", IDLE)
    bed.sb.set_mem_available(256 * 2**20)  # under the 1 GiB floor for the whole test
    tenants = """
[[tenant]]
container = "stt_workers"
ram = "32MiB"

[[tenant]]
container = "quiet"
ram = "32MiB"
"""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the shell fills its variable
        status = bed.cli("status", "--json", "-c", str(bed.config(config(dockerd, tenants))))
        rows = {t["tenant"]: t for t in json.loads(status.stdout)["tenants"]}
        if (rows["container:stt_workers"]["ram_bytes"] or 0) > mib(64):
            break
        time.sleep(0.3)
    daemon = bed.run_daemon(bed.config(config(dockerd, tenants, host_floor="1GiB")))

    restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 8)

    assert ("container:stt_workers", "stt_workers", hog["Id"], "ram") == (
        restart.get("tenant"),
        restart.get("container"),
        restart.get("container_id"),
        restart.get("resource"),
    )
    assert restart["used_bytes"] > mib(64)
    assert rows["container:stt_workers"]["ram_source"].startswith("memory.stat")
    assert [] == daemon.named("restart", tenant="container:quiet")


def test_status_names_containers_by_name_and_compose_service(bed: Bed, dockerd: Dockerd) -> None:
    bed.gpu(total_mib=15360)
    ml = dockerd.run("immich_ml_1", IDLE, compose=ML)
    other = dockerd.run("frigate", IDLE, compose=("frigate", "frigate"))
    declare(bed, pid_of(ml), 3000)
    declare(bed, pid_of(other), 1500)
    path = bed.config(
        config(dockerd, '[[tenant]]\ncompose = "immich/immich-machine-learning"\nvram = "4GiB"\n')
    )

    result = bed.cli("status", "--json", "-c", str(path))
    text = bed.cli("status", "-c", str(path)).stdout

    rep = json.loads(result.stdout)
    tenant = rep["tenants"][0]
    assert (
        "compose:immich/immich-machine-learning",
        "compose",
        "running",
        [{"name": "immich_ml_1", "id": ml["Id"], "compose": "immich/immich-machine-learning"}],
        mib(3000),
    ) == (
        tenant["tenant"],
        tenant["kind"],
        tenant["active_state"],
        tenant["containers"],
        tenant["vram_bytes"],
    )
    assert [("container frigate (compose frigate/frigate)", "frigate", "frigate/frigate")] == [
        (p["owner"], p["container"], p["compose"]) for p in rep["gpus"][0]["other_processes"]
    ]
    assert f"container immich_ml_1 {ml['Id'][:12]} (compose immich/immich-machine-learning)" in text
    assert "not a tenant: pid" in text and "in container frigate (compose frigate/frigate)" in text


def test_a_container_removed_during_its_restart_is_a_clear_outcome(
    bed: Bed, dockerd: Dockerd
) -> None:
    bed.gpu(total_mib=15360)
    # PID 1 ignores SIGTERM: the restart waits its whole stop_timeout (5 s), time
    # enough to remove the container under it.
    victim = dockerd.run("victim", "sleep 100000")
    declare(bed, pid_of(victim), 14000)
    tenants = '[[tenant]]\ncontainer = "victim"\nvram = "3000MiB"\n'
    daemon = bed.run_daemon(bed.config(config(dockerd, tenants)))
    daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 8)

    dockerd.api().remove_container(victim["Id"], force=True)
    failed = daemon.wait_event("action_failed", timeout=15)

    assert ("container:victim", "victim") == (failed.get("tenant"), failed.get("container"))
    assert failed["result"] in ("no_such_container", "api_error"), failed
    assert None is daemon.proc.poll()


def test_a_stopped_dockerd_blinds_container_tenants_and_units_are_still_guarded(
    bed: Bed, dockerd: Dockerd
) -> None:
    bed.gpu(total_mib=15360)
    ml = dockerd.run("immich_ml_1", IDLE, compose=ML)
    declare(bed, pid_of(ml), 1000)
    tenants = """
[[tenant]]
compose = "immich/immich-machine-learning"
vram = "3000MiB"

[[tenant]]
unit = "whisper.service"
vram = "2000MiB"
"""
    daemon = bed.run_daemon(bed.config(config(dockerd, tenants)))
    daemon.wait_event("started", timeout=5)
    time.sleep(INTERVAL_S * 2)  # the catalog has named the container

    stopped = time.monotonic()
    dockerd.stop()
    print(f"\ndockerd stopped in {time.monotonic() - stopped:.1f}s")
    error = daemon.wait_event("sampling_error", timeout=15, source="engine")
    whisper = bed.tenant("whisper.service", vram_mib=13500)
    restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 8)
    bed.restarted("whisper.service", whisper)

    assert "cannot reach the Engine API" in error["message"], error
    assert ("whisper.service", "whisper.service") == (restart.get("tenant"), restart.get("unit"))
    assert [] == daemon.named("restart", tenant="compose:immich/immich-machine-learning")


def test_check_warns_of_an_unreachable_engine_and_of_containers_that_do_not_exist_yet(
    bed: Bed, dockerd: Dockerd
) -> None:
    bed.gpu(total_mib=15360)
    dockerd.run("immich_ml_1", IDLE, compose=ML)
    tenants = """
[[tenant]]
compose = "immich/immich-machine-learning"
vram = "3000MiB"

[[tenant]]
container = "frigate"
vram = "2000MiB"

[[tenant]]
compose = "paperless/ocr"
ram = "2GiB"
"""
    good = bed.config(config(dockerd, tenants))
    away = bed.config(
        config(dockerd, tenants).replace(dockerd.socket, f"unix://{bed.dir}/nothing.sock"),
        "away.toml",
    )

    present = bed.cli("check", "-c", str(good))
    absent = bed.cli("check", "-c", str(away))

    assert 0 == present.returncode, present.stderr
    assert [
        (
            "vramwatch: warning: container:frigate: no container named frigate exists right now "
            "(watched once it starts)"
        ),
        (
            "vramwatch: warning: compose:paperless/ocr: no container of compose service "
            "paperless/ocr exists right now (watched once it starts)"
        ),
    ] == [line for line in present.stderr.splitlines() if "warning" in line]
    assert 0 == absent.returncode, absent.stderr
    assert [
        (
            "vramwatch: warning: container tenants are configured but list containers: cannot "
            f"reach the Engine API at unix://{bed.dir}/nothing.sock: No such file or directory"
        )
    ] == [line for line in absent.stderr.splitlines() if "warning" in line]


def test_a_podman_container_is_restarted_through_podmans_docker_compatible_socket(
    bed: Bed, podman: Podman
) -> None:
    bed.gpu(total_mib=15360)
    worker = podman.run("speech_worker", IDLE, compose=("whisper", "worker"))
    declare(bed, pid_of(worker), 14000)
    tenants = '[[tenant]]\ncompose = "whisper/worker"\nvram = "3000MiB"\n'
    daemon = bed.run_daemon(bed.config(config(podman, tenants)))

    restart = daemon.wait_event("restart", timeout=INTERVAL_S + GRACE_S + 8)
    daemon.wait_event("reclaimed", timeout=15)
    after = podman.inspect(worker["Id"])

    assert ("compose:whisper/worker", "speech_worker", worker["Id"]) == (
        restart.get("tenant"),
        restart.get("container"),
        restart.get("container_id"),
    )
    assert (worker["Id"], True) == (after["Id"], pid_of(after) != pid_of(worker))
    assert f"/libpod-{worker['Id']}" in open(f"/proc/{pid_of(after)}/cgroup").read()


def test_a_users_scope_named_after_a_container_is_not_that_container(
    bed: Bed, dockerd: Dockerd
) -> None:
    """Issue 22, item 1: a local user runs ``systemd-run --user --scope
    --unit=docker-<ID>.scope`` with a real container's id and holds 13000 MiB
    there. The container (1000 MiB of its 3000 MiB) is not restarted: the scope is
    not the container's own cgroup as the Engine API locates it, and no_candidate
    names the scope, not the container."""
    bed.gpu(total_mib=15360)
    ml = dockerd.run("immich_ml_1", IDLE)
    declare(bed, pid_of(ml), 1000)
    scope = f"docker-{ml['Id']}.scope"
    # Run from a unit of the user's manager, which may then move it into the scope;
    # systemd-run execs sleep, so the unit's main PID is the scope's process.
    user_bus = {k: bed.sb.user_env()[k] for k in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")}
    miner = bed.sb.start_unit(
        "miner.service",
        ["systemd-run", "--user", "--scope", "--quiet", f"--unit={scope}", "--", "sleep", "1000"],
        env=user_bus,
    ).main_pid
    deadline = time.monotonic() + 10
    while f"/{scope}\n" not in Path(f"/proc/{miner}/cgroup").read_text():
        assert time.monotonic() < deadline, "the scope did not start"
        time.sleep(0.1)
    declare(bed, miner, 13000)
    tenants = '[[tenant]]\ncontainer = "immich_ml_1"\nvram = "3000MiB"\n'
    daemon = bed.run_daemon(bed.config(config(dockerd, tenants)))

    report = daemon.wait_event("no_candidate", timeout=INTERVAL_S + GRACE_S + 8)
    time.sleep(INTERVAL_S * 2)  # a restart would follow within a tick

    top = report["top_users"][0]
    assert (True, mib(13000)) == (top["owner"].startswith(scope), top["bytes"]), report
    assert [] == daemon.named("restart") + daemon.named("action_failed")
    assert ml["State"]["StartedAt"] == dockerd.inspect(ml["Id"])["State"]["StartedAt"]
