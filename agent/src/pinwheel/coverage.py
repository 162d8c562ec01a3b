"""Whether a verified wheel may serve other build targets than its builder's.

A pure wheel (``py3-none-any``) installs on every target, a stable-ABI wheel
(``cp36-abi3-linux_armv7l``) on every CPython at or above its floor on its
platform: such a release is built once (migration 8: ``wheel_covers`` decides
which targets a wheel's tags fit, ``cover_jobs`` cancels their queued jobs).

The tags are the builder's claim. Before a wheel is allowed to stand in for
other targets' builds, the master looks inside it: a wheel tagged for any
platform must hold no compiled code, and no covering wheel may hold an
extension module built for one Python version (``*.cpython-311-*.so``). Only
the ingest calls this, after ``verify_wheel`` passed, so nothing a builder
reports cancels another target's build by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .verify import VerifiedWheel

# An extension module tied to one interpreter version (PEP 3149 / importlib suffixes).
_VERSIONED_EXTENSION_RE = re.compile(r"\.(cpython-\d+|cp3\d+|pypy\d+)[^/]*\.(so|pyd)$")


@dataclass(frozen=True)
class Coverage:
    covers: bool            # the wheel may stand in for other targets' builds
    refused: str | None     # why a wheel tagged for several targets may not


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(n[:200] for n in names[:3]) + more


def assess(wheel: VerifiedWheel) -> Coverage:
    """Whether ``wheel`` (verified, tags fitting its builder) may cover other targets."""
    abis = set(wheel.abi_tag.split("."))
    platforms = set(wheel.platform_tag.split("."))
    tag = f"{wheel.python_tag}-{wheel.abi_tag}-{wheel.platform_tag}"
    if not abis & {"none", "abi3"}:
        return Coverage(False, None)  # one interpreter's wheel: its own target only
    if "any" in platforms and wheel.native:
        return Coverage(False, f"tagged {tag} (any platform) but holds compiled code: "
                               f"{_shown(list(wheel.native))}; each target builds its own")
    versioned = [n for n in wheel.native if _VERSIONED_EXTENSION_RE.search(n)]
    if versioned:
        return Coverage(False, f"tagged {tag} but holds extension modules for one Python "
                               f"version: {_shown(versioned)}; each target builds its own")
    return Coverage(True, None)
