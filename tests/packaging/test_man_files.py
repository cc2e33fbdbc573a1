"""The man pages' FILES, paths and event list against the package and the code.

vramwatch(8)'s FILES section names each file the .deb installs that an
operator reads or edits, and every file the pages name under /usr is in the
.deb (one build per session, tests/packaging/debbuild.py); its EVENTS section
lists exactly the events the code emits (events.MESSAGE_IDS), and
vramwatch.toml(5) names every table config.py reads (config.TABLES). A file added to the
package, a drop-in added to packaging/systemd, an event added to the code or a
path renamed fails here until the pages say so (issue 23).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.packaging.conftest import ROOT
from tests.packaging.debbuild import Build
from tests.packaging.test_man import PAGES, text
from vramwatch.config import TABLES
from vramwatch.events import MESSAGE_IDS

# Files of the .deb that FILES need not name: the code and the command it runs,
# the pages themselves, Debian's own bookkeeping, and the copy of the unit kept
# under /usr/share/vramwatch/systemd for the same layout as a pip install.
NOT_IN_FILES = re.compile(
    r"^/usr/lib/python3/|^/usr/bin/vramwatch$|^/usr/share/man/|^/usr/share/lintian/"
    r"|^/usr/share/python3/runtime\.d/|^/usr/share/doc/vramwatch/(copyright|changelog)"
    r"|^/usr/share/vramwatch/systemd/vramwatch\.service$"
)
PATH_WORD = re.compile(r"/[A-Za-z0-9_.@*/-]+|[A-Za-z0-9_@-]+\.[A-Za-z0-9_.-]+")


def section(page: Path, name: str) -> str:
    body = text(page).split(f"\n.SH {name}\n", 1)
    assert len(body) == 2, f"{page.name}: no section {name}"
    return body[1].split("\n.SH ", 1)[0]


def canonical(path: str) -> str:
    """Debian 12 and 13 are merged-/usr: /lib/systemd/system is /usr/lib/systemd/system."""
    return "/usr" + path if path.startswith(("/lib/", "/bin/", "/sbin/")) else path


def files_entries(page: Path) -> set[str]:
    """The paths FILES names: each entry's tag line (after .TP), where a bare name
    after a path (``a.conf, b.conf``) is in that path's directory; an entry for a
    directory (``/usr/share/vramwatch/systemd/``) names its files in its text."""
    entries = re.findall(r"^\.TP\n(.*)\n((?:(?!\.TP\n).*\n)*)", section(page, "FILES"), re.M)
    found: set[str] = set()
    for tag, body in entries:
        directory = ""
        words = PATH_WORD.findall(re.sub(r"^\.\w+ ", "", tag))
        if len(words) == 1 and words[0].endswith("/"):
            words += [w for w in PATH_WORD.findall(body) if not w.startswith("/")]
        for word in words:
            word = word.rstrip(".,")
            if word.startswith("/"):
                directory = word.rstrip("/") if word.endswith("/") else word.rsplit("/", 1)[0]
                found.add(canonical(word.rstrip("/")))
            elif directory:
                found.add(f"{directory}/{word}")
    return found


def package_files(build: Build) -> set[str]:
    """The files and links the .deb installs, as dpkg lists them: the staging tree may
    hold what other tests left there (a __pycache__ from importing the packaged code)."""
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(build.deb)], capture_output=True, text=True, check=True
    ).stdout
    found = set()
    for line in listing.splitlines():
        if line.startswith("d"):
            continue  # a directory
        path = line.split(None, 5)[5].split(" -> ")[0]
        found.add(canonical(path.removeprefix(".")))
    return found


def test_files_names_every_file_the_package_installs_for_the_operator(
    deb_build: Build,
) -> None:
    installed = {f for f in package_files(deb_build) if not NOT_IN_FILES.search(f)}
    named = files_entries(PAGES[0])

    assert {"/etc/vramwatch.toml", "/usr/share/vramwatch/systemd/metrics.conf"} <= installed
    assert [] == sorted(installed - named)


def test_every_file_the_pages_name_under_usr_is_in_the_package(deb_build: Build) -> None:
    """A path a user is told to read or copy exists where the .deb puts it (item 6:
    vramwatch.toml(5) named examples/vramwatch.toml; the package ships
    examples/config.example.toml)."""
    installed = package_files(deb_build)
    named = {
        canonical(w.rstrip(".,/"))
        for page in PAGES
        for w in PATH_WORD.findall(text(page))
        if w.startswith("/usr/") and not w.startswith("/usr/local/") and "vramwatch" in w
    }

    assert "/usr/share/doc/vramwatch/examples/config.example.toml" in named
    assert [] == sorted(
        p for p in named if p not in installed and not any(f.startswith(p + "/") for f in installed)
    )


def test_files_names_every_drop_in_that_packaging_ships() -> None:
    drop_ins = {p.name for p in (ROOT / "packaging" / "systemd").glob("*.conf")}
    named = {p.rsplit("/", 1)[1] for p in files_entries(PAGES[0]) if "/systemd/" in p}

    assert {"least-privilege.conf", "metrics.conf", "release.conf"} <= drop_ins
    assert set() == drop_ins - named


def test_the_state_directory_in_files_is_the_one_tmpfiles_creates() -> None:
    tmpfiles = (ROOT / "packaging" / "tmpfiles.d" / "vramwatch.conf").read_text()
    created = {line.split()[1] for line in tmpfiles.splitlines() if line[:1] in ("d", "D")}

    # The state directory, and the files vramwatch writes into it (state.json, the
    # copies it sets aside), are all under a directory tmpfiles.d creates.
    under_var = {p for p in files_entries(PAGES[0]) if p.startswith("/var/")}
    assert set() == {
        p for p in under_var if not any(p == d or p.startswith(d + "/") for d in created)
    }
    assert under_var & created


def events_section_names() -> set[str]:
    """The event names of each entry in vramwatch(8)'s EVENTS (.TP then .B/.BR)."""
    tags = re.findall(r"^\.TP\n\.BR? (.*)$", section(PAGES[0], "EVENTS"), re.M)
    return {n for tag in tags for n in re.findall(r"[a-z_]+", re.sub(r'"[^"]*"', " ", tag))}


def test_events_lists_exactly_the_events_the_code_has() -> None:
    assert set(MESSAGE_IDS) == events_section_names()


def test_vramwatch_toml_5_names_and_documents_every_table_config_reads() -> None:
    tables = set(TABLES) - {"tenant"}  # each [[tenant]]: asserted below
    page = text(PAGES[1])
    description = section(PAGES[1], "DESCRIPTION")

    assert {"daemon", "gpu", "host", "metrics"} <= tables
    assert [] == sorted(t for t in tables if f"\n.SH [{t}]\n" not in page)
    assert [] == sorted(t for t in tables if f"[{t}]" not in description)
    assert "[[tenant]]" in description
