"""Reading the README and docs/*.md as a user follows them: a section, its sh
blocks, and a block's commands as root runs them (tests/unit/test_docs.py,
tests/system)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTALL = ROOT / "docs" / "install.md"


def section(path: Path, heading: str) -> str:
    """The text under ``heading`` (a Markdown heading line, without its #s) up to the
    next heading of the same or a higher level."""
    text = path.read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, re.M)
    assert match, f"{path.name}: no heading {heading!r}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def as_root(block: str) -> str:
    """A block as root runs it, word for word otherwise: ``sudo`` dropped, and
    ``sudoedit FILE`` (a person editing) checks that FILE is there to edit."""
    block = re.sub(r"\bsudoedit (\S+)", r"test -f \1", block)
    return re.sub(r"\bsudo ", "", block)


def steps(path: Path, heading: str, index: int = 0) -> str:
    """The ``index``-th sh block under ``heading``, as root runs it."""
    blocks = sh_blocks(section(path, heading))
    assert len(blocks) > index, f"{path.name}: no sh block #{index} under {heading!r}"
    return as_root(blocks[index])
