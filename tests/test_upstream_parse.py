"""Unit tests: reading PEP 691 JSON and PEP 503 HTML project pages, grouping releases."""

from __future__ import annotations

import json

import pytest

from pinwheel import planner, upstream


def test_parse_json_resolves_urls_and_keeps_yank_reasons():
    body = json.dumps({
        "meta": {"api-version": "1.1"}, "name": "Foo.Bar",
        "files": [
            {"filename": "foo_bar-1.0.tar.gz", "url": "../../files/foo_bar-1.0.tar.gz",
             "hashes": {"sha256": "AB" * 32}, "requires-python": ">=3.8"},
            {"filename": "foo_bar-0.9.tar.gz", "url": "https://x/foo_bar-0.9.tar.gz",
             "hashes": {}, "yanked": "broken"},
        ]}).encode()
    proj = upstream.parse_json(body, "https://up.example/simple/foo-bar/", "foo-bar")
    assert proj.name == "Foo.Bar"
    first, second = proj.files
    assert first.url == "https://up.example/files/foo_bar-1.0.tar.gz"
    assert first.sha256 == "ab" * 32 and first.requires_python == ">=3.8"
    assert first.yanked is False and second.yanked == "broken"


def test_parse_html_reads_hashes_requires_python_and_yanked():
    body = (b'<!DOCTYPE html><html><body>'
            b'<a href="/f/foo-1.0.tar.gz#sha256=' + b"c" * 64 + b'" '
            b'data-requires-python="&gt;=3.9">foo-1.0.tar.gz</a>'
            b'<a href="/f/foo-0.1.tar.gz" data-yanked="">foo-0.1.tar.gz</a>'
            b'</body></html>')
    proj = upstream.parse_html(body, "http://up/simple/foo/", "foo")
    a, b = proj.files
    assert a.url == "http://up/f/foo-1.0.tar.gz" and a.sha256 == "c" * 64
    assert a.requires_python == ">=3.9"
    assert b.yanked is True and b.sha256 is None


def test_malformed_json_is_a_clear_error():
    with pytest.raises(upstream.UpstreamError, match="malformed PEP 691 JSON"):
        upstream.parse_json(b'{"files": [{"url": "x"}]}', "http://up/simple/foo/", "foo")


def test_releases_group_sdists_and_wheels_by_version():
    files = [upstream.UpstreamFile(n, "u", None, None, False) for n in (
        "foo-1.0.tar.gz", "foo-1.0-py3-none-any.whl", "foo-2.0-cp311-cp311-linux_x86_64.whl",
        "other-1.0.tar.gz")]
    releases = planner.releases_of(upstream.UpstreamProject("foo", files))
    assert sorted(releases) == ["1.0", "2.0"]
    assert [f.is_sdist for f in releases["2.0"]] == [False]


def test_invalid_project_name_is_refused_before_any_request():
    with pytest.raises(upstream.UpstreamError, match="not a valid project name"):
        upstream.project("http://127.0.0.1:9/simple/", "../../etc/passwd")
