"""packaging/journald/vramwatch.catalog: one entry per MESSAGE_ID, and journalctl accepts it.

journalctl compiles the catalog offline into a throwaway root
(``--update-catalog --root``) and dumps it back (``--dump-catalog``), exactly
what a package's postinst and ``journalctl -x`` do on a host.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.builders import emitted_event_names
from vramwatch.events import MESSAGE_IDS
from vramwatch.model import Verb
from vramwatch.tenants import tenant_fields

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "packaging" / "journald" / "vramwatch.catalog"
ID_LINE = re.compile(r"^-- ([0-9a-f]{32})$", re.M)


def entries(text: str) -> dict[str, str]:
    """Catalog text -> {MESSAGE_ID: header and body}."""
    parts = ID_LINE.split(text)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def journalctl() -> str:
    path = shutil.which("journalctl")
    if path is None:
        pytest.skip("journalctl is not installed (apt-get install systemd)")
    return path


def compile_catalog(tmp_path: Path) -> Path:
    """Install the catalog into a fake root and compile it as `journalctl --update-catalog`."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, root / "usr/lib/systemd/catalog/vramwatch.catalog")
    r = subprocess.run(
        [journalctl(), "--update-catalog", f"--root={root}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (0, "") == (r.returncode, r.stderr)
    return root


def test_every_message_id_has_exactly_one_catalog_entry() -> None:
    text = CATALOG.read_text()

    ids = ID_LINE.findall(text)

    assert sorted(MESSAGE_IDS.values()) == sorted(ids)


def test_message_ids_are_distinct_128_bit_ids() -> None:
    ids = list(MESSAGE_IDS.values())

    assert len(ids) == len(set(ids))
    assert [] == [i for i in ids if not re.fullmatch(r"[0-9a-f]{32}", i)]


def test_every_event_the_code_emits_has_a_message_id() -> None:
    names = emitted_event_names()

    assert {"floor_breached", "sampling_error", "metrics_error", "started"} <= names
    assert [] == sorted(n for n in names if n not in MESSAGE_IDS)
    # The action events are named after the verb: "restart", "stop", f"would_{verb}".
    verbs = {v.value for v in Verb}
    assert verbs | {f"would_{v}" for v in verbs} <= set(MESSAGE_IDS)


@pytest.mark.parametrize("event", sorted(MESSAGE_IDS))
def test_each_entry_has_a_subject_defined_by_vramwatch_and_says_what_to_do(event: str) -> None:
    entry = entries(CATALOG.read_text())[MESSAGE_IDS[event]]
    head, _, body = entry.strip("\n").partition("\n\n")
    headers = dict(line.split(": ", 1) for line in head.splitlines())

    assert "vramwatch" == headers["Defined-By"]
    assert headers["Subject"].strip()
    assert headers["Documentation"].startswith("man:")
    assert len(body.split()) >= 25, "explain what happened, why, and what to do"


def test_substituted_fields_are_vramwatch_fields() -> None:
    """@FIELD@ is replaced from the entry; a typo would print the field name instead."""
    text = "\n".join(x for x in CATALOG.read_text().splitlines() if not x.startswith("#"))
    fields = set(re.findall(r"@([A-Za-z0-9_]+)@", text))

    assert [] == sorted(f for f in fields if not re.fullmatch(r"VRAMWATCH_[A-Z_]+", f))


def test_journalctl_compiles_the_catalog_and_lists_every_entry(tmp_path: Path) -> None:
    root = compile_catalog(tmp_path)

    r = subprocess.run(
        [journalctl(), f"--root={root}", "--list-catalog"],
        capture_output=True,
        text=True,
        check=True,
    )

    listed = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert sorted(MESSAGE_IDS.values()) == sorted(listed)
    assert "vramwatch: vramwatch restarted an over-budget tenant" == listed[MESSAGE_IDS["restart"]]


def test_dump_catalog_gives_back_the_restart_explanation(tmp_path: Path) -> None:
    root = compile_catalog(tmp_path)

    r = subprocess.run(
        [journalctl(), f"--root={root}", "--dump-catalog", MESSAGE_IDS["restart"]],
        capture_output=True,
        text=True,
        check=True,
    )

    assert r.stdout.startswith(
        f"-- {MESSAGE_IDS['restart']}\nSubject: vramwatch restarted an over-budget tenant\n"
    )
    assert "What to do: find out why @VRAMWATCH_TENANT@ grew past its budget" in r.stdout


def test_a_malformed_catalog_is_rejected_so_this_check_can_fail(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/systemd/catalog").mkdir(parents=True)
    (root / "usr/lib/systemd/catalog/bad.catalog").write_text("Subject: no id line\n\nbody\n")

    r = subprocess.run(
        [journalctl(), "--update-catalog", f"--root={root}"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert 0 != r.returncode
    assert "Got payload before ID" in r.stderr


def test_entries_interpolate_only_fields_every_kind_of_tenant_has() -> None:
    """VRAMWATCH_UNIT is on a unit tenant's entries only, VRAMWATCH_CONTAINER on a
    container's: an entry that interpolates either shows a blank (or the raw
    @FIELD@) for the other kind, and `systemctl start container:NAME` is no
    command (issue 23). Both kinds carry VRAMWATCH_TENANT."""
    kinds = [tenant_fields("llm.service"), tenant_fields("container:llm")]
    everywhere = set.intersection(*({k for k, v in f.items() if v is not None} for f in kinds))
    naming = {k for f in kinds for k in f} - everywhere
    text = "\n".join(x for x in CATALOG.read_text().splitlines() if not x.startswith("#"))
    used = set(re.findall(r"@VRAMWATCH_([A-Z_]+)@", text))

    assert ({"tenant"}, {"unit", "container", "container_id", "compose"}) == (everywhere, naming)
    assert [] == sorted(f"@VRAMWATCH_{n.upper()}@" for n in naming if n.upper() in used)
    assert [] == re.findall(r"`(?:systemctl|docker) \w+ @VRAMWATCH_TENANT@`", text)
