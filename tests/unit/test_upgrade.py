"""Upgrades keep what was written (SPEC "Files vramwatch writes"): this version reads
the state file and the traces of earlier versions, from fixtures those versions wrote
(tests/fixtures/upgrade/, made by commit 8db0bca's code: see make_v1.py there), and
refuses, with a clear message, a file of a newer version than it knows."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from vramwatch.cli import main
from vramwatch.config import load
from vramwatch.record.replay import replay
from vramwatch.record.report import summary
from vramwatch.record.trace import segments
from vramwatch.state import FILE_NAME, StateStore

S = 10**9
V1 = Path(__file__).resolve().parents[1] / "fixtures" / "upgrade"
TRACE = V1 / "trace.jsonl.gz"
# Format 2, made by commit 3999db2's code (v2/make_v2.py): the same two runs.
V2 = V1 / "v2"
# What the daemon logs about itself rather than about the host: not decisions.
NOT_DECISIONS = frozenset({"started", "state_restored"})


def journal(fixtures: Path = V1) -> list[tuple[str, str]]:
    lines = (fixtures / "journal.jsonl").read_text().splitlines()
    return [(str(e["event"]), str(e["message"])) for e in map(json.loads, lines)]


def replayed(config: Path | None = None, fixtures: Path = V1) -> list[tuple[str, str, str]]:
    """(time, event, message) of what replay logs for the format 1 (or 2) trace."""
    trace = fixtures / "trace.jsonl.gz"
    result = replay(segments(trace), None if config is None else load(config))
    assert [] == result.damage
    return [(s.time_text(), s.event.name, s.event.message) for s in result.events]


# -- the state file -----------------------------------------------------------------


def state_dir(tmp_path: Path, raw: bytes | None = None) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    if raw is None:
        shutil.copy(V1 / "state.json", directory / FILE_NAME)
    else:
        (directory / FILE_NAME).write_bytes(raw)
    (directory / FILE_NAME).chmod(0o600)
    return directory


def test_a_state_file_of_format_1_is_read_within_its_boot(tmp_path: Path) -> None:
    """Restarted in the boot that wrote it (boot-b, 102 s up): the monotonic times as written."""
    store = StateStore(
        state_dir(tmp_path),
        wall_ns=lambda: 1_767_265_230 * S,
        mono_ns=lambda: 112 * S,
        boot_id=lambda: "boot-b",
    )

    restored = store.load()

    assert (None, {"a.service": (-3516 * S,), "b.service": (-3508 * S, 102 * S)}) == (
        restored.problem,
        restored.actions_ns,
    )


def test_a_state_file_of_format_1_is_read_after_a_reboot(tmp_path: Path) -> None:
    """After a reboot (boot-c, 50 s up, 10 minutes after the save) its wall times give
    the ages: b.service was restarted 10 minutes ago."""
    store = StateStore(
        state_dir(tmp_path),
        wall_ns=lambda: (1_767_265_220 + 600) * S,
        mono_ns=lambda: 50 * S,
        boot_id=lambda: "boot-c",
    )

    restored = store.load()

    assert (None, (50 * S - 600 * S - 3610 * S, 50 * S - 600 * S)) == (
        restored.problem,
        restored.actions_ns["b.service"],
    )


def test_a_state_file_of_a_newer_format_is_refused_kept_and_not_called_corrupt(
    tmp_path: Path,
) -> None:
    raw = b'{"version": 2, "units": {"a.service": {"actions": [], "released": []}}}\n'
    directory = state_dir(tmp_path, raw)
    store = StateStore(directory, boot_id=lambda: "boot-b")

    restored = store.load()

    assert {} == restored.actions_ns
    assert (
        f"{directory / FILE_NAME}: written by a newer vramwatch (state format 2; this "
        "version reads format 1): not read; kept as state.json.v2, starting afresh"
    ) == restored.problem
    assert True is restored.newer
    assert raw == (directory / f"{FILE_NAME}.v2").read_bytes()
    assert not (directory / f"{FILE_NAME}.corrupt").exists()


# -- the trace ----------------------------------------------------------------------


def test_a_format_1_trace_replays_with_its_recorded_config_as_the_daemon_logged() -> None:
    """The release that worked is a release, not a restart. A format 1 trace does not
    hold the release's own entry: replay infers it (no restart followed) and says so."""
    logged = [(n, m) for n, m in journal() if n not in NOT_DECISIONS]
    released = next(m for n, m in logged if n == "released")

    events = [(n, m) for _, n, m in replayed() if n not in NOT_DECISIONS]

    assert [n for n, _ in logged] == [n for n, _ in events]
    assert [(n, m) for n, m in logged if n != "released"] == [
        (n, m) for n, m in events if n != "released"
    ]
    assert released.startswith("released a.service without a restart")
    assert [
        (
            "released a.service without a restart (inferred: this trace, of format 1, does not "
            "record releases, and no restart followed)"
        )
    ] == [m for n, m in events if n == "released"]


def test_each_start_in_a_format_1_trace_is_stamped_with_its_time() -> None:
    """Format 1 recorded the start's config without a time: the segment header has it."""
    starts = [(t, n) for t, n, _ in replayed() if n == "started"]

    assert [
        ("2026-01-01T10:00:00.000Z", "started"),
        ("2026-01-01T11:00:18.000Z", "started"),
    ] == starts


def test_replay_with_a_config_carries_action_times_over_a_reboot_by_the_wall_clock() -> None:
    """Run 2 starts after a reboot, an hour after b.service's restart: its 10m cooldown
    is long over, so b.service is restarted again, as the daemon did. The monotonic
    times of the first boot mean nothing on the second. (With a config given, a
    release the trace does not hold is taken as not freed: a.service is restarted.)"""
    events = replayed(V1 / "fixture.toml")

    assert [
        ("2026-01-01T10:00:02.000Z", "a.service"),
        ("2026-01-01T10:00:10.000Z", "b.service"),
        ("2026-01-01T11:00:20.000Z", "b.service"),
    ] == [(t, m.split(":")[0].removeprefix("restarting ")) for t, n, m in events if n == "restart"]
    assert [] == [m for _, n, m in events if n == "skipped"]
    assert [
        (
            "release of a.service not replayed (the trace holds no release of a.service at this "
            "moment): taken as not freed; restarting it instead"
        )
    ] == [m for _, n, m in events if n == "release_failed"]


def test_a_format_2_trace_replays_with_its_recorded_config_as_the_daemon_logged() -> None:
    """Format 2 holds the release's own entry: replayed as it was logged, word for word;
    the re-check samples are told apart from the release's wait by their order."""
    logged = [(n, m) for n, m in journal(V2) if n not in NOT_DECISIONS]

    events = [(n, m) for _, n, m in replayed(fixtures=V2) if n not in NOT_DECISIONS]

    assert logged == events
    assert ["released", "restart", "restart"] == [n for n, _ in events if n in ACTIONS]


def test_a_format_2_trace_with_its_config_given_carries_times_over_the_recorded_reboot() -> None:
    """Run 2's header names another boot than run 1's: b.service's restart an hour
    before is carried by the wall clock, its 10m cooldown long over, so it is restarted
    again. The release the daemon ran is the same command as the config's: replayed."""
    events = replayed(V2 / "fixture.toml", V2)

    assert [
        ("2026-01-01T10:00:02.000Z", "released", "a.service"),
        ("2026-01-01T10:00:10.000Z", "restart", "b.service"),
        ("2026-01-01T11:00:20.000Z", "restart", "b.service"),
    ] == [(t, n, _unit(m)) for t, n, m in events if n in ACTIONS]
    assert [] == [m for _, n, m in events if n in ("skipped", "release_failed")]


def test_the_summary_of_a_format_2_trace_counts_each_breach_once() -> None:
    result = replay(segments(V2 / "trace.jsonl.gz"))

    assert {
        "ticks": 15,
        "from": "2026-01-01T10:00:00.000Z",
        "to": "2026-01-01T11:00:26.000Z",
        "actions": {"a.service": {"released": 1}, "b.service": {"restart": 2}},
        "cancelled": {},
        "breaches": {"GPU 0": 3},
        "under_floor_s": {"GPU 0": 12.0},
    } == summary(result)


ACTIONS = frozenset({"released", "restart"})


def _unit(message: str) -> str:
    return message.split(":")[0].split()[1]


def test_a_trace_of_a_newer_format_is_refused_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = gzip.decompress(TRACE.read_bytes()).splitlines()
    header = json.loads(lines[0])
    lines[0] = json.dumps(dict(header, v=99)).encode()
    newer = tmp_path / "trace.jsonl.gz"
    newer.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))

    rc = main(["replay", str(newer)])
    out, err = capsys.readouterr()

    assert (1, "") == (rc, out)
    assert (
        f"vramwatch: replay: {newer}: written by a newer vramwatch (trace format 99; this "
        "version reads formats 1 to 3): replay it with that version or a newer one\n"
    ) == err
