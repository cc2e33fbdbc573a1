"""The daemon's resident size: what `vramwatch run` imports, and what the thin logger writes.

A memory watchdog must cost little when memory is short (issue 17,
docs/benchmarks.md). The run path imports the exporter only when ``[metrics]``
serves or writes something, structlog only for the console format, and
neither ``secrets`` (hmac loads libcrypto) nor the status renderer (psutil).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from vramwatch import events
from vramwatch.events import EventLog

REPO = Path(__file__).resolve().parents[2]

# Builds everything `vramwatch run` builds, then reports sys.modules instead of looping.
PROBE = """
import json, sys
from vramwatch import cli, daemon
daemon.Daemon.run = lambda self: print(json.dumps(sorted(sys.modules))) or 0
sys.exit(cli.main(sys.argv[1:]))
"""

# Modules the run path must not import for a configuration that does not use them.
HEAVY = (
    "prometheus_client",  # the exporter: metrics off
    "vramwatch.metrics",
    "structlog",  # the console format only; it pulls in asyncio and ssl
    "asyncio",
    "ssl",
    "hmac",  # secrets -> hmac -> _hashlib (libcrypto, 3.5 MiB resident)
    "_hashlib",
    "docker",  # container tenants only
    "requests",
    "psutil",  # `vramwatch status` only
    "vramwatch.status",
    "systemd.journal",  # its send() wraps systemd._journal.sendv, which events.py calls
    "logging",  # what systemd.journal imports besides: 1.1 MiB in all
    "uuid",
    "fractions",  # units.py parses sizes in integers; fractions imports decimal
    "decimal",
    "vramwatch.record.format",  # the trace: only once [daemon] record or --record is set
    "vramwatch.record.trace",
    "traceback",  # the daemon formats a traceback on its first internal error only
    "matplotlib",  # `vramwatch replay --plot` only
    "vramwatch.record.plot",
    "vramwatch.record.replay",
    "vramwatch.record.report",
)

CONFIG = """
[daemon]
interval = "2s"

[[tenant]]
unit = "a.service"
vram = "4GiB"

[[tenant]]
unit = "b.service"
vram = "4GiB"

[[tenant]]
unit = "c.service"
vram = "4GiB"
"""


def run_path_modules(tmp_path: Path, config: str, *args: str) -> set[str]:
    path = tmp_path / "vramwatch.toml"
    path.write_text(config)
    path.chmod(0o644)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = os.environ | {"PYTHONPATH": str(REPO), "FAKE_NVML_STATE": str(tmp_path / "none")}
    env.pop("JOURNAL_STREAM", None)
    r = subprocess.run(
        [sys.executable, "-c", PROBE, "run", "-c", str(path), "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert 0 == r.returncode, r.stderr
    modules: list[str] = json.loads(r.stdout.splitlines()[-1])
    return {m for m in modules if m.split(".")[0] in {h.split(".")[0] for h in HEAVY}}


@pytest.mark.parametrize(
    "logging",
    [("--log-target", "stderr", "--log-format", "json"), ("--log-target", "journal")],
    ids=["json", "journal"],
)
def test_run_with_metrics_off_imports_no_exporter_structlog_or_libcrypto(
    tmp_path: Path, logging: tuple[str, ...]
) -> None:
    loaded = run_path_modules(tmp_path, CONFIG, *logging)

    assert [] == sorted(m for m in HEAVY if m in loaded)


def test_run_with_a_metrics_textfile_imports_the_exporter(tmp_path: Path) -> None:
    """The probe sees imports: metrics on brings prometheus_client in (and what it needs)."""
    config = CONFIG.replace(
        '[daemon]\ninterval = "2s"\n',
        f'[daemon]\ninterval = "2s"\n\n[metrics]\ntextfile = "{tmp_path}/vramwatch.prom"\n',
    )

    loaded = run_path_modules(tmp_path, config, "--log-target", "stderr", "--log-format", "json")

    assert {"prometheus_client", "vramwatch.metrics"} == loaded & {
        "prometheus_client",
        "vramwatch.metrics",
    }


def test_console_format_is_the_one_that_imports_structlog(tmp_path: Path) -> None:
    loaded = run_path_modules(tmp_path, CONFIG, "--log-target", "stderr", "--log-format", "console")

    assert "structlog" in loaded


class Unjsonable:
    def __repr__(self) -> str:
        return "<Unjsonable>"


class WithStructlog:
    def __structlog__(self) -> str:
        return "as structlog renders it"


FIELDS: list[dict[str, Any]] = [
    {},
    {"unit": "a.service", "gpu": 0, "used_bytes": 11274289152, "dry_run": False},
    {"top_users": [{"owner": "a", "bytes": 1}], "ratio": 0.5, "path": Path("/x")},
    {"odd": Unjsonable(), "custom": WithStructlog(), "text": 'quote " and \u00e9'},
]


def structlog_reference(stream: io.StringIO, min_level: str) -> Any:
    """The JSON chain events.py built with structlog before it was made thin."""
    return structlog.wrap_logger(
        structlog.PrintLoggerFactory(stream)(),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            events._order_for_json,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(events._LEVELS[min_level]),
        cache_logger_on_first_use=True,
    )


def without_timestamp(text: str) -> list[str]:
    stamp = r'^\{"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", '
    assert all(re.match(stamp, line) for line in text.splitlines()), text
    return [re.sub(stamp, "{", line) for line in text.splitlines()]


def test_json_lines_are_byte_for_byte_what_structlog_wrote() -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    log = EventLog("stderr", "json", stream=ours, min_level="info")
    reference = structlog_reference(theirs, "info")

    for level in ("debug", "info", "warning", "error", "critical"):
        for fields in FIELDS:
            log.say("restart", level, f"restarting at {level}", **fields)
            getattr(reference, level)("restart", message=f"restarting at {level}", **fields)

    assert without_timestamp(theirs.getvalue()) == without_timestamp(ours.getvalue())
