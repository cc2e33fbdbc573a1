"""A fixed-seed slice of the input fuzzing (bench/fuzz_inputs.py runs 100,000 and more).

Config, state file, /proc and cgroupfs: every generated input meets its
surface's contract (tests/fuzz/__init__.py). The same seed gives the same
inputs on every run, so a failure here is reproducible, not flaky; and each
slice must reach both ends (inputs accepted and refused), or the grammar has
stopped testing anything.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz import fuzz as run_fuzz
from tests.fuzz.config_grammar import check_config, config_bytes
from tests.fuzz.procfs_grammar import check_procfs, tree
from tests.fuzz.state_grammar import check_state, state_bytes

SEED = 20261202


def fuzz(strategy: st.SearchStrategy[Any], check: Callable[[Any], str], n: int) -> Counter[str]:
    """Run ``check`` on ``n`` inputs drawn with the fixed seed; what they ended in."""
    return run_fuzz(strategy, check, n, SEED)


def test_every_generated_config_is_a_config_or_an_error_naming_the_file(tmp_path: Path) -> None:
    seen = fuzz(config_bytes(), lambda raw: check_config(tmp_path / "vramwatch.toml", raw), 1000)

    assert seen["Config"] >= 30 and seen["ConfigError"] >= 500, seen


def test_every_generated_state_file_is_restored_or_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)

    seen = fuzz(state_bytes(), lambda raw: check_state(state, raw), 300)

    assert seen["restored"] >= 20 and seen["set aside"] >= 60, seen


def test_every_generated_proc_and_cgroup_tree_gives_a_snapshot(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)

    seen = fuzz(tree(), lambda t: check_procfs(tmp_path / "tree", t), 150)

    assert seen["host unknown"] >= 5 and seen["1 tenants with RAM"] >= 5, seen
