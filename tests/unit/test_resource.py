"""Each resource knows its own usage and budget fields: none reads as another."""

from __future__ import annotations

from vramwatch.config import Tenant
from vramwatch.model import Resource, UnitUsage


def usage(vram: int | None, ram: int | None) -> UnitUsage:
    return UnitUsage("a.service", vram, {"GPU-0": 3, "GPU-1": 4}, ram, ())


def test_each_resource_reads_its_own_usage_field() -> None:
    known = usage(7, 11)
    assert {"vram": 7, "ram": 11} == {r.value: r.used(known) for r in Resource}


def test_an_unknown_use_is_none_with_what_is_known_as_its_lower_bound() -> None:
    unknown = usage(None, None)
    assert {"vram": None, "ram": None} == {r.value: r.used(unknown) for r in Resource}
    assert {"vram": 7, "ram": None} == {r.value: r.lower_bound(unknown) for r in Resource}


def test_each_resource_reads_its_own_budget_field() -> None:
    tenant = Tenant("a.service", vram_bytes=5, ram_bytes=9)
    assert {"vram": 5, "ram": 9} == {r.value: r.budget(tenant) for r in Resource}


def test_the_journal_words_stay_the_strings_they_were() -> None:
    assert ["vram", "ram"] == [str(r) for r in Resource]
    assert {"resource": "vram"} == {"resource": Resource.VRAM}
