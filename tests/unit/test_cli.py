"""cli.py in process: exit codes and messages that need no GPU and no bus."""

from __future__ import annotations

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
