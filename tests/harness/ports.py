"""Free TCP ports on loopback, and waiting for a service to listen."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, what: str = "service",
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something listens on ``127.0.0.1:port``; with ``proc``, fail as soon as
    that process exits instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def wait_listening(proc: subprocess.Popen[bytes], port: int, what: str,
                   timeout: float = 10.0) -> None:
    """Wait until ``proc`` listens on ``127.0.0.1:port``; fail early if it exits."""
    wait_for_port(port, timeout, what, proc)
