"""Runtime dependencies of an upstream release, for the watcher's allowlist mode.

A listed project's newest release is read from its core metadata (PEP 658:
the upstream serves ``<file URL>.metadata`` and says so on the project page,
``core-metadata`` in PEP 691 JSON). Each ``Requires-Dist`` whose environment
marker holds on at least one of the farm's active targets (an ABI such as
``cp311`` on a platform such as ``linux_armv7l``), without extras, is a
dependency the farm needs wheels of too. An upstream or a release without
core metadata gives no dependencies (the watcher logs it); sdists are not
downloaded and unpacked for this.
"""

from __future__ import annotations

import logging
import re
import ssl
import urllib.error
import urllib.request
from email.parser import HeaderParser
from typing import Any

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement

from . import names, upstream

log = logging.getLogger("pinwheel.dependencies")

MAX_METADATA = 4 << 20
_ABI_RE = re.compile(r"^cp(\d)(\d+)")


def environments(targets: list[tuple[str, str]]) -> list[dict[str, str]]:
    """PEP 508 marker environments of the farm's targets (``cp311``, ``linux_x86_64``)."""
    envs = []
    for abi, platform in targets:
        m = _ABI_RE.match(abi)
        if m is None:
            continue
        version = f"{m.group(1)}.{m.group(2)}"
        system, _, machine = platform.partition("_")
        envs.append({
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": f"{version}.0", "python_version": version,
            "python_full_version": f"{version}.0", "os_name": "posix",
            "sys_platform": system, "platform_system": system.capitalize(),
            "platform_machine": machine, "platform_release": "", "platform_version": "",
            "extra": ""})
    return envs


def runtime_dependencies(requires: list[str], envs: list[dict[str, str]]) -> set[str]:
    """Normalised names of the ``Requires-Dist`` entries needed on one of ``envs``."""
    found = set()
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            log.warning("ignoring a Requires-Dist the watcher cannot read: %r", line)
            continue
        if req.marker is not None:
            try:
                if not any(req.marker.evaluate(env) for env in envs):
                    continue
            except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
                continue
        if names.is_valid_name(req.name):
            found.add(names.normalise(req.name))
    return found


def metadata_file(files: list[upstream.UpstreamFile]) -> upstream.UpstreamFile | None:
    """The file of a release whose core metadata to read: a pure wheel, a wheel, an sdist."""
    offered = [f for f in files if f.core_metadata and not f.yanked]
    for wanted in (lambda f: f.filename.endswith("-none-any.whl"),
                   lambda f: f.filename.endswith(".whl"), lambda f: True):
        for f in offered:
            if wanted(f):
                return f
    return None


def read_requires(f: upstream.UpstreamFile, timeout: float, ca_bundle: str = "") -> list[str]:
    """The ``Requires-Dist`` lines of ``f``'s core metadata (PEP 658)."""
    url = f.url.split("#", 1)[0] + ".metadata"
    if not url.startswith(("http://", "https://")):
        raise upstream.UpstreamError(f"{url}: only http and https upstreams are supported")
    req = urllib.request.Request(url, headers={"User-Agent": upstream.USER_AGENT})  # noqa: S310 - http(s) only, checked above
    try:
        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310 - checked above
            body = resp.read(MAX_METADATA + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise upstream.UpstreamError(f"{url}: cannot read the core metadata "
                                     f"({getattr(exc, 'reason', exc)})") from exc
    if len(body) > MAX_METADATA:
        raise upstream.UpstreamError(f"{url}: core metadata larger than {MAX_METADATA} bytes")
    message: Any = HeaderParser().parsestr(body.decode("utf-8", "replace"))
    return [str(v) for v in (message.get_all("Requires-Dist") or [])]
