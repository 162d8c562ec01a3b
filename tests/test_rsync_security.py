"""What a builder's key can do on the master: write into its own incoming dir, nothing else.

Real sshd, real rsync and rrsync, with the authorized_keys rendered from the
master role's template (see harness/sshd.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.ports import free_port
from harness.sshd import BuilderKey, SshdMaster, rsync_command, ssh_command

TIMEOUT = 60  # a guard against a hung client, not a timing assertion


@pytest.fixture(scope="module")
def builder_a(sshd_master: SshdMaster) -> BuilderKey:
    return sshd_master.add_builder("rsyncsec-a")


@pytest.fixture(scope="module")
def builder_b(sshd_master: SshdMaster) -> BuilderKey:
    return sshd_master.add_builder("rsyncsec-b")


@pytest.fixture
def own_dir(sshd_master: SshdMaster, builder_a: BuilderKey) -> Iterator[Path]:
    """Builder A's incoming directory, emptied after each test."""
    path = sshd_master.incoming_root / builder_a.name
    yield path
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@pytest.fixture
def other_dir(sshd_master: SshdMaster, builder_b: BuilderKey) -> Path:
    return sshd_master.incoming_root / builder_b.name


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "payload.whl"
    path.write_bytes(b"not really a wheel\n")
    return path


def push(key: BuilderKey, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*rsync_command(key), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT)


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("spelling", ["", ".", "/", "./"])
def test_push_lands_in_own_incoming_dir(builder_a: BuilderKey, own_dir: Path,
                                        payload: Path, spelling: str) -> None:
    result = push(builder_a, str(payload), builder_a.destination + spelling)

    assert result.returncode == 0, result.stderr
    assert (own_dir / payload.name).read_bytes() == payload.read_bytes()
    assert (own_dir / payload.name).stat().st_uid == pwd.getpwnam(
        builder_a.upload_user).pw_uid


def test_push_into_a_subdirectory(builder_a: BuilderKey, own_dir: Path,
                                  payload: Path) -> None:
    result = push(builder_a, str(payload), builder_a.destination + "job-1/")

    assert result.returncode == 0, result.stderr
    assert tree(own_dir) == ["job-1", f"job-1/{payload.name}"]


@pytest.mark.parametrize("dest", ["../rsyncsec-b/", "..", "sub/../../rsyncsec-b/", "../../"])
def test_dotdot_is_refused(sshd_master: SshdMaster, builder_a: BuilderKey, own_dir: Path,
                           other_dir: Path, payload: Path, dest: str) -> None:
    before = tree(sshd_master.incoming_root)

    result = push(builder_a, str(payload), builder_a.destination + dest)

    assert result.returncode != 0
    assert "do not use .." in result.stderr
    assert tree(sshd_master.incoming_root) == before
    assert tree(other_dir) == []


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pinwheel-outside-"))
    os.chmod(path, 0o777)  # writable by the upload user, were it ever to get there
    yield path
    shutil.rmtree(path)


def test_absolute_path_does_not_leave_own_dir(builder_a: BuilderKey, own_dir: Path,
                                              outside_dir: Path, payload: Path) -> None:
    result = push(builder_a, str(payload), f"{builder_a.destination}{outside_dir}/")

    assert result.returncode != 0
    assert tree(outside_dir) == []
    assert tree(own_dir) == []


def test_absolute_path_is_reanchored_in_own_dir(builder_a: BuilderKey, own_dir: Path,
                                                outside_dir: Path, payload: Path) -> None:
    # With --mkpath the push "succeeds", but below the builder's own directory.
    result = push(builder_a, "--mkpath", str(payload), f"{builder_a.destination}{outside_dir}/")

    assert result.returncode == 0, result.stderr
    assert tree(outside_dir) == []
    relocated = own_dir / str(outside_dir).lstrip("/") / payload.name
    assert relocated.read_bytes() == payload.read_bytes()


def test_cannot_write_into_another_builders_dir(sshd_master: SshdMaster,
                                                builder_a: BuilderKey, own_dir: Path,
                                                other_dir: Path, payload: Path) -> None:
    results = [push(builder_a, str(payload), f"{builder_a.destination}{other_dir}/"),
               push(builder_a, str(payload), f"{builder_a.destination}../{other_dir.name}/")]

    assert all(r.returncode != 0 for r in results)
    assert tree(other_dir) == []
    assert tree(own_dir) == []


def test_symlink_cannot_lead_into_another_dir(builder_a: BuilderKey, own_dir: Path,
                                              other_dir: Path, payload: Path,
                                              tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    (links / "escape").symlink_to(other_dir)
    assert push(builder_a, "-a", f"{links}/", builder_a.destination).returncode == 0
    assert (own_dir / "escape").is_symlink()

    # Naming the link as the destination is refused ...
    through_link = push(builder_a, str(payload), builder_a.destination + "escape/")
    # ... and a tree with a real directory of that name replaces the link.
    tree_src = tmp_path / "tree"
    (tree_src / "escape").mkdir(parents=True)
    shutil.copy(payload, tree_src / "escape" / payload.name)
    over_link = push(builder_a, "-a", f"{tree_src}/", builder_a.destination)

    assert through_link.returncode != 0
    assert "unsafe arg" in through_link.stderr
    assert over_link.returncode == 0, over_link.stderr
    assert not (own_dir / "escape").is_symlink()
    assert tree(other_dir) == []


def test_cannot_read(builder_a: BuilderKey, own_dir: Path, payload: Path,
                     tmp_path: Path) -> None:
    assert push(builder_a, str(payload), builder_a.destination).returncode == 0
    target = tmp_path / "pulled"

    result = push(builder_a, builder_a.destination + payload.name, str(target))

    assert result.returncode != 0
    assert "reading from write-only server is not allowed" in result.stderr
    assert not target.exists()


@pytest.mark.parametrize("command", [
    ["id"],
    ["sh", "-c", "id"],
    ["rsync --server -vlogDtpre.iLsfxCIvu . x; id"],
    [],  # an interactive login
])
def test_cannot_run_commands(builder_a: BuilderKey, command: list[str]) -> None:
    result = subprocess.run([*ssh_command(builder_a), *command], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT)

    assert "uid=" not in result.stdout + result.stderr
    assert result.returncode != 0


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local TCP service that a forward would reach; it must see no connection."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def assert_no_connection(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.accept()


def _ssh_with(key: BuilderKey, *options: str) -> subprocess.CompletedProcess[str]:
    ssh, *rest = ssh_command(key)
    return subprocess.run([ssh, *options, *rest], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT)


def test_cannot_forward_to_a_local_port(builder_a: BuilderKey,
                                        listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    result = _ssh_with(builder_a, "-W", f"127.0.0.1:{port}")

    assert result.returncode != 0
    assert "administratively prohibited" in result.stderr
    assert_no_connection(listener)


def test_cannot_open_a_remote_forward(builder_a: BuilderKey,
                                      listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    result = _ssh_with(builder_a, "-N", "-o", "ExitOnForwardFailure=yes",
                       "-R", f"{free_port()}:127.0.0.1:{port}")

    assert result.returncode != 0
    assert "remote port forwarding failed" in result.stderr
    assert_no_connection(listener)


def test_unprivileged_owner_can_push(sshd_master: SshdMaster, payload: Path) -> None:
    key = sshd_master.add_builder("rsyncsec-owned", owner="nobody")
    src = Path(tempfile.mkdtemp(prefix="pinwheel-src-"))
    try:
        src.chmod(0o755)
        shutil.copy(payload, src / payload.name)
        (src / payload.name).chmod(0o644)

        result = subprocess.run(["runuser", "-u", "nobody", "--", *rsync_command(key),
                                 str(src / payload.name), key.destination],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=TIMEOUT)
    finally:
        shutil.rmtree(src)

    assert key.private_key.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert key.private_key.stat().st_mode & 0o777 == 0o600
    assert result.returncode == 0, result.stderr
    assert (sshd_master.incoming_root / key.name / payload.name).exists()
