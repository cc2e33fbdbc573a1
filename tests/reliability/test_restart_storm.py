"""Restart storms and the config as an attack surface, end to end."""

from __future__ import annotations

from tests.e2e.harness import Bed

STORM = """
[daemon]
interval = "500ms"
bus = "user"
cooldown = "0s"
max_restarts = 2
restart_window = "1h"
reclaim_timeout = "1s"

[gpu]
min_free_vram = "2GiB"
grace = "0s"

[host]
min_available_ram = "1MiB"

[[tenant]]
unit = "immich-ml.service"
vram = "3000MiB"
"""


def test_restarting_vramwatch_does_not_reset_the_storm_limit(bed: Bed) -> None:
    bed.gpu(total_mib=15360)
    bed.tenant("immich-ml.service", vram_mib=14000, once=False)  # re-grabs after every restart
    state_dir = bed.state_dir()
    config = bed.config(STORM)
    first = bed.run_daemon(config, "--state-dir", str(state_dir))
    first.wait_event("rate_limited", timeout=30)
    assert 0 == first.stop()

    second = bed.run_daemon(config, "--state-dir", str(state_dir))
    restored = second.wait_event("state_restored", timeout=5)
    limited = second.wait_event("rate_limited", timeout=10)

    assert 2 == len(first.named("restart"))
    assert [] == second.named("restart")
    assert ("immich-ml.service", 2) == (limited["unit"], limited["actions"])
    assert 1 == restored["units"]


def test_a_config_others_can_write_is_refused_at_start_naming_file_and_problem(bed: Bed) -> None:
    config = bed.config(STORM)
    config.chmod(0o666)

    result = bed.cli("run", "-c", str(config), "--log-target", "stderr")

    assert 78 == result.returncode
    assert (
        f"vramwatch: {config}: refusing an untrusted config: the file is writable by group "
        "and others (mode 0666); run chmod go-w on it\n" == result.stderr
    )


def test_garbage_empty_huge_and_vanished_configs_at_start_are_config_errors(bed: Bed) -> None:
    cases = {
        "garbage.toml": (b"\x00\xff\xfe not toml", "not UTF-8 text (byte 1)"),
        "toml-garbage.toml": (b"[daemon\n", "not valid TOML: "),
        "huge.toml": (b"#" * (1024 * 1024 + 1), "larger than 1048576 bytes; not a config file"),
    }
    outcomes = {}
    for name, (raw, _problem) in cases.items():
        path = bed.dir / name
        path.write_bytes(raw)
        path.chmod(0o644)
        r = bed.cli("run", "-c", str(path), "--log-target", "stderr")
        outcomes[name] = (r.returncode, r.stderr)
    gone = bed.cli("run", "-c", str(bed.dir / "vanished.toml"), "--log-target", "stderr")

    for name, (_raw, problem) in cases.items():
        rc, err = outcomes[name]
        assert 78 == rc and err.startswith(f"vramwatch: {bed.dir / name}: {problem}"), (name, err)
    assert (78, f"vramwatch: {bed.dir / 'vanished.toml'}: no such file") == (
        gone.returncode,
        gone.stderr.split(" (")[0],
    )
