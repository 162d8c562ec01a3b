"""Project names, versions in file names, and this interpreter's wheel tags.

Standard library only: the builder agent imports this module.
"""

from __future__ import annotations

import re
import sys
import sysconfig

_NORMALISE_RE = re.compile(r"[-_.]+")
# PEP 508 project names: ASCII letters and digits, with - _ . inside.
_VALID_NAME_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
SDIST_SUFFIXES = (".tar.gz", ".zip")


def target(abi: str, platform: str) -> str:
    """A build target's name: an ABI on a platform, e.g. ``cp311-linux_armv7l``.

    Jobs are queued per target, so builders of one ABI on different platforms
    (an x86-64 and an armhf bookworm builder are both cp311) each get their own.
    """
    return f"{abi}-{platform}"


def normalise(name: str) -> str:
    """The PEP 503 normalised form of a project name."""
    return _NORMALISE_RE.sub("-", name).lower()


def is_valid_name(name: str) -> bool:
    """True when ``name`` is a valid project name (PEP 508), at most 200 characters."""
    return len(name) <= 200 and bool(_VALID_NAME_RE.match(name))


def sdist_version(filename: str, project: str) -> str | None:
    """The version in an sdist's file name, or None if it is not an sdist of ``project``.

    Handles both PEP 625 names (``foo_bar-1.0.tar.gz``) and legacy ones
    (``Foo-Bar-1.0.tar.gz``): the name part is compared normalised.
    """
    for suffix in SDIST_SUFFIXES:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            break
    else:
        return None
    wanted = normalise(project)
    # The version never contains '-' in a valid sdist name, so try each split.
    parts = stem.split("-")
    for i in range(1, len(parts)):
        name, version = "-".join(parts[:i]), "-".join(parts[i:])
        if normalise(name) == wanted and version and "-" not in version:
            return version
    return None


def abi_tag(implementation: str, major: int, minor: int) -> str:
    """The ABI tag builds get from an interpreter, e.g. ``cp311``."""
    impl = {"cpython": "cp", "pypy": "pp"}.get(implementation, implementation)
    return f"{impl}{major}{minor}"


def platform_tag(sysconfig_platform: str, maxsize: int = sys.maxsize) -> str:
    """The platform tag pip gives a wheel built by an interpreter, e.g. ``linux_armv7l``."""
    plat = sysconfig_platform
    if plat == "linux-x86_64" and maxsize <= 2**32:
        plat = "linux-i686"  # a 32-bit userland on a 64-bit kernel
    return re.sub(r"[^a-z0-9_]", "_", plat.lower())


def interpreter_abi() -> str:
    """The ABI tag of this interpreter."""
    return abi_tag(sys.implementation.name, sys.version_info[0], sys.version_info[1])


def interpreter_platform() -> str:
    """The platform tag of this interpreter."""
    return platform_tag(sysconfig.get_platform())


def os_release(path: str = "/etc/os-release") -> str:
    """``ID VERSION_CODENAME`` from os-release (e.g. ``debian bookworm``), or ``unknown``."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.strip().partition("=")
                if sep:
                    fields[key] = value.strip().strip('"')
    except OSError:
        return "unknown"
    return " ".join(v for v in (fields.get("ID"), fields.get("VERSION_CODENAME")) if v) or "unknown"
