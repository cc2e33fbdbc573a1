"""packaging/prometheus: the alert rules pass `promtool check rules` and their unit tests,
and every vramwatch_* metric they use is one vramwatch exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sandbox.fixtures import in_ci
from vramwatch import config as cfg
from vramwatch.metrics import Metrics
from vramwatch.model import GpuSample, HostSample, Snapshot

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging" / "prometheus" / "vramwatch-alerts.yml"
RULE_TESTS = ROOT / "packaging" / "prometheus" / "vramwatch-alerts.test.yml"
EXPECTED_ALERTS = [
    "VramwatchGpuFreeVramLow",
    "VramwatchFloorBreachedNoRelief",
    "VramwatchHostMemoryLow",
    "VramwatchGpuTelemetryDown",
    "VramwatchGpuLost",
    "VramwatchSamplingErrors",
    "VramwatchDown",
    "VramwatchStalled",
    "VramwatchRestartStorm",
    "VramwatchTenantLeaking",
]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (apt-get install prometheus; ./scripts/bootstrap does)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, cwd=RULES.parent
    )


def test_promtool_check_rules_accepts_the_alerts() -> None:
    r = run("check", "rules", RULES.name)

    assert 0 == r.returncode, r.stdout + r.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in r.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    r = run("test", "rules", RULE_TESTS.name)

    assert 0 == r.returncode, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_test_fails_when_a_rule_is_wrong(tmp_path: Path) -> None:
    """The rule tests can fail: loosen the storm threshold and the storm test breaks."""
    broken = RULES.read_text().replace("> 2.5", "> 3.5")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)

    r = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )

    assert 0 != r.returncode
    assert "alertname: VramwatchRestartStorm" in r.stdout + r.stderr


def test_the_expected_alerts_are_defined() -> None:
    names = re.findall(r"^\s+- alert: (\S+)$", RULES.read_text(), re.M)

    assert EXPECTED_ALERTS == names


def test_every_metric_the_alerts_use_is_exported() -> None:
    m = Metrics()
    m.observe_snapshot(
        cfg.parse(""),
        Snapshot(0, (GpuSample(0, "GPU-a", "T4", 1, 1, 0),), HostSample(1, 1), {}),
    )
    exported = {family.name for family in m.registry.collect()}
    exported |= {f"{name}_total" for name in exported}  # counters are listed without _total

    used = set(re.findall(r"\bvramwatch_[a-z_]+", RULES.read_text()))

    assert [] == sorted(used - exported)
