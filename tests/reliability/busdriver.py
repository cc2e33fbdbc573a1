#!/usr/bin/env python3
"""Drive vramwatch's SystemdClient from inside the sandbox, one command a line.

    act UNIT VERB                 -> {"ok":..., "result":..., "detail":...}
    act_drop UNIT VERB SECONDS    the same, with the client's socket shut down
                                  SECONDS after the call starts (a dropped bus)
    act_drop_sent UNIT VERB       the action call reaches systemd, then the socket
                                  is shut down with the reply unread (a bus that
                                  drops before the reply)
    act_drop_accepted UNIT VERB   the socket shut down right after systemd's reply
                                  (the job path) to the action call
    act_raise UNIT VERB           the wait for the job raises RuntimeError (a bug)
    drop                          shut the socket down between calls
    owner                         -> {"owner": the cached unique name of systemd}

Run with the python of the venv under test; argv[1] is the job timeout in s.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
from typing import Any

from jeepney import HeaderFields, Message
from jeepney.io.blocking import DBusConnection

from vramwatch.actuators.systemd import SystemdClient
from vramwatch.model import Verb

ACTIONS = {"RestartUnit", "StopUnit"}


def drop(client: SystemdClient) -> None:
    conn = client._conn
    if conn is not None:
        conn.sock.shutdown(socket.SHUT_RDWR)


def sabotage(client: SystemdClient, how: str) -> None:
    """Make the next action call meet a fault at one exact point, once.

    Every connection the client opens carries the trap, so a client that
    reconnects and re-sends gets through the second time (as it would in
    life), and the test sees it.
    """
    connect = client._connection
    armed = [True]

    def is_action(message: Message) -> bool:
        if armed[0] and message.header.fields.get(HeaderFields.member) in ACTIONS:
            armed[0] = False
            return True
        return False

    def patched() -> DBusConnection:
        conn = connect()
        send, call = conn.send_message, conn.send_and_get_reply

        def send_then_drop(message: Message, serial: Any = None) -> None:
            send(message, serial=serial)
            if is_action(message):
                # systemd got the call; the bus drops before its reply reaches us.
                select.select([conn.sock], [], [], 5)
                conn.sock.setblocking(False)
                try:
                    while conn.sock.recv(65536):
                        pass
                except BlockingIOError:
                    pass
                conn.sock.shutdown(socket.SHUT_RDWR)

        def reply_then_drop(message: Message, **kw: Any) -> Message:
            reply = call(message, **kw)
            if is_action(message):
                conn.sock.shutdown(socket.SHUT_RDWR)
            return reply

        def reply_then_bug(message: Message, **kw: Any) -> Message:
            reply = call(message, **kw)
            if is_action(message):

                def broken(**_kw: Any) -> None:
                    raise RuntimeError("scripted bug while waiting")

                conn.recv_messages = broken
            return reply

        if how == "sent":
            conn.send_message = send_then_drop
        elif how == "accepted":
            conn.send_and_get_reply = reply_then_drop
        else:
            conn.send_and_get_reply = reply_then_bug
        return conn

    client._connection = patched  # type: ignore[method-assign]
    client.close()  # the next action starts on a connection that carries the fault


def main() -> None:
    client = SystemdClient("user", job_timeout_s=float(sys.argv[1]))
    connect = client._connection
    for line in sys.stdin:
        cmd, *args = line.split()
        out: dict[str, object]
        if cmd.startswith("act"):
            if cmd == "act_drop":
                threading.Timer(float(args[2]), drop, (client,)).start()
            elif cmd != "act":
                sabotage(client, cmd.removeprefix("act_drop_").removeprefix("act_"))
            try:
                outcome = client.act(args[0], Verb(args[1]))
            finally:
                client._connection = connect  # type: ignore[method-assign]
            out = {
                "ok": outcome.ok,
                "result": outcome.result,
                "detail": outcome.detail,
                "took": outcome.duration_s,
                "accepted": getattr(outcome, "accepted", None),  # None: a client without it
            }
        elif cmd == "drop":
            drop(client)
            out = {}
        elif cmd == "owner":
            out = {"owner": client._owner}
        else:
            out = {"error": f"unknown command {cmd}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
