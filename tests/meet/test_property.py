"""The promises as invariants: hypothesis drives the real Daemon, policy and Sampler
over the moving fixture host through sequences of breaches on several floors at
once, tenants over on several resources, multi-GPU tenants, GPU faults, sampler
exceptions, job timeouts, disconnects, refusals, raising clients, orphans and
reloads that toggle dry_run, protection and budgets.

After every tick:

* ``tick`` never raised;
* every call reached a configured, unprotected tenant, and the resource it was
  for was, at that moment, breached and the tenant over budget on it (the
  re-check saw the floor and the usage as they were);
* one incident, one victim: no accepted action is taken on a unit that is over
  budget on a resource another unit's accepted action still holds (it holds it
  until a reclaimed or not_reclaimed entry for that unit and resource);
* dry run changes nothing enforcement reads: every action time in the history
  and in the state file is the time of a real call.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.meet.world import GIB, Bed, make_bed, uuid_of
from vramwatch.state import StateStore

UNITS = ("a.service", "b.service", "c.service")
OTHER = "x.service"  # holds memory, no tenant
GPUS = 2
RESULTS = ("done", "done", "orphan", "timeout", "disconnected", "refused", "raise")


def config_text(dry_run: bool, protected: str | None, budgets: tuple[int, int, int]) -> str:
    text = f"""
[daemon]
interval = "2s"
cooldown = "4s"
max_restarts = 3
restart_window = "1m"
reclaim_timeout = "10s"
dry_run = {"true" if dry_run else "false"}
[gpu]
min_free_vram = "2GiB"
grace = "2s"
[host]
min_available_ram = "8GiB"
grace = "2s"
"""
    for unit, budget in zip(UNITS, budgets, strict=True):
        text += f'\n[[tenant]]\nunit = "{unit}"\nvram = "{budget}GiB"\nram = "{budget * 3}GiB"\n'
        if unit == protected:
            text += "protected = true\n"
    return text


UNIT = st.sampled_from((*UNITS, OTHER))
STEP = st.one_of(
    st.tuples(st.just("vram"), UNIT, st.integers(0, GPUS - 1), st.integers(-4, 4)),
    st.tuples(st.just("ram"), UNIT, st.integers(-8, 8)),
    st.tuples(st.just("gpu_fault"), st.integers(0, GPUS - 1), st.booleans()),
    st.tuples(st.just("sampler_fault"), st.booleans()),
    st.tuples(st.just("host_fault"), st.booleans()),
    st.tuples(st.just("script"), st.sampled_from(RESULTS)),
    st.tuples(st.just("finish_pending")),
    st.tuples(
        st.just("reload"),
        st.booleans(),
        st.sampled_from((None, *UNITS)),
        st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    ),
    st.tuples(st.just("wait"), st.integers(1, 8)),
)


def apply(bed: Bed, step: tuple[object, ...]) -> None:
    w = bed.world
    op = step[0]
    if op == "vram":
        _, unit, gpu, gib = step
        w.grow(str(unit), gpu=int(gpu), vram=int(gib) * GIB)  # type: ignore[call-overload]
    elif op == "ram":
        _, unit, gib = step
        w.grow(str(unit), ram=int(gib) * GIB)  # type: ignore[call-overload]
    elif op == "gpu_fault":
        _, gpu, on = step
        if on:
            w.gpu_errors[int(gpu)] = "GPU_IS_LOST: GPU is lost"  # type: ignore[call-overload]
        else:
            w.gpu_errors.pop(int(gpu), None)  # type: ignore[call-overload]
    elif op == "sampler_fault":
        w.sampler_raises = bool(step[1])
    elif op == "host_fault":
        w.host_unreadable = bool(step[1])
        w.sync()
    elif op == "script":
        bed.actuator.script.append(str(step[1]))
    elif op == "finish_pending":
        bed.actuator.finish_pending()
    elif op == "reload":
        _, dry, protected, budgets = step
        bed.reload(config_text(bool(dry), protected, budgets))  # type: ignore[arg-type]


def key_of(event: dict[str, object]) -> str:
    if event["resource"] == "ram":
        return "ram"
    return f"gpu:{uuid_of(int(event['gpu']))}"  # type: ignore[call-overload]


class Oracle:
    """The promises, checked from outside: the world's truth and the journal."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.calls_seen = 0
        self.events_seen = 0
        self.holds: dict[str, str] = {}  # resource key -> unit whose accepted action holds it

    def visible_over(self, unit: str, faults: frozenset[int]) -> set[str]:
        """What the daemon can prove: VRAM known on readable GPUs is a lower bound."""
        w, config = self.bed.world, self.bed.daemon.config
        tenant = config.tenant(unit)
        keys: set[str] = set()
        if tenant is None:
            return keys
        mine = [p for p in w.procs.values() if p.cgroup == w.cgroup_of(unit)]
        readable = {uuid_of(i) for i in range(w.gpu_count) if i not in faults}
        vram = sum(n for p in mine for u, n in p.vram.items() if u in readable)
        if tenant.vram_bytes is not None and vram > tenant.vram_bytes:
            keys |= {f"gpu:{u}" for p in mine for u, n in p.vram.items() if n > 0 and u in readable}
        if not w.host_unreadable and tenant.ram_bytes is not None:
            if sum(p.ram for p in mine) > tenant.ram_bytes:
                keys.add("ram")
        return keys

    def check(self, before_over: dict[str, set[str]]) -> None:
        """Walk this tick's journal in order: settlements free holds, actions take them."""
        bed = self.bed
        events = bed.events()
        new_events = events[self.events_seen :]
        self.events_seen = len(events)
        new_calls = bed.actuator.calls[self.calls_seen :]
        self.calls_seen = len(bed.actuator.calls)
        acts = [e for e in new_events if e["event"] in ("restart", "stop")]
        assert len(acts) == len(new_calls)
        calls = iter(new_calls)
        for e in new_events:
            if e["event"] in ("reclaimed", "not_reclaimed"):
                k = key_of(e)
                if self.holds.get(k) == e["unit"]:
                    del self.holds[k]
            if e["event"] not in ("restart", "stop"):
                continue
            call = next(calls)
            assert call.unit == e["unit"]
            tenant = bed.daemon.config.tenant(call.unit)
            assert tenant is not None and not tenant.protected
            key = key_of(e)
            assert key in call.breached, (call, e)  # the re-check saw the floor
            assert key in call.over, (call, e)  # and the usage
            if call.result == "refused":
                continue  # never accepted: holds nothing
            for held in before_over.get(call.unit, set()) | {key}:
                holder = self.holds.get(held)
                assert holder in (None, call.unit), (
                    f"{call.unit} acted on while {held} is held by {holder}"
                )
                self.holds[held] = call.unit
        real: dict[str, set[int]] = {}
        for c in bed.actuator.calls:
            real.setdefault(c.unit, set()).add(c.now_ns)
        for unit, times in bed.daemon.history.actions_ns.items():
            assert set(times) <= real.get(unit, set()), "a dry-run time counts as real"


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    dry=st.booleans(),
    budgets=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    steps=st.lists(STEP, min_size=5, max_size=40),
)
def test_property_the_daemon_keeps_its_promises(
    tmp_path_factory: object,
    dry: bool,
    budgets: tuple[int, int, int],
    steps: list[tuple[object, ...]],
) -> None:
    tmp = tmp_path_factory.mktemp("prop")  # type: ignore[attr-defined]
    (tmp / "state").mkdir()
    state = StateStore(Path(tmp) / "state")
    bed = make_bed(Path(tmp), config_text(dry, None, budgets), gpus=GPUS, state=state)
    bed.daemon.restore_state()
    # Both GPUs and the host start at or near their floors, so most ticks decide something:
    # GPU 0 has 1.7 GiB free, GPU 1 3.7 GiB (a.service spans both), MemAvailable 7 GiB.
    for unit, vram, ram in (
        ("a.service", {0: 5 * GIB, 1: 3 * GIB}, 15),
        ("b.service", {0: 4 * GIB}, 12),
        ("c.service", {0: 3 * GIB, 1: 5 * GIB}, 10),
        (OTHER, {0: 2 * GIB, 1: 4 * GIB}, 12),
    ):
        bed.world.spawn(unit, vram, ram=ram * GIB)
    oracle = Oracle(bed)
    now = 0
    for step in steps:
        apply(bed, step)
        now += int(step[1]) * 2 if step[0] == "wait" else 2  # type: ignore[call-overload]
        faults = (
            frozenset(bed.world.gpu_errors)
            if not bed.world.sampler_raises
            else frozenset(range(GPUS))
        )
        before_over = {u: oracle.visible_over(u, faults) for u in UNITS}
        bed.tick_at(now)  # never raises
        oracle.check(before_over)
    restored = state.load().actions_ns
    real = {c.unit for c in bed.actuator.calls}
    assert set(restored) <= real
