#!/usr/bin/env python3
"""Write the tests' local upstream index as static files, for the fleet tests.

    .venv/bin/python scripts/test-upstream.py OUTDIR [--extra SRC_DIR=VERSION ...]

The integration tests serve their upstream index from a thread of the test
process (``tests/harness/upstream.py``). The molecule fleet needs the same
index inside the podman network, so this writes it out as a static PEP 503
tree that any web server can serve (the scenario serves it from the master
container with ``python3 -m http.server``):

    OUTDIR/simple/index.html              every project
    OUTDIR/simple/<project>/index.html    its files: #sha256=, data-requires-python
    OUTDIR/files/<file>                   the sdists and the setuptools/wheel seed wheels

The files are the harness's own (``build_files``: the sdists of
``tests/upstream/*`` and the seed wheels from ``$PINWHEEL_SEED_DIR`` or
``.cache/upstream-seed``), so the fleet builds exactly what the tests build.
``--extra`` adds the sdist of another source tree laid out like
``tests/upstream/*`` (the fleet scenario adds a slow-building project).
Links are host-relative (``/files/...``), so the tree works under any host name.
"""

from __future__ import annotations

import argparse
import html
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # as pytest.ini's pythonpath

try:
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    from harness import upstream
except ImportError as exc:  # pragma: no cover - depends on the interpreter
    sys.exit(f"test-upstream: {exc}: run this with the project's venv (.venv/bin/python; "
             "`make test-deps` creates it)")


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html>\n<head>\n"
            '<meta name="pypi:repository-version" content="1.0">\n'
            f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}</body>\n</html>\n")


def link(f: upstream.IndexFile) -> str:
    attrs = f'href="/files/{html.escape(f.filename)}#sha256={f.sha256}"'
    if f.requires_python:
        attrs += f' data-requires-python="{html.escape(f.requires_python)}"'
    return f"<a {attrs}>{html.escape(f.filename)}</a><br/>\n"


def extra_sdist(spec: str, files_dir: Path) -> upstream.IndexFile:
    src_text, sep, version = spec.partition("=")
    src = Path(src_text)
    if not sep or not version or not (src / "pyproject.toml").is_file():
        raise SystemExit(f"test-upstream: --extra {spec!r}: expected SRC_DIR=VERSION where "
                         "SRC_DIR has a pyproject.toml like tests/upstream/*")
    meta = upstream.project_metadata((src / "pyproject.toml").read_text())
    sdist = upstream.make_sdist(src, version, files_dir)
    return upstream.IndexFile(project=canonicalize_name(meta["name"]), version=version,
                              filename=sdist.name, sha256=upstream._sha256(sdist),
                              size=sdist.stat().st_size,
                              requires_python=meta.get("requires-python"))


def write_tree(outdir: Path, extras: list[str]) -> dict[str, list[str]]:
    if outdir.exists():
        shutil.rmtree(outdir)
    files_dir = outdir / "files"
    files_dir.mkdir(parents=True)
    try:
        files = upstream.build_files(files_dir)
    except RuntimeError as exc:  # no seed wheels
        raise SystemExit(f"test-upstream: {exc}") from None
    files += [extra_sdist(spec, files_dir) for spec in extras]
    by_project: dict[str, list[upstream.IndexFile]] = {}
    for f in files:
        by_project.setdefault(f.project, []).append(f)
    simple = outdir / "simple"
    for project, project_files in by_project.items():
        (simple / project).mkdir(parents=True)
        body = "".join(link(f) for f in project_files)
        (simple / project / "index.html").write_text(page(f"Links for {project}", body))
    root = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(by_project))
    (simple / "index.html").write_text(page("Simple index", root))
    return {p: sorted({f.version for f in fs}, key=Version)
            for p, fs in sorted(by_project.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="directory to (re)create")
    parser.add_argument("--extra", action="append", default=[], metavar="SRC_DIR=VERSION",
                        help="also publish the sdist of this source tree at this version")
    args = parser.parse_args(argv)
    projects = write_tree(args.outdir, args.extra)
    for project, versions in projects.items():
        print(f"{project}: {', '.join(versions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
