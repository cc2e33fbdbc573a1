"""config.py: TOML -> frozen Config, and every error names the file, the key and the problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramwatch import config, units
from vramwatch.config import (
    DEFAULT_GPU,
    DEFAULT_HOST,
    Config,
    ConfigError,
    DaemonConfig,
    Floor,
    FloorConfig,
    Tenant,
)
from vramwatch.model import Verb
from vramwatch.units import GIB, MIB

PATH = "/x/vramwatch.toml"
S = 10**9

SPEC_EXAMPLE = """
[daemon]
interval = "2s"          # sampling period
dry_run = false          # decide and log "would restart", never act
bus = "system"           # "system", or "user" for the calling user's manager
cooldown = "2m"          # no second action on the same unit within this time
max_restarts = 3         # per unit within restart_window; then stop acting
restart_window = "1h"    #   on that unit and log an error (restart storm)
reclaim_timeout = "30s"  # how long to wait to see memory freed after acting

[gpu]
min_free_vram = "1GiB"   # floor for every GPU (or "10%")
grace = "10s"            # the floor must stay breached this long

[host]
min_available_ram = "4GiB"   # floor on MemAvailable (or "10%")
grace = "10s"

[[tenant]]
unit = "immich-machine-learning.service"
vram = "3000MiB"         # budget, summed over all GPUs; optional
ram = "6GiB"             # budget; optional
action = "restart"       # "restart" (default) or "stop"
protected = false        # true: watched and reported, never acted on

[[tenant]]
unit = "llama-swap.service"
vram = "5000MiB"
protected = true
"""

SIZE_HINT = 'expected a size such as "3000MiB" or "2GiB", got "{}"'
FLOOR_HINT = 'expected a size such as "2GiB" or a percentage such as "10%", got "{}"'
DURATION_HINT = 'expected a duration such as "500ms", "2s", "5m" or "1h", got "{}"'
UNIT_HINT = 'expected a systemd unit name such as "llama-server.service" or "job.scope", got "{}"'


def parse_error(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        config.parse(text, PATH)
    return str(raised.value)


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        config.load(path)
    return str(raised.value)


def tenant_toml(**keys: str) -> str:
    """One [[tenant]] table from already-TOML-encoded values."""
    return "[[tenant]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


# valid configs ----------------------------------------------------------------


def test_spec_example_gives_the_exact_frozen_config(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(SPEC_EXAMPLE)
    expected = Config(
        path=str(path),
        daemon=DaemonConfig(
            interval_ns=2 * S,
            dry_run=False,
            bus="system",
            cooldown_ns=120 * S,
            max_restarts=3,
            restart_window_ns=3600 * S,
            reclaim_timeout_ns=30 * S,
        ),
        gpu=FloorConfig(Floor("1GiB", bytes=GIB), 10 * S),
        host=FloorConfig(Floor("4GiB", bytes=4 * GIB), 10 * S),
        tenants=(
            Tenant(
                "immich-machine-learning.service",
                vram_bytes=3000 * MIB,
                ram_bytes=6 * GIB,
                verb=Verb.RESTART,
                protected=False,
            ),
            Tenant("llama-swap.service", vram_bytes=5000 * MIB, protected=True),
        ),
    )

    actual = config.load(path)

    assert expected == actual


def test_config_is_frozen() -> None:
    loaded = config.parse(SPEC_EXAMPLE, PATH)

    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.daemon.dry_run = True  # type: ignore[misc]


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    """Defaults: 2 s interval, 2 min cooldown, 3 restarts/h, 30 s reclaim, 10 % floors."""
    path = tmp_path / "vramwatch.toml"
    path.write_text("")
    expected = Config(str(path), DaemonConfig(), DEFAULT_GPU, DEFAULT_HOST, ())

    actual = config.load(path)

    assert expected == actual
    assert (2 * S, 120 * S, 3, 3600 * S, 30 * S) == (
        actual.daemon.interval_ns,
        actual.daemon.cooldown_ns,
        actual.daemon.max_restarts,
        actual.daemon.restart_window_ns,
        actual.daemon.reclaim_timeout_ns,
    )
    assert FloorConfig(Floor("10%", percent=10.0), 10 * S) == actual.gpu == actual.host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (tenant_toml(unit='"a.service"'), Tenant("a.service")),
        (tenant_toml(unit='"job.scope"', action='"stop"'), Tenant("job.scope", verb=Verb.STOP)),
        (
            tenant_toml(unit='"worker@3.service"', ram='"2GB"'),
            Tenant("worker@3.service", ram_bytes=2 * 10**9),
        ),
        (tenant_toml(unit='"a\\\\x2db.service"'), Tenant("a\\x2db.service")),
        (tenant_toml(unit='"a:b_c.d-e.service"'), Tenant("a:b_c.d-e.service")),
        (tenant_toml(unit=f'"{"a" * 246}.service"'), Tenant("a" * 246 + ".service")),
    ],
)
def test_tenant_defaults_and_valid_unit_names(text: str, expected: Tenant) -> None:
    """A tenant needs only its unit: no budgets, action restart, not protected."""
    actual = config.parse(text, PATH).tenants

    assert (expected,) == actual


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[gpu]\nmin_free_vram = "10%"', Floor("10%", percent=10.0)),
        ('[gpu]\nmin_free_vram = "12.5%"', Floor("12.5%", percent=12.5)),
        ('[gpu]\nmin_free_vram = "1.5GiB"', Floor("1.5GiB", bytes=3 * GIB // 2)),
        ('[gpu]\nmin_free_vram = "500MB"', Floor("500MB", bytes=500 * 10**6)),
    ],
)
def test_floor_is_bytes_or_a_percentage(text: str, expected: Floor) -> None:
    actual = config.parse(text, PATH).gpu.floor

    assert expected == actual


@pytest.mark.parametrize(
    ("floor", "total", "expected"),
    [
        (Floor("10%", percent=10.0), 16 * GIB, int(1.6 * GIB)),
        (Floor("50%", percent=50.0), 1001, 500),
        (Floor("1GiB", bytes=GIB), 16 * GIB, GIB),
        (Floor("1GiB", bytes=GIB), 0, GIB),
    ],
)
def test_floor_resolve_against_the_total(floor: Floor, total: int, expected: int) -> None:
    actual = floor.resolve(total)

    assert expected == actual


def test_zero_durations_are_allowed_where_zero_means_none() -> None:
    """grace = "0s" acts on the first breached sample; cooldown = "0s" disables it."""
    text = '[daemon]\ncooldown = "0s"\n[gpu]\ngrace = "0s"\n[host]\ngrace = "0ms"'

    actual = config.parse(text, PATH)

    assert (0, 0, 0) == (actual.daemon.cooldown_ns, actual.gpu.grace_ns, actual.host.grace_ns)


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ('[daemon]\ninterval = "100ms"', lambda c: c.daemon.interval_ns, 10**8),
        ('[daemon]\ninterval = "1h"', lambda c: c.daemon.interval_ns, 3600 * S),
        ('[gpu]\ngrace = "60m"', lambda c: c.gpu.grace_ns, 3600 * S),
        ('[daemon]\ncooldown = "168h"', lambda c: c.daemon.cooldown_ns, 168 * 3600 * S),
        ('[daemon]\nrestart_window = "168h"', lambda c: c.daemon.restart_window_ns, 168 * 3600 * S),
        ('[daemon]\nreclaim_timeout = "24h"', lambda c: c.daemon.reclaim_timeout_ns, 24 * 3600 * S),
        ("[daemon]\nmax_restarts = 1000", lambda c: c.daemon.max_restarts, 1000),
        ('[gpu]\nmin_free_vram = "1024TiB"', lambda c: c.gpu.floor.bytes, 1024**5),
        (
            tenant_toml(unit='"a.service"', ram='"1024TiB"'),
            lambda c: c.tenants[0].ram_bytes,
            1024**5,
        ),
    ],
)
def test_the_ends_of_each_sane_range_are_accepted(
    text: str, field: Callable[[Config], int | None], expected: int
) -> None:
    actual = field(config.parse(text, PATH))

    assert expected == actual


def test_config_tenant_lookup_by_unit() -> None:
    loaded = config.parse(SPEC_EXAMPLE, PATH)

    assert "llama-swap.service" == loaded.tenant("llama-swap.service").unit  # type: ignore[union-attr]
    assert None is loaded.tenant("other.service")


def test_tenant_budget_by_resource() -> None:
    tenant = Tenant("a.service", vram_bytes=1, ram_bytes=2)

    assert (1, 2) == (tenant.budget("vram"), tenant.budget("ram"))


def test_parse_without_a_path_names_the_text_config() -> None:
    with pytest.raises(ConfigError) as raised:
        config.parse("nope = 1")

    assert "<config>: nope: unknown key" == str(raised.value)
    assert ("<config>", "nope", "unknown key") == (
        raised.value.path,
        raised.value.key,
        raised.value.problem,
    )


def test_default_path_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VRAMWATCH_CONFIG", raising=False)
    assert Path("/etc/vramwatch.toml") == config.default_path()

    monkeypatch.setenv("VRAMWATCH_CONFIG", "/srv/vw.toml")
    assert Path("/srv/vw.toml") == config.default_path()


# validation errors: exact text -------------------------------------------------

T0 = tenant_toml(unit='"a.service"')

ERRORS = [
    # container tenants (SPEC "Tenants: units and containers")
    (
        '[[tenant]]\nunit = "a.service"\ncontainer = "a"',
        (
            "tenant[0].container: a tenant is named by exactly one of unit, container, compose; "
            'this one has both "unit" and "container"'
        ),
    ),
    (
        '[[tenant]]\ncompose = "frigate"',
        (
            'tenant[0].compose: expected PROJECT/SERVICE such as "immich/immich-machine-learning", '
            'got "frigate"'
        ),
    ),
    (
        '[[tenant]]\ncontainer = "/immich"',
        (
            'tenant[0].container: expected a container name such as "immich_machine_learning", '
            'got "/immich"'
        ),
    ),
    (
        '[[tenant]]\ncontainer = "ml"\n[[tenant]]\ncontainer = "ml"',
        'tenant[1].container: "ml" is already configured as tenant[0]',
    ),
    (
        '[[tenant]]\nunit = "container:ml.service"',
        (
            'tenant[0].unit: "container:ml.service": the prefix "container:" is kept for container '
            "tenants"
        ),
    ),
    (
        '[containers]\nsocket = "/run/docker.sock"',
        (
            'containers.socket: expected a Unix socket such as "unix:///run/docker.sock" or '
            '"unix:///run/podman/podman.sock", got "/run/docker.sock"'
        ),
    ),
    (
        '[containers]\nstop_timeout = "11m"',
        'containers.stop_timeout: must be at most 10m, got "11m"',
    ),
    ("[containers]\nsock = 1", 'containers.sock: unknown key (did you mean "socket"?)'),
    # unknown keys, with a did-you-mean hint when one is close
    ("nope = 1", "nope: unknown key"),
    ("tenants = []", 'tenants: unknown key (did you mean "tenant"?)'),
    ("[deamon]", 'deamon: unknown key (did you mean "daemon"?)'),
    ("[daemon]\ndryrun = true", 'daemon.dryrun: unknown key (did you mean "dry_run"?)'),
    ("[daemon]\nfoo = 1", "daemon.foo: unknown key"),
    ("[daemon.sub]\nx = 1", "daemon.sub: unknown key"),
    ('[gpu]\nmin_free = "1GiB"', 'gpu.min_free: unknown key (did you mean "min_free_vram"?)'),
    (
        '[host]\nmin_free_vram = "1GiB"',
        'host.min_free_vram: unknown key (did you mean "min_available_ram"?)',
    ),
    ('[host]\ngrce = "1s"', 'host.grce: unknown key (did you mean "grace"?)'),
    (
        tenant_toml(unit='"a.service"', vrm='"1GiB"'),
        'tenant[0].vrm: unknown key (did you mean "vram"?)',
    ),
    (
        T0 + tenant_toml(unit='"b.service"', protect="true"),
        'tenant[1].protect: unknown key (did you mean "protected"?)',
    ),
    (
        T0 + tenant_toml(unit='"b.service"', gpus="0"),
        'tenant[1].gpus: unknown key (did you mean "gpu"?)',
    ),
    # wrong types
    ('[daemon]\ndry_run = "yes"', 'daemon.dry_run: expected true or false, got "yes"'),
    ("[daemon]\ndry_run = 1", "daemon.dry_run: expected true or false, got 1"),
    ("[daemon]\nmax_restarts = true", "daemon.max_restarts: expected an integer, got true"),
    ('[daemon]\nmax_restarts = "3"', 'daemon.max_restarts: expected an integer, got "3"'),
    ("[daemon]\nmax_restarts = 1.5", "daemon.max_restarts: expected an integer, got 1.5"),
    (
        "[daemon]\ninterval = 2",
        'daemon.interval: expected a string, got 2; write it as "2s"',
    ),
    ("[daemon]\nbus = 1", "daemon.bus: expected a string, got 1"),
    (
        "[gpu]\nmin_free_vram = 1024",
        (
            'gpu.min_free_vram: expected a string, got 1024; write it as "1024MiB" '
            '(or a percentage such as "10%")'
        ),
    ),
    ("[gpu]\ngrace = false", "gpu.grace: expected a string, got false"),
    (tenant_toml(unit="5"), "tenant[0].unit: expected a string, got 5"),
    (
        tenant_toml(unit='"a.service"', vram="3000"),
        'tenant[0].vram: expected a string, got 3000; write it as "3000MiB"',
    ),
    (
        tenant_toml(unit='"a.service"', ram="1.5"),
        'tenant[0].ram: expected a string, got 1.5; write it as "1.5MiB"',
    ),
    (
        "[daemon]\nreclaim_timeout = 30",
        'daemon.reclaim_timeout: expected a string, got 30; write it as "30s"',
    ),
    (
        "[gpu]\nnvml_timeout = 3",
        'gpu.nvml_timeout: expected a string, got 3; write it as "3s"',
    ),
    ("[daemon]\ninterval = inf", "daemon.interval: expected a string, got inf"),
    (
        '[hooks]\nafter_action = "/usr/local/bin/notify-ops"',
        (
            "hooks.after_action: expected a command as a list of strings such as "
            '["/usr/bin/curl", "-fsS", URL], got "/usr/local/bin/notify-ops"'
        ),
    ),
    (
        '[[tenant]]\nunit = "a.service"\n[tenant.x]\n[tenant.x]',
        "not valid TOML: Cannot declare [tenant.x] twice (at line 4, column 10)",
    ),
    (
        tenant_toml(unit='"a.service"', protected='"true"'),
        'tenant[0].protected: expected true or false, got "true"',
    ),
    ("daemon = 1", "daemon: expected a table, got 1"),
    ("gpu = []", "gpu: expected a table, got an array"),
    ('host = "x"', 'host: expected a table, got "x"'),
    ("tenant = [1]", "tenant[0]: expected a table ([[tenant]]), got 1"),
    (
        T0 + "[[tenant]]\n" + 'unit = ["a.service"]',
        "tenant[1].unit: expected a string, got an array",
    ),
    # impossible values
    ('[daemon]\ninterval = "0s"', 'daemon.interval: must be between 100ms and 1h, got "0s"'),
    (
        '[daemon]\nrestart_window = "0h"',
        'daemon.restart_window: must be greater than zero, got "0h"',
    ),
    (
        '[daemon]\nreclaim_timeout = "0ms"',
        'daemon.reclaim_timeout: must be greater than zero, got "0ms"',
    ),
    ('[daemon]\ninterval = "2"', "daemon.interval: " + DURATION_HINT.format("2")),
    # durations out of their sane range (issue 10 item 14: "100000000000h" crashed run)
    (
        '[daemon]\ninterval = "100000000000h"',
        'daemon.interval: must be between 100ms and 1h, got "100000000000h"',
    ),
    ('[daemon]\ninterval = "61m"', 'daemon.interval: must be between 100ms and 1h, got "61m"'),
    ('[daemon]\ninterval = "99ms"', 'daemon.interval: must be between 100ms and 1h, got "99ms"'),
    (
        '[daemon]\ninterval = "0.0000001ms"',
        'daemon.interval: must be between 100ms and 1h, got "0.0000001ms"',
    ),
    ('[gpu]\ngrace = "2h"', 'gpu.grace: must be at most 1h, got "2h"'),
    ('[host]\ngrace = "3601s"', 'host.grace: must be at most 1h, got "3601s"'),
    # A bound of whole days is said in days, as the man page says it (issue 23).
    ('[daemon]\ncooldown = "169h"', 'daemon.cooldown: must be at most 7d, got "169h"'),
    (
        '[daemon]\nrestart_window = "100000000000h"',
        'daemon.restart_window: must be at most 7d, got "100000000000h"',
    ),
    (
        '[daemon]\nreclaim_timeout = "25h"',
        'daemon.reclaim_timeout: must be at most 24h, got "25h"',
    ),
    ("[daemon]\nmax_restarts = 1001", "daemon.max_restarts: must be at most 1000, got 1001"),
    (
        "[daemon]\nmax_restarts = 9223372036854775807",
        "daemon.max_restarts: must be at most 1000, got 9223372036854775807",
    ),
    ('[daemon]\ncooldown = "-1m"', "daemon.cooldown: " + DURATION_HINT.format("-1m")),
    ('[gpu]\ngrace = "10 sec"', "gpu.grace: " + DURATION_HINT.format("10 sec")),
    ("[daemon]\nmax_restarts = 0", "daemon.max_restarts: must be at least 1, got 0"),
    ("[daemon]\nmax_restarts = -2", "daemon.max_restarts: must be at least 1, got -2"),
    ('[daemon]\nbus = "session"', 'daemon.bus: expected "system" or "user", got "session"'),
    ('[daemon]\nbus = "System"', 'daemon.bus: expected "system" or "user", got "System"'),
    # floors
    (
        '[gpu]\nmin_free_vram = "0%"',
        'gpu.min_free_vram: a percentage must be above 0% and below 100%, got "0%"',
    ),
    (
        '[gpu]\nmin_free_vram = "100%"',
        'gpu.min_free_vram: a percentage must be above 0% and below 100%, got "100%"',
    ),
    (
        '[host]\nmin_available_ram = "150%"',
        'host.min_available_ram: a percentage must be above 0% and below 100%, got "150%"',
    ),
    ('[gpu]\nmin_free_vram = "0GiB"', 'gpu.min_free_vram: must be greater than zero, got "0GiB"'),
    (
        '[gpu]\nmin_free_vram = "1025TiB"',
        'gpu.min_free_vram: must be at most 1024TiB (1 PiB), got "1025TiB"',
    ),
    (
        '[host]\nmin_available_ram = "1125899906842625B"',
        'host.min_available_ram: must be at most 1024TiB (1 PiB), got "1125899906842625B"',
    ),
    ('[gpu]\nmin_free_vram = "1G"', "gpu.min_free_vram: " + FLOOR_HINT.format("1G")),
    ('[host]\nmin_available_ram = "-10%"', "host.min_available_ram: " + FLOOR_HINT.format("-10%")),
    (
        '[host]\nmin_available_ram = "-4GiB"',
        "host.min_available_ram: " + FLOOR_HINT.format("-4GiB"),
    ),
    # budgets
    (
        T0 + tenant_toml(unit='"b.service"', vram='"8G"'),
        "tenant[1].vram: " + SIZE_HINT.format("8G"),
    ),
    (
        tenant_toml(unit='"a.service"', vram='"3000mib"'),
        "tenant[0].vram: " + SIZE_HINT.format("3000mib"),
    ),
    (
        tenant_toml(unit='"a.service"', ram='"6 gigs"'),
        "tenant[0].ram: " + SIZE_HINT.format("6 gigs"),
    ),
    (
        tenant_toml(unit='"a.service"', vram='"0MiB"'),
        'tenant[0].vram: must be greater than zero, got "0MiB"',
    ),
    (
        tenant_toml(unit='"a.service"', ram='"0B"'),
        'tenant[0].ram: must be greater than zero, got "0B"',
    ),
    (
        tenant_toml(unit='"a.service"', vram='"-1GiB"'),
        "tenant[0].vram: " + SIZE_HINT.format("-1GiB"),
    ),
    (tenant_toml(unit='"a.service"', vram='""'), "tenant[0].vram: " + SIZE_HINT.format("")),
    (
        tenant_toml(unit='"a.service"', vram='"2000TB"'),
        'tenant[0].vram: must be at most 1024TiB (1 PiB), got "2000TB"',
    ),
    (
        tenant_toml(unit='"a.service"', ram='"99999999999999999TiB"'),
        "tenant[0].ram: " + SIZE_HINT.format("99999999999999999TiB"),
    ),
    # tenants and their units
    (T0 + T0, 'tenant[1].unit: "a.service" is already configured as tenant[0]'),
    (
        tenant_toml(unit='"x.service"') + T0 + tenant_toml(unit='"x.service"'),
        'tenant[2].unit: "x.service" is already configured as tenant[0]',
    ),
    (
        tenant_toml(vram='"1GiB"'),
        (
            "tenant[0].unit: missing: every tenant needs the systemd unit it runs as "
            '(or "container" or "compose" for a container)'
        ),
    ),
    (
        "[[tenant]]",
        (
            "tenant[0].unit: missing: every tenant needs the systemd unit it runs as "
            '(or "container" or "compose" for a container)'
        ),
    ),
    (
        tenant_toml(unit='"a.service"', action='"kill"'),
        'tenant[0].action: expected "restart" or "stop", got "kill"',
    ),
    (
        tenant_toml(unit='"a.service"', action='"Restart"'),
        'tenant[0].action: expected "restart" or "stop", got "Restart"',
    ),
    (
        tenant_toml(unit='"job.scope"', action='"restart"'),
        'tenant[0].action: a scope cannot be restarted by systemd; use action = "stop"',
    ),
    (
        tenant_toml(unit='"job.scope"'),
        'tenant[0].action: a scope cannot be restarted by systemd; use action = "stop"',
    ),
    (tenant_toml(unit='"../x.service"'), "tenant[0].unit: " + UNIT_HINT.format("../x.service")),
    (
        tenant_toml(unit='"system.slice/x.service"'),
        "tenant[0].unit: " + UNIT_HINT.format("system.slice/x.service"),
    ),
    (tenant_toml(unit='"my app.service"'), "tenant[0].unit: " + UNIT_HINT.format("my app.service")),
    (tenant_toml(unit='"x.socket"'), "tenant[0].unit: " + UNIT_HINT.format("x.socket")),
    (tenant_toml(unit='"x.slice"'), "tenant[0].unit: " + UNIT_HINT.format("x.slice")),
    (tenant_toml(unit='"x"'), "tenant[0].unit: " + UNIT_HINT.format("x")),
    (tenant_toml(unit='""'), "tenant[0].unit: " + UNIT_HINT.format("")),
    (tenant_toml(unit='".service"'), "tenant[0].unit: " + UNIT_HINT.format(".service")),
    (tenant_toml(unit='"x.service\\n"'), "tenant[0].unit: " + UNIT_HINT.format("x.service\n")),
    (tenant_toml(unit='"ünï.service"'), "tenant[0].unit: " + UNIT_HINT.format("ünï.service")),
    (
        tenant_toml(unit=f'"{"a" * 249}.service"'),
        "tenant[0].unit: " + UNIT_HINT.format("a" * 249 + ".service"),
    ),
    (tenant_toml(unit='"@x.service"'), 'tenant[0].unit: "@x.service" is not a valid unit name'),
    (tenant_toml(unit='"x.@1.service"'), 'tenant[0].unit: "x.@1.service" is not a valid unit name'),
    # [trend], [hooks] and release commands
    ('[trend]\nwindow = "5s"', 'trend.window: must be at least 10s, or "0s" to turn forecasts off'),
    ('[trend]\nwindow = "8d"', 'trend.window: must be at most 7d, got "8d"'),
    ('[trend]\nwarn_within = "0s"', 'trend.warn_within: must be greater than zero, got "0s"'),
    ('[hooks]\ntimeout = "500ms"', 'hooks.timeout: must be between 1s and 10m, got "500ms"'),
    (
        "[hooks]\nafter_action = []",
        'hooks.after_action: expected a command as a list, e.g. ["/usr/bin/curl", "-fsS", URL]',
    ),
    (
        tenant_toml(unit='"a.service"', release='["curl", "-fsS"]'),
        (
            "tenant[0].release: the command must be an absolute path (no shell, no PATH "
            'search), got "curl"'
        ),
    ),
    (
        tenant_toml(unit='"a.service"', release='["/bin/x", 1]'),
        "tenant[0].release: expected a list of at most 64 strings",
    ),
    (
        tenant_toml(unit='"a.service"', release='["/bin/x\\u0000"]'),
        "tenant[0].release: a NUL character cannot be passed to a command",
    ),
    (
        tenant_toml(unit='"a.service"', release_timeout='"11m"'),
        'tenant[0].release_timeout: must be between 1s and 10m, got "11m"',
    ),
    (
        tenant_toml(unit='"a.service"', release_timeout="20"),
        'tenant[0].release_timeout: expected a string, got 20; write it as "20s"',
    ),
    # two mistakes: the one told is the first key read (bus before interval; a rule on
    # a tenant's keys as soon as they are read)
    (
        '[daemon]\ninterval = "0s"\nbus = "session"',
        'daemon.bus: expected "system" or "user", got "session"',
    ),
    (
        tenant_toml(unit='"job.scope"', vram='"8G"'),
        'tenant[0].action: a scope cannot be restarted by systemd; use action = "stop"',
    ),
    (
        tenant_toml(unit='"a.service"', reserve="true", ram='"8G"'),
        "tenant[0].reserve: needs a vram budget: the unused part of it is reserved",
    ),
    # a tenant's name keys are among the suggestions, whichever names it
    (
        tenant_toml(unit='"a.service"', contaner='"ml"'),
        'tenant[0].contaner: unknown key (did you mean "container"?)',
    ),
    (
        tenant_toml(container='"ml"', unt='"a.service"'),
        'tenant[0].unt: unknown key (did you mean "unit"?)',
    ),
    # not TOML; its keys in TOML's words, not Python's ('daemon',)
    ("[daemon]\n[daemon]", "not valid TOML: Cannot declare [daemon] twice (at line 2, column 8)"),
    (
        'a = [1]\n["x y".z]\n["x y".z]',
        'not valid TOML: Cannot declare ["x y".z] twice (at line 3, column 9)',
    ),
    ("a = [1]\n[[a]]", "not valid TOML: Cannot mutate immutable namespace a (at line 2, column 4)"),
    ("a = = 1", "not valid TOML: Invalid value (at line 1, column 5)"),
    (
        "[daemon",
        "not valid TOML: Expected ']' at the end of a table declaration (at end of document)",
    ),
    (
        "[daemon]\n[daemon]",
        "not valid TOML: Cannot declare [daemon] twice (at line 2, column 8)",
    ),
]


@pytest.mark.parametrize(("text", "problem"), ERRORS)
def test_every_mistake_names_the_file_the_key_and_what_is_wrong(text: str, problem: str) -> None:
    expected = f"{PATH}: {problem}"

    actual = parse_error(text)

    assert expected == actual


def test_template_unit_is_refused_with_an_instance_to_name() -> None:
    expected = (
        f'{PATH}: tenant[0].unit: "foo@.service" is a template; '
        'name an instance such as "foo@1.service"'
    )

    actual = parse_error(tenant_toml(unit='"foo@.service"'))

    assert expected == actual


def test_template_unit_is_refused() -> None:
    """Whatever the hint says, a template can never run and is refused."""
    actual = parse_error(tenant_toml(unit='"foo@.service"'))

    assert actual.startswith(f'{PATH}: tenant[0].unit: "foo@.service" is a template; ')


def test_template_scope_is_refused() -> None:
    """systemd refuses "foo@.scope" as a unit name: it is a template, not an instance."""
    actual = parse_error(tenant_toml(unit='"foo@.scope"', action='"stop"'))

    assert actual.startswith(f'{PATH}: tenant[0].unit: "foo@.scope" is ')


def test_a_255_byte_unit_name_is_accepted() -> None:
    """systemd's UNIT_NAME_MAX is 256 with the NUL: names of up to 255 bytes are valid."""
    unit = "a" * 247 + ".service"

    actual = config.parse(tenant_toml(unit=f'"{unit}"'), PATH).tenants

    assert (Tenant(unit),) == actual


def test_a_256_byte_unit_name_is_refused() -> None:
    unit = "a" * 248 + ".service"

    actual = parse_error(tenant_toml(unit=f'"{unit}"'))

    assert f"{PATH}: tenant[0].unit: " + UNIT_HINT.format(unit) == actual


def test_tenant_as_a_table_names_the_toml_array_of_tables() -> None:
    actual = parse_error('[tenant]\nunit = "a.service"')

    assert "list" not in actual and "[[tenant]]" in actual


def test_a_date_where_a_duration_belongs_is_described_in_toml_terms() -> None:
    actual = parse_error("[daemon]\ninterval = 1979-05-27")

    assert f"{PATH}: daemon.interval: expected a string, got 1979-05-27" == actual


def test_an_absurdly_long_budget_is_a_config_error() -> None:
    text = tenant_toml(unit='"a.service"', vram=f'"{"9" * 300}MiB"')

    actual = parse_error(text)

    assert f"{PATH}: tenant[0].vram: " + SIZE_HINT.format("9" * 300 + "MiB") == actual


def test_deeply_nested_arrays_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text("x = " + "[" * 5000)

    actual = load_error(path)

    assert actual.startswith(f"{path}: not valid TOML: ")


def test_the_first_unknown_key_in_sorted_order_is_named() -> None:
    actual = parse_error("[daemon]\nzeta = 1\nalpha = 2")

    assert f"{PATH}: daemon.alpha: unknown key" == actual


def test_config_error_carries_path_key_and_problem() -> None:
    with pytest.raises(ConfigError) as raised:
        config.parse('[daemon]\nbus = "x"', PATH)

    assert (PATH, "daemon.bus", 'expected "system" or "user", got "x"') == (
        raised.value.path,
        raised.value.key,
        raised.value.problem,
    )


# files --------------------------------------------------------------------------


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_bytes(b'[daemon]\nbus = "sys\xfftem"\n')

    actual = load_error(path)

    assert f"{path}: not UTF-8 text (byte 19)" == actual


def test_a_file_over_one_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_bytes(b"#" * (config.MAX_CONFIG_BYTES + 1))

    actual = load_error(path)

    assert f"{path}: larger than 1048576 bytes; not a config file" == actual


def test_a_file_of_exactly_one_mebibyte_is_read(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_bytes(b"#" * (config.MAX_CONFIG_BYTES - 1) + b"\n")

    actual = config.load(path)

    assert () == actual.tenants


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"

    actual = load_error(path)

    assert f"{path}: no such file (write one, see vramwatch.toml(5))" == actual


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    actual = load_error(tmp_path)

    assert f"{tmp_path}: is a directory, expected a TOML file" == actual


def test_not_toml_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text("[daemon]\ninterval = 2s\n")

    actual = load_error(path)

    assert (
        f"{path}: not valid TOML: "
        "Expected newline or end of document after a statement (at line 2, column 13)" == actual
    )


def test_a_file_error_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(SPEC_EXAMPLE.replace('vram = "5000MiB"', 'vram = "8G"'))

    actual = load_error(path)

    assert f"{path}: tenant[1].vram: " + SIZE_HINT.format("8G") == actual


def test_load_accepts_a_string_path(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(T0)

    actual = config.load(str(path))

    assert (str(path), (Tenant("a.service"),)) == (actual.path, actual.tenants)


# budget_fit_warnings -------------------------------------------------------------


def fit_config(floor: str, *vram: str) -> Config:
    tenants = "".join(
        tenant_toml(unit=f'"t{i}.service"', vram=f'"{v}"') for i, v in enumerate(vram)
    )
    return config.parse(f'[gpu]\nmin_free_vram = "{floor}"\n' + tenants, PATH)


@pytest.mark.parametrize(
    ("cfg", "totals", "expected"),
    [
        # The incident: 13300 MiB of budgets on a 16 GiB T4 with a 2 GiB floor fits.
        (fit_config("2GiB", "3000MiB", "5000MiB", "2000MiB", "1800MiB", "1500MiB"), [16 * GIB], []),
        (fit_config("1GiB", "15GiB"), [16 * GIB], []),
        (fit_config("1GiB", "16GiB"), [], []),
        (fit_config("1GiB"), [16 * GIB], []),
        (fit_config("10%", "8GiB", "8GiB"), [10 * GIB, 10 * GIB], []),
        (
            fit_config("2GiB", "8GiB", "8GiB"),
            [16 * GIB],
            [
                (
                    "VRAM budgets sum to 16 GiB but the 1 GPU(s) present leave 14 GiB above the "
                    "min_free_vram floor (2GiB): tenants within budget can still breach the floor, "
                    "and then vramwatch can only warn"
                )
            ],
        ),
        (
            fit_config("10%", "10GiB", "10GiB"),
            [10 * GIB, 10 * GIB],
            [
                (
                    "VRAM budgets sum to 20 GiB but the 2 GPU(s) present leave 18 GiB above the "
                    "min_free_vram floor (10%): tenants within budget can still breach the floor, "
                    "and then vramwatch can only warn"
                )
            ],
        ),
    ],
)
def test_budget_fit_warnings_when_budgets_exceed_what_the_floor_leaves(
    cfg: Config, totals: list[int], expected: list[str]
) -> None:
    actual = config.budget_fit_warnings(cfg, totals)

    assert expected == actual


def test_budget_fit_ignores_tenants_without_a_vram_budget() -> None:
    cfg = config.parse(tenant_toml(unit='"a.service"', ram='"100GiB"'), PATH)

    assert [] == config.budget_fit_warnings(cfg, [GIB])


# fuzz ---------------------------------------------------------------------------

KEYS = [
    "[daemon]",
    "[gpu]",
    "[host]",
    "[[tenant]]",
    "interval",
    "dry_run",
    "bus",
    "cooldown",
    "max_restarts",
    "restart_window",
    "reclaim_timeout",
    "min_free_vram",
    "grace",
    "min_available_ram",
    "unit",
    "vram",
    "ram",
    "action",
    "protected",
    "tenant",
    "daemon",
]
VALUES = [
    '"2s"',
    '"0s"',
    '"-1s"',
    '"1GiB"',
    '"0B"',
    '"10%"',
    '"100%"',
    '"8G"',
    "true",
    "3",
    "0",
    "-1",
    "1.5",
    '"system"',
    '"user"',
    '"x.service"',
    '"x.scope"',
    '"foo@.service"',
    '"stop"',
    '"restart"',
    "[]",
    "{}",
    '["a"]',
    "1979-05-27",
    '"a.service"',
    '""',
]


@st.composite
def toml_like(draw: st.DrawFn) -> bytes:
    """Lines that look like a vramwatch config, so the fuzz reaches validation."""
    lines = draw(
        st.lists(
            st.one_of(
                st.sampled_from(KEYS),
                st.builds(
                    lambda k, v: f"{k} = {v}", st.sampled_from(KEYS), st.sampled_from(VALUES)
                ),
                st.text(max_size=20),
            ),
            max_size=12,
        )
    )
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.one_of(st.binary(max_size=200), toml_like()))
def test_load_returns_a_config_or_raises_config_error_for_any_bytes(
    tmp_path: Path, raw: bytes
) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(raw)

    try:
        result = config.load(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")
    else:
        assert isinstance(result, Config)


def test_an_exception_a_validator_forgot_is_still_a_config_error_naming_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last line of defence: check prints no traceback, run exits 78. A parser
    raising something other than the UnitError its key turns into a message stands
    for a validator that forgot a case."""

    def forgot(_text: str) -> int:
        raise ValueError("invalid literal for int() with base 10: '²'")

    monkeypatch.setattr(units, "parse_duration_ns", forgot)

    actual = parse_error('[daemon]\ninterval = "2s"')

    assert (
        f'{PATH}: cannot be read as a config: ValueError("invalid literal for int() with '
        "base 10: '²'\"); this is a bug in vramwatch, please report it"
    ) == actual


GIB_FLOORS = "[gpu]\nmin_free_vram = {gpu}\n[host]\nmin_available_ram = {host}\n"


@pytest.mark.parametrize(
    ("gpu", "host", "totals", "mem_total", "expected"),
    [
        ('"1GiB"', '"4GiB"', [16 * GIB], 64 * GIB, []),
        ('"99%"', '"99%"', [16 * GIB], 64 * GIB, []),  # a percentage is always below
        ('"1GiB"', '"4GiB"', [None], None, []),  # nothing known: nothing to say
        (
            '"1GiB"',
            '"1TiB"',
            [16 * GIB],
            64 * GIB,
            [
                (
                    "host.min_available_ram 1TiB is at or above this host's MemTotal (64 GiB): "
                    "MemAvailable is always under it, so every tick is a breach"
                )
            ],
        ),
        (
            '"16GiB"',
            '"64GiB"',
            [24 * GIB, 16 * GIB],
            64 * GIB,
            [
                (
                    "host.min_available_ram 64GiB is at or above this host's MemTotal (64 GiB): "
                    "MemAvailable is always under it, so every tick is a breach"
                ),
                (
                    "gpu.min_free_vram 16GiB is at or above GPU 1's memory (16 GiB): its free "
                    "VRAM is always under it, so every tick is a breach"
                ),
            ],
        ),
    ],
)
def test_floors_at_or_above_what_exists_are_warned_about(
    gpu: str, host: str, totals: list[int | None], mem_total: int | None, expected: list[str]
) -> None:
    loaded = config.parse(GIB_FLOORS.format(gpu=gpu, host=host), PATH)

    actual = config.floor_warnings(loaded, totals, mem_total)

    assert expected == actual


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [("", 3 * S), ('nvml_timeout = "500ms"', S // 2), ('nvml_timeout = "60s"', 60 * S)],
)
def test_nvml_timeout_is_a_bounded_duration_in_the_gpu_table(text: str, expected_ns: int) -> None:
    assert expected_ns == config.parse(f"[gpu]\n{text}\n", PATH).nvml_timeout_ns


@pytest.mark.parametrize("value", ["10ms", "0s", "61s", "1h", "soon"])
def test_nvml_timeout_out_of_range_names_the_key(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(f'[gpu]\nnvml_timeout = "{value}"\n', PATH)

    assert ("gpu.nvml_timeout", PATH) == (err.value.key, err.value.path)


def test_container_and_compose_tenants_are_keyed_by_kind_and_name() -> None:
    parsed = config.parse(
        '[containers]\nsocket = "unix:///run/podman/podman.sock"\nstop_timeout = "2500ms"\n'
        '[[tenant]]\ncontainer = "immich_machine_learning"\nvram = "3000MiB"\n'
        '[[tenant]]\ncompose = "frigate/frigate"\nram = "2GiB"\naction = "stop"\n'
        '[[tenant]]\nunit = "llama.service"\n'
    )

    assert [
        ("container:immich_machine_learning", "container", "immich_machine_learning"),
        ("compose:frigate/frigate", "compose", "frigate/frigate"),
        ("llama.service", "unit", "llama.service"),
    ] == [(t.key, t.kind.value, t.id.name) for t in parsed.tenants]
    assert ("unix:///run/podman/podman.sock", 3) == (
        parsed.containers.socket,
        parsed.containers.stop_timeout_s,
    )
    assert True is parsed.has_containers


def test_without_container_tenants_the_engine_is_not_needed() -> None:
    parsed = config.parse('[[tenant]]\nunit = "llama.service"\n')

    assert (False, "unix:///run/docker.sock", 10) == (
        parsed.has_containers,
        parsed.containers.socket,
        parsed.containers.stop_timeout_s,
    )
