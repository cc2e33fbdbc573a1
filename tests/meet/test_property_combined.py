"""The new features together (issue 22, "the habit that catches the sixteenth"):
hypothesis drives the real Daemon, policy and Sampler over the moving fixture host
with every feature of the last round switched on at once:

* a GPU in MIG mode with a tenant pinned by index (all its slices) and a tenant
  reserving on one slice; a whole GPU beside it;
* reserving tenants whose usage turns unknown (NVML says N/A);
* release commands that free nothing, one resource or everything, with hostile
  output (NUL bytes, invalid UTF-8, a flood, a forked child that keeps the pipe);
* an ``after_action`` hook that floods its pipe, forks, fails or overruns;
* reloads while a release is being waited for (SIGHUP during the wait);
* a compose service whose second container is a protected tenant of its own, and
  a local user's scope named after the first container's id (SPEC "Tenants");
* an Engine API that fails every call (a hung or gone dockerd);
* GPU faults, job timeouts, refusals, raising clients, dry-run toggles.

After every tick, besides the promises of ``test_property``:

* ``tick`` never raised;
* every call reached a configured, unprotected tenant that was, at that moment,
  over its budget on the resource (as its pin counts it: an index on a MIG GPU
  means every slice of it) and that resource was under its floor;
* one incident, one victim, across MIG slices;
* no action on a container that is another tenant, and none for memory a
  container's look-alike scope holds;
* a tenant that keeps a resource it was acted on for is not ``released``: a
  ``released`` entry means every resource the action held came back;
* no wait spins: a tick samples a bounded number of times, and takes a bounded
  wall time (release time limits, not forked children, bound it);
* hooks: a hook that succeeds is never reported failed, and nothing it started
  outlives its time limit.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.meet.world import (
    GIB,
    GPU_TOTAL,
    Bed,
    Call,
    Clock,
    World,
    WorldActuator,
    WorldGpus,
    mig_uuid,
    uuid_of,
)
from vramwatch import config as cfg
from vramwatch.actuators import Router
from vramwatch.actuators.containers import ContainerActuator
from vramwatch.daemon import Daemon, Ports
from vramwatch.events import EventLog
from vramwatch.model import Action, ContainerInfo, JobOutcome, Snapshot, Verb
from vramwatch.sampler import Sampler
from vramwatch.sources import containers
from vramwatch.sources.containers import EngineError
from vramwatch.state import StateStore

# GPU 0 is whole (16 GiB); GPU 1 is in MIG mode, two 8 GiB slices.
WHOLE = uuid_of(0)
SLICE0 = mig_uuid(1, 0)
SLICE1 = mig_uuid(1, 1)
DEVICES = (WHOLE, SLICE0, SLICE1)

A = "a.service"  # pinned to GPU 1 by index: its VRAM budget counts both slices; has a release
B = "b.service"  # reserves its budget on MIG slice 0
C = "c.service"  # unpinned, anywhere; has a release
D = "d.service"  # protected
X = "x.service"  # holds memory, no tenant
# A compose service of two containers; the second is also a protected tenant of its own.
ML1 = ContainerInfo("a1" * 32, "immich_ml_1", "immich", "ml")
ML2 = ContainerInfo("b2" * 32, "immich_ml_2", "immich", "ml")
POOL = "compose:immich/ml"
SOLO = "container:immich_ml_2"
# A local user's scope named after ML1: anyone can make one (systemd-run --user --scope).
FAKE_ML1 = f"/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ML1.id}.scope"
UNITS = (A, B, C, D, POOL, SOLO)
RELEASING = (A, C)

FLOOR = 1 * GIB
RAM_FLOOR = 8 * GIB
RELEASE_TIMEOUT_S = 1.0
HOOK_TIMEOUT_S = 1.0
# Wall time a tick may take beyond its release waits: sampling, a hook start.
TICK_SLACK_S = 1.5
# A release wait samples at most every RELEASE_POLL_S (0.5 s): a handful per wait.
SAMPLES_PER_WAIT_MAX = 8

RELEASE_SH = r"""#!/bin/sh
# $1: the world's root; $2: the unit. What it gives back and what it prints are set
# by the test in files beside the markers.
mode=$(cat "$1/mode-$2" 2>/dev/null || echo vram)
out=$(cat "$1/output" 2>/dev/null || echo ok)
case "$out" in
  nul) printf 'unloaded\000model \377\376 done\n' ;;
  flood) head -c 3000000 /dev/zero | tr '\000' 'x' ;;
  fork) sh -c 'sleep 5' vw-combined-child & echo forked ;;
  fail) echo "unload refused" >&2; exit 3 ;;
  *) echo ok ;;
esac
[ "$mode" = none ] || printf '%s' "$mode" > "$1/released-$2"
"""

HOOK_SH = r"""#!/bin/sh
# $1: the world's root. How the hook behaves is set by the test.
mode=$(cat "$1/hook-mode" 2>/dev/null || echo ok)
case "$mode" in
  flood) head -c 300000 /dev/zero | tr '\000' 'y' ;;
  fork) sh -c 'sleep 0.3' vw-combined-child >/dev/null 2>&1 & echo forked ;;
  fail) echo "notifier down" >&2; exit 4 ;;
  slow) sh -c 'sleep 30' vw-combined-slow & sh -c 'sleep 30' vw-combined-slow ;;
  *) echo "$VRAMWATCH_EVENT" ;;
esac
"""


def config_text(root: Path, dry_run: bool, hooks: bool) -> str:
    release = f'release = ["/bin/sh", "{root}/release.sh", "{root}", "{{unit}}"]\n'
    text = f"""
[daemon]
interval = "2s"
cooldown = "4s"
max_restarts = 3
restart_window = "1m"
reclaim_timeout = "10s"
dry_run = {"true" if dry_run else "false"}
[gpu]
min_free_vram = "1GiB"
grace = "2s"
[host]
min_available_ram = "8GiB"
grace = "2s"
"""
    if hooks:
        text += f'[hooks]\nafter_action = ["/bin/sh", "{root}/hook.sh", "{root}"]\ntimeout = "1s"\n'
    text += f"""
[[tenant]]
unit = "{A}"
vram = "4GiB"
ram = "12GiB"
gpu = 1
{release.format(unit=A)}release_timeout = "1s"

[[tenant]]
unit = "{B}"
vram = "3GiB"
ram = "10GiB"
reserve = true
gpu = "{SLICE0}"

[[tenant]]
unit = "{C}"
vram = "3GiB"
ram = "8GiB"
{release.format(unit=C)}release_timeout = "1s"

[[tenant]]
unit = "{D}"
vram = "2GiB"
ram = "6GiB"
protected = true

[[tenant]]
compose = "immich/ml"
vram = "3GiB"
ram = "6GiB"

[[tenant]]
container = "immich_ml_2"
vram = "2GiB"
protected = true
"""
    return text


class Truth:
    """What is true of the world, by the contract (not by vramwatch's code)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def cgroups_of(self, unit: str) -> tuple[str, ...]:
        """A tenant's own cgroups: a unit's; a container's scope; a compose tenant's
        members, the service's containers no other tenant names."""
        if unit == POOL:
            return (scope(ML1),)
        if unit == SOLO:
            return (scope(ML2),)
        return (self.world.cgroup_of(unit),)

    def devices_of(self, tenant: cfg.Tenant) -> tuple[str, ...]:
        """The devices a tenant's VRAM budget counts: its pin (an index on a MIG GPU
        means every slice of it), else every device."""
        if tenant.gpu is None:
            return DEVICES
        if tenant.gpu == 1 or tenant.gpu == uuid_of(1):
            return (SLICE0, SLICE1)
        if tenant.gpu == 0 or tenant.gpu == WHOLE:
            return (WHOLE,)
        return (str(tenant.gpu),)

    def vram(self, unit: str, devices: tuple[str, ...]) -> int:
        cgroups = self.cgroups_of(unit)
        return sum(
            n
            for p in self.world.procs.values()
            if p.cgroup in cgroups
            for u, n in p.vram.items()
            if u in devices
        )

    def ram(self, unit: str) -> int:
        cgroups = self.cgroups_of(unit)
        return sum(p.ram for p in self.world.procs.values() if p.cgroup in cgroups)

    def over(self, config: cfg.Config, unit: str) -> frozenset[str]:
        """Resource keys the unit is over its budget on."""
        tenant = config.tenant(unit)
        if tenant is None:
            return frozenset()
        keys: set[str] = set()
        devices = self.devices_of(tenant)
        if tenant.vram_bytes is not None and self.vram(unit, devices) > tenant.vram_bytes:
            keys |= {f"gpu:{u}" for u in devices if self.vram(unit, (u,)) > 0}
        if tenant.ram_bytes is not None and self.ram(unit) > tenant.ram_bytes:
            keys.add("ram")
        return frozenset(keys)

    def floor(self, config: cfg.Config, device: str) -> int:
        """min_free_vram plus the unused budgets reserved there (by the true usage)."""
        floor = FLOOR
        for tenant in config.tenants:
            if tenant.reserve and tenant.vram_bytes is not None and tenant.gpu == device:
                floor += max(0, tenant.vram_bytes - self.vram(tenant.unit, (device,)))
        return floor

    def breached(self, config: cfg.Config) -> frozenset[str]:
        w = self.world
        keys = {f"gpu:{u}" for u in DEVICES if w.device_free(u) < self.floor(config, u)}
        if w.mem_available() < RAM_FLOOR:
            keys.add("ram")
        return frozenset(keys)


class TruthActuator(WorldActuator):
    """The scripted systemd, recording the contract's truth at each call."""

    truth: Truth

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        assert self.daemon is not None
        over = self.truth.over(self.daemon.config, unit)
        breached = self.truth.breached(self.daemon.config)
        n = len(self.calls)
        outcome = super().act(unit, verb, should_stop)
        self.calls[n].over = over
        self.calls[n].breached = breached
        return outcome


def scope(container: ContainerInfo) -> str:
    """A container's own cgroup, as dockerd's systemd driver makes it."""
    return f"/system.slice/docker-{container.id}.scope"


class FakeEngine:
    """dockerd as far as the world goes: two running containers whose main processes
    live in their own scopes; a restart restarts those; ``fails`` makes every call
    fail as a hung or gone engine's does."""

    socket = "unix:///run/docker.sock"

    def __init__(self, world: World, actuator: TruthActuator) -> None:
        self.world = world
        self.actuator = actuator
        self.fails = False
        self.calls = 0
        self.main = {c.id: world.spawn_in(scope(c), {}, 64 * 2**20) for c in (ML1, ML2)}
        self.acted_on: list[ContainerInfo] = []

    def _call(self) -> None:
        self.calls += 1
        if self.fails:
            raise EngineError(containers.TIMEOUT, "GET /containers/json: timed out after 5s")

    def running(self) -> list[ContainerInfo]:
        self._call()
        return [ML1, ML2]

    def pid(self, ident: str) -> int | None:
        self._call()
        for c in (ML1, ML2):
            if ident in (c.id, c.name):
                return self.main[c.id]
        return None

    def owner_uid(self) -> int | None:
        return 0

    def inspect(self, ident: str) -> ContainerInfo:
        self._call()
        for c in (ML1, ML2):
            if ident in (c.id, c.name):
                return c
        raise EngineError(containers.NO_SUCH_CONTAINER, f"inspect {ident}: no such container")

    def service(self, project: str, service: str, *, every: bool = False) -> list[ContainerInfo]:
        self._call()
        return [c for c in (ML1, ML2) if (c.project, c.service) == (project, service)]

    def restart(self, ident: str, t_s: int) -> None:
        self._do(ident, Verb.RESTART)

    def stop(self, ident: str, t_s: int) -> None:
        self._do(ident, Verb.STOP)

    def _do(self, ident: str, verb: Verb) -> None:
        self._call()
        container = next(c for c in (ML1, ML2) if ident in (c.id, c.name))
        self.acted_on.append(container)
        config = self.actuator.daemon.config if self.actuator.daemon else None
        assert config is not None
        key = POOL if container is ML1 else SOLO
        truth = self.actuator.truth
        self.actuator.calls.append(
            Call(
                key,
                verb,
                self.actuator.clock(),
                "done",
                truth.over(config, key),
                truth.breached(config),
            )
        )
        w = self.world
        for pid in [p.pid for p in w.procs.values() if p.cgroup == scope(container)]:
            del w.procs[pid]
        self.main[container.id] = w.spawn_in(scope(container), {}, 64 * 2**20)

    def close(self) -> None:
        pass


class Combined:
    """The bed: a daemon with every feature on, and counters around its seams."""

    def __init__(self, root: Path, dry_run: bool, hooks: bool) -> None:
        self.root = root
        self.world = World(root / "host", gpu_count=2, mig={1: 2})
        self.truth = Truth(self.world)
        (self.world.root / "release.sh").write_text(RELEASE_SH)
        (self.world.root / "hook.sh").write_text(HOOK_SH)
        self.hooks_on = hooks
        self.path = root / "vramwatch.toml"
        self.path.write_text(config_text(self.world.root, dry_run, hooks))
        self.clock = Clock()
        self.actuator = TruthActuator(self.world, self.clock)
        self.actuator.truth = self.truth
        self.out = io.StringIO()
        (root / "state").mkdir()
        self.state = StateStore(root / "state")
        self.samples = 0
        self.reload_in_wait = False
        self.engine = FakeEngine(self.world, self.actuator)
        sampler = Sampler(
            WorldGpus(self.world),
            self.world.procfs(),
            engine=lambda _socket: self.engine,  # type: ignore[arg-type,return-value]
        )
        real_sample = sampler.sample

        def counted(config: cfg.Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
            self.samples += 1
            if self.reload_in_wait and self.waiting:
                self.reload_in_wait = False
                self.daemon._on_reload(signal.SIGHUP, None)  # SIGHUP during the wait
            return real_sample(config, now_ns, recheck=recheck)

        sampler.sample = counted  # type: ignore[method-assign]
        self.daemon = Daemon(
            self.path,
            cfg.load(self.path),
            Ports(
                sampler,
                Router(
                    self.actuator,
                    ContainerActuator(
                        lambda: self.daemon.config,
                        engine=lambda _socket: self.engine,  # type: ignore[arg-type,return-value]
                    ),
                ),
                EventLog("stderr", "json", stream=self.out),
                clock=self.clock,
                notify=lambda state: False,
                state=self.state,
            ),
        )
        self.actuator.daemon = self.daemon
        self.bed = Bed(self.world, self.daemon, self.actuator, self.clock, self.out, self.path)
        # Which action each call and each release wait was for: the journal names a MIG
        # slice's GPU by its index only, the action by its resource key.
        self.applied: list[tuple[Action, int, int]] = []  # action, calls before, after
        self.waiting = False
        real_apply = self.daemon._apply

        def apply_(action: Action, snapshot: object) -> None:
            before = len(self.actuator.calls)
            self.waiting = True
            try:
                real_apply(action, snapshot)  # type: ignore[arg-type]
            finally:
                self.waiting = False
            self.applied.append((action, before, len(self.actuator.calls)))

        self.daemon._apply = apply_  # type: ignore[method-assign]

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


DEVICE = st.sampled_from(DEVICES)
UNIT = st.sampled_from((A, B, C, D, X, "ml1", "ml2", "fake_ml1"))
# Where a step's memory goes: a unit, a container's own scope, or the look-alike scope.
CGROUP_OF = {"ml1": scope(ML1), "ml2": scope(ML2), "fake_ml1": FAKE_ML1}
STEP = st.one_of(
    st.tuples(st.just("vram"), UNIT, DEVICE, st.integers(-3, 3)),
    st.tuples(st.just("ram"), UNIT, st.integers(-6, 6)),
    st.tuples(st.just("unknown"), st.sampled_from((B, C)), st.booleans()),
    st.tuples(
        st.just("release_gives"),
        st.sampled_from(RELEASING),
        st.sampled_from(("none", "vram", "ram", "all")),
    ),
    st.tuples(st.just("release_prints"), st.sampled_from(("ok", "nul", "flood", "fork", "fail"))),
    st.tuples(st.just("hook"), st.sampled_from(("ok", "flood", "fork", "fail", "slow"))),
    st.tuples(st.just("reload_in_wait"), st.just(True)),
    st.tuples(st.just("engine_fault"), st.booleans()),
    st.tuples(st.just("gpu_fault"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("script"), st.sampled_from(("done", "done", "timeout", "refused", "raise"))),
    st.tuples(st.just("finish_pending"), st.just(True)),
    st.tuples(st.just("reload"), st.booleans(), st.booleans()),
    st.tuples(st.just("wait"), st.integers(1, 6)),
)


def grow(w: World, who: str, gpu: str | None = None, vram: int = 0, ram: int = 0) -> None:
    """Grow a unit, or a process of a container's scope (or the look-alike scope)."""
    cgroup = CGROUP_OF.get(who)
    if cgroup is None:
        w.grow(who, gpu=gpu, vram=vram, ram=ram)
        return
    pids = [p.pid for p in w.procs.values() if p.cgroup == cgroup]
    if not pids:
        w.spawn_in(cgroup, {gpu: max(0, vram)} if gpu else {}, max(0, ram))
        return
    p = w.procs[pids[-1]]
    if gpu is not None:
        p.vram[gpu] = max(0, p.vram.get(gpu, 0) + vram)
    p.ram = max(0, p.ram + ram)
    w.sync()


def apply_step(bed: Combined, step: tuple[object, ...]) -> None:
    w = bed.world
    op = step[0]
    if op == "vram":
        _, unit, device, gib = step
        grow(w, str(unit), gpu=str(device), vram=int(gib) * GIB)  # type: ignore[call-overload]
    elif op == "ram":
        _, unit, gib = step
        grow(w, str(unit), ram=int(gib) * GIB)  # type: ignore[call-overload]
    elif op == "engine_fault":
        bed.engine.fails = bool(step[1])
    elif op == "unknown":
        _, unit, on = step
        for pid in w.unit_pids(str(unit)):
            w.procs[pid].vram_unknown = bool(on)
    elif op == "release_gives":
        _, unit, mode = step
        (w.root / f"mode-{unit}").write_text(str(mode))
    elif op == "release_prints":
        (w.root / "output").write_text(str(step[1]))
    elif op == "hook":
        (w.root / "hook-mode").write_text(str(step[1]))
    elif op == "reload_in_wait":
        bed.reload_in_wait = True
    elif op == "gpu_fault":
        _, gpu, on = step
        if on:
            w.gpu_errors[int(gpu)] = "GPU_IS_LOST: GPU is lost"  # type: ignore[call-overload]
        else:
            w.gpu_errors.pop(int(gpu), None)  # type: ignore[call-overload]
    elif op == "script":
        bed.actuator.script.append(str(step[1]))
    elif op == "finish_pending":
        bed.actuator.finish_pending()
    elif op == "reload":
        _, dry, hooks = step
        bed.path.write_text(config_text(w.root, bool(dry), bool(hooks)))
        bed.hooks_on = bool(hooks)
        bed.daemon.reload()


def tenant_of(event: dict[str, object]) -> str:
    """The tenant an entry is about: VRAMWATCH_TENANT (a container tenant has no unit)."""
    return str(event.get("tenant") or event["unit"])


class Oracle:
    def __init__(self, bed: Combined) -> None:
        self.bed = bed
        self.events_seen = 0
        self.applied_seen = 0
        self.holds: dict[str, str] = {}  # resource key -> unit whose accepted action holds it

    def check(
        self,
        before_over: dict[str, frozenset[str]],
        before_breached: frozenset[str],
        samples: int,
        took_s: float,
    ) -> None:
        bed = self.bed
        events = bed.events()
        new_events = events[self.events_seen :]
        self.events_seen = len(events)
        applied = bed.applied[self.applied_seen :]
        self.applied_seen = len(bed.applied)

        # No wait spins: each action samples a bounded number of times.
        waits = sum(1 for e in new_events if e["event"] in ("released", "release_failed"))
        assert samples <= 2 + len(applied) * (1 + SAMPLES_PER_WAIT_MAX), (samples, new_events)
        # Hostile release output and forked children do not hold the loop.
        assert took_s <= TICK_SLACK_S + waits * (RELEASE_TIMEOUT_S + 0.6), (took_s, new_events)

        # Settlements free holds (a MIG slice's entry names its GPU's index only: free
        # every slice the unit held there).
        for e in new_events:
            if e["event"] not in ("reclaimed", "not_reclaimed"):
                continue
            unit = tenant_of(e)
            if e["resource"] == "ram":
                keys = {"ram"}
            elif e["gpu"] == 0:
                keys = {f"gpu:{WHOLE}"}
            else:
                keys = {f"gpu:{SLICE0}", f"gpu:{SLICE1}"}
            for k in keys:
                if self.holds.get(k) == unit:
                    del self.holds[k]

        # Every call: an unprotected tenant, over budget on a breached resource. After a
        # release that did not give everything back the configured action follows
        # (issue 22 item 7): the re-check before the release is what justified it.
        released_failed = {tenant_of(e) for e in new_events if e["event"] == "release_failed"}
        for action, before, after in applied:
            for call in bed.actuator.calls[before:after]:
                assert call.unit == action.unit
                tenant = bed.daemon.config.tenant(call.unit)
                assert tenant is not None and not tenant.protected, call
                if call.unit in released_failed:
                    breached, over = before_breached, before_over.get(call.unit, frozenset())
                else:
                    breached, over = call.breached, call.over
                assert action.resource_key in breached, (action, call)
                assert action.resource_key in over, (action, call)
                if call.result == "refused":
                    continue
                for held in before_over.get(call.unit, frozenset()) | {action.resource_key}:
                    holder = self.holds.get(held)
                    assert holder in (None, call.unit), (
                        f"{call.unit} acted on while {held} is held by {holder}"
                    )
                    self.holds[held] = call.unit

        # No action on a container that is another tenant: a compose restart spares ML2.
        for action, _before, _after in applied:
            if action.unit == POOL:
                assert ML2 not in bed.engine.acted_on, "the compose tenant restarted ML2"
        bed.engine.acted_on.clear()

        # released means every resource the action held came back: one whose floor was
        # breached is back above it (or the tenant within budget there), one held only
        # because the tenant was over budget there is back within that budget. Checked
        # where the daemon could see all the tenant's usage (what it holds is what it saw).
        config = bed.daemon.config
        w = bed.world
        for e in new_events:
            if e["event"] != "released":
                continue
            unit = tenant_of(e)
            if w.gpu_errors or any(p.vram_unknown for p in w.procs.values()):
                continue
            over_now = bed.truth.over(config, unit)
            breached_now = bed.truth.breached(config)
            for key in before_over.get(unit, frozenset()) & over_now:
                if key in before_breached:
                    assert key not in breached_now, f"{unit} released, yet {key} is breached"
                else:
                    raise AssertionError(f"{unit} released, yet still over its budget on {key}")

        # Hooks: a hook that worked (it printed its event, "forked" or its flood) is never
        # reported failed; the failing one says "notifier down", the slow one nothing.
        for e in new_events:
            if e["event"] == "hook_failed":
                output = str(e.get("output") or "")
                assert output in ("", "notifier down"), e


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    dry=st.booleans(),
    hooks=st.booleans(),
    steps=st.lists(STEP, min_size=5, max_size=30),
)
def test_property_the_features_keep_the_promises_together(
    tmp_path_factory: object,
    dry: bool,
    hooks: bool,
    steps: list[tuple[object, ...]],
) -> None:
    root = Path(tmp_path_factory.mktemp("combined"))  # type: ignore[attr-defined]
    bed = Combined(root, dry, hooks)
    previous = signal.signal(signal.SIGHUP, bed.daemon._on_reload)
    try:
        run(bed, steps)
    finally:
        signal.signal(signal.SIGHUP, previous)
        bed.daemon.hooks.close(grace_s=0.0)
        leftovers(bed)


def run(bed: Combined, steps: list[tuple[object, ...]]) -> None:
    bed.daemon.restore_state()
    # Every device and the host start near their floors, so most ticks decide something:
    # the whole GPU has 1.7 GiB free, slice 0 3.7 GiB (floor 2 GiB with B's reserve),
    # slice 1 2.7 GiB; MemAvailable is about 10 GiB (floor 8 GiB). A and C are over
    # both their budgets, so one action of theirs holds VRAM and RAM.
    for unit, vram, ram in (
        (A, {SLICE0: 1 * GIB, SLICE1: 4 * GIB}, 13),
        (B, {SLICE0: 2 * GIB}, 8),
        (C, {WHOLE: 6 * GIB, SLICE0: 1 * GIB}, 9),
        (D, {WHOLE: 3 * GIB}, 4),
        (X, {WHOLE: 3 * GIB}, 7),
    ):
        bed.world.spawn(unit, vram, ram=ram * GIB)
    bed.world.spawn_in(scope(ML1), {WHOLE: 2 * GIB}, 3 * GIB)
    bed.world.spawn_in(scope(ML2), {SLICE1: 1 * GIB}, 2 * GIB)
    assert GPU_TOTAL == 16 * GIB
    oracle = Oracle(bed)
    now = 0
    for step in steps:
        apply_step(bed, step)
        now += int(step[1]) * 2 if step[0] == "wait" else 2  # type: ignore[call-overload]
        before_over = {u: bed.truth.over(bed.daemon.config, u) for u in UNITS}
        before_breached = bed.truth.breached(bed.daemon.config)
        bed.samples = 0
        started = time.monotonic()
        bed.clock.now = now * 10**9
        bed.daemon.tick()  # never raises
        if bed.daemon._reload.is_set():  # the loop reloads before its next tick
            bed.daemon._reload.clear()
            bed.daemon.reload()
        oracle.check(before_over, before_breached, bed.samples, time.monotonic() - started)
    # Give hooks their time, then check none that worked was reported failed.
    deadline = time.monotonic() + HOOK_TIMEOUT_S + 0.5
    while bed.daemon.hooks._running and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.05)
        bed.daemon._reap_hooks(bed.clock.now)
    oracle.check({}, frozenset(), 0, 0.0)


def leftovers(bed: Combined) -> None:
    """Nothing a hook or a release started outlives its time limit (it was killed
    with its process group), beyond the short-lived children of forking modes."""
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["pgrep", "-f", "vw-combined-slow"], capture_output=True, text=True, check=False
        ).stdout.split()
        if not found:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes left behind by hooks or releases: {found}")
