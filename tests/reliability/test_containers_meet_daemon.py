"""Issue 22 where containers meet the loop: the real Daemon, policy, Sampler and
container actuator over a fixture /proc and cgroup tree, the fake NVML and one
scripted Engine API that both the sampler and the actuator talk to.

Item 1: a user's scope named after a container is not that container, so the
container is not restarted for the user's VRAM. Item 6: a compose tenant's
members are the containers of its service that no other tenant names, in what
is sampled and in what is restarted.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from tests.fakenvml import FakeGpu, FakeNvmlState
from tests.reliability.test_sources_meet_daemon import USER, Host, events, one_gpu
from vramwatch import config as cfg
from vramwatch.actuators import Router
from vramwatch.actuators.containers import ContainerActuator
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import ContainerInfo, JobOutcome, Verb
from vramwatch.sampler import Sampler
from vramwatch.sources import containers
from vramwatch.sources.containers import EngineError
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

S = 10**9
MIB = 2**20
ML1 = ContainerInfo("a1" * 32, "immich_ml_1", "immich", "ml")
ML2 = ContainerInfo("b2" * 32, "immich_ml_2", "immich", "ml")


class Engine:
    """One Docker Engine: what the sampler lists and inspects, what the actuator
    restarts. Its containers' main PIDs are given; restarts are only recorded."""

    def __init__(self, running: dict[ContainerInfo, int]) -> None:
        self.socket = "unix:///run/docker.sock"
        self.pids = {c.id: pid for c, pid in running.items()}
        self.running_ = list(running)
        self.restarts: list[str] = []

    def running(self) -> list[ContainerInfo]:
        return list(self.running_)

    def pid(self, ident: str) -> int | None:
        return self.pids.get(ident)

    def owner_uid(self) -> int | None:
        return 0

    def inspect(self, ident: str) -> ContainerInfo:
        for c in self.running_:
            if ident in (c.id, c.name):
                return c
        raise EngineError(containers.NO_SUCH_CONTAINER, f"inspect {ident}: no such container")

    def service(self, project: str, service: str) -> list[ContainerInfo]:
        return [c for c in self.running_ if (c.project, c.service) == (project, service)]

    def restart(self, ident: str, t_s: int) -> None:
        self.restarts.append(ident)

    def stop(self, ident: str, t_s: int) -> None:
        self.restarts.append(ident)

    def close(self) -> None:
        pass


class Units:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        self.calls.append(unit)
        return JobOutcome(True, "done", "ok")


def run(
    tmp_path: Path,
    text: str,
    host: Host,
    gpus: list[FakeGpu],
    engine: Engine,
    fake_nvml: FakeNvmlState,
    seconds: list[int],
) -> tuple[Units, io.StringIO]:
    fake_nvml.write(gpus)
    path = tmp_path / "vramwatch.toml"
    path.write_text(text)
    out = io.StringIO()
    clock = [0]
    units = Units()
    config = cfg.load(path)
    sampler = Sampler(
        NvmlSource(),
        ProcFs(host.proc, layout=host.layout),
        engine=lambda _socket: engine,  # type: ignore[arg-type,return-value]
    )
    daemon = Daemon(
        path,
        config,
        Ports(
            sampler,
            Router(units, ContainerActuator(lambda: config, engine=lambda _s: engine)),  # type: ignore[arg-type,return-value]
            EventLog("stderr", "json", stream=out),
            clock=lambda: clock[0],
            notify=lambda state: False,
        ),
    )
    for s in seconds:
        clock[0] = s * S
        daemon.tick()
    sampler.close()
    return units, out


def test_a_users_scope_named_after_a_container_does_not_get_the_container_restarted(
    tmp_path: Path, fake_nvml: FakeNvmlState
) -> None:
    """Item 1: `systemd-run --user --scope --unit=docker-<ID>.scope` holds 9000 MiB.
    The container (1000 MiB of its 3000 MiB) is not restarted; no_candidate names
    the user's scope, not the container."""
    host = Host(tmp_path, 60_000_000)
    host.process(100, f"/system.slice/docker-{ML1.id}.scope")
    host.process(600, f"{USER}/app.slice/docker-{ML1.id}.scope")
    engine = Engine({ML1: 100})
    config = (
        '[gpu]\nmin_free_vram = "2GiB"\ngrace = "1s"\n'
        '[[tenant]]\ncontainer = "immich_ml_1"\nvram = "3000MiB"\n'
    )

    units, out = run(
        tmp_path,
        config,
        host,
        one_gpu(1000, (100, 1000), (600, 9000)),
        engine,
        fake_nvml,
        [0, 1, 2, 3],
    )

    assert ([], [], []) == (engine.restarts, units.calls, events(out, "restart"))
    (report,) = events(out, "no_candidate")
    assert {"owner": f"docker-{ML1.id}.scope (user@1000)", "bytes": 9000 * MIB} == report[
        "top_users"
    ][0]


def test_a_compose_restart_spares_the_protected_container_that_is_its_own_tenant(
    tmp_path: Path, fake_nvml: FakeNvmlState
) -> None:
    """Item 6: immich_ml_2 is its own, protected tenant and holds 4 GiB of RAM. The
    compose tenant is over its 1 GiB RAM budget by immich_ml_1's 1.5 GiB alone: it
    is restarted for that, and only immich_ml_1 is."""
    host = Host(tmp_path, 1_000_000)  # under the 10% floor of 64 GB
    for pid, container, mib_used in ((100, ML1, 1536), (200, ML2, 4096)):
        cgroup = f"/system.slice/docker-{container.id}.scope"
        host.process(pid, cgroup, anon_kib=mib_used * 1024)
        host.memory_cgroup(cgroup, anon=mib_used * MIB, shmem=0, file=0)
    engine = Engine({ML1: 100, ML2: 200})
    config = (
        '[host]\nmin_available_ram = "10%"\ngrace = "1s"\n'
        '[[tenant]]\ncompose = "immich/ml"\nram = "1GiB"\n'
        '[[tenant]]\ncontainer = "immich_ml_2"\nram = "1GiB"\nprotected = true\n'
    )

    units, out = run(tmp_path, config, host, one_gpu(10000), engine, fake_nvml, [0, 1, 2])

    (restart,) = events(out, "restart")
    assert ([ML1.id], []) == (engine.restarts, units.calls)
    assert ("compose:immich/ml", 1536 * MIB, "immich_ml_1", ML1.id) == (
        restart["tenant"],
        restart["used_bytes"],
        restart["container"],
        restart["container_id"],
    )
