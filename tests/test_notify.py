"""systemd notify without systemd: a datagram socket stands in for NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pinwheel.notify import Notifier


def listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock


def test_ready_status_and_watchdog_reach_the_socket(tmp_path: Path):
    sock = listener(str(tmp_path / "notify"))
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "8000000",
                  "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.max_wait == 2.0
    n.ready("starting")
    assert sock.recv(1024).decode().split("\n") == ["READY=1", "STATUS=starting"]
    n._last_kick = 0.0  # long ago
    n.kick()
    assert sock.recv(1024) == b"WATCHDOG=1"
    n.stopping("bye")
    assert sock.recv(1024).decode().split("\n") == ["STOPPING=1", "STATUS=bye"]


def test_abstract_socket_names_start_with_at(tmp_path: Path):
    name = f"pinwheel-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
    assert sock.recv(1024) == b"STATUS=hello"


def test_without_notify_socket_nothing_happens():
    n = Notifier({})
    assert not n.enabled and n.max_wait is None
    assert n.send("READY=1") is False
    n.kick()  # no error


def test_a_watchdog_meant_for_another_process_is_ignored(tmp_path: Path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "8000000",
                  "WATCHDOG_PID": "1"})
    assert n.watchdog_seconds is None


def test_an_unreachable_socket_is_logged_not_fatal(tmp_path: Path):
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing")}).send("READY=1") is False
