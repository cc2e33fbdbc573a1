"""config.KEYS, the one table of vramwatch.toml's keys, against vramwatch.toml(5) and itself.

The page documents each key under its table's section as ``.TP`` then
``.BR key " (kind, default " VALUE )``: a key added to the table, renamed, moved to
another table, or given another default fails here until the page says so, and a key
the page documents that the table does not have fails too.
"""

from __future__ import annotations

import re

from tests.docs import ROOT
from vramwatch import config

PAGE = ROOT / "man" / "vramwatch.toml.5"


def roff_words(line: str) -> str:
    """A ``.BR``/``.B`` line as it reads: its arguments (quoted ones may hold spaces)
    joined as roff sets them, with the escapes the page uses undone."""
    args = re.findall(r'"([^"]*)"|(\S+)', line.split(" ", 1)[1])
    text = "".join(quoted or bare for quoted, bare in args)
    return text.replace("\\(dq", '"').replace("\\-", "-").replace("\\(aq", "'")


def page_entries() -> dict[str, dict[str, str]]:
    """Table -> key -> what the page says of it in parentheses, for every entry (``.TP``)
    of each table's section (``.SH [daemon]``, ``.SH [[tenant]]``)."""
    found: dict[str, dict[str, str]] = {}
    for section in PAGE.read_text().split("\n.SH ")[1:]:
        heading, _, body = section.partition("\n")
        table = re.fullmatch(r"\[\[?(\w+)\]?\]", heading)
        if table is None:
            continue
        entries = {}
        for tag in re.findall(r"^\.TP\n(\.BR? .*)$", body, re.M):
            entry = re.fullmatch(r"(\w+) \((.*)\)", roff_words(tag))
            assert entry, f"{PAGE.name}: [{table[1]}]: not a key (kind, default): {tag}"
            entries[entry[1]] = entry[2]
        found[table[1]] = entries
    return found


def toml(value: object) -> str:
    """A default as the page writes it: TOML's own spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def test_the_page_documents_exactly_the_keys_of_each_table() -> None:
    expected = {table: sorted(k.name for k in keys) for table, keys in config.TABLES.items()}

    actual = {table: sorted(entries) for table, entries in page_entries().items()}

    assert expected == actual


def test_the_page_gives_each_key_the_kind_and_the_default_of_the_table() -> None:
    """``(duration, default "2s")``: the kind first; a default as TOML writes it, or none
    (``no default``, ``default: none``) for a key the table gives none."""
    expected = {
        key.path: (key.value.kind, None if key.default is None else toml(key.default))
        for key in config.KEYS
    }

    actual = {}
    for table, entries in page_entries().items():
        for name, said in entries.items():
            default = re.search(r"\bdefault (\S.*)$", said)
            actual[f"{table}.{name}"] = (said.split(", ")[0], default and default[1])

    assert expected == actual


def defaults(keys: tuple[config.Key, ...]) -> str:
    return "".join(f"{k.name} = {toml(k.default)}\n" for k in keys if k.default is not None)


def test_a_file_that_writes_every_default_is_the_file_that_writes_none() -> None:
    """Each default, said in the file as the table declares it, means what leaving the
    key out means: the dataclasses' defaults are the table's."""
    tables = [f"[{t}]\n" + defaults(keys) for t, keys in config.TABLES.items() if t != "tenant"]
    tenant = '[[tenant]]\nunit = "a.service"\n' + defaults(config.TABLES["tenant"])
    written = "".join(tables) + tenant

    expected = config.parse('[[tenant]]\nunit = "a.service"\n', "/x.toml")
    actual = config.parse(written, "/x.toml")

    assert expected == actual
