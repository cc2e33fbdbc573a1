"""check and run over the fake NVML with a GPU in MIG mode (issue 22, item 2).

On a GPU in MIG mode the room a reserving tenant keeps must be on one MIG device,
named by its MIG- UUID; ``gpu = 0`` or the GPU's GPU- UUID mean all its MIG
devices. check refuses such a reserve (exit 78); run warns (config_warning) and
starts, since run must never refuse a config that the previous release accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakenvml import FakeGpu, FakeMig, FakeNvmlState, gib
from vramwatch import cli

PARENT = "GPU-a1000000-0000-0000-0000-000000000000"
MIG0 = "MIG-a1000000-0000-0000-0000-000000000000"
MIG1 = "MIG-a1000000-0000-0000-0000-000000000001"
A100 = FakeGpu(
    PARENT,
    gib(80),
    "NVIDIA A100-SXM4-80GB",
    mig=(FakeMig(MIG0, gib(20), "MIG 2g.20gb"), FakeMig(MIG1, gib(40), "MIG 3g.40gb")),
)
RESERVING = """
[gpu]
min_free_vram = "10%"
[[tenant]]
unit = "llama-swap.service"
vram = "5GiB"
reserve = true
gpu = {pin}
"""
WHOLE = (
    "tenant[0].gpu: llama-swap.service reserves VRAM on GPU 0, which is in MIG mode: name one "
    f"of its MIG devices by its UUID ({MIG0}, {MIG1}); until then nothing is reserved for it"
)


def config_file(tmp_path: Path, pin: str) -> Path:
    tmp_path.chmod(0o755)
    path = tmp_path / "vramwatch.toml"
    path.write_text(RESERVING.format(pin=pin))
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("pin", ["0", f'"{PARENT}"'], ids=["index", "GPU- UUID"])
def test_check_refuses_a_reserve_on_a_whole_gpu_in_mig_mode(
    tmp_path: Path, fake_nvml: FakeNvmlState, capsys: pytest.CaptureFixture[str], pin: str
) -> None:
    fake_nvml.write([A100])
    path = config_file(tmp_path, pin)

    code = cli.main(["check", "-c", str(path)])

    assert (cli.EXIT_CONFIG, "", f"vramwatch: {path}: {WHOLE}\n") == (code, *capsys.readouterr())


def test_check_takes_a_reserve_on_one_mig_device(
    tmp_path: Path, fake_nvml: FakeNvmlState, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_nvml.write([A100])
    path = config_file(tmp_path, f'"{MIG1}"')

    code = cli.main(["check", "-c", str(path)])

    assert (cli.EXIT_OK, f"{path}: valid: 1 tenant, bus system\n") == (
        code,
        capsys.readouterr().out,
    )


def test_run_warns_about_a_reserve_on_a_whole_gpu_in_mig_mode_and_starts(
    tmp_path: Path,
    fake_nvml: FakeNvmlState,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vramwatch.daemon import Daemon

    # The wiring and the first tick (whose sample the warnings come from), not the loop.
    monkeypatch.setattr(Daemon, "run", lambda self: self.tick() or 0)
    fake_nvml.write([A100])
    path = config_file(tmp_path, "0")
    argv = ["run", "-c", str(path), "--log-target", "stderr", "--log-format", "json"]

    code = cli.main([*argv, "--state-dir", str(tmp_path / "state")])

    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    refused = "; vramwatch check refuses this, and run cannot keep this reservation as configured"
    assert (0, [f"{path}: {WHOLE}{refused}"]) == (
        code,
        [e["message"] for e in events if e["event"] == "config_warning"],
    )
