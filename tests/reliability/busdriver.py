#!/usr/bin/env python3
"""Drive vramwatch's SystemdClient from inside the sandbox, one command a line.

    act UNIT VERB                 -> {"ok":..., "result":..., "detail":...}
    act_drop UNIT VERB SECONDS    the same, with the client's socket shut down
                                  SECONDS after the call starts (a dropped bus)
    drop                          shut the socket down between calls
    owner                         -> {"owner": the cached unique name of systemd}

Run with the python of the venv under test; argv[1] is the job timeout in s.
"""

from __future__ import annotations

import json
import socket
import sys
import threading

from vramwatch.model import Verb
from vramwatch.systemd import SystemdClient


def drop(client: SystemdClient) -> None:
    conn = client._conn
    if conn is not None:
        conn.sock.shutdown(socket.SHUT_RDWR)


def main() -> None:
    client = SystemdClient("user", job_timeout_s=float(sys.argv[1]))
    for line in sys.stdin:
        cmd, *args = line.split()
        out: dict[str, object]
        if cmd in ("act", "act_drop"):
            if cmd == "act_drop":
                threading.Timer(float(args[2]), drop, (client,)).start()
            outcome = client.act(args[0], Verb(args[1]))
            out = {
                "ok": outcome.ok,
                "result": outcome.result,
                "detail": outcome.detail,
                "took": outcome.duration_s,
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
