"""The apt lines of project pages: per target, from its newest version, base packages left out."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from harness.index_checks import parse_html
from pinwheel import project_page
from pinwheel.aptdeps import Library
from pinwheel.index_db import FileLibraries, ProjectData, PublishedFile
from pinwheel.simple_index import IndexFile, ProjectStatus

WHEN = datetime(2026, 1, 1, tzinfo=timezone.utc)
LIBC = Library("libc.so.6", "debian", "libc6", True)
FFI = Library("libffi.so.8", "debian", "libffi8")
SSL = Library("libssl.so.3", "debian", "libssl3")


def wheel(version: str, platform: str) -> PublishedFile:
    name = f"demo-{version}-cp311-cp311-{platform}.whl"
    return PublishedFile(IndexFile(name, "a" * 64, version, size=10, upload_time=WHEN),
                         "cp311", "cp311", platform, 1)


def project(files: list[tuple[PublishedFile, FileLibraries | None]]) -> ProjectData:
    data = ProjectData("demo", "Demo", ProjectStatus(), None)
    data.files = [f for f, _ in files]
    data.libraries = {f.file.filename: libs for f, libs in files if libs is not None}
    return data


def apt_lines(html: str) -> list[tuple[str, str]]:
    """(the "For ..." label, the apt line or the text shown instead), in page order."""
    tree = parse_html(html, "project page")
    section = next(s for s in tree.iter("section") if s.get("class") == "apt")
    out: list[tuple[str, str]] = []
    for el in section:
        text = "".join(el.itertext())
        if el.get("class") == "apt-for":
            out.append((text, ""))
        elif el.tag == "pre" or (el.tag == "p" and el.get("class") is None and out):
            out[-1] = (out[-1][0], text)
    return out


def test_targets_needing_the_same_share_a_line_and_others_get_their_own():
    data = project([
        (wheel("1.0", "linux_armv7l"), FileLibraries(True, None, (LIBC, SSL))),  # older
        (wheel("2.0", "linux_armv7l"), FileLibraries(True, None, (LIBC, FFI))),
        (wheel("2.0", "linux_aarch64"), FileLibraries(True, None, (FFI, LIBC))),
        (wheel("2.0", "linux_x86_64"), FileLibraries(True, None, (LIBC,))),
    ])
    html = project_page.render_html(data, None)
    assert apt_lines(html) == [
        ("For cp311-linux_aarch64 (2.0), cp311-linux_armv7l (2.0):", "sudo apt install libffi8"),
        ("For cp311-linux_x86_64 (2.0):",
         "No Debian package to install beyond a base system."),
    ]
    doc = json.loads(project_page.render_json(data, None))
    assert [(g["targets"], g["install"]) for g in doc["apt"]] == [
        (["cp311-linux_aarch64", "cp311-linux_armv7l"], "sudo apt install libffi8"),
        (["cp311-linux_x86_64"], None)]
    assert doc["apt"][0]["base_packages"] == ["libc6"]
    older = next(f for f in doc["files"] if f["filename"].startswith("demo-1.0"))
    assert older["apt_dependencies"]["install"] == "sudo apt install libssl3"


def test_libraries_outside_debian_are_named_and_refusals_shown():
    odd = FileLibraries(True, None, (Library("libfoo.so.1", "unpackaged"),
                                     Library("libgone.so.2", "missing"),
                                     Library("libbar-1a2b.so", "bundled"), FFI))
    refused = FileLibraries(False, "refused the builder's list of shared libraries: "
                                   "invalid Debian package name '<b>'", ())
    data = project([(wheel("2.0", "linux_armv7l"), odd),
                    (wheel("2.0", "linux_x86_64"), refused)])
    html = project_page.render_html(data, None)
    tree = parse_html(html, "project page")
    notes = ["".join(p.itertext()) for p in tree.iter("p") if p.get("class") == "note"]
    assert notes == ["Not from a Debian package: libfoo.so.1.",
                     "Not found on the builder: libgone.so.2."]
    cells = ["".join(td.itertext()) for td in tree.iter("td") if td.get("class") == "apt"]
    assert "refused the builder's list of shared libraries: invalid Debian package name " \
           "'<b>'" in cells  # escaped in the HTML, text again once parsed
    assert "<b>" not in html
    doc = json.loads(project_page.render_json(data, None))
    assert [g["targets"] for g in doc["apt"]] == [["cp311-linux_armv7l"]]
    assert doc["apt"][0]["not_from_debian"] == ["libfoo.so.1"]
    assert doc["apt"][0]["not_found"] == ["libgone.so.2"]


def test_no_apt_section_without_compiled_code_or_without_checked_files():
    pure = project([(wheel("1.0", "linux_x86_64"), FileLibraries(True, None, ()))])
    old = project([(wheel("1.0", "linux_x86_64"), None)])
    for data in (pure, old):
        tree = parse_html(project_page.render_html(data, None), "project page")
        assert not [s for s in tree.iter("section") if s.get("class") == "apt"]
        assert json.loads(project_page.render_json(data, None))["apt"] == []
    assert json.loads(project_page.render_json(old, None))["files"][0]["apt_dependencies"] \
        is None
