"""A hypothesis grammar for state.json: the right shape with hostile values, and garbage.

Whatever the file holds, ``StateStore.load`` returns a ``Restored`` (never
raises), no restored time is later than now (a forged file can never make a
cooldown longer than the real one, nor lift the storm limit by piling up
times), at most ``MAX_TIMES_PER_UNIT`` times per unit, unit names are valid,
and the next save works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from vramwatch.state import FILE_NAME, MAX_TIMES_PER_UNIT, StateStore
from vramwatch.unitname import tenant_problem

NOW_MONO = 5_000 * 10**9
NOW_WALL = 1_700_000_000 * 10**9
BOOT = "b" * 32

INTS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, NOW_MONO, NOW_WALL, 2**63 - 1, -(2**63), 10**30]),
)
ANY_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        INTS,
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def mostly(right: st.SearchStrategy[Any], odds: int = 12) -> st.SearchStrategy[Any]:
    """``right`` about ``odds`` times in ``odds + 1``, else any JSON value.

    (``st.one_of`` does not weigh repeated branches; a sampled flag does.)
    """
    flag = st.sampled_from([*[True] * odds, False])
    return st.tuples(flag, right, ANY_JSON).map(lambda t: t[1] if t[0] else t[2])


TIME = mostly(INTS, 30)
UNIT_NAMES = st.one_of(
    st.sampled_from(["a.service", "x; rm -rf /", "", "../x.service", "a" * 300 + ".service"]),
    st.text(max_size=40).map(lambda t: t + ".service"),
)
GOOD_UNITS = st.sampled_from(["a.service", "b.scope", "x@1.service", "c.service", "d.service"])
ACTION = mostly(st.fixed_dictionaries({"mono_ns": TIME, "wall_ns": TIME}), 40)
ENTRY = mostly(st.fixed_dictionaries({"actions": st.lists(ACTION, max_size=80)}), 30)


@st.composite
def state_document(draw: st.DrawFn) -> dict[str, Any]:
    names = GOOD_UNITS if draw(st.sampled_from([True] * 6 + [False])) else UNIT_NAMES
    doc: dict[str, Any] = {
        "version": draw(st.sampled_from([*[1] * 20, 2, 0, "1", None, True, 1.0])),
        "boot_id": draw(st.sampled_from([BOOT, BOOT, BOOT, "", "other", None, 5])),
        "saved_wall_ns": draw(TIME),
        "units": draw(mostly(st.dictionaries(names, ENTRY, max_size=4), 20)),
    }
    missing = draw(st.sampled_from([*[None] * 25, "version", "units", "boot_id"]))
    if missing is not None:
        del doc[missing]
    return doc


@st.composite
def state_bytes(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from([*["json"] * 16, "bytes", "cut", "nan", "deep", "digits"]))
    if how == "bytes":
        return draw(st.binary(max_size=300))
    raw = json.dumps(draw(state_document()), allow_nan=True).encode()
    if how == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif how == "nan":
        raw = raw.replace(b'"mono_ns": 0', b'"mono_ns": NaN')
    elif how == "deep":
        raw = b'{"version": 1, "units": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    elif how == "digits":  # json refuses to convert more than 4300 digits to an int
        raw = b'{"version": 1, "units": {"a.service": {"actions": [{"mono_ns": 1'
        raw += b"0" * 5000 + b', "wall_ns": 1}]}}}'
    return raw


def check_state(directory: Path, raw: bytes) -> str:
    """Load ``raw`` as the state file: restored, set aside, never an exception."""
    for leftover in directory.iterdir():
        leftover.unlink()
    path = directory / FILE_NAME
    path.write_bytes(raw)
    os.chmod(path, 0o600)
    store = StateStore(
        directory, wall_ns=lambda: NOW_WALL, mono_ns=lambda: NOW_MONO, boot_id=lambda: BOOT
    )
    restored = store.load()
    for unit, times in restored.actions_ns.items():
        assert tenant_problem(unit) is None, unit
        assert 0 < len(times) <= MAX_TIMES_PER_UNIT, (unit, times)
        assert all(isinstance(t, int) and t <= NOW_MONO for t in times), (unit, times)
        assert list(times) == sorted(times)
    store.save(restored.actions_ns)
    assert restored.actions_ns == store.load().actions_ns
    if restored.problem is not None:
        assert restored.problem.startswith(f"{path}: "), restored.problem
        return "set aside"
    return "restored" if restored.actions_ns else "empty"
