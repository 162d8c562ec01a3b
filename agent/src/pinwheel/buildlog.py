"""A build's log with a size cap: the beginning and the end are kept, the middle cut out.

The build writes into a pipe that the agent reads (never into a file it could
fill the disk with); everything goes through :class:`CappedLog`. Up to
``max_bytes - tail_bytes`` bytes are written as they come; after that only the
last ``tail_bytes`` are kept in memory (where a failing build says why), and
are written at :meth:`CappedLog.close` after a marker saying how much was cut.
The file never grows beyond ``max_bytes`` plus the marker and the agent's own
lines.
"""

from __future__ import annotations

from typing import BinaryIO

TRUNCATED_MARKER = b"*** log truncated by pinwheel"


class CappedLog:
    def __init__(self, fh: BinaryIO, max_bytes: int, tail_bytes: int = 64 << 10) -> None:
        """``max_bytes`` <= 0 means no cap."""
        self.fh = fh
        self.max_bytes = max_bytes
        self.tail_bytes = min(tail_bytes, max_bytes // 2) if max_bytes > 0 else 0
        self.head_left = max_bytes - self.tail_bytes if max_bytes > 0 else -1
        self.tail = bytearray()
        self.omitted = 0          # bytes dropped from the middle
        self.total = 0            # bytes the build wrote

    @property
    def truncated(self) -> bool:
        return self.omitted > 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if self.head_left < 0:
            self.fh.write(data)
            return
        if self.head_left:
            head = data[:self.head_left]
            self.fh.write(head)
            self.head_left -= len(head)
            data = data[len(head):]
        if not data:
            return
        self.tail += data
        excess = len(self.tail) - self.tail_bytes
        if excess > 0:
            del self.tail[:excess]
            self.omitted += excess

    def close(self) -> None:
        """Write what is kept of the end, after a marker if anything was cut. Leaves fh open."""
        if self.omitted:
            self.fh.write(b"\n\n" + TRUNCATED_MARKER + (
                f": the build wrote {self.total} bytes, more than the limit of "
                f"{self.max_bytes}; {self.omitted} bytes were cut out here, the last "
                f"{len(self.tail)} follow ***\n\n").encode())
        self.fh.write(bytes(self.tail))
        self.tail.clear()
        self.fh.flush()
