"""Acting on containers: the Engine API's answers become outcomes, never exceptions;
the router sends each tenant to the actuator of its kind."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.builders import one_gpu
from vramwatch import config as cfg
from vramwatch.actuators import Router
from vramwatch.actuators.containers import ContainerActuator
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog, journal_fields
from vramwatch.model import ContainerInfo, Event, JobOutcome, Snapshot, UnitUsage, Verb
from vramwatch.sources import containers
from vramwatch.sources.containers import EngineError, _translate
from vramwatch.tenants import tenant_fields, with_tenant

ML1 = ContainerInfo("a1" * 32, "immich_ml_1", "immich", "ml")
ML2 = ContainerInfo("b2" * 32, "immich_ml_2", "immich", "ml")
CONFIG = cfg.parse(
    '[containers]\nstop_timeout = "1500ms"\n'
    '[[tenant]]\ncompose = "immich/ml"\nvram = "1GiB"\n'
    '[[tenant]]\ncontainer = "frigate"\nvram = "1GiB"\naction = "stop"\n'
    '[[tenant]]\nunit = "llama.service"\nvram = "1GiB"\n'
)


class ScriptedEngine:
    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.service_members = [ML1, ML2]
        self.by_name = {"frigate": ContainerInfo("c3" * 32, "frigate")}
        self.fail: dict[str, EngineError] = {}  # container id or "list" -> error
        self.calls: list[tuple[str, str, int]] = []
        self.block: threading.Event | None = None
        self.closed = False

    def inspect(self, ident: str) -> ContainerInfo:
        if "list" in self.fail:
            raise self.fail["list"]
        if ident not in self.by_name:
            raise EngineError(containers.NO_SUCH_CONTAINER, f"inspect {ident}: no such container")
        return self.by_name[ident]

    def service(self, project: str, service: str) -> list[ContainerInfo]:
        if "list" in self.fail:
            raise self.fail["list"]
        return list(self.service_members)

    def _call(self, verb: str, ident: str, t_s: int) -> None:
        self.calls.append((verb, ident, t_s))
        if self.block is not None:
            self.block.wait(5)
        if ident in self.fail:
            raise self.fail[ident]

    def restart(self, ident: str, t_s: int) -> None:
        self._call("restart", ident, t_s)

    def stop(self, ident: str, t_s: int) -> None:
        self._call("stop", ident, t_s)

    def close(self) -> None:
        self.closed = True


def actuator(engine: ScriptedEngine) -> ContainerActuator:
    return ContainerActuator(lambda: CONFIG, engine=lambda _socket: engine)  # type: ignore[arg-type,return-value]


def never() -> bool:
    return False


def test_a_compose_tenant_restarts_every_container_of_its_service_with_stop_timeout() -> None:
    engine = ScriptedEngine("unix:///run/docker.sock")

    outcome = actuator(engine).act("compose:immich/ml", Verb.RESTART, never)

    assert [("restart", ML1.id, 2), ("restart", ML2.id, 2)] == engine.calls  # t rounded up
    assert (True, "ok", True) == (outcome.ok, outcome.result, engine.closed)


def test_a_container_tenant_is_stopped_by_name() -> None:
    engine = ScriptedEngine("unix:///run/docker.sock")

    outcome = actuator(engine).act("container:frigate", Verb.STOP, never)

    assert ([("stop", "c3" * 32, 2)], "ok") == (engine.calls, outcome.result)


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        # no such container: nothing was done
        (
            {
                "list": EngineError(
                    containers.NO_SUCH_CONTAINER, "inspect frigate: no such container"
                )
            },
            ("no_such_container", False, 0),
        ),
        # the socket is gone: nothing was sent
        (
            {"list": EngineError(containers.UNREACHABLE, "cannot reach the Engine API")},
            ("unreachable", False, 0),
        ),
        # the call timed out: the engine may still be restarting it, so it is in flight
        (
            {ML1.id: EngineError(containers.TIMEOUT, "restart: did not answer in time")},
            ("timeout", True, 1),
        ),
        # refused outright: not accepted
        ({ML1.id: EngineError(containers.API_ERROR, "answered 500")}, ("api_error", False, 1)),
        # the second of two failed: the first was restarted, which is an action
        ({ML2.id: EngineError(containers.API_ERROR, "answered 500")}, ("api_error", True, 2)),
    ],
)
def test_each_engine_failure_is_an_outcome_that_says_whether_anything_was_done(
    fail: dict[str, EngineError], expected: tuple[str, bool, int]
) -> None:
    engine = ScriptedEngine("unix:///run/docker.sock")
    engine.fail = fail
    key = "container:frigate" if "list" in fail and "frigate" in str(fail) else "compose:immich/ml"

    outcome = actuator(engine).act(key, Verb.RESTART, never)

    assert expected == (outcome.result, outcome.accepted, len(engine.calls))
    assert False is outcome.ok


def test_an_unreachable_engine_api_reached_nothing_so_it_is_no_restart() -> None:
    """Before: it counted toward max_restarts, so a down dockerd made a restart storm."""
    engine = ScriptedEngine("unix:///run/docker.sock")
    engine.fail = {"list": EngineError(containers.UNREACHABLE, "cannot reach the Engine API")}
    refused = ScriptedEngine("unix:///run/docker.sock")
    refused.fail = {ML1.id: EngineError(containers.API_ERROR, "answered 500")}

    outcomes = [
        actuator(e).act("compose:immich/ml", Verb.RESTART, never) for e in (engine, refused)
    ]

    assert [("unreachable", False), ("api_error", True)] == [
        (o.result, o.reached) for o in outcomes
    ]


def test_a_service_with_no_running_container_is_no_such_container() -> None:
    engine = ScriptedEngine("unix:///run/docker.sock")
    engine.service_members = []

    outcome = actuator(engine).act("compose:immich/ml", Verb.RESTART, never)

    assert ("no_such_container", False, []) == (outcome.result, outcome.accepted, engine.calls)


def test_a_restart_that_runs_while_vramwatch_stops_is_interrupted_and_in_flight() -> None:
    engine = ScriptedEngine("unix:///run/docker.sock")
    engine.block = threading.Event()
    polls: list[int] = []

    def stopping() -> bool:
        polls.append(1)
        return len(polls) >= 3  # fed the watchdog twice, then SIGTERM

    outcome = actuator(engine).act("compose:immich/ml", Verb.RESTART, stopping)
    engine.block.set()

    assert ("interrupted", True, 3) == (outcome.result, outcome.accepted, len(polls))


def test_the_router_sends_units_to_systemd_and_containers_to_the_engine() -> None:
    seen: list[tuple[str, str]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
            seen.append((self.name, unit))
            return JobOutcome(True, "done", "")

    router = Router(Recorder("systemd"), Recorder("engine"))
    for key in ("llama.service", "container:frigate", "compose:immich/ml"):
        router.act(key, Verb.RESTART, never)

    assert [
        ("systemd", "llama.service"),
        ("engine", "container:frigate"),
        ("engine", "compose:immich/ml"),
    ] == seen


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (FileNotFoundError(2, "No such file or directory"), "unreachable"),
        (ConnectionRefusedError(111, "Connection refused"), "unreachable"),
        (TimeoutError("timed out"), "timeout"),
        (RuntimeError("surprise"), "api_error"),
    ],
)
def test_sdk_exceptions_translate_to_outcomes(exc: Exception, expected: str) -> None:
    actual = _translate("unix:///run/docker.sock", "restart x", exc)

    assert expected == actual.outcome


# journal fields ---------------------------------------------------------------


def test_a_container_tenant_event_names_the_tenant_container_and_id_and_no_unit() -> None:
    usage = UnitUsage("compose:immich/ml", 0, {}, 0, (), "", containers=(ML1, ML2))
    snapshot = Snapshot(0, (), None, {"compose:immich/ml": usage})  # type: ignore[arg-type]
    event = Event("restart", "warning", "restarting", {"unit": "compose:immich/ml"})

    fields = journal_fields({"event": event.name, **with_tenant(event, snapshot).fields})

    assert {
        "VRAMWATCH_TENANT": "compose:immich/ml",
        "VRAMWATCH_COMPOSE": "immich/ml",
        "VRAMWATCH_CONTAINER": "immich_ml_1,immich_ml_2",
        "VRAMWATCH_CONTAINER_ID": f"{ML1.id},{ML2.id}",
    } == {k: v for k, v in fields.items() if k.startswith("VRAMWATCH_") and k != "VRAMWATCH_EVENT"}
    assert "OBJECT_SYSTEMD_UNIT" not in fields


def test_a_unit_tenant_event_keeps_its_unit_and_gains_the_tenant() -> None:
    actual = tenant_fields("llama.service")

    assert {"tenant": "llama.service", "unit": "llama.service"} == actual


# where the parts meet: the real Daemon, policy and router ---------------------


class Scripted:
    def __init__(self, make: Callable[[int], Snapshot]) -> None:
        self.make = make

    def sample(self, config: cfg.Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        return self.make(now_ns)

    def close(self) -> None:
        pass


def test_the_daemon_restarts_a_compose_tenant_through_the_engine_and_names_it_in_every_event(
    tmp_path: Path,
) -> None:
    """A dockerd that is gone when the action comes: action_failed, not in flight, named
    by tenant and container, and systemd is never asked to act on a container."""
    key = "compose:immich/ml"
    engine = ScriptedEngine("unix:///run/docker.sock")
    engine.fail = {"list": EngineError(containers.UNREACHABLE, "cannot reach the Engine API")}
    units: list[str] = []

    class Systemd:
        def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
            units.append(unit)
            return JobOutcome(True, "done", "")

    def snap(now: int) -> Snapshot:
        s = one_gpu(now, hog_mib=10700, free_mib=1000, unit=key)
        usage = dataclasses.replace(s.units[key], containers=(ML1,))
        return dataclasses.replace(s, units={key: usage})

    path = tmp_path / "vramwatch.toml"
    path.write_text(
        '[gpu]\nmin_free_vram = "2GiB"\ngrace = "0s"\n'
        '[[tenant]]\ncompose = "immich/ml"\nvram = "3000MiB"\n'
    )
    out = io.StringIO()
    config = cfg.load(path)
    daemon = Daemon(
        path,
        config,
        Ports(
            Scripted(snap),
            Router(Systemd(), ContainerActuator(lambda: config, engine=lambda _s: engine)),  # type: ignore[arg-type,return-value]
            EventLog("stderr", "json", stream=out),
            clock=lambda: 0,
            notify=lambda state: False,
        ),
    )

    daemon.tick(0)

    logged = [json.loads(line) for line in out.getvalue().splitlines()]
    restart, failed = (
        next(e for e in logged if e["event"] == n) for n in ("restart", "action_failed")
    )
    named = {"tenant": key, "compose": "immich/ml", "container": ML1.name, "container_id": ML1.id}
    assert named == {k: restart.get(k) for k in named}
    assert (named, "unreachable") == ({k: failed.get(k) for k in named}, failed["result"])
    assert "unit" not in restart and "unit" not in failed
    assert {} == dict(daemon.history.in_flight)  # not accepted: nothing holds the GPU
    assert [] == units


# one membership rule (issue 22, item 6) -------------------------------------------

NAMED_MEMBER = cfg.parse(
    '[[tenant]]\ncompose = "immich/ml"\nvram = "1GiB"\n'
    '[[tenant]]\ncontainer = "immich_ml_2"\nvram = "1GiB"\nprotected = true\n'
)


def test_a_compose_restart_leaves_a_container_that_is_a_tenant_of_its_own_alone() -> None:
    engine = ScriptedEngine("unix:///run/docker.sock")
    act = ContainerActuator(lambda: NAMED_MEMBER, engine=lambda _socket: engine)  # type: ignore[arg-type,return-value]

    outcome = act.act("compose:immich/ml", Verb.RESTART, never)

    assert ([("restart", ML1.id, 10)], "ok") == (engine.calls, outcome.result)


def test_a_compose_service_whose_only_container_is_another_tenant_is_not_acted_on() -> None:
    engine = ScriptedEngine("unix:///run/docker.sock")
    engine.service_members = [ML2]
    act = ContainerActuator(lambda: NAMED_MEMBER, engine=lambda _socket: engine)  # type: ignore[arg-type,return-value]

    outcome = act.act("compose:immich/ml", Verb.RESTART, never)

    assert (
        [],
        "no_such_container",
        False,
        (
            "no running container of compose service immich/ml that is not a tenant of its own "
            f"(immich_ml_2 ({ML2.id[:12]}))"
        ),
    ) == (engine.calls, outcome.result, outcome.accepted, outcome.detail)
