"""cli.py in process: exit codes and messages that need no GPU and no bus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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

    monkeypatch.setattr(Daemon, "run", lambda _self: 0)  # the wiring only, not the loop
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
