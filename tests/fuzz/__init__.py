"""Grammar-aware generators of hostile input, and the contract each input must meet.

Three surfaces that other people control or can spoil:

- the config (``vramwatch.config.load``): every input ends in a ``Config`` or
  a ``ConfigError`` that names the file, never in another exception, and never
  in the last-resort "this is a bug" error;
- the state file (``StateStore.load``): every input ends in a ``Restored``
  (times no later than now, at most ``MAX_TIMES_PER_UNIT`` per unit), and the
  next save works;
- ``/proc`` and cgroupfs (``Sampler.sample`` and ``ProcFs``): every fixture
  tree, with hostile names, garbage, vanished entries and ``EACCES``, ends in
  a ``Snapshot``.

``tests/unit/test_fuzz_inputs.py`` runs a fixed-seed slice of each in CI;
``bench/fuzz_inputs.py`` runs 100,000 and more (docs/reliability.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st


def fuzz(
    strategy: st.SearchStrategy[Any], check: Callable[[Any], str], n: int, seed_value: int
) -> Counter[str]:
    """Run ``check`` on ``n`` inputs drawn with ``seed_value``; what they ended in.

    Generation only (no shrinking, no example database): the same seed gives the
    same inputs, and the first input that breaks its contract raises.
    """
    seen: Counter[str] = Counter()

    @seed(seed_value)
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def each(value: Any) -> None:
        seen[check(value)] += 1

    each()
    return seen
