"""The master's upload door: an sshd of the harness's own, with keys forced to rrsync.

Each builder's key appears in an authorized_keys file rendered from the role's
template ``roles/master/templates/authorized_keys.j2``::

    # builder <name>
    restrict,from="127.0.0.1",command="/usr/bin/rrsync -wo <incoming_root>/<name>" \\
        ssh-ed25519 AAAA... pinwheel-builder:<name>      (one line)

so the key can only *write* (``-wo``) below its own ``incoming/<name>/``: no
shell, no reading back, no forwarding, no other directory, and only from the
builder's address (here loopback; the role binds each key to its builder's).

How a builder pushes (see :meth:`SshdMaster.rsync_command`)::

    rsync -e "ssh -i KEY -p PORT -o BatchMode=yes -o StrictHostKeyChecking=yes \\
              -o UserKnownHostsFile=KNOWN_HOSTS -o IdentitiesOnly=yes" \\
          FILE... pwtest-upload@127.0.0.1:

The destination is spelled relative to the builder's own incoming directory,
which rrsync makes the root:

* ``user@host:`` (empty path, also ``user@host:.`` or ``user@host:/``) is
  ``incoming/<name>/`` itself;
* ``user@host:sub/`` is ``incoming/<name>/sub/`` (rsync creates ``sub`` itself;
  missing parents, as in ``a/b/``, need ``--mkpath``);
* a leading ``/`` is *not* the master's root: rrsync re-anchors it in the
  restricted directory (``user@host:/x/`` is ``incoming/<name>/x/``);
* ``~`` means nothing special (``user@host:~/`` makes a directory named ``~``);
* any ``..`` component is refused, and so is a path whose real path leaves the
  directory through a symlink; reads (``user@host:file``) are refused.

The forced command ignores what the client asked to run, so anything but
``rsync --server`` (``ssh ... id``, an interactive shell) is refused.

sshd runs as root (it must, to switch to the upload user) with its own host key,
config and authorized_keys file in a temp dir. ``StrictModes no`` because those
live under the world-writable ``/tmp``; ``UsePAM no``, so the upload account's
password field is set to ``*`` (not locked; "!" would make sshd refuse it).
Forwarding is left at sshd's defaults on purpose: the ``restrict`` option of
each key is what forbids it, and the tests check that.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port, wait_listening
from .templates import render_role_template

SSHD = "/usr/sbin/sshd"
UPLOAD_USER = "pwtest-upload"
UPLOAD_HOME = Path("/var/lib/pwtest-upload")
BUILDER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class BuilderKey:
    """One builder's SSH identity for pushing to the harness's master."""

    name: str
    private_key: Path
    public_key: str
    known_hosts: Path
    port: int
    upload_user: str

    @property
    def destination(self) -> str:
        """The rsync destination for the builder's own incoming directory."""
        return f"{self.upload_user}@{HOST}:"


def ssh_options(key: BuilderKey) -> list[str]:
    """Options for ``ssh`` to reach the master with ``key`` and nothing else."""
    return ["-i", str(key.private_key), "-p", str(key.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={key.known_hosts}", "-o", "IdentitiesOnly=yes"]


def rsync_command(key: BuilderKey) -> list[str]:
    """``rsync -e "ssh ..."``: append options, the files and ``key.destination``."""
    return ["rsync", "-e", shlex.join(["ssh", *ssh_options(key)])]


def ssh_command(key: BuilderKey) -> list[str]:
    """``ssh ... user@127.0.0.1``: append a remote command (which will be refused)."""
    return ["ssh", *ssh_options(key), f"{key.upload_user}@{HOST}"]


def _run(args: list[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def ensure_upload_user(name: str = UPLOAD_USER) -> pwd.struct_passwd:
    """The system account that builders' keys log in as (idempotent; needs root)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--system", "--user-group", "--shell", "/bin/sh",
              "--home-dir", str(UPLOAD_HOME), "--create-home", name])
    # useradd leaves the password "!" (locked); without PAM sshd refuses locked
    # accounts even for keys. "*" allows no password but is not "locked".
    _run(["usermod", "--password", "*", name])
    return pwd.getpwnam(name)


def _keygen(path: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


class SshdMaster:
    """sshd on ``127.0.0.1:port`` letting builders' keys rsync into ``incoming_root``."""

    def __init__(self, upload_user: str = UPLOAD_USER) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pinwheel-sshd-"))
        self.base.chmod(0o755)
        self.port = free_port()
        self.upload_user = upload_user
        self.incoming_root = self.base / "incoming"
        self.known_hosts = self.base / "known_hosts"
        self.authorized_keys = self.base / "authorized_keys"
        self.config = self.base / "sshd_config"
        self.log = self.base / "sshd.log"
        self.host_key = self.base / "ssh_host_ed25519_key"
        self.builders: dict[str, BuilderKey] = {}
        self._uid = self._gid = -1
        self._proc: subprocess.Popen[bytes] | None = None

    # -- setup ---------------------------------------------------------------

    def _write_config(self) -> None:
        self.config.write_text(
            f"ListenAddress {HOST}\n"
            f"Port {self.port}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.base / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            f"AllowUsers {self.upload_user}\n"
            "AuthenticationMethods publickey\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PrintMotd no\n"
            "LogLevel VERBOSE\n"
        )

    def _write_known_hosts(self) -> None:
        key_type, blob = Path(f"{self.host_key}.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[{HOST}]:{self.port} {key_type} {blob}\n")
        self.known_hosts.chmod(0o644)

    def _render_authorized_keys(self) -> None:
        text = render_role_template(
            "master", "authorized_keys.j2",
            master_incoming_root=str(self.incoming_root),
            master_builder_keys=[
                {"name": key.name, "public_key": key.public_key, "address": HOST}
                for key in self.builders.values()],
        )
        tmp = self.authorized_keys.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(self.authorized_keys)

    def _fail(self, what: str, output: str = "") -> RuntimeError:
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return RuntimeError(f"sshd {what} (config {self.config}):\n{output}\n"
                            f"--- {self.log} ---\n{log}")

    def start(self) -> None:
        user = ensure_upload_user(self.upload_user)
        self._uid, self._gid = user.pw_uid, user.pw_gid
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.incoming_root.mkdir(mode=0o755)
        _keygen(self.host_key, "pinwheel-test-master")
        self._write_known_hosts()
        self._render_authorized_keys()
        self._write_config()
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise self._fail("configuration test failed", check.stdout + check.stderr)
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                          stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(self._proc, self.port, "sshd")
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise self._fail(f"did not start: {exc}") from exc

    # -- builders ------------------------------------------------------------

    def add_builder(self, name: str, owner: str | None = None) -> BuilderKey:
        """A key pair for builder ``name``, allowed to push into ``incoming_root/name/``.

        With ``owner``, the key files are chowned to that user (mode 0600) so an
        unprivileged agent can use them.
        """
        if not BUILDER_NAME_RE.match(name):
            raise ValueError(f"bad builder name {name!r}: want {BUILDER_NAME_RE.pattern}")
        if name in self.builders:
            raise ValueError(f"builder {name!r} already added")
        keydir = self.base / "keys" / name
        keydir.mkdir(parents=True)
        private = keydir / "id_ed25519"
        _keygen(private, f"pinwheel-builder:{name}")
        known_hosts = keydir / "known_hosts"
        shutil.copyfile(self.known_hosts, known_hosts)
        if owner is not None:
            for path in (keydir, private, private.with_suffix(".pub"), known_hosts):
                shutil.chown(path, owner, pwd.getpwnam(owner).pw_gid)
            keydir.chmod(0o700)
            private.chmod(0o600)
        incoming = self.incoming_root / name
        incoming.mkdir(mode=0o755)
        os.chown(incoming, self._uid, self._gid)
        key = BuilderKey(name=name, private_key=private,
                         public_key=private.with_suffix(".pub").read_text().strip(),
                         known_hosts=known_hosts, port=self.port,
                         upload_user=self.upload_user)
        self.builders[name] = key
        self._render_authorized_keys()
        return key

    def rsync_command(self, key: BuilderKey) -> list[str]:
        """See :func:`rsync_command`."""
        return rsync_command(key)

    # -- teardown ------------------------------------------------------------

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
