"""Follow a log file that logrotate renames and nginx reopens, from a saved position.

A :class:`Position` names a file by device, inode and a fingerprint of its first line (an
inode number is reused once a file is deleted; the first line, which starts with a time in
milliseconds, is not) and the byte offset after the last line handed out. :class:`Follower`
reads whole lines only (a line still being written waits) and:

* at the first start (no saved position), reads the rotated file if there is one, then the
  log;
* at start, finds the saved file again under the log's name or its rotated name
  (``access.json.1``: logrotate's ``delaycompress`` keeps it uncompressed for a cycle) and
  goes on from the saved offset; when the file is nowhere, it starts the current file from
  its start (and says so: lines may have been lost while the importer was stopped);
* after a rotation (the name now points to another file), finishes the old file first: it
  keeps reading it until it has been quiet for ``grace`` seconds (nginx's workers write to it
  until they have reopened their logs), then moves to the new file at offset 0;
* on truncation (``copytruncate``: the same inode, now shorter than the offset, or its first
  line changed) starts the file again from 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)
FINGERPRINT_BYTES = 4096     # at most this much of the first line is hashed
READ_BYTES = 4 << 20


@dataclass(frozen=True)
class Position:
    device: int
    inode: int
    offset: int
    fingerprint: str   # sha256 hex of the first line; "" while the file has none


@dataclass
class Batch:
    lines: list[bytes]         # whole lines, without their newline
    offsets: list[int]         # where each line starts in its file
    position: Position         # after the last line (the position to commit with them)
    files_done: int = 0        # files finished (rotated away) in this batch
    truncations: int = 0       # truncations met in this batch


def fingerprint_of(fh: BinaryIO) -> str:
    """The fingerprint of an open file: sha256 of its first whole line ("" if none yet)."""
    head = os.pread(fh.fileno(), FINGERPRINT_BYTES, 0)
    end = head.find(b"\n")
    if end < 0:
        if len(head) < FINGERPRINT_BYTES:
            return ""
        end = len(head)
    return hashlib.sha256(head[:end]).hexdigest()


class Follower:
    """Reads ``path`` line by line across rotations and truncations (see the module)."""

    def __init__(self, path: Path, saved: Position | None, rotated_suffixes: tuple[str, ...]
                 = (".1",), grace: float = 2.0) -> None:
        self.path = path
        self.rotated = tuple(Path(f"{path}{suffix}") for suffix in rotated_suffixes)
        self.grace = grace
        self._fh: BinaryIO | None = None
        self._pos: Position | None = None
        self._quiet_since: float | None = None   # the old file's first quiet read after rotation
        self.notes: list[str] = []                # what happened at start, for the log
        self._open_saved(saved)

    # ------------------------------------------------------------------ opening

    def _open_saved(self, saved: Position | None) -> None:
        if saved is None:
            for rotated in self.rotated[:1]:  # a file rotated before the first start
                try:
                    fh = open(rotated, "rb")  # noqa: SIM115 (kept open while followed)
                except OSError:
                    continue
                st = os.fstat(fh.fileno())
                self._fh, self._pos = fh, Position(st.st_dev, st.st_ino, 0, "")
                self.notes.append(f"no saved position: reading {rotated}, then {self.path}, "
                                  "from their start")
                return
            self.notes.append(f"no saved position: reading {self.path} from its start")
            self._open_current()
            return
        for candidate in (self.path, *self.rotated):
            try:
                fh = open(candidate, "rb")  # noqa: SIM115 (kept open while followed)
            except OSError:
                continue
            st = os.fstat(fh.fileno())
            same_file = (st.st_dev, st.st_ino) == (saved.device, saved.inode)
            if same_file and (fingerprint_of(fh) == saved.fingerprint or
                              (saved.fingerprint == "" and saved.offset == 0)):
                self._fh, self._pos = fh, saved
                if candidate != self.path:
                    self.notes.append(f"finishing the rotated {candidate} from byte "
                                      f"{saved.offset}, then {self.path}")
                return
            fh.close()
        self.notes.append(f"the file of the saved position (inode {saved.inode}, byte "
                          f"{saved.offset}) is gone: reading {self.path} from its start "
                          "(lines written meanwhile to rotated files are not imported)")
        self._open_current()

    def _open_current(self) -> bool:
        """Open the log's current file at offset 0 (False while it does not exist)."""
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (kept open while followed)
        except FileNotFoundError:
            self._fh, self._pos = None, None
            return False
        st = os.fstat(fh.fileno())
        self._fh = fh
        self._pos = Position(st.st_dev, st.st_ino, 0, "")
        self._quiet_since = None
        return True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def position(self) -> Position | None:
        return self._pos

    # ------------------------------------------------------------------ reading

    def _open_file(self) -> tuple[BinaryIO, Position]:
        if self._fh is None or self._pos is None:
            raise RuntimeError("no file is open")
        return self._fh, self._pos

    def _read_lines(self, max_lines: int, max_bytes: int) -> tuple[list[bytes], list[int]]:
        fh, pos = self._open_file()
        start = pos.offset
        data = os.pread(fh.fileno(), max_bytes, start)
        end = data.rfind(b"\n")
        if end < 0:
            return [], []
        lines = data[:end].split(b"\n")[:max_lines]
        offsets = []
        at = start
        for line in lines:
            offsets.append(at)
            at += len(line) + 1
        fingerprint = pos.fingerprint
        if start == 0 and not fingerprint:
            fingerprint = hashlib.sha256(lines[0][:FINGERPRINT_BYTES]).hexdigest()
        self._pos = replace(pos, offset=at, fingerprint=fingerprint)
        return lines, offsets

    def _path_file(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def read(self, max_lines: int = 10000, max_bytes: int = READ_BYTES,
             final: bool = False) -> Batch:
        """Up to ``max_lines`` whole lines, possibly none. ``final``: do not wait for
        nginx's workers after a rotation (the caller reads what is there, then exits)."""
        batch = Batch([], [], self._pos or Position(0, 0, 0, ""))
        while len(batch.lines) < max_lines:
            if self._fh is None and not self._open_current():
                break
            lines, offsets = self._read_lines(max_lines - len(batch.lines), max_bytes)
            if lines:
                batch.position = self._pos
                batch.lines += lines
                batch.offsets += offsets
                self._quiet_since = None
                continue
            # At the end of the file: rotated, truncated, or nothing new yet?
            current = self._path_file()
            old_fh, old_pos = self._open_file()
            if current is not None and current != (old_pos.device, old_pos.inode):
                now = time.monotonic()
                if self._quiet_since is None:
                    self._quiet_since = now
                if final or now - self._quiet_since >= self.grace:
                    if not self._open_current():  # renamed again meanwhile: look again later
                        self._fh, self._pos = old_fh, old_pos
                        break
                    old_fh.close()
                    log.info("finished %s (inode %d) at byte %d; now following the new file",
                             self.path, old_pos.inode, old_pos.offset)
                    batch.files_done += 1
                    continue
                break
            if self._truncated():
                log.warning("%s was truncated (byte %d was read): reading it again from its "
                            "start", self.path, old_pos.offset)
                self._pos = replace(old_pos, offset=0, fingerprint="")
                batch.truncations += 1
                continue
            break
        if self._pos is not None:
            batch.position = self._pos
        return batch

    def _truncated(self) -> bool:
        fh, pos = self._open_file()
        if pos.offset == 0:
            return False
        size = os.fstat(fh.fileno()).st_size
        return size < pos.offset or fingerprint_of(fh) != pos.fingerprint
