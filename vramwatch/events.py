"""Event names, MESSAGE_IDs, and the only place that configures logging.

Every decision is one :class:`~vramwatch.model.Event`. Under systemd it becomes
one journal entry with native fields (``MESSAGE``, ``PRIORITY``,
``MESSAGE_ID``, ``VRAMWATCH_*``); elsewhere one line on stderr, human-readable
on a terminal and JSON otherwise.

The journal and JSON paths are a few lines here that do what structlog's
filtering bound logger, ``add_log_level``, ``TimeStamper(fmt="iso", utc=True)``,
``JSONRenderer`` and ``PrintLogger`` did, entry for entry: importing structlog
costs over 10 MiB resident (it pulls in asyncio and ssl), more than the rest
of the daemon. structlog renders the console format only (a person at a
terminal), imported when that format is chosen.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from functools import partial
from typing import Any, TextIO

from vramwatch.model import Event
from vramwatch.once import Once

SYSLOG_IDENTIFIER = "vramwatch"

# Stable per event type, for `journalctl MESSAGE_ID=...` and the catalog.
MESSAGE_IDS: dict[str, str] = {
    "started": "7d2a2d50c3e5422d933416ad055b7279",
    "stopping": "fc88c40135274de0b314727f7205c8fb",
    "config_reloaded": "0be280345cc24f2abe1f155884985bf5",
    "config_rejected": "947da9c8b3da4337a932e70bb51f97ba",
    "floor_breached": "94c65446304543aab774198bf2257be7",
    "floor_recovered": "8f95d04c6f8a4f3b84506cc1ab702447",
    "floor_unprovable": "9101e3772c5d4014a3f7d670ec0a2e15",
    "restart": "d018d6e4eb8d4146a86e458ceda09147",
    "stop": "f10ed1989c2248f5ab044be60602723b",
    "would_restart": "edddbd09d5cc4c63bb45a46d92272640",
    "would_stop": "66e400a7ea6d43dbb7a2fb7e9a7ccd70",
    "action_failed": "c6f7a14688fc40aea4d22dc600646861",
    "action_cancelled": "3737379beca34f94903dd33a556b41de",
    "action_unconfirmed": "4e8b2f6a1c3d4b5e8f7a9c0d2e4f6a81",
    "waiting": "c1d6e0b2a4f84e6e9a0f3b5d7c9e1a23",
    "growing": "7a1f3c5e9b2d4f6a8c0e1b3d5f7a9c2e",
    "released": "5c2e8a4f1b3d4e6f9a7c0b2d4e6f8a13",
    "release_failed": "e3b5d7f9a1c24e6b8d0f2a4c6e8b0d25",
    "hook_failed": "9d1f3b5a7c2e4f6a8b0d2f4a6c8e0b37",
    "reclaimed": "9f78dc31aea44dceaf216ab5d5075349",
    "not_reclaimed": "ad3dbcc5a3244f4480842fdcb2f03a96",
    "no_candidate": "dc975d5eb4834883847b0eb7d5903f6a",
    "skipped": "28d9a7df86274328bb069f4462ca85f7",
    "rate_limited": "f45641d341154e47aacc81315d6670c4",
    "sampling_error": "2da4bec0eff849b2af1a5b8e17f5924c",
    "sampling_recovered": "0aba4c52e53b4fd0b3617e049f26cbdf",
    "gpu_lost": "d67451b91ed141bea52bac44b1365155",
    "nvml_hung": "18299dd549974786b85f0314ef3cbe05",
    "internal_error": "5b3f0e1c8a7d4e2f9c6b1a0d3e4f5a6b",
    "metrics_error": "5d3db05459254a7abdb468982b80b7b5",
    "state_restored": "bf663e9feea3481fae79050dd8472359",
    "state_corrupt": "aab8bdbb7b074d559f315956e3d6333c",
    "state_too_new": "4043c50386cf41d2b0ca47d671b5db72",
    "state_unavailable": "6cd627add41643b9954815b957933343",
    "state_saved": "809a504330694436a24ee79187f2c4c7",
    "log_fallback": "12cbd34822cd48d2a5e04b4de0bf1c52",
    "log_recovered": "4281a4dd91754d9ab67d1e2df23b224a",
    "config_warning": "76d3b3dac8e34fcbb4e89ce79bbcec65",
    "record_error": "ed66dc88d7f84b7ba12f9cc57ac8e183",
    "record_resumed": "b18cb3123b78440cbb46e3a39eb1e67f",
    "tick": "c52fc6da73764e5db1e6dca1125085ab",
    "bus_unreachable": "05fc9d8f11d14e9da0c59fc2bc2ee476",
}

# syslog priorities, as journald expects them in PRIORITY=.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

TARGETS = ("auto", "journal", "stderr")
FORMATS = ("auto", "console", "json")


def event_dict(event: Event) -> dict[str, Any]:
    """An Event as structlog's event dict, the input of :func:`journal_fields`."""
    fields = {k: v for k, v in event.fields.items() if v is not None}
    return {**fields, "event": event.name, "level": event.level, "message": event.message}


def journal_fields(event: Mapping[str, Any]) -> dict[str, str]:
    """structlog's event dict -> journald fields (``VRAMWATCH_*`` in upper case)."""
    name = str(event["event"])
    fields: dict[str, str] = {
        "MESSAGE": str(event.get("message", name)),
        "PRIORITY": str(PRIORITIES.get(str(event.get("level", "info")), 6)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "VRAMWATCH_EVENT": name,
    }
    if name in MESSAGE_IDS:
        fields["MESSAGE_ID"] = MESSAGE_IDS[name]
    for key, value in event.items():
        if key in {"event", "message", "level", "timestamp"} or value is None:
            continue
        if isinstance(value, (list, dict, tuple)):
            text = json.dumps(value, sort_keys=True)
        elif isinstance(value, bool):
            text = "1" if value else "0"
        else:
            text = str(value)
        fields[f"VRAMWATCH_{key.upper()}"] = text
    unit = event.get("unit")
    if unit:
        # With root privileges this makes `journalctl -u UNIT` show the entry too.
        fields["OBJECT_SYSTEMD_UNIT"] = str(unit)
    return fields


# Where sd_journal_sendv() sends. With no socket there it returns success (it
# treats ENOENT as "no journal, nothing to do"), so every entry would vanish.
JOURNAL_SOCKET = "/run/systemd/journal/socket"


class NoJournal(OSError):
    """journald is not listening: an entry sent now would be dropped silently."""


def _journald_listening(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class _Dropped(Exception):
    """Raised by a final processor that delivered the event itself (structlog's DropEvent)."""


def journal_sender() -> Callable[..., Any]:
    """``systemd.journal.send``, or the same entries through its C sender without the wrapper.

    ``systemd.journal`` imports uuid, logging, traceback, platform and the journal
    reader to offer ``send``, which only joins ``KEY=value`` strings and calls
    ``systemd._journal.sendv``: 1.1 MiB resident more than ``sendv`` alone
    (docs/benchmarks.md). The wrapper is used when systemd-python has no
    ``_journal`` module.
    """
    try:
        from systemd._journal import sendv
    except ImportError:
        from systemd import journal

        send: Callable[..., Any] = journal.send
        return send
    return partial(_send_like_journal, sendv)


def _send_like_journal(sendv: Callable[..., Any], MESSAGE: str, **fields: str) -> Any:  # noqa: N803
    """``systemd.journal.send(MESSAGE, **fields)`` (systemd-python 235), argument for argument.

    Like it, a MESSAGE_ID comes second, then the caller's file, line and function
    (``CODE_FILE``, ``CODE_LINE``, ``CODE_FUNC``), then the other fields in order.
    ``partial`` adds no frame, so the caller is the frame above this one.
    """
    args = [f"MESSAGE={MESSAGE}"]
    message_id = fields.pop("MESSAGE_ID", None)
    if message_id is not None:
        args.append(f"MESSAGE_ID={message_id}")
    caller = sys._getframe(1)  # noqa: SLF001 - what traceback.extract_stack(limit=2) reads
    args.append(f"CODE_FILE={caller.f_code.co_filename}")
    args.append(f"CODE_LINE={caller.f_lineno:d}")
    args.append(f"CODE_FUNC={caller.f_code.co_name}")
    args.extend(f"{key}={value}" for key, value in fields.items())
    return sendv(*args)


class _JournalRenderer:
    """Final processor: one native journal entry per event."""

    def __init__(self) -> None:
        self._send = journal_sender()
        self._socket = JOURNAL_SOCKET

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        if not _journald_listening(self._socket):  # one stat: events are few
            raise NoJournal(f"journald is not listening: no socket {self._socket}")
        self._send(**journal_fields(event))
        raise _Dropped


def _add_log_level(_logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
    event["level"] = name
    return event


def _timestamp(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """structlog's TimeStamper(fmt="iso", utc=True): 2026-01-02T03:04:05.678901Z."""
    now = datetime.datetime.now(tz=datetime.UTC)
    event["timestamp"] = now.isoformat().replace("+00:00", "Z")
    return event


def _json_fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer does with a value json cannot encode."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


def _render_json(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    return json.dumps(event, default=_json_fallback, sort_keys=False)


class _Logger:
    """structlog's filtering bound logger over a PrintLogger, as vramwatch uses it.

    ``log.warning("restart", message=..., unit=...)``: below ``min_level`` nothing
    happens; otherwise the event dict (the keywords, then ``event``) goes through
    the processors, and the last one's string is printed to ``stream`` and flushed.
    """

    def __init__(self, stream: TextIO, processors: list[Any], min_level: str) -> None:
        self._stream = stream
        self._processors = processors
        self._min = _LEVELS[min_level]
        self._lock = threading.Lock()

    def _log(self, level: str, name: str, fields: dict[str, Any]) -> None:
        if _LEVELS[level] < self._min:
            return
        event: Any = {**fields, "event": name}
        try:
            for processor in self._processors:
                event = processor(None, level, event)
        except _Dropped:
            return
        with self._lock:
            print(event, file=self._stream, flush=True)

    def debug(self, name: str, **fields: Any) -> None:
        self._log("debug", name, fields)

    def info(self, name: str, **fields: Any) -> None:
        self._log("info", name, fields)

    def warning(self, name: str, **fields: Any) -> None:
        self._log("warning", name, fields)

    def error(self, name: str, **fields: Any) -> None:
        self._log("error", name, fields)

    def critical(self, name: str, **fields: Any) -> None:
        self._log("critical", name, fields)


def _message_first(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """For the console: the sentence first, then the fields."""
    message = event.pop("message", None)
    if message is not None:
        event["event"] = f"{event['event']}: {message}"
    return event


def _order_for_json(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """timestamp, level, event, message first: what a person scanning JSON lines reads."""
    head = {k: event.pop(k) for k in ("timestamp", "level", "event", "message") if k in event}
    return {**head, **event}


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):  # a closed stream
        return False


def journal_available() -> bool:
    try:
        journal_sender()
    except ImportError:
        return False
    return True


def under_systemd() -> bool:
    """True when stderr already goes to the journal (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    device, _, inode = stream.partition(":")
    return f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def _stderr_logger(stream: TextIO, fmt: str, min_level: str) -> Any:
    if fmt != "console":
        chain = [_add_log_level, _timestamp, _order_for_json, _render_json]
        return _Logger(stream, chain, min_level)
    import structlog  # for a person at a terminal only: see the module's docstring

    return structlog.wrap_logger(
        structlog.PrintLoggerFactory(stream)(),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _message_first,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[min_level]),
        cache_logger_on_first_use=True,
    )


class EventLog:
    """Emits events to the chosen target.

    Logging never kills the guard: when the journal cannot take an entry
    (journald restarting, its socket full, systemd-python missing), the event
    goes to stderr instead, and ``log_fallback`` says so once; ``log_recovered``
    when the journal takes entries again. A failing stderr is given up on
    silently: there is nowhere left to say it.
    """

    # Whether debug events are logged (--debug): what is not logged is not built.
    debug = False

    def __init__(
        self,
        target: str = "auto",
        fmt: str = "auto",
        stream: TextIO | None = None,
        min_level: str = "info",
    ) -> None:
        stream = stream or sys.stderr
        self._stream = stream
        self._min_level = min_level
        self.debug = _LEVELS[min_level] <= _LEVELS["debug"]
        unavailable = False
        if target == "auto":
            target = "journal" if under_systemd() and journal_available() else "stderr"
        elif target == "journal" and not journal_available():
            target, unavailable = "stderr", True
        self.target = target
        if fmt == "auto":
            fmt = "console" if _isatty(stream) else "json"
        self.format = fmt
        # Called with every event after it is logged (the after_action hook).
        self.listeners: list[Callable[[Event], None]] = []
        self._fallback: Any = None  # the stderr logger, built on the first failure
        self._journal_failing = Once(changes=False)  # log_fallback once, then log_recovered
        self._logger: Any
        if target == "journal":
            self._logger = _Logger(stream, [_add_log_level, _JournalRenderer()], min_level)
        else:
            self._logger = _stderr_logger(stream, fmt, min_level)
        if unavailable:
            self.say(
                "log_fallback",
                "warning",
                "cannot log to the journal: systemd-python (python3-systemd) is not "
                "installed; logging to stderr",
                error="systemd-python is not installed",
            )

    def emit(self, events: Iterable[Event]) -> None:
        for event in events:
            self.one(event)
            for listener in self.listeners:
                listener(event)

    def one(self, event: Event) -> None:
        fields = {k: v for k, v in event.fields.items() if v is not None}
        try:
            getattr(self._logger, event.level)(event.name, message=event.message, **fields)
        except Exception as exc:  # noqa: BLE001 - logging must never kill the guard
            self._to_stderr(event.name, event.level, event.message, fields, exc)
            return
        if self._journal_failing.worked():
            self.say("log_recovered", "info", "logging to the journal works again")

    def _to_stderr(
        self, name: str, level: str, message: str, fields: dict[str, Any], exc: Exception
    ) -> None:
        try:
            if self._fallback is None:
                self._fallback = _stderr_logger(self._stream, self.format, self._min_level)
            if self.target == "journal":
                error = str(exc) if isinstance(exc, NoJournal) else f"{type(exc).__name__}: {exc}"
                if self._journal_failing.failed(error):
                    self._fallback.warning(
                        "log_fallback",
                        message=f"cannot log to the journal ({error}); writing to stderr "
                        "until it works again",
                        error=error,
                    )
            getattr(self._fallback, level)(name, message=message, **fields)
        except Exception:  # noqa: BLE001, S110 - stderr failed too: nowhere left to say it
            pass

    def say(self, name: str, level: str, message: str, **fields: Any) -> None:
        self.one(Event(name, level, message, fields))
        for listener in self.listeners:
            listener(Event(name, level, message, fields))
