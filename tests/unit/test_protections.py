"""vramwatch.protections: advice on tenants' units that lack kernel memory limits."""

from __future__ import annotations

from vramwatch.actuators.systemd import BusError, UnitState
from vramwatch.config import parse
from vramwatch.protections import advice, read_states

GIB = 1024**3

CONFIG = parse(
    """
[[tenant]]
unit = "stt.service"
ram = "8GiB"

[[tenant]]
unit = "llm.service"
vram = "5000MiB"

[[tenant]]
unit = "photos.service"
ram = "4GiB"

[[tenant]]
unit = "video.service"
ram = "2GiB"

[[tenant]]
unit = "gone.service"
ram = "1GiB"
"""
)


def state(
    unit: str, *, load: str = "loaded", mmax: int | None = None, high: int | None = None
) -> UnitState:
    return UnitState(unit, load, "active", "running", 42, "ab", mmax, high)


STATES = {
    "stt.service": state("stt.service"),
    "llm.service": state("llm.service"),
    "photos.service": state("photos.service", high=4 * GIB),
    "video.service": state("video.service", mmax=1 * GIB),
    "gone.service": state("gone.service", load="not-found"),
}


def test_advice_names_each_missing_or_too_tight_limit_in_config_order() -> None:
    expected = [
        (
            "stt.service: RAM budget 8 GiB but no MemoryMax= or MemoryHigh= on the unit: nothing "
            "stops it before vramwatch's next sample; e.g. systemctl set-property stt.service "
            "MemoryMax=10240M"
        ),
        (
            "video.service: MemoryMax=1 GiB is below its RAM budget 2 GiB: the kernel's OOM "
            "killer acts inside the unit first"
        ),
        (
            "gone.service: the system manager has no such unit (LoadState=not-found); vramwatch "
            "can report it but not act on it"
        ),
    ]

    assert expected == advice(CONFIG, STATES)


def test_no_advice_when_every_ram_budget_has_a_limit() -> None:
    states = {u: state(u, mmax=16 * GIB) for u in STATES}

    assert [] == advice(CONFIG, states)


class Reader:
    def __init__(self, fail_on: str, name: str) -> None:
        self.fail_on = fail_on
        self.name = name
        self.asked: list[str] = []

    def unit_state(self, unit: str) -> UnitState:
        self.asked.append(unit)
        if unit == self.fail_on:
            raise BusError(self.name, f"{self.name} for {unit}")
        return state(unit)


def test_an_unreachable_bus_stops_reading_and_is_returned() -> None:
    reader = Reader("stt.service", "connect")

    states, problem = read_states(CONFIG, reader)

    assert ({}, "connect for stt.service") == (states, problem)
    assert ["stt.service"] == reader.asked


def test_a_systemd_error_about_one_unit_skips_only_that_unit() -> None:
    reader = Reader("llm.service", "org.freedesktop.systemd1.NoSuchUnit")

    states, problem = read_states(CONFIG, reader)

    assert None is problem
    assert ["stt.service", "photos.service", "video.service", "gone.service"] == list(states)
