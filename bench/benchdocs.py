"""Writing one benchmark's section of docs/benchmarks.md.

Each benchmark owns the text between its ``<!-- bench:NAME:start -->`` and
``<!-- bench:NAME:end -->`` markers; a run replaces that text and leaves the rest
of the file alone, or appends the section when the markers are not there yet.
"""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, start: str, end: str, section: str, header: str = "") -> None:
    """Put ``section`` (which begins with ``start`` and ends with ``end``) in ``path``;
    a missing file starts as ``header``."""
    text = path.read_text(encoding="utf-8") if path.exists() else header
    begin, finish = text.find(start), text.find(end)
    if begin != -1 and finish > begin:
        text = text[:begin] + section.rstrip("\n") + text[finish + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    if not text.endswith("\n"):
        text += "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
