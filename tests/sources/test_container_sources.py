"""Container tenants: attribution by cgroup (fixture trees), naming through a
scripted Engine API, and what the sampler makes of a failing one."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakenvml import FakeGpu, FakeNvmlState, FakeProcess, mib
from vramwatch import config as cfg
from vramwatch import status
from vramwatch.model import ContainerInfo, Owner
from vramwatch.policy import biggest_users
from vramwatch.sampler import Sampler
from vramwatch.sources import containers
from vramwatch.sources.cgroups import CgroupLayout, parse_proc_cgroup
from vramwatch.sources.containers import Catalog, Engine, EngineError
from vramwatch.sources.nvml import NvmlSource
from vramwatch.sources.procfs import ProcFs

UUID = "GPU-8f1c2a3e-0000-0000-0000-000000000000"
ML = "a1" * 32  # immich/immich-machine-learning, systemd cgroup driver
ML2 = "b2" * 32  # a second replica of that service, under Podman (systemd driver)
FRIGATE = "c3" * 32  # a container that is no tenant
FRESH = "d4" * 32  # ML re-created by `compose up`: a new id

CONFIG = cfg.parse(
    """
[gpu]
min_free_vram = "2GiB"
[host]
min_available_ram = "10%"
[[tenant]]
compose = "immich/immich-machine-learning"
vram = "3000MiB"
ram = "1GiB"
[[tenant]]
unit = "llama.service"
vram = "5000MiB"
""",
    "/etc/vramwatch.toml",
)
UNITS_ONLY = cfg.parse('[[tenant]]\nunit = "llama.service"\nvram = "5000MiB"\n')


def info(
    ident: str, name: str, project: str | None = None, service: str | None = None
) -> ContainerInfo:
    return ContainerInfo(ident, name, project, service)


class ScriptedEngine:
    """Stands for the Engine API: a list of running containers and their PIDs."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.containers: list[ContainerInfo] = []
        self.pids: dict[str, int] = {}
        self.error: EngineError | None = None
        self.listings = 0
        self.closed = False
        self.uid: int | None = 0  # who owns the socket: root's engine

    def owner_uid(self) -> int | None:
        return self.uid

    def running(self) -> list[ContainerInfo]:
        self.listings += 1
        if self.error is not None:
            raise self.error
        return list(self.containers)

    def pid(self, ident: str) -> int | None:
        if self.error is not None:
            raise self.error
        return self.pids.get(ident)

    def close(self) -> None:
        self.closed = True


def scripted(engine: ScriptedEngine) -> Callable[[str], Engine]:
    """The Sampler's engine factory, always answering with ``engine``."""
    return lambda _socket: engine  # type: ignore[return-value]  # duck-typed stand-in


# attribution ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unified", "expected"),
    [
        # Docker, systemd driver, cgroup v1/hybrid (name=systemd is the tracking line)
        (
            (
                f"9:name=systemd:/system.slice/docker-{ML}.scope\n"
                f"4:memory:/system.slice/docker-{ML}.scope\n0::/\n"
            ),
            False,
            Owner(f"/system.slice/docker-{ML}.scope", f"docker-{ML}.scope", "system", ML),
        ),
        # Docker, systemd driver, cgroup v2
        (
            f"0::/system.slice/docker-{ML}.scope\n",
            True,
            Owner(f"/system.slice/docker-{ML}.scope", f"docker-{ML}.scope", "system", ML),
        ),
        # Docker, cgroupfs driver (this machine's dockerd)
        (f"0::/docker/{ML}\n", True, Owner(f"/docker/{ML}", None, "system", ML)),
        # Podman, systemd driver: the payload sits in a "container" sub-cgroup
        (
            f"0::/machine.slice/libpod-{ML}.scope/container\n",
            True,
            Owner(
                f"/machine.slice/libpod-{ML}.scope/container", f"libpod-{ML}.scope", "system", ML
            ),
        ),
        # Podman's monitor is not the container
        (
            f"0::/machine.slice/libpod-conmon-{ML}.scope\n",
            True,
            Owner(
                f"/machine.slice/libpod-conmon-{ML}.scope", f"libpod-conmon-{ML}.scope", "system"
            ),
        ),
        # rootless Podman and rootless Docker, under the user's manager
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ML}.scope\n",
            True,
            Owner(
                f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ML}.scope",
                f"libpod-{ML}.scope",
                "user@1000",
                ML,
            ),
        ),
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker.service/docker/{ML}\n",
            True,
            Owner(
                f"/user.slice/user-1000.slice/user@1000.service/app.slice/docker.service/docker/{ML}",
                "docker.service",
                "user@1000",
                ML,
            ),
        ),
    ],
)
def test_a_container_process_is_known_by_its_cgroup_whatever_the_driver(
    text: str, unified: bool, expected: Owner
) -> None:
    actual = parse_proc_cgroup(text, unified=unified)

    assert expected == actual


# the sampler ------------------------------------------------------------------


def proc(root: Path, pid: int, cgroup: str, comm: str) -> None:
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(f"0::{cgroup}\n")
    (d / "comm").write_text(comm + "\n")
    (d / "status").write_text("RssAnon:\t4 kB\nRssShmem:\t0 kB\n")


def cgroup(root: Path, path: str, pids: list[int], anon: int, shmem: int = 0) -> None:
    d = root / "cgroup" / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    (d / "memory.stat").write_text(f"anon {anon}\nfile {mib(9000)}\nshmem {shmem}\n")


def world(tmp_path: Path) -> ProcFs:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 1000000 kB\nMemAvailable: 900000 kB\n")
    proc(tmp_path, 100, f"/system.slice/docker-{ML}.scope", "python")
    proc(tmp_path, 200, f"/machine.slice/libpod-{ML2}.scope/container", "python")
    proc(tmp_path, 300, f"/docker/{FRIGATE}", "frigate.detector")
    proc(tmp_path, 400, "/system.slice/llama.service", "llama-server")
    proc(tmp_path, 500, f"/docker/{FRESH}", "python")
    cgroup(tmp_path, f"/system.slice/docker-{ML}.scope", [100], mib(700), mib(100))
    # Podman puts the payload one level down; memory.stat of the scope counts it.
    cgroup(tmp_path, f"/machine.slice/libpod-{ML2}.scope", [], mib(500))
    cgroup(tmp_path, f"/machine.slice/libpod-{ML2}.scope/container", [200], mib(500))
    cgroup(tmp_path, f"/docker/{FRIGATE}", [300], mib(50))
    cgroup(tmp_path, "/system.slice/llama.service", [400], mib(20))
    cg = tmp_path / "cgroup"
    return ProcFs(tmp_path / "proc", layout=CgroupLayout("v2", cg, cg))


def gpu(*pids_mib: tuple[int, int]) -> list[FakeGpu]:
    return [FakeGpu(UUID, mib(15360), processes=tuple(FakeProcess(p, mib(n)) for p, n in pids_mib))]


def engine_with(*running: ContainerInfo) -> ScriptedEngine:
    engine = ScriptedEngine("unix:///run/docker.sock")
    engine.containers = list(running)
    engine.pids = {ML: 100, ML2: 200, FRIGATE: 300, FRESH: 500}
    return engine


SERVICE = ("immich", "immich-machine-learning")


def test_a_compose_tenant_sums_the_vram_and_cgroup_ram_of_every_container_of_its_service(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpu((100, 6000), (200, 2000), (300, 900), (400, 4000)))
    engine = engine_with(
        info(ML, "immich_ml_1", *SERVICE),
        info(ML2, "immich_ml_2", *SERVICE),
        info(FRIGATE, "frigate"),
    )
    sampler = Sampler(NvmlSource(), world(tmp_path), engine=scripted(engine))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    ml = snap.units["compose:immich/immich-machine-learning"]
    assert (
        mib(8000),
        mib(1300),  # anon + shmem of both memory cgroups, no page cache
        [100, 200],
        ["immich_ml_1", "immich_ml_2"],
        "memory.stat",
    ) == (
        ml.vram_bytes,
        ml.ram_bytes,
        sorted(ml.pids),
        [c.name for c in ml.containers],
        ml.ram_source,
    )
    assert mib(4000) == snap.units["llama.service"].vram_bytes
    assert None is snap.engine_error


def test_an_unmanaged_container_is_named_not_shown_as_its_scope(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpu((300, 900)))
    engine = engine_with(info(FRIGATE, "frigate", "frigate", "frigate"))
    sampler = Sampler(NvmlSource(), world(tmp_path), engine=scripted(engine))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    owner = snap.gpus[0].processes[0].owner
    assert owner is not None
    assert "container frigate (compose frigate/frigate)" == owner.label()


def test_no_socket_is_opened_when_no_tenant_is_a_container(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpu((100, 6000), (400, 4000)))
    opened: list[str] = []

    def engine(socket: str) -> Engine:
        opened.append(socket)
        return engine_with()  # type: ignore[return-value]  # a ScriptedEngine

    sampler = Sampler(NvmlSource(), world(tmp_path), engine=engine)

    snap = sampler.sample(UNITS_ONLY, 0)
    sampler.close()

    assert ([], mib(4000)) == (opened, snap.units["llama.service"].vram_bytes)


def test_a_new_container_id_is_named_at_once_not_after_the_listing_expires(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpu((100, 6000)))
    engine = engine_with(info(ML, "immich_ml_1", *SERVICE))
    sampler = Sampler(NvmlSource(), world(tmp_path), engine=scripted(engine))
    sampler.sample(CONFIG, 0)
    # `docker compose up` re-created the container: same service, new id and PID.
    engine.containers = [info(FRESH, "immich_ml_1", *SERVICE)]
    fake_nvml.write(gpu((500, 7000)))

    snap = sampler.sample(CONFIG, 10**9)  # one second later: well within LIST_TTL_NS
    sampler.close()

    ml = snap.units["compose:immich/immich-machine-learning"]
    assert (mib(7000), [FRESH], 2) == (
        ml.vram_bytes,
        [c.id for c in ml.containers],
        engine.listings,
    )


def test_a_failing_engine_blinds_container_tenants_only(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpu((100, 6000), (400, 4000)))
    engine = engine_with()
    engine.error = EngineError(
        containers.UNREACHABLE, "list containers: cannot reach the Engine API at unix:///x"
    )
    sampler = Sampler(NvmlSource(), world(tmp_path), engine=scripted(engine))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    ml = snap.units["compose:immich/immich-machine-learning"]
    assert (None, None, mib(4000), "list containers: cannot reach the Engine API at unix:///x") == (
        ml.vram_bytes,
        ml.ram_bytes,
        snap.units["llama.service"].vram_bytes,
        snap.engine_error,
    )


def test_an_engine_that_fails_later_keeps_the_names_it_gave_but_proves_nobody_within_budget(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpu((100, 6000)))
    engine = engine_with(info(ML, "immich_ml_1", *SERVICE))
    sampler = Sampler(NvmlSource(), world(tmp_path), engine=scripted(engine))
    sampler.sample(CONFIG, 0)
    engine.error = EngineError(containers.UNREACHABLE, "dockerd is gone")
    fake_nvml.write(gpu((100, 6000), (500, 500)))  # an id nobody can name now

    snap = sampler.sample(CONFIG, 20 * 10**9)
    sampler.close()

    ml = snap.units["compose:immich/immich-machine-learning"]
    # Known VRAM is a lower bound (it can prove the tenant over budget), never the whole.
    assert (None, {UUID: mib(6000)}, "dockerd is gone") == (
        ml.vram_bytes,
        dict(ml.vram_by_gpu),
        snap.engine_error,
    )


def test_a_service_with_no_running_container_holds_nothing(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    fake_nvml.write(gpu((400, 4000)))
    engine = engine_with(info(FRIGATE, "frigate"))
    sampler = Sampler(NvmlSource(), world(tmp_path), engine=scripted(engine))

    snap = sampler.sample(CONFIG, 0)
    sampler.close()

    ml = snap.units["compose:immich/immich-machine-learning"]
    assert (0, 0, "inactive", ()) == (ml.vram_bytes, ml.ram_bytes, ml.ram_source, ml.containers)


def test_the_catalog_finds_a_container_cgroup_once_and_again_after_it_moves() -> None:
    """Looked up once per id, its existence checked once a tick, asked again when gone."""
    engine = engine_with(info(ML, "immich_ml_1", *SERVICE))
    cgroups = {100: "/docker/" + ML}
    asked: list[int] = []

    def of_pid(pid: int) -> str | None:
        asked.append(pid)
        return cgroups.get(pid)

    catalog = Catalog(engine, of_pid)  # type: ignore[arg-type]
    catalog.refresh(0, set())
    present = {"/docker/" + ML}
    checked: list[str] = []

    def exists(path: str) -> bool:
        checked.append(path)
        return path in present

    first = catalog.cgroup(engine.containers[0], exists)
    second = catalog.cgroup(engine.containers[0], exists)  # same tick: not checked again
    present.clear()  # the cgroup is gone by the next tick: ask again
    catalog.refresh(10**9, set())
    third = catalog.cgroup(engine.containers[0], exists)

    assert (["/docker/" + ML] * 3, [100, 100], ["/docker/" + ML]) == (
        [first, second, third],
        asked,
        checked,
    )


def test_a_failing_engine_is_asked_again_after_a_pause_not_on_every_tick() -> None:
    engine = engine_with(info(ML, "immich_ml_1", *SERVICE))
    engine.error = EngineError(containers.TIMEOUT, "list containers: did not answer in time")
    # Each call answers at once (the clock does not move): see the test below for one
    # that hangs.
    catalog = Catalog(engine, lambda _pid: None, clock=lambda: 0)  # type: ignore[arg-type]

    for second in range(6):  # one tick a second
        catalog.refresh(second * 10**9, {ML})
    engine.error = None
    catalog.refresh(6 * 10**9, {ML})

    # Asked at 0 s and 5 s; the failure at 5 s holds the next try off until 10 s.
    assert (2, "list containers: did not answer in time") == (engine.listings, catalog.error)
    catalog.refresh(10 * 10**9, {ML})
    assert (3, None, ["immich_ml_1"]) == (
        engine.listings,
        catalog.error,
        [c.name for c in catalog.by_id.values()],
    )


# a container is its own cgroup, as the Engine API tells (issue 22, item 1) ---------

USER_1000 = "/user.slice/user-1000.slice/user@1000.service"
NAMED = cfg.parse(
    '[[tenant]]\ncontainer = "immich_ml_1"\nvram = "3000MiB"\nprotected = true\n', "<test>"
)


@pytest.mark.parametrize(
    ("cgroup", "label"),
    [
        # systemd-run --user --scope --unit=docker-<ID>.scope: any user may name a scope
        (f"{USER_1000}/app.slice/docker-{ML}.scope", f"docker-{ML}.scope (user@1000)"),
        (f"{USER_1000}/app.slice/libpod-{ML}.scope", f"libpod-{ML}.scope (user@1000)"),
        # a sub-cgroup of a user's own delegated unit, named by the bare id
        (f"{USER_1000}/app.slice/build.service/{ML}", "build.service (user@1000)"),
        # not a user's, and still not the container's own cgroup
        (f"/system.slice/ci-runner.service/docker-{ML}.scope", "ci-runner.service"),
    ],
    ids=["user docker scope", "user libpod scope", "bare id", "system sub-cgroup"],
)
@pytest.mark.parametrize("container_on_gpu", [True, False], ids=["on gpu", "idle"])
def test_a_cgroup_named_after_a_container_is_not_that_container(
    fake_nvml: FakeNvmlState, tmp_path: Path, cgroup: str, label: str, container_on_gpu: bool
) -> None:
    """Only the container's own cgroup (its PID's, as the Engine API names the PID)
    or one below it is the container's: a process elsewhere that carries the id
    is its own unit's, in the tenant's usage and in the no_candidate report."""
    fs = world(tmp_path)
    proc(tmp_path, 600, cgroup, "miner")
    fake_nvml.write(gpu(*([(100, 1000)] if container_on_gpu else []), (600, 9000)))
    engine = engine_with(info(ML, "immich_ml_1", *SERVICE))
    sampler = Sampler(NvmlSource(), fs, engine=scripted(engine))

    first = sampler.sample(NAMED, 0)
    recheck = sampler.sample(NAMED, 10**9, recheck=True)
    sampler.close()

    for snap in (first, recheck):
        ml = snap.units["container:immich_ml_1"]
        (miner,) = (p for p in snap.gpus[0].processes if p.pid == 600)
        assert miner.owner is not None
        assert (mib(1000) if container_on_gpu else 0, None, None) == (
            ml.vram_bytes,
            miner.owner.container_id,
            miner.owner.container,
        )
        assert [(label, mib(9000))] == [
            (label, n) for label, n in biggest_users(snap, snap.gpus[0]) if n == mib(9000)
        ]


ROOTLESS = "e5" * 32  # a rootless engine's container, under its user's manager


MINER_1001 = f"/user.slice/user-1001.slice/user@1001.service/app.slice/docker-{ROOTLESS}.scope"


@pytest.mark.parametrize(
    ("socket_uid", "expected"),
    [
        # user 1000's rootless engine: its container is under user@1000, and is its own;
        # user 1001's scope of the same name is not
        (1000, (mib(1000), ROOTLESS, None)),
        # the system's engine has no container under a user's manager: when it names a
        # PID there (one reused since), that cgroup is not taken as the container's
        (0, (0, None, None)),
    ],
    ids=["rootless engine of that user", "system engine"],
)
def test_a_container_under_a_users_manager_is_taken_only_from_that_users_engine(
    fake_nvml: FakeNvmlState,
    tmp_path: Path,
    socket_uid: int,
    expected: tuple[int, str | None, str | None],
) -> None:
    fs = world(tmp_path)
    proc(tmp_path, 700, f"{USER_1000}/user.slice/docker-{ROOTLESS}.scope", "python")
    cgroup(tmp_path, f"{USER_1000}/user.slice/docker-{ROOTLESS}.scope", [700], mib(300))
    proc(tmp_path, 600, MINER_1001, "miner")
    fake_nvml.write(gpu((700, 1000), (600, 9000)))
    engine = engine_with(info(ROOTLESS, "immich_ml_1"))
    engine.pids[ROOTLESS] = 700
    engine.uid = socket_uid
    sampler = Sampler(NvmlSource(), fs, engine=scripted(engine))

    snap = sampler.sample(NAMED, 0)
    sampler.close()

    owners = {p.pid: p.owner for p in snap.gpus[0].processes}
    assert owners[600] is not None and owners[700] is not None
    assert expected == (
        snap.units["container:immich_ml_1"].vram_bytes,
        owners[700].container_id,
        owners[600].container_id,
    )


def test_a_pid_reused_while_the_containers_cgroup_is_read_does_not_name_its_cgroup(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """The engine names the container's PID, the container exits and the PID goes to
    a user's process in a scope named after it: that scope is not the container."""
    fs = world(tmp_path)
    miner = f"{USER_1000}/app.slice/docker-{ML}.scope"
    proc(tmp_path, 600, miner, "miner")
    fake_nvml.write(gpu((600, 9000)))
    engine = engine_with(info(ML, "immich_ml_1", *SERVICE))
    answers = iter([600, 100])  # the first inspect's PID is the miner's by the time it is read

    def pid(ident: str) -> int | None:
        return next(answers, 100) if ident == ML else engine.pids.get(ident)

    engine.pid = pid  # type: ignore[method-assign]
    sampler = Sampler(NvmlSource(), fs, engine=scripted(engine))

    snap = sampler.sample(NAMED, 0)
    sampler.close()

    owner = snap.gpus[0].processes[0].owner
    assert owner is not None
    assert (0, None) == (snap.units["container:immich_ml_1"].vram_bytes, owner.container_id)


class HungEngine:
    """An Engine API that answers once, then hangs every call for its whole timeout."""

    def __init__(self, clock: list[int]) -> None:
        self.socket = "unix:///run/docker.sock"
        self.clock = clock
        self.hung = False
        self.calls: list[tuple[str, int]] = []  # (call, when it began, in seconds)

    def _call(self, what: str) -> None:
        if not self.hung:
            return
        self.calls.append((what, self.clock[0] // 10**9))
        self.clock[0] += int(containers.READ_TIMEOUT_S * 10**9)
        raise EngineError(containers.TIMEOUT, f"{what}: did not answer in time")

    def running(self) -> list[ContainerInfo]:
        self._call("list")
        return [info(ML, "immich_ml_1", *SERVICE)]

    def pid(self, ident: str) -> int | None:
        self._call("inspect")
        return 100

    def owner_uid(self) -> int | None:
        return 0

    def close(self) -> None:
        pass


def test_a_hung_engine_costs_one_timeout_per_back_off_not_one_per_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 22, item 11: the back-off runs from when the failure was seen (the call's
    end), so a dockerd that hangs every call holds a one-second loop up for one
    READ_TIMEOUT_S in each UNKNOWN_RETRY_NS after it, inspects included."""
    clock = [-20 * 10**9]
    engine = HungEngine(clock)
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock[0])  # the calls take time
    catalog = Catalog(engine, lambda _pid: None)  # type: ignore[arg-type]
    catalog.refresh(clock[0], {ML})  # named while dockerd answered
    container = catalog.by_id[ML]
    engine.hung = True
    tick, interval = 0, 10**9

    while tick < 60 * 10**9:  # the daemon's loop: a fixed grid, missed slots skipped
        clock[0] = tick
        catalog.refresh(tick, {ML})
        with contextlib.suppress(EngineError):
            catalog.cgroup(container, lambda _path: False)  # its cgroup is not known yet
        tick += interval
        if tick <= clock[0]:
            tick += ((clock[0] - tick) // interval + 1) * interval

    assert [("list", s) for s in (0, 10, 20, 30, 40, 50)] == engine.calls


# one membership rule (issue 22, item 6) -------------------------------------------

SERVICE_AND_NAMED = cfg.parse(
    """
[[tenant]]
compose = "immich/immich-machine-learning"
vram = "3000MiB"
ram = "1GiB"
[[tenant]]
container = "immich_ml_2"
vram = "3000MiB"
protected = true
""",
    "/etc/vramwatch.toml",
)


def test_a_container_that_is_its_own_tenant_is_no_member_of_its_services_tenant(
    fake_nvml: FakeNvmlState, tmp_path: Path
) -> None:
    """Sampling and status count a compose tenant by one rule: the containers of the
    service that no other tenant names, for VRAM and RAM alike."""
    fake_nvml.write(gpu((100, 1000), (200, 2000)))
    engine = engine_with(
        info(ML, "immich_ml_1", *SERVICE),
        info(ML2, "immich_ml_2", *SERVICE),
    )
    sampler = Sampler(NvmlSource(), world(tmp_path), engine=scripted(engine), pids=True)

    snap = sampler.sample(SERVICE_AND_NAMED, 0)
    sampler.close()
    rows = {t["tenant"]: t for t in status.report(SERVICE_AND_NAMED, snap, {}, None)["tenants"]}

    expected = {
        "compose:immich/immich-machine-learning": (mib(1000), mib(800), [100], ["immich_ml_1"]),
        "container:immich_ml_2": (mib(2000), mib(500), [200], ["immich_ml_2"]),
    }
    assert expected == {
        key: (u.vram_bytes, u.ram_bytes, sorted(u.pids), [c.name for c in u.containers])
        for key, u in snap.units.items()
    }
    assert expected == {
        key: (r["vram_bytes"], r["ram_bytes"], r["pids"], [c["name"] for c in r["containers"]])
        for key, r in rows.items()
    }
