"""Session fixtures for nginx, sshd + rrsync and the local upstream index.

* ``nginx_master`` -> :class:`harness.nginx.NginxServer`: ``.port``, ``.url``
  (``http://127.0.0.1:PORT``), ``.www_root`` (with ``simple/``, ``packages/``,
  ``logs/``; what tests publish there must be world-readable).
* ``sshd_master`` -> :class:`harness.sshd.SshdMaster`: ``.port``,
  ``.upload_user``, ``.incoming_root``, ``.known_hosts``,
  ``.add_builder(name, owner=None) -> BuilderKey`` and ``.rsync_command(key)``.
* ``upstream`` -> :class:`harness.upstream.UpstreamIndex`: ``.url``
  (``http://127.0.0.1:PORT/simple/``), ``.root``, ``.projects``.

Each service starts once per session, on first use, and stops at its end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .nginx import NginxServer
from .sshd import SshdMaster
from .upstream import UpstreamIndex


@pytest.fixture(scope="session")
def nginx_master() -> Iterator[NginxServer]:
    server = NginxServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def sshd_master() -> Iterator[SshdMaster]:
    sshd = SshdMaster()
    try:
        sshd.start()
        yield sshd
    finally:
        sshd.destroy()


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamIndex]:
    index = UpstreamIndex()
    try:
        index.start()
        yield index
    finally:
        index.destroy()
