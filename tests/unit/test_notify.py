"""sd_notify reaches systemd with or without systemd-python."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from vramwatch.actuators.systemd import notify


def receive(sock: socket.socket) -> bytes:
    sock.settimeout(1)
    return sock.recv(4096)


@pytest.mark.parametrize("have_systemd_python", [True, False])
def test_notify_sends_one_datagram_to_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, have_systemd_python: bool
) -> None:
    if have_systemd_python:
        pytest.importorskip("systemd.daemon")
    else:
        monkeypatch.setitem(sys.modules, "systemd", None)  # import systemd -> ImportError
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))

        sent = notify("READY=1\nSTATUS=GPU0 free 1 GiB")

        assert (True, b"READY=1\nSTATUS=GPU0 free 1 GiB") == (sent, receive(server))


def test_notify_without_systemd_python_reaches_an_abstract_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)
    name = f"vramwatch-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        sent = notify("WATCHDOG=1")

        assert (True, b"WATCHDOG=1") == (sent, receive(server))


def test_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    assert False is notify("READY=1")


def test_notify_to_a_vanished_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))

    assert False is notify("READY=1")
