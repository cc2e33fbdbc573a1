"""vramwatch.polkit: which units and verbs the rule grants, and the ES5 text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vramwatch.cli import main
from vramwatch.config import parse
from vramwatch.polkit import grants, rule

CONFIG = parse(
    """
[[tenant]]
unit = "llama-server.service"
vram = "5000MiB"

[[tenant]]
unit = "whisper.scope"
action = "stop"

[[tenant]]
unit = "frigate.service"
protected = true
""",
    "/etc/vramwatch.toml",
)


def test_grants_each_unprotected_tenant_the_verb_of_its_action() -> None:
    assert {"llama-server.service": ("restart",), "whisper.scope": ("stop",)} == grants(CONFIG)


def test_a_config_without_tenants_grants_nothing() -> None:
    text = rule(parse(""))

    assert {} == grants(parse(""))
    assert "var verbs = {};" in text


def test_rule_lists_units_as_json_strings_and_names_the_protected_ones() -> None:
    text = rule(CONFIG)

    assert '"llama-server.service": ["restart"]' in text
    assert '"whisper.scope": ["stop"]' in text
    assert "// Protected, so not granted: frigate.service" in text
    assert 'subject.user !== "vramwatch"' in text
    assert "from /etc/vramwatch.toml" in text


def test_unit_names_with_systemd_escapes_stay_one_string() -> None:
    config = parse('[[tenant]]\nunit = "media\\\\x2dindexer.service"\n')

    assert '"media\\\\x2dindexer.service": ["restart"]' in rule(config)


@pytest.mark.parametrize(
    "es6",
    [r"=>", r"\blet\b", r"\bconst\b", r"\.includes\(", r"`", r"\bclass\b"],
)
def test_rule_is_es5_for_debian_12_polkitd(es6: str) -> None:
    code = "\n".join(line for line in rule(CONFIG).splitlines() if not line.startswith("//"))

    assert [] == re.findall(es6, code)


def test_cli_prints_the_rule_and_warns_when_it_grants_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "v.toml"
    path.write_text('[[tenant]]\nunit = "a.service"\nprotected = true\n')

    rc = main(["polkit-rule", "-c", str(path), "--user", "gpuwatch"])

    out, err = capsys.readouterr()
    assert 0 == rc
    assert 'subject.user !== "gpuwatch"' in out
    assert "vramwatch: warning: no unprotected tenant: the rule grants nothing\n" == err


def test_cli_exits_78_on_an_invalid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "v.toml"
    path.write_text('[[tenant]]\nunit = "a.service"\naction = "kill"\n')

    rc = main(["polkit-rule", "-c", str(path)])

    assert 78 == rc
    assert "" == capsys.readouterr().out


def test_cli_refuses_a_config_run_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: polkit-rule printed a privilege-granting rule from a group-writable config
    that run and check refuse."""
    tmp_path.chmod(0o755)
    path = tmp_path / "v.toml"
    path.write_text('[[tenant]]\nunit = "a.service"\n')
    path.chmod(0o664)

    rc = main(["polkit-rule", "-c", str(path)])

    refusal = (
        f"vramwatch: {path}: refusing an untrusted config: the file is writable by group "
        "(mode 0664); run chmod go-w on it\n"
    )
    assert (78, "", refusal) == (rc, *capsys.readouterr())
