"""Release before restart where it meets the other rules (issue 22 items 3, 7, 13):
one incident's holds, hostile output into a hook, a reload during the wait. The
real Daemon, policy and Sampler over the moving fixture host."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.meet.world import GIB, Bed, make_bed, uuid_of
from vramwatch.acting import RELEASE_POLL_S
from vramwatch.config import Config
from vramwatch.model import Snapshot

A = "a.service"
B = "b.service"


def toml_list(argv: list[str]) -> str:
    return "[" + ", ".join(f"'{a}'" for a in argv) + "]"


def holds_config(release: list[str], *, ram: bool, gpus: int = 1) -> str:
    """A is over its VRAM budget (and its RAM budget, when ``ram``); B is a little over
    its budget for the other resource, a bystander."""
    host = '[host]\nmin_available_ram = "35GiB"\ngrace = "2s"\n' if ram else ""
    a_ram = 'ram = "4GiB"\n' if ram else ""
    b_budget = 'ram = "4GiB"' if ram else 'vram = "2GiB"'
    return f"""
[daemon]
interval = "2s"
reclaim_timeout = "6s"
cooldown = "10m"
[gpu]
min_free_vram = "2GiB"
grace = "2s"
{host}
[[tenant]]
unit = "{A}"
vram = "3GiB"
{a_ram}release = {toml_list(release)}
release_timeout = "1s"
[[tenant]]
unit = "{B}"
{b_budget}
"""


def test_a_release_that_gives_back_the_vram_but_keeps_the_ram_is_no_release(
    tmp_path: Path,
) -> None:
    """A's /unload frees its VRAM; it keeps 20 GiB of RAM (budget 4). It was "released",
    in cooldown, and when the RAM hold expired B, 2 GiB over its RAM budget, was restarted."""
    bed = make_bed(tmp_path, "")
    marker = bed.world.release_marker(A)
    bed.reload(holds_config(["/usr/bin/touch", str(marker)], ram=True))
    bed.world.spawn(A, {0: 14 * GIB}, ram=20 * GIB)
    bed.world.spawn(B, ram=6 * GIB)

    bed.ticks([0, 2, 4, 6, 8, 10, 12, 14])

    assert [A] == bed.acted()
    assert [] == bed.named("released")
    failed = bed.named("release_failed")
    assert [([f"gpu:{uuid_of(0)}"], ["ram"])] == [(e["came_back"], e["not_back"]) for e in failed]
    assert str(failed[0]["error"]).startswith("not all the memory came back within ")
    assert "VRAM on GPU 0 did, RAM (host MemAvailable" in str(failed[0]["error"])


def test_a_release_that_gives_back_one_gpu_of_two_is_no_release(tmp_path: Path) -> None:
    """A holds VRAM on GPU 0 and GPU 1; its release frees GPU 0 only. B, 2 GiB over
    its budget on GPU 1, was restarted once the hold on GPU 1 expired."""
    bed = make_bed(tmp_path, "", gpus=2)
    marker = bed.world.release_marker(A)
    bed.reload(holds_config(["/bin/sh", "-c", f"echo 0 > {marker}"], ram=False, gpus=2))
    bed.world.spawn(A, {0: 14 * GIB, 1: 10 * GIB})
    bed.world.spawn(B, {1: 4 * GIB})

    bed.ticks([0, 2, 4, 6, 8, 10, 12, 14])

    assert [A] == bed.acted()
    assert [] == bed.named("released")
    failed = bed.named("release_failed")
    assert [([f"gpu:{uuid_of(0)}"], [f"gpu:{uuid_of(1)}"])] == [
        (e["came_back"], e["not_back"]) for e in failed
    ]


def test_a_release_that_gives_back_everything_it_holds_says_so(tmp_path: Path) -> None:
    bed = make_bed(tmp_path, "", gpus=2)
    marker = bed.world.release_marker(A)
    bed.reload(holds_config(["/usr/bin/touch", str(marker)], ram=False, gpus=2))
    bed.world.spawn(A, {0: 14 * GIB, 1: 10 * GIB})

    bed.ticks([0, 2, 4])

    assert [] == bed.acted()
    released = bed.named("released")
    assert [([f"gpu:{uuid_of(0)}", f"gpu:{uuid_of(1)}"], [])] == [
        (e["came_back"], e["not_back"]) for e in released
    ]
    assert "gave back VRAM on GPU 0 and VRAM on GPU 1 within " in str(released[0]["message"])


def test_a_nul_in_a_release_commands_output_reaches_the_journal_and_the_hook_cleaned(
    tmp_path: Path,
) -> None:
    """Popen refused the NUL in the hook's environment with ValueError, out of tick(): the
    daemon died, and after Restart= the same breach ran the same release again."""
    envs = tmp_path / "envs"
    envs.mkdir()
    hook = ["/bin/sh", "-c", f'env > {envs}/"$VRAMWATCH_EVENT"']
    release = ["/bin/sh", "-c", r'printf "refused\000\377"; exit 3']
    bed = make_bed(tmp_path, "")
    text = holds_config(release, ram=False).replace(
        "[gpu]", f'[hooks]\nafter_action = {toml_list(hook)}\ntimeout = "5s"\n[gpu]'
    )
    bed.reload(text)
    bed.world.spawn(A, {0: 14 * GIB})

    bed.ticks([0, 2])
    env_file = envs / "release_failed"
    wait_for_env(env_file)
    wait_for_env(envs / "restart")
    bed.tick_at(4)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)

    assert [A] == bed.acted()
    assert "refused\ufffd\ufffd" == bed.named("release_failed")[0]["output"]
    assert "refused\ufffd\ufffd" == env["VRAMWATCH_OUTPUT"]
    assert [] == bed.named("hook_failed")


def wait_for_env(path: Path) -> None:
    """Until the hook's `env` has written the file (the shell creates it first)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and "VRAMWATCH_EVENT=" in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


class CountingSampler:
    def __init__(self, bed: Bed) -> None:
        self.inner = bed.daemon.sampler
        self.calls = 0

    def sample(self, config: Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        self.calls += 1
        return self.inner.sample(config, now_ns, recheck=recheck)

    def close(self) -> None:
        self.inner.close()


def test_a_reload_requested_during_a_release_wait_does_not_make_it_spin(
    tmp_path: Path,
) -> None:
    """SIGHUP set the wake event and nothing cleared it during the wait: ~150,000 full
    samples in 2 s, every one of them in the trace."""
    bed = make_bed(tmp_path, "")
    bed.reload(holds_config(["/bin/true"], ram=False))  # frees nothing: waits 1 s
    bed.world.spawn(A, {0: 14 * GIB})
    bed.tick_at(0)
    counting = CountingSampler(bed)
    bed.daemon.sampler = bed.daemon.acting.sampler = counting

    bed.daemon._on_reload(signal.SIGHUP, None)
    bed.tick_at(2)

    assert [A] == bed.acted()
    # The tick's sample, the re-check, then one sample per poll for 1 s (and the last).
    assert counting.calls <= 2 + 1 / RELEASE_POLL_S + 2
