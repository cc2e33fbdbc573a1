"""sources/cgroups.py: systemd's naming rule over cgroup paths, the layout, and
locating a unit's cgroup in a fixture tree under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_procfs import SYSTEM_FOO, USER_X, unit_dir, v1, v2, write
from vramwatch.model import Owner
from vramwatch.sources import cgroups
from vramwatch.sources.cgroups import LOCATE_RETRY_NS, CgroupLayout, Locator

# /proc/PID/cgroup ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (v2(SYSTEM_FOO), Owner(SYSTEM_FOO, "foo.service", "system")),
        (v1(SYSTEM_FOO), Owner(SYSTEM_FOO, "foo.service", "system")),
        # hybrid: systemd tracks units in name=systemd; the v2 line is "/" or a mirror
        (v1(SYSTEM_FOO, unified="/"), Owner(SYSTEM_FOO, "foo.service", "system")),
        (v1(SYSTEM_FOO, unified=SYSTEM_FOO), Owner(SYSTEM_FOO, "foo.service", "system")),
        (v2(USER_X), Owner(USER_X, "x.service", "user@1000")),
        (v1(USER_X), Owner(USER_X, "x.service", "user@1000")),
        (
            v2("/user.slice/user-1000.slice/user@1000.service/init.scope"),
            Owner(
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                "init.scope",
                "user@1000",
            ),
        ),
        # no user unit can be named: the process is the system unit user@1000.service's
        (
            v2("/user.slice/user-1000.slice/user@1000.service/app.slice"),
            Owner(
                "/user.slice/user-1000.slice/user@1000.service/app.slice",
                "user@1000.service",
                "system",
            ),
        ),
        (
            v2("/user.slice/user-1000.slice/user@1000.service/worker/3"),
            Owner(
                "/user.slice/user-1000.slice/user@1000.service/worker/3",
                "user@1000.service",
                "system",
            ),
        ),
        # the user manager itself is a system unit
        (
            v2("/user.slice/user-1000.slice/user@1000.service"),
            Owner("/user.slice/user-1000.slice/user@1000.service", "user@1000.service", "system"),
        ),
        (
            v2("/user.slice/user-1000.slice/session-3.scope"),
            Owner("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", "system"),
        ),
        (
            v2("/system.slice/docker-4f3c2a.scope"),
            Owner("/system.slice/docker-4f3c2a.scope", "docker-4f3c2a.scope", "system"),
        ),
        # the first unit below the slices owns every cgroup below it, whatever its name
        # (systemd's cg_path_get_unit): a Delegate=yes unit's payload is its own
        (v2(SYSTEM_FOO + "/worker/3"), Owner(SYSTEM_FOO + "/worker/3", "foo.service", "system")),
        (
            v2(SYSTEM_FOO + "/payload.scope"),
            Owner(SYSTEM_FOO + "/payload.scope", "foo.service", "system"),
        ),
        (
            v2("/system.slice/batch.service/ollama.service"),
            Owner("/system.slice/batch.service/ollama.service", "batch.service", "system"),
        ),
        (
            v1("/system.slice/batch.service/ollama.service"),
            Owner("/system.slice/batch.service/ollama.service", "batch.service", "system"),
        ),
        # a user manager below a delegated unit is that unit's payload, no user manager
        (
            v2("/system.slice/batch.service/user@1000.service/app.slice/x.service"),
            Owner(
                "/system.slice/batch.service/user@1000.service/app.slice/x.service",
                "batch.service",
                "system",
            ),
        ),
        # an nspawn container's whole tree, its own slices and services included
        (
            v2("/machine.slice/systemd-nspawn@c1.service/payload/system.slice/ollama.service"),
            Owner(
                "/machine.slice/systemd-nspawn@c1.service/payload/system.slice/ollama.service",
                "systemd-nspawn@c1.service",
                "system",
            ),
        ),
        # every unit type systemd puts processes in, not only services and scopes
        (
            v2("/system.slice/sshd.socket"),
            Owner("/system.slice/sshd.socket", "sshd.socket", "system"),
        ),
        (
            v2("/system.slice/mnt-data.mount"),
            Owner("/system.slice/mnt-data.mount", "mnt-data.mount", "system"),
        ),
        (
            v2("/system.slice/dev-sda2.swap"),
            Owner("/system.slice/dev-sda2.swap", "dev-sda2.swap", "system"),
        ),
        # a user unit below its own delegated sub-cgroups and user slices
        (
            v2(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/"
                "app-gnome.slice/llm.service/runner/ollama.service"
            ),
            Owner(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/"
                "app-gnome.slice/llm.service/runner/ollama.service",
                "llm.service",
                "user@1000",
            ),
        ),
        # a first component that is no slice and no unit: systemd names no unit
        (v2("/kthreadd"), Owner("/kthreadd", None, "system")),
        (
            v2("/docker/4f3c2a/system.slice/foo.service"),
            Owner("/docker/4f3c2a/system.slice/foo.service", None, "system"),
        ),
        (
            v2("/system.slice/foo@.service"),  # a template is no unit
            Owner("/system.slice/foo@.service", None, "system"),
        ),
        (
            v2("/system.slice/worker@2.service"),
            Owner("/system.slice/worker@2.service", "worker@2.service", "system"),
        ),
        (v2(SYSTEM_FOO + " (deleted)"), Owner(SYSTEM_FOO, "foo.service", "system")),
        (v2("/"), Owner("/", None, "system")),
        (v2("/init.scope"), Owner("/init.scope", "init.scope", "system")),
        (
            v2("/kubepods.slice/kubepods-pod1.slice"),
            Owner("/kubepods.slice/kubepods-pod1.slice", None, "system"),
        ),
        # colons are legal in unit names and cgroup paths
        (
            v2("/system.slice/a:b.service"),
            Owner("/system.slice/a:b.service", "a:b.service", "system"),
        ),
        ("", None),
        ("12:memory:/system.slice/foo.service\n", None),
    ],
)
def test_parse_proc_cgroup_finds_the_innermost_unit_and_its_manager(
    text: str, expected: Owner | None
) -> None:
    actual = cgroups.parse_proc_cgroup(text)

    assert expected == actual


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (Owner(SYSTEM_FOO, "foo.service", "system"), "foo.service"),
        (Owner("/", None, "system"), "cgroup /"),
    ],
)
def test_owner_label_is_the_unit_or_the_cgroup(owner: Owner, expected: str) -> None:
    assert expected == owner.label()


def test_parse_proc_cgroup_unescapes_systemd_cgroup_names() -> None:
    """systemd escapes unit cgroups that start with "_" or "." or a controller name."""
    actual = cgroups.parse_proc_cgroup(v2("/system.slice/_cpu.service"))

    assert "cpu.service" == actual.unit  # type: ignore[union-attr]


def test_parse_proc_cgroup_unescapes_slices_before_skipping_them() -> None:
    actual = cgroups.parse_proc_cgroup(v2("/_cpu.slice/_io.service/x.service"))

    assert Owner("/_cpu.slice/_io.service/x.service", "io.service", "system") == actual


@pytest.mark.parametrize(
    ("owner", "manager", "expected"),
    [
        (Owner(SYSTEM_FOO, "foo.service", "system"), "system", "foo.service"),
        (Owner(SYSTEM_FOO, "foo.service", "system"), "user@1000", None),
        # on the system manager every process of a user manager is user@UID.service's
        (Owner(USER_X, "x.service", "user@1000"), "system", "user@1000.service"),
        (Owner(USER_X, "x.service", "user@1000"), "user@1000", "x.service"),
        (Owner(USER_X, "x.service", "user@1000"), "user@1001", None),
        (Owner("/", None, "system"), "system", None),
    ],
)
def test_owner_unit_for_a_manager(owner: Owner, manager: str, expected: str | None) -> None:
    assert expected == owner.unit_for(manager)


def test_on_a_v2_host_the_0_line_wins_over_a_stray_name_systemd_hierarchy() -> None:
    """LXC and old systemd containers mount name=systemd on v2 hosts; it says "/" for all."""
    text = "9:name=systemd:/\n0::/system.slice/llama.service\n"

    unified = cgroups.parse_proc_cgroup(text, unified=True)
    hybrid = cgroups.parse_proc_cgroup(text)

    assert "llama.service" == unified.unit  # type: ignore[union-attr]
    assert None is hybrid.unit  # type: ignore[union-attr]


# locating a unit ------------------------------------------------------------------------


def locator(tmp_path: Path, layout: str) -> Locator:
    """A locator over a tracking tree as v2 (the whole tree) or v1 (name=systemd) has it."""
    root = tmp_path / "cgroup" if layout == "v2" else tmp_path / "cgroup" / "systemd"
    root.mkdir(parents=True)
    return Locator(root)


def located(found: cgroups.UnitCgroup | None) -> str | None:
    return found.cgroup if found is not None else None


@pytest.mark.parametrize("layout", ["v2", "v1"])
@pytest.mark.parametrize(
    ("unit", "manager", "expected"),
    [
        ("foo.service", "system", SYSTEM_FOO),
        ("x.service", "user@1000", USER_X),
        ("init.scope", "system", "/init.scope"),
        ("session-3.scope", "system", "/user.slice/user-1000.slice/session-3.scope"),
        ("docker-4f3c2a.scope", "system", "/system.slice/docker-4f3c2a.scope"),
        ("nested.service", "system", "/system.slice/a.slice/a-b.slice/nested.service"),
        ("x.service", "system", None),  # only the user manager runs x.service
        ("foo.service", "user@1000", None),  # only the system manager runs foo.service
        ("x.service", "user@1001", None),
        ("worker", "system", None),  # a sub-cgroup of foo.service, not a unit
        ("absent.service", "system", None),
        # a delegated unit's sub-cgroups are its payload, never a unit of their own
        ("ollama.service", "system", None),
        ("batch.service", "system", "/system.slice/batch.service"),
        ("y.service", "user@1000", None),  # a user manager inside batch.service is no manager
        # the user manager and a container are system units owning their whole tree
        ("user@1000.service", "system", "/user.slice/user-1000.slice/user@1000.service"),
        ("systemd-nspawn@c1.service", "system", "/machine.slice/systemd-nspawn@c1.service"),
        ("inner.service", "system", None),
        ("sshd.socket", "system", "/system.slice/sshd.socket"),
    ],
)
def test_locate_unit_finds_system_and_user_units(
    tmp_path: Path, layout: str, unit: str, manager: str, expected: str | None
) -> None:
    finder = locator(tmp_path, layout)
    root = finder.tracking
    for cgroup in (
        SYSTEM_FOO,
        SYSTEM_FOO + "/worker",
        USER_X,
        "/init.scope",
        "/user.slice/user-1000.slice/session-3.scope",
        "/user.slice/user-1001.slice/user@1001.service/app.slice",
        "/system.slice/docker-4f3c2a.scope",
        "/system.slice/a.slice/a-b.slice/nested.service",
        "/system.slice/batch.service/ollama.service",
        "/system.slice/batch.service/user@1000.service/app.slice/y.service",
        "/machine.slice/systemd-nspawn@c1.service/payload/system.slice/inner.service",
        "/system.slice/sshd.socket",
    ):
        unit_dir(root, cgroup)

    actual = located(finder.locate((unit, manager), now_ns=0))

    assert expected == actual


def test_locate_unit_finds_a_user_manager_under_a_plain_directory(tmp_path: Path) -> None:
    """Test beds and containers put user@UID.service below a directory that is no slice."""
    finder = locator(tmp_path, "v2")
    unit_dir(finder.tracking, "/sandbox/payload/user@1000.service/app.slice/x.service")

    actual = located(finder.locate(("x.service", "user@1000"), now_ns=0))

    assert "/sandbox/payload/user@1000.service/app.slice/x.service" == actual


def test_locate_unit_retries_a_missing_unit_only_every_ten_seconds(tmp_path: Path) -> None:
    finder = locator(tmp_path, "v2")
    root = finder.tracking
    (root / "system.slice").mkdir()
    foo = ("foo.service", "system")

    first = located(finder.locate(foo, now_ns=0))
    unit_dir(root, SYSTEM_FOO)  # the unit starts
    soon = located(finder.locate(foo, now_ns=LOCATE_RETRY_NS - 1))
    later = located(finder.locate(foo, now_ns=LOCATE_RETRY_NS))

    assert (None, None, SYSTEM_FOO) == (first, soon, later)


def test_locate_unit_follows_a_unit_that_moved_and_forget_drops_the_cache(tmp_path: Path) -> None:
    finder = locator(tmp_path, "v2")
    root = finder.tracking
    foo = ("foo.service", "system")
    old = unit_dir(root, SYSTEM_FOO)
    assert SYSTEM_FOO == located(finder.locate(foo, now_ns=0))

    old.joinpath("cgroup.procs").unlink()
    old.rmdir()
    unit_dir(root, "/system.slice/app.slice/foo.service")
    moved = located(finder.locate(foo, now_ns=1))
    finder.forget(foo)
    again = located(finder.locate(foo, now_ns=2))

    assert ("/system.slice/app.slice/foo.service",) * 2 == (moved, again)


# CgroupLayout.detect ----------------------------------------------------------------------


def test_detect_pure_v2(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "cpuset cpu io memory pids\n")

    actual = CgroupLayout.detect(tmp_path)

    assert CgroupLayout("v2", tmp_path, tmp_path) == actual


def test_detect_hybrid(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    (tmp_path / "memory").mkdir()
    write(tmp_path / "unified" / "cgroup.controllers", "")

    actual = CgroupLayout.detect(tmp_path)

    expected = CgroupLayout(
        "hybrid", tmp_path / "systemd", tmp_path / "unified", tmp_path / "memory"
    )
    assert expected == actual


def test_detect_legacy_v1(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    (tmp_path / "memory").mkdir()

    actual = CgroupLayout.detect(tmp_path)

    assert CgroupLayout("v1", tmp_path / "systemd", None, tmp_path / "memory") == actual


def test_detect_falls_back_to_v2_on_an_unknown_tree(tmp_path: Path) -> None:
    actual = CgroupLayout.detect(tmp_path)

    assert CgroupLayout("v2", tmp_path, tmp_path) == actual
