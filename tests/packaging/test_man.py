"""man/vramwatch.8 and man/vramwatch.toml.5: lint clean, and complete against the code."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import ROOT, require
from tests.packaging.test_config_example import config_keys
from vramwatch import cli
from vramwatch.events import MESSAGE_IDS

PAGES = [ROOT / "man" / "vramwatch.8", ROOT / "man" / "vramwatch.toml.5"]


def text(page: Path) -> str:
    """The page source with roff's '-' escapes and font changes undone, for searching."""
    return re.sub(r"\\f[BIRP]", "", page.read_text()).replace("\\-", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_mandoc_lint_is_clean(page: Path) -> None:
    require(commands=("mandoc",))

    result = subprocess.run(["mandoc", "-T", "lint", str(page)], capture_output=True, text=True)

    assert (0, "", "") == (result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_groff_renders_without_warnings(page: Path) -> None:
    require(commands=("groff",))

    result = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True
    )

    assert (0, "") == (result.returncode, result.stderr)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_l_renders_every_section(page: Path) -> None:
    require(commands=("man",))

    result = subprocess.run(
        ["man", "-l", str(page)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "MANPAGER": "cat", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )

    assert (0, "") == (result.returncode, result.stderr)
    headings = re.findall(r"^\.SH (.+)$", page.read_text(), flags=re.MULTILINE)
    rendered = set(re.findall(r"^(\S.*)$", result.stdout, flags=re.MULTILINE))
    assert [] == [h.strip('"') for h in headings if h.strip('"') not in rendered]


def every_option() -> set[str]:
    """Each long option of the parser and of every subcommand, and the commands."""
    parser = cli._parser()
    found: set[str] = set()
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found |= set(action.choices)
            parsers += list(action.choices.values())
    for p in parsers:
        for action in p._actions:
            found |= {o for o in action.option_strings if o.startswith("--")}
    return found


def test_vramwatch_8_documents_every_command_and_option() -> None:
    page = text(PAGES[0])
    options = every_option()

    assert {"run", "check", "status", "polkit-rule", "--dry-run", "--json"} <= options
    missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", page)]

    assert [] == sorted(missing)


def test_vramwatch_8_documents_every_event_and_exit_status() -> None:
    page = text(PAGES[0])

    assert [] == [e for e in MESSAGE_IDS if not re.search(rf"\b{e}\b", page)]
    for code in ("0", "1", "2", "78"):
        assert f".TP\n.B {code}\n" in page
    assert "journalctl -u vramwatch VRAMWATCH_EVENT=restart" in page


def test_vramwatch_toml_5_documents_every_key() -> None:
    page = text(PAGES[1])

    assert [] == sorted(k for k in config_keys() if f".BR {k} " not in page)
