"""`vramwatch replay`: output, comparison, windows, plots, damage and exit codes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.incidents.make import HERE
from vramwatch.cli import main
from vramwatch.extras import install_hint

ROOT = HERE.parent.parent
ARENA = HERE / "arena.jsonl.gz"
ARENA_TOML = HERE / "arena.toml"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_replay_prints_each_decision_with_the_traces_time_and_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, _ = run(["replay", str(ARENA), "-c", str(ARENA_TOML)], capsys)

    lines = out.splitlines()
    assert 0 == rc
    assert (
        "2025-11-02T02:24:10.000Z restart: restarting immich-machine-learning.service: GPU 0 "
        "free 1.4 GiB < floor 1.5 GiB for 10s; unit uses 9.4 GiB VRAM, budget 2.9 GiB"
    ) in lines
    assert "  actions on immich-machine-learning.service  1 restart" in lines
    assert "  time under GPU 0 floor                      2m" in lines


def test_replay_json_gives_the_journals_fields_and_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, _ = run(["replay", str(ARENA), "-c", str(ARENA_TOML), "--json"], capsys)

    objects = [json.loads(line) for line in out.splitlines()]
    restart = next(o for o in objects if o.get("event") == "restart")
    assert 0 == rc
    assert ("2025-11-02T02:24:10.000Z", "immich-machine-learning.service", 0) == (
        restart["timestamp"],
        restart["unit"],
        restart["gpu"],
    )
    assert {"immich-machine-learning.service": {"restart": 1}} == objects[-1]["summary"]["actions"]


def test_two_configs_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bigger budget for the arena: no restart; the shared breach is shown once."""
    roomy = tmp_path / "roomy.toml"
    roomy.write_text(ARENA_TOML.read_text().replace('vram = "3000MiB"', 'vram = "12GiB"'))

    rc, out, _ = run(["replay", str(ARENA), "-c", str(ARENA_TOML), "-c", str(roomy)], capsys)

    lines = out.splitlines()
    assert 0 == rc
    assert any(
        line.startswith("2025-11-02T02:24:10.000Z [both] floor_breached: ") for line in lines
    )
    assert any(line.startswith("2025-11-02T02:24:10.000Z [arena.toml] restart: ") for line in lines)
    assert not any("[roomy.toml] restart" in line for line in lines)
    assert any(
        line.startswith("2025-11-02T02:24:10.000Z [roomy.toml] no_candidate: ") for line in lines
    )
    assert "  actions on immich-machine-learning.service  1 restart   0" in lines


def test_from_and_to_limit_what_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(
        ["replay", str(ARENA), "-c", str(ARENA_TOML), "--from", "2025-11-02T02:25:00Z"], capsys
    )

    assert 0 == rc
    assert ["floor_recovered"] == [
        line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("2025-")
    ]


def test_a_damaged_trace_is_replayed_up_to_the_damage_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "arena-20251102T024000Z.jsonl.gz"  # a rotated segment: complete
    damaged.write_bytes(ARENA.read_bytes()[:85_000])

    rc, out, err = run(["replay", str(damaged), "-c", str(ARENA_TOML)], capsys)

    assert 1 == rc
    assert "restart: restarting immich-machine-learning.service" in out
    assert f"vramwatch: replay: {damaged}: damaged at line " in err
    assert "replayed what comes before" in err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["replay", "/nonexistent/trace.gz"],
            1,
            "vramwatch: replay: /nonexistent/trace.gz: no such file",
        ),
        (["replay", str(ARENA), "--from", "yesterday"], 2, "expected a time such as"),
        (["replay", str(ARENA), "-c", "/nonexistent.toml"], 78, "/nonexistent.toml: no such file"),
        (["replay", str(ARENA), "-c", "a", "-c", "b", "-c", "c"], 2, "at most two configs"),
        (["replay", str(ARENA), "--plot", "out.pdf"], 2, "expected a .png or .svg file"),
    ],
)
def test_replay_exit_codes(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(argv, capsys)

    assert code == rc
    assert message in err


def test_a_trace_that_does_not_hold_its_config_exits_78_and_says_to_give_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = gzip.decompress(ARENA.read_bytes()).splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        if record["k"] == "c":
            record.update(text=None, problem="the file changed after it was loaded")
    trace = tmp_path / "trace.jsonl.gz"
    trace.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records)))

    rc, out, err = run(["replay", str(trace)], capsys)

    assert (78, "") == (rc, out)
    assert (
        "vramwatch: examples/incidents/arena.toml: the trace does not hold this config (the "
        "file changed after it was loaded); replay with -c FILE\n"
    ) == err


def plot_arena(out_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``replay --plot`` of the arena in a fresh interpreter: under pytest, tests/packaging
    shadows the ``packaging`` module that matplotlib imports."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from vramwatch.cli import main; sys.exit(main())"]
        + ["replay", str(ARENA), "-c", str(ARENA_TOML), "--plot", str(out_file)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_plot_that_cannot_be_written_exits_1(tmp_path: Path) -> None:
    out_file = tmp_path / "missing" / "arena.png"

    done = plot_arena(out_file, tmp_path)

    assert (
        1,
        f"vramwatch: replay: --plot: cannot write {out_file}: No such file or directory\n",
    ) == (
        done.returncode,
        done.stderr,
    )


def test_plot_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError

    rc, out, err = run(["replay", str(ARENA), "--plot", str(tmp_path / "a.png")], capsys)

    assert 1 == rc
    # How to install the extra here, never from PyPI by the project's name (issue 23).
    assert (
        f"needs matplotlib, which is not installed: {install_hint('plot', 'python3-matplotlib')}"
        in err
    )
    assert "'vramwatch[" not in err
    assert "" == out


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_draws_the_trace(suffix: str, tmp_path: Path) -> None:
    out_file = tmp_path / f"arena{suffix}"

    done = plot_arena(out_file, tmp_path)

    assert 0 == done.returncode, done.stderr
    assert f"vramwatch: replay: plot written to {out_file}\n" == done.stderr
    if suffix == ".png":
        assert out_file.read_bytes().startswith(b"\x89PNG")
    else:
        svg = out_file.read_text()
        assert "<svg" in svg
        assert "restart immich-machine-learning.service" in svg


def test_the_readme_plot_is_what_replay_draws_for_the_arena() -> None:
    """README.md shows docs/arena.png: it exists, is small, and README names the command."""
    png = HERE.parent.parent / "docs" / "arena.png"
    readme = (HERE.parent.parent / "README.md").read_text()

    assert png.stat().st_size < 150_000
    assert "--plot docs/arena.png" in readme
    assert "![" in readme and "docs/arena.png)" in readme


def test_records_of_the_wrong_shape_are_damage_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip

    bad = tmp_path / "bad-20251102T024000Z.jsonl.gz"
    lines = gzip.decompress(ARENA.read_bytes()).splitlines()
    lines.insert(20, b'{"k":"s","m":"soon","g":5}')
    bad.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))

    rc, out, err = run(["replay", str(bad), "-c", str(ARENA_TOML)], capsys)

    assert 1 == rc
    assert f"vramwatch: replay: {bad}: damaged at line 21: a record of the wrong shape" in err
    assert "summary (17 samples" in out


def test_a_trace_written_by_the_recorder_stamps_the_start_with_its_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 item 5: the recorder wrote the start's config without a time, and replay
    said ``1970-01-01T00:00:00.000Z`` (``mono_ns`` 0) for every recorded start."""
    trace = tmp_path / "trace.jsonl.gz"
    # 2025-12-02T06:00:00Z, 5 s up
    record_run(tmp_path, trace, "boot-a", 1_764_655_200 * 10**9, 5 * 10**9, ticks=2)

    rc, out, _ = run(["replay", str(trace), "--json"], capsys)

    started = json.loads(out.splitlines()[0])
    assert 0 == rc
    assert ("started", "2025-12-02T06:00:00.000Z", 5 * 10**9) == (
        started["event"],
        started["timestamp"],
        started["mono_ns"],
    )


def record_run(
    tmp_path: Path, trace: Path, boot: str, wall_ns: int, mono_ns: int, ticks: int
) -> None:
    """One run of vramwatch through the real recorder: a start, then ``ticks`` ticks 2 s
    apart on which hog.service holds 12000 MiB with 1000 MiB free."""
    from tests.unit.builders import one_gpu
    from vramwatch.config import parse
    from vramwatch.record.recorder import Recorder

    config_path = tmp_path / "vramwatch.toml"
    text = f'[daemon]\nrecord = "{trace}"\n[[tenant]]\nunit = "hog.service"\nvram = "1GiB"\n'
    config_path.write_text(text)
    wall, mono = [wall_ns], [mono_ns]
    recorder = Recorder(
        lambda *a, **f: None,
        wall_ns=lambda: wall[0],
        mono_ns=lambda: mono[0],
        boot_id=lambda: boot,
    )
    recorder.configure(parse(text, config_path), "start", False, lambda c: c)
    for _ in range(ticks):
        wall[0] += 2 * 10**9
        mono[0] += 2 * 10**9
        recorder.begin_tick()
        recorder.sampled(one_gpu(mono[0], hog_mib=12000))
        recorder.end_tick()
    recorder.close()
    os.utime(trace, ns=(wall[0], wall[0]))  # the next run sets it aside by its time


@pytest.mark.parametrize(
    "limits",
    ['cooldown = "10m"', 'cooldown = "0s"\nmax_restarts = 1\nrestart_window = "30m"'],
)
def test_replay_with_a_config_tells_a_reboot_by_the_boot_id(
    limits: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 22 item 12. Run 1 restarts hog.service at 100 s up; vramwatch runs again an
    hour later, after a reboot, at 500 s up: the monotonic clock went forward, but the
    boot id says it is another boot, so the restart was an hour ago (the wall clock),
    not 400 s: its 10m cooldown is over, it is out of the 30m restart window, and it is
    restarted again."""
    trace = tmp_path / "trace.jsonl.gz"
    start = 1_764_655_200 * 10**9
    record_run(tmp_path, trace, "boot-a", start, 96 * 10**9, ticks=4)
    record_run(tmp_path, trace, "boot-b", start + 3600 * 10**9, 496 * 10**9, ticks=4)
    config = tmp_path / "other.toml"
    config.write_text(
        f'[daemon]\ninterval = "2s"\n{limits}\n[gpu]\nmin_free_vram = "2GiB"\n'
        'grace = "2s"\n[[tenant]]\nunit = "hog.service"\nvram = "1GiB"\n'
    )

    rc, out, _ = run(["replay", str(trace), "-c", str(config)], capsys)

    assert 0 == rc
    assert ["2025-12-02T06:00:04.000Z", "2025-12-02T07:00:04.000Z"] == [
        line.split()[0] for line in out.splitlines() if " restart: " in line
    ]


def test_a_window_with_no_samples_says_so_in_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: "summary (0 samples, None .. None)" (issue 23, cosmetic)."""
    rc, out, _ = run(
        ["replay", str(ARENA), "-c", str(ARENA_TOML), "--from", "2030-01-01T00:00:00Z"], capsys
    )

    assert (0, "summary (no samples):") == (rc, out.splitlines()[-2])
