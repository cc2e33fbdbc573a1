"""events.py: journald fields and the JSON lines written when not under systemd."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import vramwatch
from tests.unit.builders import emitted_event_names
from vramwatch import events
from vramwatch.events import MESSAGE_IDS, EventLog, journal_fields
from vramwatch.model import Event

PACKAGE = Path(vramwatch.__file__).parent

RESTART = {
    "event": "restart",
    "level": "warning",
    "timestamp": "2025-01-01T00:00:00Z",
    "message": "restarting immich-machine-learning.service: GPU 0 free 1.2 GiB < floor 2 GiB "
    "for 10s; unit uses 10.5 GiB VRAM, budget 2.9 GiB",
    "unit": "immich-machine-learning.service",
    "resource": "vram",
    "gpu": 0,
    "gpu_uuid": "GPU-0",
    "used_bytes": 11274289152,
    "budget_bytes": 3145728000,
    "free_bytes": 1288490188,
    "floor_bytes": 2147483648,
    "dry_run": False,
    "error": None,
}


def test_journal_fields_of_a_restart() -> None:
    expected = {
        "MESSAGE": RESTART["message"],
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "vramwatch",
        "MESSAGE_ID": "d018d6e4eb8d4146a86e458ceda09147",
        "OBJECT_SYSTEMD_UNIT": "immich-machine-learning.service",
        "VRAMWATCH_EVENT": "restart",
        "VRAMWATCH_UNIT": "immich-machine-learning.service",
        "VRAMWATCH_RESOURCE": "vram",
        "VRAMWATCH_GPU": "0",
        "VRAMWATCH_GPU_UUID": "GPU-0",
        "VRAMWATCH_USED_BYTES": "11274289152",
        "VRAMWATCH_BUDGET_BYTES": "3145728000",
        "VRAMWATCH_FREE_BYTES": "1288490188",
        "VRAMWATCH_FLOOR_BYTES": "2147483648",
        "VRAMWATCH_DRY_RUN": "0",
    }

    actual = journal_fields(RESTART)

    assert expected == actual


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", "7"),
        ("info", "6"),
        ("warning", "4"),
        ("error", "3"),
        ("critical", "2"),
        ("odd", "6"),
    ],
)
def test_priority_is_the_syslog_number_of_the_level(level: str, expected: str) -> None:
    actual = journal_fields({"event": "started", "level": level})["PRIORITY"]

    assert expected == actual


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            [{"owner": "b", "bytes": 2}, {"bytes": 1, "owner": "a"}],
            '[{"bytes": 2, "owner": "b"}, {"bytes": 1, "owner": "a"}]',
        ),
        ((1, 2), "[1, 2]"),
        ({"z": 1, "a": 2}, '{"a": 2, "z": 1}'),
        (True, "1"),
        (False, "0"),
        (0, "0"),
        (1.5, "1.5"),
        ("", ""),
    ],
)
def test_field_values_become_text_lists_and_tables_as_json(value: Any, expected: str) -> None:
    actual = journal_fields({"event": "no_candidate", "top_users": value})["VRAMWATCH_TOP_USERS"]

    assert expected == actual


def test_none_is_dropped_and_bookkeeping_keys_are_not_fields() -> None:
    actual = journal_fields({"event": "x", "level": "info", "timestamp": "t", "gpu": None})

    assert {
        "MESSAGE": "x",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "vramwatch",
        "VRAMWATCH_EVENT": "x",
    } == actual


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("a.service", {"OBJECT_SYSTEMD_UNIT": "a.service"}), ("", {}), (None, {})],
)
def test_object_systemd_unit_only_when_a_unit_is_set(
    unit: str | None, expected: dict[str, str]
) -> None:
    fields = journal_fields({"event": "skipped", "unit": unit})

    actual = {k: v for k, v in fields.items() if k == "OBJECT_SYSTEMD_UNIT"}

    assert expected == actual


def test_message_id_only_for_known_events() -> None:
    assert "MESSAGE_ID" not in journal_fields({"event": "made_up"})
    assert (
        MESSAGE_IDS["floor_breached"] == journal_fields({"event": "floor_breached"})["MESSAGE_ID"]
    )


def test_message_ids_are_distinct_128_bit_hex_ids() -> None:
    ids = list(MESSAGE_IDS.values())

    assert len(ids) == len(set(ids))
    assert [] == [i for i in ids if not re.fullmatch(r"[0-9a-f]{32}", i)]


@pytest.mark.parametrize(
    "name",
    [
        "restart",
        "would_restart",
        "floor_breached",
        "no_candidate",
        "reclaimed",
        "not_reclaimed",
        "rate_limited",
        "action_failed",
        "sampling_error",
        "config_reloaded",
    ],
)
def test_every_event_named_in_the_spec_has_a_message_id(name: str) -> None:
    assert name in MESSAGE_IDS


def test_the_scan_finds_the_events_it_should() -> None:
    assert {"floor_breached", "no_candidate", "started", "config_reloaded"} <= emitted_event_names()


def test_every_event_vramwatch_emits_has_a_message_id() -> None:
    actual = sorted(emitted_event_names() - set(MESSAGE_IDS))

    assert [] == actual


# EventLog --------------------------------------------------------------------------


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_eventlog_json_writes_one_json_object_per_event() -> None:
    stream = io.StringIO()
    log = EventLog(target="stderr", fmt="json", stream=stream)

    log.emit(
        [
            Event(
                "floor_breached", "warning", "GPU 0 free 1 GiB < floor 2 GiB for 10s", {"gpu": 0}
            ),
            Event("no_candidate", "warning", "nobody", {"top_users": [{"owner": "a", "bytes": 1}]}),
        ]
    )
    log.say("config_reloaded", "info", "config reloaded: 2 tenants", tenants=2, error=None)
    lines = json_lines(stream)

    assert [
        {
            "level": "warning",
            "event": "floor_breached",
            "message": "GPU 0 free 1 GiB < floor 2 GiB for 10s",
            "gpu": 0,
        },
        {
            "level": "warning",
            "event": "no_candidate",
            "message": "nobody",
            "top_users": [{"owner": "a", "bytes": 1}],
        },
        {
            "level": "info",
            "event": "config_reloaded",
            "message": "config reloaded: 2 tenants",
            "tenants": 2,
        },
    ] == [{k: v for k, v in line.items() if k != "timestamp"} for line in lines]
    assert ["timestamp", "level", "event", "message"] == list(lines[0])[:4]
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"]) for line in lines
    )


def test_eventlog_drops_events_below_its_level() -> None:
    stream = io.StringIO()
    log = EventLog(target="stderr", fmt="json", stream=stream, min_level="warning")

    log.emit(
        [
            Event("reclaimed", "info", "a", {}),
            Event("skipped", "debug", "b", {}),
            Event("rate_limited", "error", "c", {}),
        ]
    )

    assert ["rate_limited"] == [line["event"] for line in json_lines(stream)]


def test_eventlog_console_puts_the_sentence_first() -> None:
    stream = io.StringIO()
    log = EventLog(target="stderr", fmt="console", stream=stream)

    log.say("restart", "warning", "restarting a.service: because", unit="a.service")

    assert re.fullmatch(
        r"\S+Z \[warning\s*\] restart: restarting a\.service: because\s+unit=a\.service\n",
        stream.getvalue(),
    )


def test_eventlog_auto_format_is_json_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)

    log = EventLog(stream=io.StringIO())

    assert ("stderr", "json") == (log.target, log.format)


def test_under_systemd_only_when_journal_stream_is_our_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not events.under_systemd()

    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not events.under_systemd()


SENT: list[dict[str, Any]] = [
    RESTART,
    {"event": "started", "level": "info", "message": "vramwatch started"},
    {"event": "made_up", "message": "no MESSAGE_ID; é and \u2603", "text": "two\nlines = x"},
    {"event": "no_candidate", "top_users": [{"owner": "a", "bytes": 1}], "dry_run": True},
]


@pytest.mark.parametrize("event", SENT, ids=[str(e["event"]) for e in SENT])
def test_journal_entries_are_what_systemd_journal_send_sends_argument_for_argument(
    monkeypatch: pytest.MonkeyPatch, event: dict[str, Any]
) -> None:
    """The C sender without systemd.journal's wrapper: same strings, same order, same CODE_*."""
    journal = pytest.importorskip("systemd.journal")
    theirs: list[tuple[Any, ...]] = []
    ours: list[tuple[Any, ...]] = []
    monkeypatch.setattr(journal, "sendv", lambda *args: theirs.append(args))
    monkeypatch.setattr("systemd._journal.sendv", lambda *args: ours.append(args))
    send = events.journal_sender()
    fields = journal_fields(event)

    journal.send(**fields), send(**fields)  # one line: the same CODE_LINE for both

    assert send is not journal.send
    assert theirs == ours
    assert 1 == len(ours)


def test_journal_sender_falls_back_to_systemd_journal_send_without_its_c_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = pytest.importorskip("systemd.journal")
    monkeypatch.setitem(sys.modules, "systemd._journal", None)  # import raises ImportError

    assert journal.send is events.journal_sender()
