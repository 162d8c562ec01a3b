"""Telling systemd how the agent is doing (sd_notify), with the standard library only.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a datagram socket, ``@``
for the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The
agent sends ``READY=1`` once started, ``STATUS=...`` lines, ``STOPPING=1``, and
``WATCHDOG=1`` from its main loop whenever it makes progress, at least every
quarter of the watchdog interval: a hung agent stops sending and is restarted.
Without ``NOTIFY_SOCKET`` (tests, a shell) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("pinwheel.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_seconds: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1_000_000
        self._last_kick = 0.0
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def max_wait(self) -> float | None:
        """The longest the agent may block without calling :meth:`kick`."""
        return self.watchdog_seconds / 4 if self.watchdog_seconds else None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields; False (logged) when it could not be sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode("utf-8", "replace"))
        except OSError as exc:
            # Said once, not at every watchdog kick.
            (log.debug if self._failing else log.warning)(
                "cannot notify systemd at %r: %s", self.address, exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")
        self._last_kick = time.monotonic()

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def kick(self) -> None:
        """Tell the watchdog the agent is alive (sent at most every quarter interval)."""
        wait = self.max_wait
        if wait is None:
            return
        now = time.monotonic()
        if now - self._last_kick >= wait / 2:
            self.send("WATCHDOG=1")
            self._last_kick = now
