"""The one runner of release commands and hooks (issue 22 items 3, 9, 15), with real
processes: a new session each, the whole group killed at the time limit, at most the
output that is kept read into memory, and nothing it is given can make it raise."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from vramwatch.actuators import commands
from vramwatch.actuators.commands import HOOKS_MAX, OUTPUT_MAX_BYTES, Hooks

MIB = 1024 * 1024


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def read_pids(path: Path) -> list[int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


def reap_until_done(hooks: Hooks, seconds: float) -> list[tuple[str, str, str]]:
    deadline = time.monotonic() + seconds
    done: list[tuple[str, str, str]] = []
    while time.monotonic() < deadline and not done:
        done = hooks.reap()
        time.sleep(0.05)
    return done


def test_a_command_that_writes_200_mib_costs_vramwatch_no_more_than_what_it_keeps() -> None:
    """subprocess.run read all of it before the 2 KiB cut: ~400 MiB of peak RSS."""
    tracemalloc.start()
    try:
        result = commands.run(["/bin/sh", "-c", "head -c 209715200 /dev/zero; exit 1"], 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert "exit status 1" == result.problem
    assert result.output.endswith("… (cut)")
    assert peak < 1 * MIB


def test_a_command_killed_at_its_time_limit_takes_its_whole_group_with_it(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()

    result = commands.run(["/bin/sh", "-c", f"sleep 300 & echo $$ $! > {pids}; sleep 300"], 1)
    leader, child = read_pids(pids)

    assert (None, "still running after 1s: killed") == (result.returncode, result.problem)
    assert time.monotonic() - started < 5
    assert (False, False) == (alive(leader), alive(child))


def test_a_command_runs_in_a_session_of_its_own(tmp_path: Path) -> None:
    """So the time limit's kill reaches the group, and never vramwatch's own."""
    result = commands.run(["/bin/sh", "-c", "echo $$; cut -d' ' -f6 /proc/$$/stat"], 5)

    pid, session = result.output.split()
    assert pid == session


def test_a_hook_that_writes_a_megabyte_ends_without_waiting_for_a_reap() -> None:
    """Its pipe was read only once it had exited: past 64 KiB it blocked until killed."""
    hooks = Hooks()
    hooks.start(["/bin/sh", "-c", "head -c 1048576 /dev/zero"], 10, "restart", {})
    time.sleep(1.0)  # the loop sleeps between ticks: nothing reaps meanwhile

    done = hooks.reap()

    assert [("restart", "", "")] == [(e, why, "") for e, why, _ in done]
    assert "… (cut)" == done[0][2][-len("… (cut)") :]


def test_a_hook_keeps_at_most_the_output_it_shows() -> None:
    tracemalloc.start()
    try:
        hooks = Hooks()
        hooks.start(["/bin/sh", "-c", "yes | head -c 104857600"], 30, "restart", {})
        done = reap_until_done(hooks, 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [("restart", "")] == [(e, why) for e, why, _ in done]
    assert len(done[0][2].encode()) <= OUTPUT_MAX_BYTES + len(" … (cut)".encode())
    assert peak < 1 * MIB


def test_a_hook_killed_at_its_time_limit_leaves_no_process_of_its_group(
    tmp_path: Path,
) -> None:
    """Item 15: its forked child lived on, uncounted by the limit on running hooks."""
    pids = tmp_path / "pids"
    hooks = Hooks()
    hooks.start(["/bin/sh", "-c", f"sleep 300 & echo $$ $! > {pids}; wait"], 1, "restart", {})
    leader, child = read_pids(pids)

    done = reap_until_done(hooks, 5)

    assert [("restart", "still running at its time limit: killed")] == [
        (e, why) for e, why, _ in done
    ]
    assert [] == group_members(leader)
    assert (False, False) == (alive(leader), alive(child))


def test_a_hook_whose_children_outlive_it_still_counts_until_they_end(tmp_path: Path) -> None:
    """A hook that exits at once but leaves a child running is still running: the
    limit on hooks counts it, and its time limit kills the child."""
    hooks = Hooks()
    for _ in range(HOOKS_MAX):
        assert None is hooks.start(["/bin/sh", "-c", "sleep 300 &"], 1, "restart", {})
    time.sleep(0.3)
    hooks.reap()

    skipped = hooks.start(["/bin/true"], 1, "stop", {})
    done = reap_until_done(hooks, 5)

    assert f"{HOOKS_MAX} hooks still running: this one is skipped" == skipped
    assert HOOKS_MAX * [("restart", "still running at its time limit: killed")] == [
        (e, why) for e, why, _ in done
    ]
    hooks.close()


def test_output_with_nul_and_undecodable_bytes_is_cleaned_at_the_source() -> None:
    """A NUL cannot go into an environment, nor a lone byte into the journal as text."""
    result = commands.run(["/bin/sh", "-c", r"printf 'unload\000refused\377\n\033[2J'; exit 3"], 5)

    assert (False, 3, "exit status 3") == (result.ok, result.returncode, result.problem)
    assert "unload\ufffdrefused\ufffd\n\ufffd[2J" == result.output


def test_a_hook_given_a_nul_or_a_lone_surrogate_in_its_environment_still_runs(
    tmp_path: Path,
) -> None:
    """Popen raised ValueError for the NUL; nothing caught it on the way out of tick()."""
    out = tmp_path / "env"
    hooks = Hooks()

    problem = hooks.start(
        ["/bin/sh", "-c", f"env > {out}"],
        5,
        "release_failed",
        {"VRAMWATCH_OUTPUT": "a\0b", "VRAMWATCH_ERROR": "c\udcffd\ud800"},
    )
    done = reap_until_done(hooks, 5)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)

    assert (None, [("release_failed", "")]) == (problem, [(e, why) for e, why, _ in done])
    assert ("a\ufffdb", "c\ufffdd\ufffd") == (env["VRAMWATCH_OUTPUT"], env["VRAMWATCH_ERROR"])


def test_a_hook_that_cannot_start_is_a_reason_not_an_exception() -> None:
    hooks = Hooks()

    problem = hooks.start(["/nonexistent/hook"], 5, "restart", {})

    assert "cannot run /nonexistent/hook: No such file or directory" == problem
