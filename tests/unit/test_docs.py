"""README.md and docs/*.md against the program and the package (issue 23).

Each test reads what a document tells a user to run or to expect and checks it
against what the program, scripts/bootstrap, debian/ or pyproject.toml
actually do: a sentence that stops being true fails here, not on a new
user's machine. The commands themselves are run verbatim on booted Debian
systems in tests/system.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.docs import INSTALL, README, ROOT, section, sh_blocks
from tests.unit.builders import S, one_gpu
from tests.unit.test_bootstrap import fresh_machine_packages
from vramwatch import policy
from vramwatch.actuators.systemd import notify
from vramwatch.cli import main
from vramwatch.config import ConfigError, parse
from vramwatch.events import MESSAGE_IDS


def test_readme_names_every_package_bootstrap_installs(tmp_path: Path) -> None:
    """Item 23: "Try it" lists what ./scripts/demo and ./scripts/test put on the host."""
    installed = fresh_machine_packages(tmp_path)
    try_it = section(README, "Try it on a fresh machine (Debian 12, as root)")

    assert {"docker.io", "podman", "debootstrap", "gcc"} <= set(installed)
    assert [] == [p for p in installed if f"`{p}`" not in try_it]
    assert "a Docker Engine and Podman" in try_it


def apt_line(block: str) -> set[str]:
    """The packages of the block's `apt-get install -y ...` line (continued lines joined)."""
    joined = block.replace("\\\n", " ")
    (line,) = [x for x in joined.splitlines() if re.search(r"\bapt(-get)? install -y ", x)]
    words = line.split("#")[0].split()
    return {w for w in words[words.index("-y") + 1 :] if not w.startswith("-")}


def bootstrap_array(name: str) -> set[str]:
    text = (ROOT / "scripts" / "bootstrap").read_text()
    match = re.search(rf"^{name}=\(([^)]*)\)", text, re.M)
    assert match, f"scripts/bootstrap: no {name}=(...)"
    return set(match.group(1).split())


def test_the_pip_paths_apt_lines_install_what_building_systemd_python_needs() -> None:
    """Item 2: without python3-dev, pip install '.[journal]' stops at Python.h."""
    needed = bootstrap_array("pip_build") | {"libsystemd-dev"}
    readme = sh_blocks(section(README, "Install with pip"))[0]
    install = sh_blocks(section(INSTALL, "With pip"))[0]

    assert {"python3-dev", "gcc"} <= needed
    assert "'.[journal]'" in readme and "'.[journal]'" in install
    assert set() == needed - apt_line(readme)
    assert set() == needed - apt_line(install)


def build_depends() -> set[str]:
    """debian/control's Build-Depends as apt package names, and build-essential, which
    dpkg-buildpackage assumes (dpkg-checkbuilddeps: "Unmet build dependencies")."""
    control = (ROOT / "debian" / "control").read_text()
    match = re.search(r"^Build-Depends:(.*?)^\S", control, re.S | re.M)
    assert match
    names = {d.strip().split()[0] for d in match.group(1).split(",") if d.strip()}
    return {"debhelper" if n == "debhelper-compat" else n for n in names} | {"build-essential"}


def package_version() -> str:
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(r"vramwatch \(([^)]+)\)", first)
    assert match
    return match.group(1)


def test_readme_builds_the_package_with_its_build_dependencies_and_installs_it() -> None:
    """Item 3: a fresh machine stopped at "Unmet build dependencies", and then apt
    looked for the .deb in the current directory; dpkg-buildpackage writes it to ..."""
    (block,) = sh_blocks(section(README, "Install as a service"))
    lines = block.replace("\\\n", " ").splitlines()
    build = next(i for i, x in enumerate(lines) if "dpkg-buildpackage" in x)
    install = next(i for i, x in enumerate(lines) if re.search(r"\bapt install ", x))
    deb = f"vramwatch_{package_version()}_all.deb"

    assert set() == build_depends() - apt_line(block)
    assert build < install
    assert [] == [x for x in lines[build:install] if re.match(r"\s*(sudo )?cd ", x)]
    assert f"apt install ../{deb} " in lines[install] + " "
    assert f"writes ../{deb}" in lines[build]


def test_install_md_builds_with_the_build_dependencies() -> None:
    block = sh_blocks(section(INSTALL, "From the Debian package (recommended)"))[0]

    assert "dpkg-buildpackage" in block
    assert set() == build_depends() - apt_line(block)


DROP_IN_DIR = "/etc/systemd/system/vramwatch.service.d"


def writes_into_drop_in_dir_without_making_it(block: str) -> list[str]:
    """Commands that copy or write a file into the drop-in directory before anything
    in the same block made it (``mkdir -p`` earlier, or ``install -D`` itself)."""
    made = False
    bad = []
    for line in block.replace("\\\n", " ").splitlines():
        command = line.split("#")[0]
        if re.search(rf"\bmkdir -p {re.escape(DROP_IN_DIR)}\b", command):
            made = True
        writes = re.search(rf"\b(cp|tee|install)\b.*{re.escape(DROP_IN_DIR)}/", command)
        if writes and not made and "install -D" not in command:
            bad.append(command.strip())
    return bad


def test_every_block_that_installs_a_drop_in_makes_its_directory() -> None:
    """Item 4: docs/install.md sections 4 to 6 copied drop-ins into a directory that
    only the optional section 3 creates; each block must stand alone."""
    blocks = sh_blocks(README.read_text()) + sh_blocks(INSTALL.read_text())
    with_drop_ins = [b for b in blocks if f"{DROP_IN_DIR}/" in b]

    assert len(with_drop_ins) >= 5
    assert [] == [
        bad for b in with_drop_ins for bad in writes_into_drop_in_dir_without_making_it(b)
    ]


def doc_blocks() -> list[str]:
    """Every sh block of the README and docs/*.md (docs/reliability.md and
    benchmarks.md run no installation, but are read too)."""
    paths = [README, *sorted((ROOT / "docs").glob("*.md"))]
    return [b.replace("\\\n", " ") for p in paths for b in sh_blocks(p.read_text())]


def unit_exec_start() -> list[str]:
    unit = (ROOT / "packaging" / "systemd" / "vramwatch.service").read_text()
    return re.findall(r"^ExecStart=(.*)$", unit, re.M)


def test_no_document_writes_into_usr_bin() -> None:
    """Item 17: /usr/bin belongs to dpkg (the .deb's /usr/bin/vramwatch)."""
    writes = [
        line.strip()
        for block in doc_blocks()
        for line in block.splitlines()
        if re.search(r"\b(ln|cp|install|mv|tee)\b[^#]*\s/usr/bin/\S*\s*(#|$)", line)
    ]

    assert [] == writes


def test_readme_and_install_md_link_the_command_to_the_same_place_the_unit_runs() -> None:
    """Item 17: README linked /usr/local/bin/vramwatch, install.md /usr/bin/vramwatch;
    the pip unit runs the link through an ExecStart= drop-in."""
    readme = sh_blocks(section(README, "Install with pip"))[0]
    install = sh_blocks(section(INSTALL, "With pip"))[0].replace("\\\n", " ")
    links = [re.findall(r"\bln -s (\S+) (\S+)", b) for b in (readme, install)]
    drop_in = re.search(r"printf '([^']*ExecStart=[^']*)'.*\btee (\S+)", install.replace("\n", " "))
    assert drop_in, "docs/install.md's pip block writes no ExecStart= drop-in"
    exec_start = re.findall(r"^ExecStart=(.*)$", drop_in.group(1).replace("\\n", "\n"), re.M)

    assert [("/opt/vramwatch/bin/vramwatch", "/usr/local/bin/vramwatch")] * 2 == [
        *links[0],
        *links[1],
    ]
    assert ["/usr/bin/vramwatch run"] == unit_exec_start()
    assert ["", "/usr/local/bin/vramwatch run"] == exec_start
    assert drop_in.group(2).startswith(f"{DROP_IN_DIR}/")


def sentences_of(text: str) -> list[str]:
    """Markdown's paragraphs and code blocks as sentences (lines joined, markup kept)."""
    out = []
    for para in re.split(r"\n\s*\n|```", text):
        out += re.split(r"(?<=\.)\s+(?=[A-Z`(])", re.sub(r"\s+", " ", para).strip())
    return out


def sentences(*paths: Path) -> list[str]:
    return [s for path in paths for s in sentences_of(path.read_text())]


def test_no_document_says_the_service_needs_systemd_python_to_become_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 10: docs/install.md said READY=1 needs systemd-python; the program sends
    it without (sd_notify's datagram), as the README says."""
    monkeypatch.setitem(sys.modules, "systemd", None)  # import systemd -> ImportError
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "notify"))
        server.settimeout(1)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        sent = notify("READY=1")
        received = server.recv(64)
    library = re.compile(r"systemd-python|python3-systemd|`journal`\s+extra|journal = ")
    readiness = re.compile(r"READY=1|ready|sd_notify|Type=notify|start timeout|under systemd")
    claims = [
        s
        for s in sentences(README, *sorted((ROOT / "docs").glob("*.md")))
        if library.search(s) and readiness.search(s)
    ]

    assert (True, b"READY=1") == (sent, received)
    assert len(claims) >= 2  # README and docs/install.md both say what the extra is for
    assert [] == [
        s
        for s in claims
        if re.search(r"never becomes ready|cannot send|required under systemd|kills it", s)
    ]


def test_no_document_sends_users_to_pypi_for_an_extra() -> None:
    """Item 18: vramwatch is installed from its source tree; 'vramwatch[plot]' would
    be whatever PyPI has under that name."""
    paths = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "man").iterdir())]
    pypi = re.compile(r"pip install\s+['\"]?vramwatch\[")
    found = [(p.name, m.group(0)) for p in paths for m in pypi.finditer(p.read_text())]

    assert [] == found
    assert "pip install '.[plot]'" in README.read_text()
    assert "pip install '.[containers]'" in INSTALL.read_text()


def test_install_md_installs_every_drop_in_the_package_ships() -> None:
    """Item 19 and the rest: each packaging/systemd drop-in has its section, with the
    command that installs it where systemd reads it."""
    drop_ins = sorted(p.name for p in (ROOT / "packaging" / "systemd").glob("*.conf"))
    blocks = [b.replace("\\\n", " ") for b in sh_blocks(INSTALL.read_text())]
    installed = {
        name
        for name in drop_ins
        for b in blocks
        if re.search(rf"/usr/share/vramwatch/systemd/{re.escape(name)}\s+{DROP_IN_DIR}/", b)
    }

    assert "hooks-network.conf" in drop_ins
    assert drop_ins == sorted(installed)


def prose_sentences(text: str) -> list[str]:
    """roff or catalog text as sentences: requests and font escapes dropped."""
    plain = re.sub(r"\\f[BIRP]|^\.\w+ ", "", text, flags=re.M).replace("\\-", "-")
    return re.split(r"(?<=\.)\s", " ".join(plain.split()))


def test_the_man_page_and_catalog_name_the_event_a_lost_gpu_logs() -> None:
    """Item 20: vramwatch(8) and the catalog said a lost GPU is a sampling_error."""
    config = parse("")
    healthy = one_gpu(0)
    lost_gpu = replace(one_gpu(2 * S, error="GPU_IS_LOST: GPU is lost").gpus[0], lost=True)
    first = policy.decide(config, healthy, policy.History())
    lost = policy.decide(config, replace(healthy, now_ns=2 * S, gpus=(lost_gpu,)), first.history)
    (logged,) = {e.name for e in lost.events if e.level == "error"}
    page = prose_sentences((ROOT / "man" / "vramwatch.8").read_text())
    catalog = (ROOT / "packaging" / "journald" / "vramwatch.catalog").read_text()
    entry = catalog.split(f"-- {MESSAGE_IDS['sampling_error']}\n")[1].split("\n-- ")[0]
    about_lost = [s for s in page if "fell off the bus" in s]
    about_lost += [s for s in prose_sentences(entry) if "GPU_IS_LOST" in s]

    assert "gpu_lost" == logged
    assert len(about_lost) >= 2
    assert [] == [s for s in about_lost if logged not in s]


def test_readme_warns_what_a_dry_run_trace_replayed_enforcing_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Item 21: after the first action, replaying a dry-run trace with an enforcing
    config logs entries that are artefacts of the recording (the memory never came
    back); the README's "reproduces the journal" must say so, naming them."""
    incidents = ROOT / "examples" / "incidents"
    trace = incidents / "arena.jsonl.gz"
    config = incidents / "arena.toml"
    recorded = [json.loads(x) for x in replay_json(capsys, str(trace))]
    enforcing = [json.loads(x) for x in replay_json(capsys, str(trace), "-c", str(config))]
    events = [o.get("event") for o in enforcing if "event" in o]
    first = events.index("restart")
    recovered = events.index("floor_recovered", first)
    after = sorted(set(events[first + 1 : recovered]))
    replay = section(README, "Record, replay and see")
    caveat = [s for s in sentences_of(replay) if "dry run" in s and "enforcing" in s]

    assert "would_restart" in [o.get("event") for o in recorded]  # a dry-run trace
    assert "not_reclaimed" in after
    assert caveat, "README: no caveat on replaying a dry-run trace with an enforcing config"
    assert [] == [e for e in after if not any(f"`{e}`" in s for s in caveat)]


def replay_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert 0 == main(["replay", *argv, "--json"])
    return capsys.readouterr().out.splitlines()


def test_readme_layout_names_every_module() -> None:
    """The layout missed commands, sink, tenants, trend and sources/worker (issue 23)."""
    layout = section(README, "Layout")
    package = ROOT / "vramwatch"
    modules = [
        p.relative_to(package).as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"
    ]

    def named(rel: str) -> bool:
        directory, _, name = rel.rpartition("/")
        if not directory:
            return re.search(rf"(?<![\w/]){re.escape(name)}\b", layout) is not None
        lines = [x for x in layout.splitlines() if x.strip().startswith(f"{directory}/")]
        return rel in layout or any(name in x for x in lines)

    test_dirs = sorted(p.name for p in (ROOT / "tests").iterdir() if (p / "__init__.py").exists())

    assert {"policy/readings.py", "sources/nvml.py", "actuators/containers.py"} <= set(modules)
    assert [] == sorted(m for m in modules if not named(m))
    assert [] == [d for d in test_dirs if not re.search(rf"^  {d}/ ", layout, re.M)]


def test_every_toml_block_in_the_docs_is_a_valid_config() -> None:
    """What a reader copies into /etc/vramwatch.toml: `vramwatch check` accepts it."""
    paths = [README, *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [
        (p.name, b) for p in paths for b in re.findall(r"```toml\n(.*?)```", p.read_text(), re.S)
    ]
    page = (ROOT / "man" / "vramwatch.toml.5").read_text()
    examples = re.findall(r"^\.EX\n(.*?)^\.EE", section_roff(page, "EXAMPLES"), re.M | re.S)
    blocks += [("vramwatch.toml.5", unroff(b)) for b in examples]
    problems = []
    for name, block in blocks:
        try:
            parse(block, name)
        except ConfigError as exc:
            problems.append(str(exc))

    assert len(blocks) >= 3
    assert [] == problems


def section_roff(page: str, name: str) -> str:
    return page.split(f"\n.SH {name}\n", 1)[1].split("\n.SH ", 1)[0]


def unroff(text: str) -> str:
    return text.replace("\\-", "-").replace("\\(dq", '"').replace("\\(aq", "'")
