"""Fuzz the input surfaces with the grammars of tests/fuzz: many inputs, one table.

    $V/bin/python -m bench.fuzz_inputs                       # 100,000 configs
    $V/bin/python -m bench.fuzz_inputs --surface state --n 100000
    $V/bin/python -m bench.fuzz_inputs --surface procfs --n 20000 --seed 3

Each input must meet its surface's contract (tests/fuzz/__init__.py): a
``Config`` or a ``ConfigError`` naming the file; a ``Restored`` state with
no time after now; a ``Snapshot`` from any /proc and cgroupfs tree. The first
input that breaks it stops the run with the input and the traceback (exit 1).
Otherwise one Markdown row per surface: inputs, what they ended in, time.
CI runs a fixed-seed slice of the same (tests/unit/test_fuzz_inputs.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzz import fuzz
from tests.fuzz.config_grammar import check_config, config_bytes
from tests.fuzz.procfs_grammar import check_procfs, tree
from tests.fuzz.state_grammar import check_state, state_bytes


def surfaces(work: Path) -> dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], str]]]:
    state_dir = work / "state"
    state_dir.mkdir(mode=0o700)
    return {
        "config": (config_bytes(), lambda raw: check_config(work / "vramwatch.toml", raw)),
        "state": (state_bytes(), lambda raw: check_state(state_dir, raw)),
        "procfs": (tree(), lambda t: check_procfs(work / "tree", t)),
    }


def run(surface: str, n: int, seed_value: int) -> tuple[Counter[str], float]:
    with tempfile.TemporaryDirectory(prefix="vramwatch-fuzz-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        strategy, check = surfaces(work)[surface]

        started = time.monotonic()
        outcomes = fuzz(strategy, check, n, seed_value)
        return outcomes, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surface", choices=("config", "state", "procfs", "all"), default="config")
    parser.add_argument("--n", type=int, default=100_000, help="inputs per surface")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed (reproducible)")
    args = parser.parse_args()
    chosen = ("config", "state", "procfs") if args.surface == "all" else (args.surface,)
    print("| surface | inputs | ended in | seconds | result |")
    print("| --- | --- | --- | --- | --- |")
    for surface in chosen:
        outcomes, took = run(surface, args.n, args.seed)
        ended = ", ".join(f"{k} {v:,}" for k, v in outcomes.most_common())
        total = sum(outcomes.values())
        print(f"| {surface} | {total:,} | {ended} | {took:.0f} | contract held |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
