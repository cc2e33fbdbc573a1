"""sysusers.d and tmpfiles.d snippets, applied by systemd's own tools to a scratch root."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from tests.packaging.conftest import ROOT, require


def apply(tool: str, args: list[str], snippet: Path, root: Path) -> str:
    require(commands=(tool,))
    proc = subprocess.run(
        [tool, f"--root={root}", *args, "-"],
        input=snippet.read_text(),
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stderr


def test_sysusers_creates_a_system_user_without_login(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()

    apply("systemd-sysusers", [], ROOT / "packaging/sysusers.d/vramwatch.conf", tmp_path)

    (entry,) = [
        line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
        if line.startswith("vramwatch:")
    ]
    assert ["/var/lib/vramwatch", "/usr/sbin/nologin"] == entry[5:]
    assert int(entry[2]) < 1000  # a system user
    assert "vramwatch:" in (tmp_path / "etc/group").read_text()


def test_tmpfiles_creates_the_state_directory(tmp_path: Path) -> None:
    apply("systemd-tmpfiles", ["--create"], ROOT / "packaging/tmpfiles.d/vramwatch.conf", tmp_path)

    mode = (tmp_path / "var/lib/vramwatch").stat().st_mode
    assert stat.S_ISDIR(mode)
    assert 0o750 == stat.S_IMODE(mode)
