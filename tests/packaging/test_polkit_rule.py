"""The generated polkit rule, judged by the real polkitd and pkcheck.

Each test runs a private system bus (dbus-daemon --system) and polkitd in
fresh mount and PID namespaces: tmpfs over /run/dbus and over
/etc/polkit-1/rules.d, which then holds only the rule under test (the
distribution's /usr/share/polkit-1/rules.d stays). When the namespace's first
process exits, the kernel kills every process in it, so nothing outlives a
test. pkcheck asks about a subject process running as an unprivileged user,
with the unit and verb details systemd itself passes for RestartUnit
("restart"), StopUnit ("stop") and ResetFailedUnit ("reset-failed").
"""

from __future__ import annotations

import io
import json
import pwd
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tests.packaging.conftest import require
from vramwatch.cli import main

POLKIT_RULES_DIR = Path("/usr/share/polkit-1/rules.d")
ACTION = "org.freedesktop.systemd1.manage-units"
# Debian 12's polkitd; it drops to this user once it has read the rules.
POLKITD = "/usr/lib/polkit-1/polkitd"

CONFIG = """\
[[tenant]]
unit = "llama-server.service"
vram = "5000MiB"

[[tenant]]
unit = "immich-machine-learning.service"
vram = "3000MiB"
action = "restart"

[[tenant]]
unit = "whisper-batch.scope"
ram = "8GiB"
action = "stop"

[[tenant]]
unit = "frigate.service"
vram = "1800MiB"
protected = true

[[tenant]]
unit = "media\\\\x2dindexer.service"
ram = "2GiB"
"""

UNITS = (
    "llama-server.service",
    "immich-machine-learning.service",
    "whisper-batch.scope",
    "frigate.service",
    "media\\x2dindexer.service",
    "sshd.service",
)
VERBS = ("restart", "stop", "reset-failed", "start")

# Runs as root inside `unshare -m -p --fork --mount-proc`; prints one JSON
# line per pkcheck: {"user", "unit", "verb", "rc"}; polkitd's log to $LOG.
SCRIPT = r"""
set -u
rules="$1"; log="$2"; shift 2
mount -t tmpfs -o mode=0755 tmpfs /run/dbus
mount -t tmpfs -o mode=0700 tmpfs /etc/polkit-1/rules.d
cp "$rules" /etc/polkit-1/rules.d/50-vramwatch.rules
chown -R polkitd /etc/polkit-1/rules.d
dbus-daemon --system --nofork --nopidfile --nosyslog 2>/dev/null &
for _ in $(seq 200); do [ -S /run/dbus/system_bus_socket ] && break; sleep 0.05; done
"$POLKITD" >"$log" 2>&1 &
for _ in $(seq 200); do
    grep -q "Acquired the name org.freedesktop.PolicyKit1" "$log" && break; sleep 0.05
done
for user in "$@"; do
    setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups sleep 60 &
    subject=$!
    for _ in $(seq 100); do
        [ "$(stat -c %u /proc/$subject)" = "$(id -u "$user")" ] && break; sleep 0.02
    done
    for unit in $UNITS; do
        for verb in $VERBS; do
            pkcheck --action-id "$ACTION" --process "$subject" \
                --detail unit "$unit" --detail verb "$verb" >/dev/null 2>&1
            rc=$?
            printf '{"user": "%s", "unit": "%s", "verb": "%s", "rc": %d}\n' \
                "$user" "$(printf '%s' "$unit" | sed 's/\\/\\\\/g')" "$verb" "$rc"
        done
    done
    kill "$subject"
done
"""


def generated_rule(tmp_path: Path, user: str) -> Path:
    config = tmp_path / "vramwatch.toml"
    config.write_text(CONFIG)
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["polkit-rule", "-c", str(config), "--user", user])
    assert 0 == rc
    rules = tmp_path / "50-vramwatch.rules"
    rules.write_text(out.getvalue())
    rules.chmod(0o644)
    return rules


def run_polkit(
    tmp_path: Path, rules: Path, users: tuple[str, ...]
) -> tuple[dict[tuple[str, str, str], str], str]:
    """Ask the real polkitd about every (user, unit, verb); return decisions and its log."""
    require(root=True, commands=("unshare", "dbus-daemon", "pkcheck", "setpriv", POLKITD))
    log = tmp_path / "polkitd.log"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "POLKITD": POLKITD,
        "ACTION": ACTION,
        "UNITS": " ".join(UNITS),
        "VERBS": " ".join(VERBS),
    }
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "-p",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "bash",
            "-c",
            SCRIPT,
            "polkit-test",
            str(rules),
            str(log),
            *users,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == proc.returncode, proc.stderr
    decisions: dict[tuple[str, str, str], str] = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        # pkcheck: 0 authorized; 1 not authorized; 2 "authentication required"
        decisions[(row["user"], row["unit"], row["verb"])] = "yes" if row["rc"] == 0 else "no"
    return decisions, log.read_text()


def rules_in_share() -> int:
    return len(list(POLKIT_RULES_DIR.glob("*.rules")))


def test_polkitd_grants_exactly_the_configured_units_and_verbs(tmp_path: Path) -> None:
    """Unprotected tenants get their action's verb; nothing else, and nobody else, gets anything."""
    require(root=True)
    grantee, other = "nobody", pwd.getpwuid(1).pw_name  # "daemon" on Debian
    rules = generated_rule(tmp_path, grantee)

    decisions, log = run_polkit(tmp_path, rules, (grantee, other))

    granted = {key for key, value in decisions.items() if value == "yes"}
    assert len(UNITS) * len(VERBS) * 2 == len(decisions), log
    assert {
        (grantee, "llama-server.service", "restart"),
        (grantee, "immich-machine-learning.service", "restart"),
        (grantee, "whisper-batch.scope", "stop"),
        (grantee, "media\\x2dindexer.service", "restart"),
    } == granted, log
    assert "Error compiling" not in log
    assert f"Finished loading, compiling and executing {rules_in_share() + 1} rules" in log


def test_polkitd_rejects_a_non_es5_rule(tmp_path: Path) -> None:
    """The harness notices a rule polkitd refuses: an arrow function grants nothing."""
    require(root=True)
    rules = generated_rule(tmp_path, "nobody")
    rules.write_text(
        rules.read_text().replace("function (action, subject) {", "(action, subject) => {")
    )

    decisions, log = run_polkit(tmp_path, rules, ("nobody",))

    assert set() == {key for key, value in decisions.items() if value == "yes"}
    assert "Error compiling script /etc/polkit-1/rules.d/50-vramwatch.rules" in log
    assert f"Finished loading, compiling and executing {rules_in_share()} rules" in log


@pytest.mark.parametrize("user", ["vramwatch"])
def test_default_rule_names_the_vramwatch_user(tmp_path: Path, user: str) -> None:
    rules = generated_rule(tmp_path, user)

    assert f'subject.user !== "{user}"' in rules.read_text()
