"""CI runs the README's test command, nothing else (developers' guide: `.ci/run`
must call the same test command the README gives)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs import section, sh_blocks

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readmes_test_command() -> None:
    """The README's "Try it" gives two commands, the demo first and the tests second;
    `.ci/run` ends by exec-ing the second, word for word."""
    blocks = [
        b.strip()
        for b in sh_blocks(
            section(ROOT / "README.md", "Try it on a fresh machine (Debian 12, as root)")
        )
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    execs = re.findall(r"^exec (.+)$", ci, re.M)

    assert ["./scripts/demo", "./scripts/test"] == blocks[:2]
    assert [blocks[1]] == execs
