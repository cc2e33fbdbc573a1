"""vramwatch/unitname.py: systemd's unit-name grammar, one for the cgroup tree and
the config's tenants.

Until issue 24 the grammar was written twice, as two regular expressions: the
cgroup tree's (sources/procfs.py) and the config's (config.py). Both are kept
below as references, and the one grammar must answer as each did, for any name.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vramwatch import unitname

# sources/procfs.py before issue 24.
_TREE_RE = re.compile(r"[A-Za-z0-9:_.\\-]+(?:@[A-Za-z0-9:_.\\@-]+)?\.([a-z]+)")


def reference_is_valid(name: str) -> bool:
    match = _TREE_RE.fullmatch(name)
    return match is not None and match[1] in unitname.UNIT_TYPES and len(name) <= 255


# config.py before issue 24.
_CONFIG_RE = re.compile(r"[A-Za-z0-9:_.\\@-]+\.(service|scope)")


def reference_tenant_problem(unit: str) -> str | None:
    if len(unit.encode()) > 255 or not _CONFIG_RE.fullmatch(unit):
        return (
            f'expected a systemd unit name such as "llama-server.service" or "job.scope", '
            f'got "{unit}"'
        )
    if unit.startswith("@") or ".@" in unit or unit.split("@")[0].endswith("."):
        return f'"{unit}" is not a valid unit name'
    stem, _, suffix = unit.rpartition(".")
    if stem.endswith("@"):
        return f'"{unit}" is a template; name an instance such as "{stem}1.{suffix}"'
    return None


# Names made of the characters where the grammar's decisions lie.
NAMES = st.one_of(
    st.text(alphabet="ab.@-_:\\ /é", max_size=12).flatmap(
        lambda stem: st.sampled_from(
            [stem, f"{stem}.service", f"{stem}.scope", f"{stem}.slice", f"{stem}.Service"]
        )
    ),
    st.integers(0, 300).map(lambda n: "a" * n + ".service"),
    st.text(max_size=20),
)


@given(NAMES)
@example("a.@b.service")
@example("a@b.@c.service")
@example("a..service")
@example("a@.@.service")
def test_is_valid_answers_as_the_cgroup_trees_grammar_did(name: str) -> None:
    assert reference_is_valid(name) == unitname.is_valid(name)


@given(NAMES)
@example("a.@b.service")
@example("a@b.@c.service")
@example("a..service")
@example("a@.@.service")
@example("a" * 247 + ".service")
@example("a" * 248 + ".service")
def test_tenant_problem_answers_as_the_configs_grammar_did(name: str) -> None:
    assert reference_tenant_problem(name) == unitname.tenant_problem(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("foo.service", True),
        ("a:b-c_d.e\\x2d.socket", True),
        ("getty@tty1.service", True),
        ("user@1000.service", True),
        ("-.slice", True),
        ("foo@.service", False),  # a template
        ("@x.service", False),
        ("foo.unknown", False),
        ("foo", False),
        (".service", False),
        ("a b.service", False),
        ("x" * 250 + ".service", False),  # longer than systemd's 255
    ],
)
def test_unit_name_is_valid_as_systemd_says(name: str, expected: bool) -> None:
    assert expected == unitname.is_valid(name)
