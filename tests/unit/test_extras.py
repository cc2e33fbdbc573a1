"""How to install an extra: the advice names the source vramwatch was installed
from, never PyPI by the project's name (issue 23, item 18).

vramwatch is not on PyPI: ``pip install 'vramwatch[plot]'`` fetches whatever is
published under that name. A pip install from a source tree records the tree
(PEP 610 ``direct_url.json``); the .deb's advice is its apt package.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from vramwatch.extras import Installation, hint, source_of, this_installation

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
# The extras the program's error messages advise, and the Debian package of each.
ADVISED = {"plot": "python3-matplotlib", "containers": "python3-docker"}


def requires_dist() -> tuple[str, ...]:
    """pyproject's optional dependencies as the installed metadata spells them."""
    return tuple(f'{r}; extra == "{e}"' for e, reqs in EXTRAS.items() for r in reqs)


def direct_url(url: str) -> str:
    return json.dumps({"url": url, "dir_info": {}})


def test_a_pip_install_from_a_source_tree_is_told_that_tree_and_its_own_pip(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "vramwatch"
    tree.mkdir()
    where = Installation(False, "/opt/vramwatch/bin/pip", source_of(direct_url(tree.as_uri())), ())

    assert f"/opt/vramwatch/bin/pip install '{tree}[plot]'" == hint(
        "plot", "python3-matplotlib", where
    )


def test_a_source_tree_that_is_gone_gives_the_extras_requirements(tmp_path: Path) -> None:
    gone = source_of(direct_url((tmp_path / "deleted").as_uri()))
    where = Installation(False, "/opt/vramwatch/bin/pip", gone, requires_dist())

    assert None is gone
    assert "/opt/vramwatch/bin/pip install 'docker>=7' (the containers extra)" == hint(
        "containers", "python3-docker", where
    )


def test_the_debian_package_is_told_its_apt_package() -> None:
    where = Installation(True, "/usr/bin/python3 -m pip", None, ())

    assert "apt install python3-docker" == hint("containers", "python3-docker", where)


@pytest.mark.parametrize(
    "raw", [None, "", "not json", '{"url": "https://example.org/vramwatch.tar.gz"}', "[1]"]
)
def test_no_local_source_is_no_source(raw: str | None) -> None:
    assert None is source_of(raw)


def test_with_nothing_known_both_ways_are_named_and_pypi_is_not() -> None:
    text = hint("plot", "python3-matplotlib", Installation(False, "pip", None, ()))

    assert "apt install python3-matplotlib" in text
    assert "pip install '/path/to/vramwatch[plot]'" in text


@pytest.mark.parametrize("extra", sorted(ADVISED))
def test_every_advised_extra_exists_and_no_advice_names_pypi(extra: str, tmp_path: Path) -> None:
    cases = [
        Installation(False, "pip", None, requires_dist()),
        Installation(False, "pip", None, ()),
        Installation(False, "pip", str(tmp_path), ()),
        Installation(True, "pip", None, ()),
    ]

    texts = [hint(extra, ADVISED[extra], where) for where in cases]

    assert extra in EXTRAS
    assert [] == [t for t in texts if "'vramwatch[" in t or " vramwatch[" in t]
    assert f"'{EXTRAS[extra][0]}'" in texts[0]


def test_this_interpreter_gets_a_pip_that_exists() -> None:
    pip = this_installation().pip

    assert Path(pip).exists() or pip == f"{sys.executable} -m pip"


def test_the_containers_source_says_how_to_install_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runtime message (sampling_error, check) when the docker package is missing."""
    from vramwatch.sources.containers import Engine, EngineError

    monkeypatch.setitem(sys.modules, "docker", None)  # import docker -> ImportError
    with pytest.raises(EngineError) as raised:
        Engine("unix:///nonexistent.sock").running()

    assert "the docker package is not installed (" in str(raised.value)
    assert "'vramwatch[" not in str(raised.value)
