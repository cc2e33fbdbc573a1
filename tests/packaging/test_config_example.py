"""config.example.toml: valid, complete, and budgets that fit a 16 GB card."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.meet.world import make_bed
from tests.packaging.conftest import ROOT
from vramwatch.cli import main
from vramwatch.config import KEYS, budget_fit_warnings, load

EXAMPLE = ROOT / "config.example.toml"
T4_TOTAL_BYTES = 15360 * 2**20  # what NVML reports for a 16 GB Tesla T4


def config_keys() -> set[str]:
    """Every key vramwatch reads (its table, config.KEYS), so a new key fails here until
    documented."""
    return {key.name for key in KEYS}


def uncommented(text: str) -> str:
    """The example with its commented-out tenant tables switched on."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    in_tenant = False
    for line in lines:
        if line == "# [[tenant]]\n":
            in_tenant = True
        elif not line.startswith("# ") or "=" not in line and "[[" not in line:
            in_tenant = False
        out.append(line[2:] if in_tenant else line)
    return "".join(out)


def test_example_is_valid_under_vramwatch_check(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["check", "-c", str(EXAMPLE)])

    out = capsys.readouterr().out
    assert 0 == rc
    assert f"{EXAMPLE}: valid: 3 tenants, bus system, dry run\n" == out


def test_example_budgets_fit_a_16_gb_card_with_its_container_tenant_on(tmp_path: Path) -> None:
    on = tmp_path / "vramwatch.toml"
    on.write_text(uncommented(EXAMPLE.read_text()))
    config = load(on)

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
    # Keys set, shown commented out ("# listen = ...", "#   release = ..."), or in a
    # comment's words ("pin it: gpu = 0").
    shown = set(re.findall(r"(?<![\w.])(\w+) = ", text))
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


def installed_config() -> Path:
    """The file debian/rules installs as /etc/vramwatch.toml."""
    rules = (ROOT / "debian" / "rules").read_text()
    found = re.search(r"install -D -m 644 (\S+) debian/vramwatch/etc/vramwatch\.toml", rules)
    assert found is not None, "debian/rules no longer installs /etc/vramwatch.toml"
    return ROOT / found[1]


def test_the_shipped_config_is_quiet_on_a_fresh_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: its compose tenant needed the docker SDK (only a Suggests) and the Engine
    socket (a drop-in): sampling_error on every tick of a fresh install, and
    VramwatchSamplingErrors 10 minutes later. Two minutes of ticks, the real daemon,
    policy and sampler, one idle GPU, no docker SDK: nothing but info entries."""
    monkeypatch.setitem(sys.modules, "docker", None)  # import docker raises ImportError
    bed = make_bed(tmp_path, installed_config().read_text())

    bed.ticks(range(0, 120, 2))

    assert [] == [(e["event"], e["message"]) for e in bed.events() if e["level"] != "info"]
