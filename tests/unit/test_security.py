"""Ownership: only root or vramwatch's own user may be able to change the config (or the
state file it reads back)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vramwatch import config
from vramwatch.config import ConfigError
from vramwatch.ownership import config_file_problem, state_file_problem
from vramwatch.security import Untrusted, open_config

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
    assert None is config_file_problem(st(mode, uid), euid)


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

    assert expected == config_file_problem(st(mode, uid), euid)


def test_a_fifo_or_device_is_not_a_config() -> None:
    assert "not a regular file" == config_file_problem(st(0o644, ROOT, stat.S_IFIFO), ROOT)


@pytest.mark.parametrize("mode", [0o777, 0o1777], ids=["world-writable", "sticky"])
def test_a_directory_others_can_write_is_refused_even_sticky(tmp_path: Path, mode: int) -> None:
    """Strict like OpenSSH: /tmp itself is no place for a config."""
    d = tmp_path / "etc"
    d.mkdir()
    d.chmod(mode)
    (d / "vramwatch.toml").write_text("")

    with pytest.raises(Untrusted) as refused:
        open_config(d / "vramwatch.toml")

    assert (
        f"its directory {d} is writable by group and others (mode {mode:04o}); anyone who "
        "can write there can replace the config" == str(refused.value)
    )


@pytest.mark.parametrize(
    ("info", "euid", "problem"),
    [
        (st(0o600, ROOT), ROOT, None),
        (st(0o600, DAEMON_UID), DAEMON_UID, None),
        (st(0o644, ROOT), DAEMON_UID, None),  # written by root before a switch to a user
        (st(0o600, ROOT, stat.S_IFIFO), ROOT, "not a regular file"),
        (
            st(0o600, OTHER_UID),
            DAEMON_UID,
            f"owned by uid {OTHER_UID}, not by root or vramwatch's user",
        ),
        (st(0o620, ROOT), ROOT, "writable by group or others (mode 0620)"),
        (st(0o602, DAEMON_UID), DAEMON_UID, "writable by group or others (mode 0602)"),
    ],
)
def test_a_state_file_others_could_have_written_is_not_read(
    info: os.stat_result, euid: int, problem: str | None
) -> None:
    """The state file read back at start follows the same owner rule (StateStore.load
    sets aside what it refuses)."""
    assert problem == state_file_problem(info, euid)


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

    problem = trusted_load_error(link)

    assert f"its directory {shared} is writable" in problem


def trusted_load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        config.load(path, trusted=True)
    return str(err.value)


def test_a_world_writable_ancestor_is_refused_naming_it(tmp_path: Path) -> None:
    """Before: only the config's own directory was checked. With /w world-writable, a
    local user renames /w/etc away and puts a link to another root-owned file there."""
    tmp_path.chmod(0o755)
    world = tmp_path / "w"
    (world / "etc").mkdir(parents=True)
    path = write(world / "etc" / "vramwatch.toml")
    world.chmod(0o777)

    problem = trusted_load_error(path)

    assert (
        f"{path}: refusing an untrusted config: the directory {world} on its path is writable "
        "by group and others (mode 0777); anyone who can write there can swap what lies "
        "below it"
    ) == problem


def test_the_swap_through_a_world_writable_ancestor_is_refused(tmp_path: Path) -> None:
    """The attack itself: the directory renamed away and a link to a root-owned decoy."""
    tmp_path.chmod(0o755)
    world = tmp_path / "w"
    (world / "etc").mkdir(parents=True)
    path = write(world / "etc" / "vramwatch.toml", '[daemon]\nbus = "user"\n')
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    write(decoy / "vramwatch.toml", "[[tenant]]\nunit = 'db.service'\naction = 'stop'\n")
    world.chmod(0o777)
    (world / "etc").rename(world / "old")
    (world / "etc").symlink_to(decoy)

    problem = trusted_load_error(path)

    assert f"the directory {world} on its path is writable by group and others" in problem


def test_a_sticky_world_writable_ancestor_is_accepted(tmp_path: Path) -> None:
    """Like /tmp: nobody else can rename what it holds."""
    tmp_path.chmod(0o755)
    sticky = tmp_path / "tmp"
    (sticky / "etc").mkdir(parents=True)
    path = write(sticky / "etc" / "vramwatch.toml", '[daemon]\nbus = "user"\n')
    sticky.chmod(0o1777)

    assert "user" == config.load(path, trusted=True).daemon.bus


def test_a_group_writable_directory_reached_through_dotdot_is_checked(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "a").mkdir()
    loose = tmp_path / "loose"
    (loose / "etc").mkdir(parents=True)
    write(loose / "etc" / "vramwatch.toml")
    loose.chmod(0o775)

    problem = trusted_load_error(tmp_path / "a" / ".." / "loose" / "etc" / "vramwatch.toml")

    assert f"the directory {loose} on its path is writable by group (mode 0775)" in problem


def test_a_relative_path_with_links_and_dotdot_is_followed_like_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "real" / "etc").mkdir(parents=True)
    write(tmp_path / "real" / "etc" / "vramwatch.toml", '[daemon]\nbus = "user"\n')
    (tmp_path / "link").symlink_to("real/etc")
    monkeypatch.chdir(tmp_path)

    loaded = config.load(Path("link/../etc/vramwatch.toml"), trusted=True)

    assert "user" == loaded.daemon.bus


def test_a_symlink_loop_is_a_config_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")

    problem = trusted_load_error(tmp_path / "a")

    assert f"{tmp_path / 'a'}: cannot read: Too many levels of symbolic links" == problem


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    os.mkfifo(tmp_path / "vramwatch.toml", 0o644)

    problem = trusted_load_error(tmp_path / "vramwatch.toml")

    assert f"{tmp_path}/vramwatch.toml: refusing an untrusted config: not a regular file" == (
        problem
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_symlink_owned_by_another_user_in_a_sticky_directory_is_refused(
    tmp_path: Path,
) -> None:
    """/tmp/etc -> /somewhere: whoever owns the link picks the file that is read."""
    tmp_path.chmod(0o755)
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    (tmp_path / "real").mkdir()
    write(tmp_path / "real" / "vramwatch.toml")
    link = sticky / "etc"
    link.symlink_to(tmp_path / "real")
    os.chown(link, 65534, 65534, follow_symlinks=False)
    sticky.chmod(0o1777)

    problem = trusted_load_error(link / "vramwatch.toml")

    assert f"the symbolic link {link} is owned by uid 65534" in problem


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
