"""D-Bus calls to ``org.freedesktop.systemd1`` (jeepney), and sd_notify.

The daemon restarts a unit the way ``systemctl restart`` does: subscribe to
``JobRemoved`` from systemd's unique bus name, call ``RestartUnit(unit,
"replace")`` and wait for the job's result. Every failure (bus gone, access
denied, no such unit, job failed or timed out, a bug) comes back as a
:class:`JobOutcome` with ``ok=False``, never as an exception.

Reads (``GetNameOwner``, ``LoadUnit``, ``GetAll``) and the subscription are
idempotent and are retried once on a fresh connection after a dropped bus.
The action itself (``RestartUnit``, ``StopUnit``) is never re-sent: a bus that
drops once it is on the wire leaves the job's fate unknown, and a second
restart of a tenant is exactly what vramwatch promises not to do.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jeepney import DBusAddress, MatchRule, Message, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from vramwatch.model import JobOutcome, Verb

SYSTEMD = "org.freedesktop.systemd1"
MANAGER = DBusAddress("/org/freedesktop/systemd1", SYSTEMD, f"{SYSTEMD}.Manager")
UNIT_IFACE = f"{SYSTEMD}.Unit"
SERVICE_IFACE = f"{SYSTEMD}.Service"

# A restart waits for the old process to stop (TimeoutStopSec= defaults to
# 90 s) and the new one to start: wait a little longer than systemd would.
JOB_TIMEOUT_S = 100.0
CALL_TIMEOUT_S = 10.0
# Granularity of waiting for a job: how soon a SIGTERM is noticed.
WAIT_SLICE_S = 0.2
# A re-executing manager leaves the bus for well under a second (systemd 252,
# user manager); wait this long for it to come back before failing an action.
OWNER_WAIT_S = 5.0

_METHODS = {Verb.RESTART: "RestartUnit", Verb.STOP: "StopUnit"}
# The result of an action whose bus could not be reached: nothing was sent.
CONNECT = "connect"


@dataclass(frozen=True, slots=True)
class UnitState:
    unit: str
    load_state: str  # "loaded", "not-found", ... or "unknown" when the bus is unreachable
    active_state: str
    sub_state: str
    main_pid: int | None
    invocation_id: str
    memory_max: int | None  # None: infinity or not a service
    memory_high: int | None


class BusError(Exception):
    """A D-Bus failure, with the D-Bus error name when there is one."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.name = name
        self.detail = detail


def bus_address(bus: str) -> str:
    """``SYSTEM``, or the calling user's bus address for ``bus = "user"``."""
    if bus == "system":
        return "SYSTEM"
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return f"unix:path={runtime}/bus"


def _short_error(exc: DBusErrorResponse) -> str:
    detail = exc.data[0] if exc.data and isinstance(exc.data[0], str) else str(exc)
    return str(detail)


class SystemdClient:
    """A connection to one systemd manager; reads reconnect once after a dropped bus."""

    def __init__(self, bus: str = "system", job_timeout_s: float = JOB_TIMEOUT_S) -> None:
        self.bus = bus
        self.job_timeout_s = job_timeout_s
        self._conn: DBusConnection | None = None
        self._owner: str | None = None
        self._subscribed = False  # Subscribe and AddMatch once per connection
        self._rule: MatchRule | None = None  # the JobRemoved match currently added
        self._accepted = False  # whether the action in progress got a job path

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None
        self._owner = None
        self._subscribed = False
        self._rule = None

    def _connection(self) -> DBusConnection:
        if self._conn is None:
            try:
                self._conn = open_dbus_connection(bus_address(self.bus))
            except (OSError, KeyError, ValueError) as exc:
                raise BusError(CONNECT, f"cannot connect to the {self.bus} bus: {exc}") from None
        return self._conn

    def _call(
        self, message: Message, timeout: float = CALL_TIMEOUT_S, *, retry: bool = True
    ) -> tuple[Any, ...]:
        """Send and unwrap; with ``retry``, reconnect and re-send once if the bus dropped.

        Only idempotent calls may be retried: a dropped connection does not
        say whether the peer received and acted on the message.
        """
        for attempt in (1, 2):
            conn = self._connection()
            try:
                reply = conn.send_and_get_reply(message, timeout=timeout)
                return tuple(unwrap_msg(reply))
            except DBusErrorResponse as exc:
                raise BusError(str(exc.name), _short_error(exc)) from None
            except TimeoutError:
                raise BusError("timeout", f"no reply from systemd within {timeout:g}s") from None
            except (OSError, EOFError, ValueError) as exc:
                # ValueError: jeepney on a socket or selector that is already closed.
                self.close()
                if attempt == 2 or not retry:
                    raise BusError("disconnected", f"lost the {self.bus} bus: {exc}") from None
        raise AssertionError("unreachable")

    def _systemd_owner(self) -> str:
        """systemd's unique name (":1.N") now, waiting briefly while it re-executes.

        Signals carry the unique name, so a match on the well-known name would
        never fire. It changes when the manager re-executes (``daemon-reexec``,
        a package upgrade) or the bus restarts: looked up before every action,
        and the subscription follows it.
        """
        deadline = time.monotonic() + OWNER_WAIT_S
        while True:
            try:
                (owner,) = self._call(message_bus.GetNameOwner(SYSTEMD))
            except BusError as exc:
                if exc.name != "org.freedesktop.DBus.Error.NameHasNoOwner":
                    raise
                if time.monotonic() >= deadline:
                    raise BusError(exc.name, f"systemd is not on the {self.bus} bus") from None
                time.sleep(WAIT_SLICE_S)
                continue
            if owner != self._owner:
                if self._owner is not None and self._rule is not None:
                    try:
                        self._call(message_bus.RemoveMatch(self._rule))
                    except BusError:
                        pass  # the old match is harmless, only unused
                self._owner = owner
                self._subscribed = False
            return str(owner)

    def act(
        self,
        unit: str,
        verb: Verb,
        should_stop: Callable[[], bool] = lambda: False,
        job_timeout_s: float | None = None,
    ) -> JobOutcome:
        """Restart or stop a unit and wait for the job to finish; never raises.

        The action call is sent at most once. After systemd accepted the job,
        every way the wait can end is an outcome with ``accepted=True``.
        """
        started = time.monotonic()
        if job_timeout_s is None:
            job_timeout_s = self.job_timeout_s
        self._accepted = False
        try:
            return self._act(unit, verb, should_stop, job_timeout_s, started)
        except BusError as exc:
            return JobOutcome(
                False,
                exc.name,
                exc.detail,
                time.monotonic() - started,
                self._accepted,
                reached=exc.name != CONNECT,
            )
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the guard
            # The connection may be half-used: start the next action on a fresh one.
            self.close()
            state = "job state unknown" if self._accepted else "no job confirmed"
            return JobOutcome(
                False,
                "unknown",
                f"{_METHODS[verb]} {unit}: unexpected error, {state}: {exc!r}",
                time.monotonic() - started,
                self._accepted,
            )

    def _prepare(self) -> tuple[DBusConnection, MatchRule]:
        """The connection to act on, subscribed to systemd's ``JobRemoved``.

        Subscribe before the call: the job can finish before its reply arrives.
        Everything here is idempotent, so after a dropped bus it is all done
        again, once, on one fresh connection.
        """
        for attempt in (1, 2):
            try:
                owner = self._systemd_owner()
                rule = MatchRule(
                    type="signal",
                    sender=owner,
                    interface=MANAGER.interface,
                    member="JobRemoved",
                    path=MANAGER.object_path,
                )
                if not self._subscribed:
                    try:
                        self._call(new_method_call(MANAGER, "Subscribe"), retry=False)
                    except BusError as exc:
                        # A second Subscribe on one connection is an error, not a no-op.
                        if exc.name != f"{SYSTEMD}.AlreadySubscribed":
                            raise
                    self._call(message_bus.AddMatch(rule), retry=False)
                    self._rule = rule
                    self._subscribed = True
                return self._connection(), rule
            except BusError as exc:
                if exc.name != "disconnected" or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _act(
        self,
        unit: str,
        verb: Verb,
        should_stop: Callable[[], bool],
        job_timeout_s: float,
        started: float,
    ) -> JobOutcome:
        conn, rule = self._prepare()
        method = _METHODS[verb]
        with conn.filter(rule, queue=deque()) as queue:
            try:
                reply = conn.send_and_get_reply(
                    new_method_call(MANAGER, method, "ss", (unit, "replace")),
                    timeout=CALL_TIMEOUT_S,
                )
                (job,) = unwrap_msg(reply)
            except DBusErrorResponse as exc:
                raise BusError(str(exc.name), _short_error(exc)) from None
            except TimeoutError:
                # Sent, never answered: systemd may have queued the job. Keep it in flight
                # (one incident, one victim) rather than act on a second tenant meanwhile.
                self._accepted = True
                raise BusError(
                    "timeout",
                    f"no reply to {method} within {CALL_TIMEOUT_S:g}s; job state unknown",
                ) from None
            except (OSError, EOFError, ValueError) as exc:
                self._accepted = True  # as above: the call may have reached systemd
                self.close()
                raise BusError(
                    "disconnected",
                    f"lost the {self.bus} bus before systemd answered {method}; "
                    f"not re-sent, job state unknown: {exc}",
                ) from None
            self._accepted = True
            deadline = started + job_timeout_s
            while True:
                while queue:
                    _job_id, job_path, _unit, result = queue.popleft().body
                    if job_path == job:
                        took = time.monotonic() - started
                        ok = result == "done"
                        detail = (
                            f"{method} job {result} after {took:.1f}s"
                            if ok
                            else f"{method} job finished with result '{result}' "
                            f"(see journalctl -u {unit})"
                        )
                        return JobOutcome(ok, result, detail, took, True)
                left = deadline - time.monotonic()
                if left <= 0:
                    return JobOutcome(
                        False,
                        "timeout",
                        f"{method} job still running after {job_timeout_s:g}s",
                        time.monotonic() - started,
                        True,
                    )
                if should_stop():
                    return JobOutcome(
                        False,
                        "interrupted",
                        "vramwatch is stopping; job left to systemd",
                        time.monotonic() - started,
                        True,
                    )
                try:
                    conn.recv_messages(timeout=min(WAIT_SLICE_S, left))
                except TimeoutError:
                    continue
                except (OSError, EOFError, ValueError) as exc:
                    self.close()
                    raise BusError(
                        "disconnected", f"lost the bus waiting for the job: {exc}"
                    ) from None

    def reachable(self) -> str | None:
        """Why the manager cannot be reached on this bus now, or None when it can."""
        try:
            self._systemd_owner()
        except BusError as exc:
            return exc.detail
        return None

    def unit_state(self, unit: str) -> UnitState:
        """Load state, active state, main PID, invocation and memory limits of a unit."""
        (path,) = self._call(new_method_call(MANAGER, "LoadUnit", "s", (unit,)))
        unit_addr = DBusAddress(path, SYSTEMD, "org.freedesktop.DBus.Properties")
        (props,) = self._call(new_method_call(unit_addr, "GetAll", "s", (UNIT_IFACE,)))
        service: dict[str, Any] = {}
        if unit.endswith(".service"):
            (service,) = self._call(new_method_call(unit_addr, "GetAll", "s", (SERVICE_IFACE,)))

        def value(table: dict[str, Any], name: str, default: Any) -> Any:
            entry = table.get(name)
            return entry[1] if entry is not None else default

        invocation = bytes(value(props, "InvocationID", b"")).hex()
        main_pid = int(value(service, "MainPID", 0)) or None
        return UnitState(
            unit=unit,
            load_state=str(value(props, "LoadState", "unknown")),
            active_state=str(value(props, "ActiveState", "unknown")),
            sub_state=str(value(props, "SubState", "unknown")),
            main_pid=main_pid,
            invocation_id=invocation,
            memory_max=_limit(value(service, "MemoryMax", None)),
            memory_high=_limit(value(service, "MemoryHigh", None)),
        )


def _limit(raw: Any) -> int | None:
    # systemd reports "no limit" as UINT64_MAX.
    if raw is None or int(raw) >= 2**64 - 1:
        return None
    return int(raw)


def notify(state: str) -> bool:
    """sd_notify: through systemd-python, or the documented datagram protocol without it.

    Type=notify units are killed when READY=1 never comes, so a pip install
    without the [journal] extra must still notify. False when not under systemd.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    try:
        from systemd import daemon
    except ImportError:
        return _notify_socket(address, state)
    return bool(daemon.notify(state))


def _notify_socket(address: str, state: str) -> bool:
    # sd_notify(3): one AF_UNIX datagram; "@" starts an abstract socket name.
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval_ns() -> int | None:
    """Half of WatchdogSec= when systemd asked for keep-alives for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) * 1000 // 2
