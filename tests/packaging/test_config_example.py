"""config.example.toml: valid, complete, and budgets that fit a 16 GB card."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.packaging.conftest import ROOT
from vramwatch.cli import main
from vramwatch.config import budget_fit_warnings, load

EXAMPLE = ROOT / "config.example.toml"
T4_TOTAL_BYTES = 15360 * 2**20  # what NVML reports for a 16 GB Tesla T4


def config_keys() -> set[str]:
    """Every key vramwatch/config.py reads, so a new key fails here until documented."""
    source = (ROOT / "vramwatch" / "config.py").read_text()
    return set(re.findall(r'table\.(?:get|parsed)\("(\w+)"', source))


def test_example_is_valid_under_vramwatch_check(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["check", "-c", str(EXAMPLE)])

    out = capsys.readouterr().out
    assert 0 == rc
    assert f"{EXAMPLE}: valid: 4 tenants, bus system, dry run\n" == out


def test_example_budgets_fit_a_16_gb_card() -> None:
    config = load(EXAMPLE)

    assert [] == budget_fit_warnings(config, [T4_TOTAL_BYTES])
    assert 12500 * 2**20 == sum(t.vram_bytes or 0 for t in config.tenants)
    assert [
        "llama-server.service",
        "compose:immich/immich-machine-learning",
        "frigate.service",
        "whisper-asr.service",
    ] == [t.unit for t in config.tenants]


def test_example_shows_every_key() -> None:
    text = EXAMPLE.read_text()
    # Keys set, or shown commented out ("# listen = ...").
    shown = set(re.findall(r"^#? ?(\w+) = ", text, flags=re.MULTILINE))
    shown |= {"tenant"}  # tables

    assert set() == config_keys() - shown


def test_example_starts_in_dry_run() -> None:
    """Installed as /etc/vramwatch.toml by the .deb: it must not act before it is edited."""
    assert True is tomllib.loads(EXAMPLE.read_text())["daemon"]["dry_run"]


def test_packaged_polkit_example_is_what_polkit_rule_prints_for_the_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """packaging/polkit/50-vramwatch.rules.example stays in step with the generator."""
    rc = main(["polkit-rule", "-c", str(EXAMPLE)])

    generated = capsys.readouterr().out.replace(f"from {EXAMPLE}.", "from /etc/vramwatch.toml.")
    assert 0 == rc
    assert (ROOT / "packaging/polkit/50-vramwatch.rules.example").read_text() == generated
