"""Config ownership: only root or vramwatch's own user may be able to change it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vramwatch import config
from vramwatch.config import ConfigError
from vramwatch.security import config_problem, directory_problem, file_problem

ROOT = 0
DAEMON_UID = 998  # an unprivileged "vramwatch" system user
OTHER_UID = 1000


def st(mode: int, uid: int, kind: int = stat.S_IFREG) -> os.stat_result:
    return os.stat_result((kind | mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "uid", "euid"),
    [
        (0o644, ROOT, ROOT),
        (0o600, ROOT, ROOT),
        (0o644, ROOT, DAEMON_UID),  # root's file, read by an unprivileged daemon
        (0o640, DAEMON_UID, DAEMON_UID),  # the daemon's own file
        (0o444, ROOT, ROOT),
    ],
)
def test_root_or_own_files_not_writable_by_others_are_trusted(
    mode: int, uid: int, euid: int
) -> None:
    assert None is file_problem(st(mode, uid), euid)


@pytest.mark.parametrize(
    ("mode", "uid", "euid", "problem"),
    [
        (
            0o664,
            ROOT,
            ROOT,
            "the file is writable by group (mode 0664); run chmod go-w on it",
        ),
        (
            0o646,
            ROOT,
            ROOT,
            "the file is writable by others (mode 0646); run chmod go-w on it",
        ),
        (
            0o666,
            DAEMON_UID,
            DAEMON_UID,
            "the file is writable by group and others (mode 0666); run chmod go-w on it",
        ),
        (
            0o644,
            OTHER_UID,
            ROOT,
            f"the file is owned by uid {OTHER_UID}{{name}}; it must be owned by root",
        ),
        (
            0o600,
            OTHER_UID,
            DAEMON_UID,
            (
                f"the file is owned by uid {OTHER_UID}{{name}}; it must be owned by root or "
                f"uid {DAEMON_UID}{{dname}}, the user vramwatch runs as"
            ),
        ),
    ],
)
def test_files_others_can_change_are_refused_with_the_reason(
    mode: int, uid: int, euid: int, problem: str
) -> None:
    import pwd

    def name(uid: int) -> str:
        try:
            return f" ({pwd.getpwuid(uid).pw_name})"
        except KeyError:
            return ""

    expected = problem.format(name=name(OTHER_UID), dname=name(DAEMON_UID))

    assert expected == file_problem(st(mode, uid), euid)


def test_a_fifo_or_device_is_not_a_config() -> None:
    assert "not a regular file" == file_problem(st(0o644, ROOT, stat.S_IFIFO), ROOT)


def test_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "etc"
    d.mkdir()
    d.chmod(0o777)

    problem = directory_problem(d, os.geteuid())

    assert (
        f"its directory {d} is writable by group and others (mode 0777); anyone who can "
        "write there can replace the config" == problem
    )


def test_a_sticky_world_writable_directory_is_refused_too(tmp_path: Path) -> None:
    """Strict like OpenSSH: /tmp itself is no place for a config."""
    d = tmp_path / "tmp"
    d.mkdir()
    d.chmod(0o1777)

    assert "writable by group and others (mode 1777)" in (directory_problem(d) or "")


def write(path: Path, text: str = "", mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_load_trusted_accepts_a_private_config(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = write(tmp_path / "vramwatch.toml", '[daemon]\nbus = "user"\n')

    assert "user" == config.load(path, trusted=True).daemon.bus


def test_load_trusted_refuses_a_group_writable_config_naming_the_file(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = write(tmp_path / "vramwatch.toml", mode=0o664)

    with pytest.raises(ConfigError) as err:
        config.load(path, trusted=True)

    assert (
        f"{path}: refusing an untrusted config: the file is writable by group (mode 0664); "
        "run chmod go-w on it" == str(err.value)
    )


def test_load_untrusted_reads_the_same_file_for_check_and_status(tmp_path: Path) -> None:
    """vramwatch check must still be able to say what is wrong with a file."""
    path = write(tmp_path / "vramwatch.toml", mode=0o666)

    assert () == config.load(path).tenants


def test_load_trusted_refuses_a_config_in_a_world_writable_directory(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    path = write(d / "vramwatch.toml")
    d.chmod(0o777)

    with pytest.raises(ConfigError) as err:
        config.load(path, trusted=True)

    assert str(err.value).startswith(
        f"{path}: refusing an untrusted config: its directory {d} is writable by group and "
        "others (mode 0777)"
    )


def test_a_symlink_into_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    target = write(shared / "real.toml")
    shared.chmod(0o777)
    link = tmp_path / "vramwatch.toml"
    link.symlink_to(target)

    problem = config_problem(link, os.stat(link))

    assert problem is not None and f"its directory {shared} is writable" in problem


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_load_trusted_refuses_a_config_owned_by_another_user(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = write(tmp_path / "vramwatch.toml")
    os.chown(path, 65534, 65534)

    with pytest.raises(ConfigError) as err:
        config.load(path, trusted=True)

    assert str(err.value).startswith(
        f"{path}: refusing an untrusted config: the file is owned by uid 65534"
    )
    assert str(err.value).endswith("; it must be owned by root")
