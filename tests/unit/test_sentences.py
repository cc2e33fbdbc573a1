"""Sentences the daemon and replay both write, in English (issue 23, cosmetic):
"1 tenant", not "1 tenants"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.meet.world import make_bed
from vramwatch.config import load
from vramwatch.daemon import reloaded_sentence, started_sentence

ONE = '[[tenant]]\nunit = "a.service"\nvram = "1GiB"\n'
TWO = ONE + '[[tenant]]\nunit = "b.service"\nram = "1GiB"\n'


def test_a_reload_to_one_tenant_says_one_tenant(tmp_path: Path) -> None:
    bed = make_bed(tmp_path, TWO)

    bed.reload(ONE)

    assert ["config reloaded: 1 tenant"] == [e["message"] for e in bed.named("config_reloaded")]


@pytest.mark.parametrize(
    ("text", "said"), [("", "0 tenants"), (ONE, "1 tenant"), (TWO, "2 tenants")]
)
def test_started_counts_tenants_in_english(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(text)
    config = load(path)

    assert (
        f"vramwatch started: {said}, interval 2s, bus system",
        f"config reloaded: {said}",
    ) == (started_sentence(config), reloaded_sentence(config))
