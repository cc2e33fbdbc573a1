"""cli.py in process: exit codes and messages that need no GPU and no bus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakenvml import FakeGpu, FakeNvmlState, gib
from vramwatch import cli


def test_check_refuses_a_file_run_would_refuse_and_says_which_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: check said "valid" for a group-writable config that run then refused."""
    tmp_path.chmod(0o755)
    path = tmp_path / "vramwatch.toml"
    path.write_text("")
    path.chmod(0o664)

    code = cli.main(["check", "-c", str(path)])

    assert (
        cli.EXIT_CONFIG,
        "",
        (
            f"vramwatch: {path}: refusing an untrusted config: the file is writable by group "
            "(mode 0664); run chmod go-w on it\n"
        ),
    ) == (code, *capsys.readouterr())


def test_check_names_an_ancestor_others_can_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "w" / "etc").mkdir(parents=True)
    path = tmp_path / "w" / "etc" / "vramwatch.toml"
    path.write_text("")
    path.chmod(0o644)
    (tmp_path / "w").chmod(0o777)

    code = cli.main(["check", "-c", str(path)])

    err = capsys.readouterr().err
    assert (cli.EXIT_CONFIG, True) == (
        code,
        f"the directory {tmp_path / 'w'} on its path is writable by group and others" in err,
    )


def test_check_warns_about_a_floor_above_this_hosts_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """min_available_ram = "1024TiB": valid, but every tick would be a breach."""
    tmp_path.chmod(0o755)
    path = tmp_path / "vramwatch.toml"
    path.write_text('[host]\nmin_available_ram = "1024TiB"\n')
    path.chmod(0o644)

    code = cli.main(["check", "-c", str(path)])

    out, err = capsys.readouterr()
    assert (cli.EXIT_OK, f"{path}: valid: 0 tenants, bus system\n") == (code, out)
    assert "vramwatch: warning: host.min_available_ram 1024TiB is at or above this host's " in err


def test_run_warns_at_start_about_a_floor_above_this_hosts_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vramwatch.daemon import Daemon

    # The wiring and the first tick (whose sample the warnings come from), not the loop.
    monkeypatch.setattr(Daemon, "run", lambda self: self.tick() or 0)
    tmp_path.chmod(0o755)
    path = tmp_path / "vramwatch.toml"
    path.write_text('[host]\nmin_available_ram = "1024TiB"\n')
    path.chmod(0o644)
    argv = ["run", "-c", str(path), "--log-target", "stderr", "--log-format", "json"]

    code = cli.main([*argv, "--state-dir", str(tmp_path / "state")])

    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    warnings = [e for e in events if e["event"] == "config_warning"]
    assert (0, 1) == (code, len(warnings))
    assert warnings[0]["message"].startswith(
        f"{path}: host.min_available_ram 1024TiB is at or above this host's MemTotal"
    )


def _trusted_config(tmp_path: Path, text: str, name: str = "vramwatch.toml") -> Path:
    tmp_path.chmod(0o755)
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("command", ["check", "status", "polkit-rule", "run"])
def test_config_given_before_the_command_is_the_one_read(command: str) -> None:
    """Before: the subcommand's default (None) overwrote `-c` given before the command,
    so `vramwatch -c FILE check` read /etc/vramwatch.toml."""
    path = Path("cfg.toml")

    before = cli._parser().parse_args(["-c", str(path), command])
    after = cli._parser().parse_args([command, "-c", str(path)])

    assert (path, path) == (before.config, after.config)


def test_config_given_before_replay_is_a_replay_config() -> None:
    """`vramwatch -c X replay T` means `vramwatch replay T -c X`."""
    args = cli._replay_args(cli._parser().parse_args(["-c", "a.toml", "replay", "t.gz"]))
    both = cli._replay_args(
        cli._parser().parse_args(["-c", "a.toml", "replay", "t.gz", "-c", "b.toml"])
    )

    assert ([Path("a.toml")], [Path("a.toml"), Path("b.toml")]) == (
        args.replay_configs,
        both.replay_configs,
    )


def test_check_reads_the_config_given_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _trusted_config(tmp_path, '[daemon]\nbus = "user"\n')
    monkeypatch.setenv("VRAMWATCH_CONFIG", str(tmp_path / "absent.toml"))

    code = cli.main(["-c", str(path), "check"])

    assert (cli.EXIT_OK, f"{path}: valid: 0 tenants, bus user\n") == (
        code,
        capsys.readouterr().out,
    )


def test_status_warns_that_run_would_refuse_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: status showed a group-writable config as if it were in force, silently.
    It still shows it (a read-only look that helps find the problem) and says why run
    would refuse it."""
    import vramwatch.status

    monkeypatch.setattr(vramwatch.status, "collect", lambda config: {"tenants": []})
    monkeypatch.setattr(vramwatch.status, "render_text", lambda report: "(report)")
    path = _trusted_config(tmp_path, "")
    path.chmod(0o664)

    code = cli.main(["status", "-c", str(path)])

    warning = (
        f"vramwatch: warning: {path}: run refuses this config: the file is writable by group "
        "(mode 0664); run chmod go-w on it\n"
    )
    assert (cli.EXIT_OK, "(report)\n", warning) == (code, *capsys.readouterr())


PINS = """
[[tenant]]
unit = "on-0.service"
gpu = 0

[[tenant]]
unit = "on-3.service"
vram = "2GiB"
gpu = 3

[[tenant]]
unit = "by-uuid.service"
gpu = "GPU-aaaa"

[[tenant]]
unit = "elsewhere.service"
gpu = "GPU-bbbb"
"""
# What check (an error) and run (a warning) say about the two pins that match nothing.
PIN_PROBLEMS = [
    f"tenant[{n}].gpu: no GPU {gpu} is present (GPU 0 GPU-aaaa): {unit} would never be acted "
    "on for VRAM"
    for n, gpu, unit in [(1, "3", "on-3.service"), (3, "GPU-bbbb", "elsewhere.service")]
]


def test_check_refuses_a_tenant_pinned_to_a_gpu_that_is_not_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_nvml: FakeNvmlState
) -> None:
    """Before: check said valid for gpu = 3 on a one-GPU host; that tenant's VRAM is
    never counted, so it can never be acted on for VRAM."""
    fake_nvml.write([FakeGpu("GPU-aaaa", gib(16))])
    path = _trusted_config(tmp_path, PINS)

    code = cli.main(["check", "-c", str(path)])

    out, err = capsys.readouterr()
    assert (cli.EXIT_CONFIG, "") == (code, out)
    assert [f"vramwatch: {path}: {problem}" for problem in PIN_PROBLEMS] == err.splitlines()


def test_check_takes_any_pin_when_no_gpu_is_visible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_nvml: FakeNvmlState
) -> None:
    """The config may be meant for another host: with no GPU to compare, no error."""
    path = _trusted_config(tmp_path, PINS)

    code = cli.main(["check", "-c", str(path)])

    assert (cli.EXIT_OK, f"{path}: valid: 4 tenants, bus system\n") == (
        code,
        capsys.readouterr().out,
    )


def test_run_warns_at_start_about_a_tenant_pinned_to_a_gpu_that_is_not_here(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_nvml: FakeNvmlState,
) -> None:
    from vramwatch.daemon import Daemon

    # The wiring and the first tick (whose sample the warnings come from), not the loop.
    monkeypatch.setattr(Daemon, "run", lambda self: self.tick() or 0)
    fake_nvml.write([FakeGpu("GPU-aaaa", gib(16))])
    path = _trusted_config(tmp_path, PINS)
    argv = ["run", "-c", str(path), "--log-target", "stderr", "--log-format", "json"]

    code = cli.main([*argv, "--state-dir", str(tmp_path / "state")])

    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    warnings = [(e["level"], e["warning"]) for e in events if e["event"] == "config_warning"]
    assert 0 == code
    assert [("warning", problem) for problem in PIN_PROBLEMS] == warnings


@pytest.mark.parametrize(("units", "said"), [(0, "0 tenants"), (1, "1 tenant"), (2, "2 tenants")])
def test_check_counts_tenants_in_english(
    units: int, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "valid: 1 tenants" (issue 23)."""
    tmp_path.chmod(0o755)
    path = tmp_path / "vramwatch.toml"
    path.write_text("".join(f'[[tenant]]\nunit = "t{i}.service"\n' for i in range(units)))
    path.chmod(0o644)

    code = cli.main(["check", "-c", str(path)])

    assert (cli.EXIT_OK, f"{path}: valid: {said}, bus system\n") == (
        code,
        capsys.readouterr().out,
    )
