"""SIGHUP with a config that was replaced by garbage, emptied, blown up,
removed or made writable by others: rejected with the reason, old one kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_daemon import RecordingActuator, ScriptedSampler, events, make, snapshot
from vramwatch.model import JobOutcome


def garbage(path: Path) -> str:
    path.write_bytes(b"\x00\xff\xfe")
    return "not UTF-8 text (byte 1)"


def not_toml(path: Path) -> str:
    path.write_text("[[tenant]\nunit = ")
    return "not valid TOML: "


def huge(path: Path) -> str:
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    return "larger than 1048576 bytes; not a config file"


def vanished(path: Path) -> str:
    path.unlink()
    return "no such file"


def world_writable(path: Path) -> str:
    path.chmod(0o666)
    return "refusing an untrusted config: the file is writable by group and others"


def directory(path: Path) -> str:
    path.unlink()
    path.mkdir()
    return "is a directory, expected a TOML file"


def unicode_port(path: Path) -> str:
    """str.isdigit() took "²", int() raised ValueError, and the reload killed the daemon."""
    path.write_text(path.read_text() + '\n[metrics]\nlisten = "127.0.0.1:\u00b2"\n')
    return 'metrics.listen: expected an address such as "127.0.0.1:9835"'


@pytest.mark.parametrize(
    "spoil",
    [garbage, not_toml, huge, vanished, world_writable, directory, unicode_port],
    ids=lambda f: f.__name__,
)
def test_a_spoiled_config_on_sighup_is_rejected_and_the_old_one_guards_on(
    tmp_path: Path, spoil: object
) -> None:
    assert callable(spoil)
    tmp_path.chmod(0o755)
    actuator = RecordingActuator(JobOutcome(True, "done", "ok"))
    sampler = ScriptedSampler(lambda _n, now: snapshot(now, hog_vram_mib=12000, free_mib=1000))
    daemon, out, clock = make(tmp_path, sampler, actuator)
    before = daemon.config
    problem = spoil(daemon.config_path)

    daemon.reload()
    for s in (1, 2, 3, 4):
        clock.now = s * 10**9
        daemon.tick()

    rejected = [e for e in events(out) if e["event"] == "config_rejected"]
    assert 1 == len(rejected)
    assert str(rejected[0]["error"]).startswith(f"{daemon.config_path}: {problem}")
    assert before is daemon.config
    assert [("hog.service", "restart")] == [(u, v.value) for u, v in actuator.calls]


def test_an_emptied_config_is_valid_and_means_the_defaults_no_tenants(tmp_path: Path) -> None:
    """Empty is a valid config (all defaults): no tenants, so nothing is ever acted on."""
    tmp_path.chmod(0o755)
    actuator = RecordingActuator(JobOutcome(True, "done", "ok"))
    sampler = ScriptedSampler(lambda _n, now: snapshot(now, hog_vram_mib=12000, free_mib=1000))
    daemon, out, clock = make(tmp_path, sampler, actuator)
    daemon.config_path.write_text("")

    daemon.reload()
    for s in range(1, 30):
        clock.now = s * 10**9
        daemon.tick()

    assert () == daemon.config.tenants
    assert [] == actuator.calls


def test_a_reload_that_fails_unexpectedly_is_rejected_and_the_old_config_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever loading raises, SIGHUP must not kill the guard."""
    tmp_path.chmod(0o755)
    actuator = RecordingActuator(JobOutcome(True, "done", "ok"))
    sampler = ScriptedSampler(lambda _n, now: snapshot(now, hog_vram_mib=12000, free_mib=1000))
    daemon, out, clock = make(tmp_path, sampler, actuator)
    before = daemon.config

    def broken(*_args: object, **_kw: object) -> None:
        raise MemoryError("scripted")

    monkeypatch.setattr("vramwatch.daemon.load", broken)
    daemon.reload()
    for s in (1, 2, 3, 4):
        clock.now = s * 10**9
        daemon.tick()

    rejected = [e for e in events(out) if e["event"] == "config_rejected"]
    assert [f"{daemon.config_path}: cannot load: MemoryError('scripted')"] == [
        e["error"] for e in rejected
    ]
    assert before is daemon.config
    assert [("hog.service", "restart")] == [(u, v.value) for u, v in actuator.calls]
