"""What nginx serves from the index writer's files: negotiation, redirects, pages, schemas.

Raw HTTP (``harness.index_checks.fetch``, no redirect followed) against an nginx
rendered from the master role's template; every HTML page through a strict
HTML5 parser; every Simple API JSON document through a PEP 691/700/714/792
JSON Schema. The catalogue is index_catalogue.py's.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator

import psycopg2
import pytest
from index_catalogue import ARM, DEMO, DEMO_DISPLAY, YANK_REASON, Catalogue, served_catalogue

from harness.index_checks import (
    BROWSER_ACCEPT,
    PIP_ACCEPT,
    SIMPLE_PROJECT_SCHEMA,
    SIMPLE_ROOT_SCHEMA,
    UV_ACCEPT,
    fetch,
    parse_html,
    validate,
)
from harness.nginx import NginxServer
from harness.templates import write_role_template
from pinwheel import index, ingest, simple_index

JSON = "application/vnd.pypi.simple.v1+json"
V1HTML = "application/vnd.pypi.simple.v1+html"


@pytest.fixture(scope="module")
def served(pg, pg_template) -> Iterator[tuple[Catalogue, NginxServer]]:
    with served_catalogue(pg, pg_template, "pinwheel_index_pages") as both:
        yield both


def url(served, path: str) -> str:
    return f"{served[1].url}{path}"


# ------------------------------------------------------- content negotiation


@pytest.mark.parametrize(("accept", "content_type"), [
    (None, "text/html; charset=utf-8"),
    ("*/*", "text/html; charset=utf-8"),
    ("text/html", "text/html; charset=utf-8"),
    (BROWSER_ACCEPT, "text/html; charset=utf-8"),
    (V1HTML, f"{V1HTML}; charset=utf-8"),
    (JSON, JSON),
    (PIP_ACCEPT, JSON),
    (UV_ACCEPT, JSON),
    ("application/vnd.pypi.simple.latest+json", JSON),
    ("text/html, application/vnd.pypi.simple.v1+json;q=0.5", "text/html; charset=utf-8"),
    ("application/vnd.pypi.simple.v1+json;q=0, text/html", "text/html; charset=utf-8"),
    ("application/vnd.pypi.simple.v1+json;q=0.9, */*;q=0.1", JSON),
])
@pytest.mark.parametrize("path", ["/simple/", f"/simple/{DEMO}/"])
def test_accept_header_chooses_the_serialisation(served, path, accept, content_type):
    resp = fetch(url(served, path), accept)
    assert resp.status == 200
    assert resp.header("Content-Type") == content_type
    assert "accept" in resp.vary
    if content_type == JSON:
        doc = json.loads(resp.body)
        validate(doc, SIMPLE_ROOT_SCHEMA if path == "/simple/" else SIMPLE_PROJECT_SCHEMA)
    else:
        parse_html(resp.body, path)


@pytest.mark.parametrize("accept", ["application/json", "image/png",
                                    "application/vnd.pypi.simple.v1+json;q=0, text/html;q=0"])
@pytest.mark.parametrize("path", ["/simple/", f"/simple/{DEMO}/"])
def test_nothing_acceptable_is_406_with_vary(served, path, accept):
    resp = fetch(url(served, path), accept)
    assert resp.status == 406
    assert "accept" in resp.vary


def test_unknown_project_is_404_never_403(served):
    for accept in (None, PIP_ACCEPT):
        assert fetch(url(served, "/simple/no-such-project/"), accept).status == 404


@pytest.mark.parametrize(("path", "location"), [
    (f"/simple/{DEMO_DISPLAY}/", f"/simple/{DEMO}/"),
    ("/simple/PWIDX.demo", f"/simple/{DEMO}/"),
    ("/simple/pwidx__-.Demo/", f"/simple/{DEMO}/"),
    (f"/simple/{DEMO}", f"/simple/{DEMO}/"),
    ("/simple", "/simple/"),
    (f"/project/{DEMO_DISPLAY}/", f"/project/{DEMO}/"),
    (f"/project/{DEMO}", f"/project/{DEMO}/"),
    (f"/project/{DEMO_DISPLAY}/json", f"/project/{DEMO}/json/"),
])
def test_other_spellings_redirect_permanently_to_the_normalised_url(served, path, location):
    resp = fetch(url(served, path), PIP_ACCEPT)
    assert resp.status == 301
    assert resp.header("Location") == location
    assert fetch(url(served, location), PIP_ACCEPT).status == 200


def test_root_page_is_served_precompressed(served):
    _, server = served
    for accept, name in ((PIP_ACCEPT, "index.json"), ("text/html", "index.html")):
        resp = fetch(url(served, "/simple/"), accept, {"Accept-Encoding": "gzip"})
        assert resp.header("Content-Encoding") == "gzip"
        assert gzip.decompress(resp.body) == (server.www_root / "simple" / name).read_bytes()
        assert {"accept", "accept-encoding"} <= resp.vary


# ------------------------------------------------------------ the JSON pages


def test_project_json_has_pep_700_and_714_fields_from_the_database(served):
    cat, _ = served
    doc = json.loads(fetch(url(served, f"/simple/{DEMO}/"), JSON).body)
    validate(doc, SIMPLE_PROJECT_SCHEMA)
    assert doc["meta"] == {"api-version": "1.4"}
    assert doc["name"] == DEMO
    assert doc["project-status"] == {"status": "active"}
    assert doc["versions"] == ["1.0", "1.1", "1.2", "2.0"]
    rows = dict((r[0], r[1:]) for r in cat.admin(
        "SELECT filename, sha256, size, metadata_sha256 FROM files WHERE package = %s "
        "AND state = 'published'", (DEMO,)))
    for f in doc["files"]:
        sha, size, meta = rows[f["filename"]]
        assert f["hashes"] == {"sha256": sha} and f["size"] == size
        assert f["core-metadata"] == {"sha256": meta}
    by_name = {f["filename"]: f for f in doc["files"]}
    assert by_name["pwidx_demo-1.1-py3-none-any.whl"]["yanked"] == YANK_REASON
    assert "yanked" not in by_name["pwidx_demo-1.2-py3-none-any.whl"]
    assert by_name["pwidx_demo-2.0-py3-none-any.whl"]["requires-python"] == ">=3.99"
    assert by_name["pwidx_demo-1.0-py3-none-any.whl"]["upload-time"] == \
        "2024-01-10T12:00:00.000000Z"


def test_metadata_files_hold_the_exact_metadata_bytes_with_the_advertised_hash(served):
    doc = json.loads(fetch(url(served, f"/simple/{ARM}/"), JSON).body)
    validate(doc, SIMPLE_PROJECT_SCHEMA)
    for f in doc["files"]:
        wheel = fetch(url(served, f"/packages/{ARM}/{f['filename']}"))
        meta = fetch(url(served, f"/packages/{ARM}/{f['filename']}.metadata"))
        assert wheel.status == meta.status == 200
        assert hashlib.sha256(wheel.body).hexdigest() == f["hashes"]["sha256"]
        with zipfile.ZipFile(io.BytesIO(wheel.body)) as zf:
            inside = zf.read("pwidx_arm-1.0.dist-info/METADATA")
        assert meta.body == inside
        assert hashlib.sha256(meta.body).hexdigest() == f["core-metadata"]["sha256"]
    names = sorted(f["filename"] for f in doc["files"])
    assert names == ["pwidx_arm-1.0-cp311-cp311-linux_armv6l.whl",
                     "pwidx_arm-1.0-cp311-cp311-linux_armv7l.whl",
                     "pwidx_arm-1.0-cp311-cp311-linux_x86_64.whl"]


def test_html_links_carry_every_attribute_and_json_never_the_old_metadata_key(served):
    tree = parse_html(fetch(url(served, f"/simple/{DEMO}/"), "text/html").body)
    metas = {m.get("name"): m.get("content") for m in tree.iter("meta") if m.get("name")}
    assert metas["pypi:repository-version"] == "1.4"
    assert metas["pypi:project-status"] == "active"
    links = {a.text: a.attrib for a in tree.iter("a")}
    yanked = links["pwidx_demo-1.1-py3-none-any.whl"]
    assert yanked["data-yanked"] == YANK_REASON
    assert yanked["href"].startswith("../../packages/pwidx-demo/pwidx_demo-1.1-py3-none-any.whl"
                                     "#sha256=")
    assert yanked["data-core-metadata"] == yanked["data-dist-info-metadata"]
    assert yanked["data-core-metadata"].startswith("sha256=")
    assert int(yanked["data-size"]) > 0
    assert yanked["data-upload-time"] == "2024-06-10T12:00:00.000000Z"
    assert links["pwidx_demo-1.0-py3-none-any.whl"]["data-requires-python"] == ">=3.8"
    assert "data-yanked" not in links["pwidx_demo-1.2-py3-none-any.whl"]
    body = fetch(url(served, f"/simple/{DEMO}/"), JSON).body.decode()
    assert "dist-info-metadata" not in body


def test_requires_python_and_reasons_are_escaped_in_html():
    nasty = '>=3.9"><script>alert(1)</script>'
    files = [simple_index.IndexFile("foo-1.0-py3-none-any.whl", "a" * 64, "1.0",
                                    requires_python=nasty, yanked=True,
                                    yanked_reason="<b>bad</b> & \"worse\"")]
    status = simple_index.ProjectStatus("archived", "gone <away>")
    page = simple_index.render_project("foo", files, status)
    tree = parse_html(page)
    a = next(tree.iter("a"))
    assert a.get("data-requires-python") == nasty
    assert a.get("data-yanked") == "<b>bad</b> & \"worse\""
    assert "<script>" not in page
    metas = {m.get("name"): m.get("content") for m in tree.iter("meta") if m.get("name")}
    assert metas["pypi:project-status"] == "archived"
    assert metas["pypi:project-status-reason"] == "gone <away>"


def test_a_quarantined_project_lists_no_files_and_says_why(served):
    cat, _ = served
    assert cat.admin("SELECT project_set_status(%s, 'quarantined', 'malware reported')",
                     (ARM,)) == [(True,)]
    try:
        index.write_project(cat.master, cat.cfg.www_root, ARM, cat.options(True))
        doc = json.loads(fetch(url(served, f"/simple/{ARM}/"), JSON).body)
        validate(doc, SIMPLE_PROJECT_SCHEMA)
        assert doc["project-status"] == {"status": "quarantined", "reason": "malware reported"}
        assert doc["files"] == [] and doc["versions"] == []
        tree = parse_html(fetch(url(served, f"/simple/{ARM}/")).body)
        assert list(tree.iter("a")) == []
        page = json.loads(fetch(url(served, f"/project/{ARM}/json/")).body)
        assert page["status"] == {"status": "quarantined", "reason": "malware reported"}
        assert page["files"] == []
    finally:
        cat.admin("SELECT project_set_status(%s, 'active')", (ARM,))
        index.write_project(cat.master, cat.cfg.www_root, ARM, cat.options(True))


def test_project_status_function_refuses_an_unknown_status(served):
    cat, _ = served
    with pytest.raises(psycopg2.Error, match="invalid project status"):
        cat.admin("SELECT project_set_status(%s, 'deleted')", (ARM,))


# ------------------------------------------------------------ project pages


def test_project_page_shows_the_grid_files_install_line_and_links_to_logs(served):
    cat, _ = served
    resp = fetch(url(served, f"/project/{DEMO}/"))
    assert resp.status == 200 and resp.header("Content-Type") == "text/html; charset=utf-8"
    tree = parse_html(resp.body, "project page")
    text = "".join(tree.itertext())
    assert DEMO_DISPLAY in text
    assert f"pip install --extra-index-url http://farm.example/simple/ {DEMO_DISPLAY}" in text
    assert not list(tree.iter("script")) and not list(tree.iter("link")), "self-contained"
    assert any(m.get("name") == "viewport" for m in tree.iter("meta"))
    cells = {td.get("class") for td in tree.iter("td")}
    assert {"built", "failed"} <= cells
    # Every file with its size and SHA-256.
    for sha, in cat.admin("SELECT sha256 FROM files WHERE package = %s", (DEMO,)):
        assert sha in text
    assert "yanked" in text and YANK_REASON in text
    # The failed build links to its log, which opens as text.
    log_links = [a.get("href") for a in tree.iter("a") if a.get("href", "").endswith(".log")]
    assert f"../../logs/{cat.failed_build}.log" in log_links
    log = fetch(url(served, f"/logs/{cat.failed_build}.log"))
    assert log.status == 200 and log.header("Content-Type") == "text/plain; charset=utf-8"
    assert log.header("X-Content-Type-Options") == "nosniff"
    assert b"fails on purpose" in log.body
    assert fetch(url(served, f"/logs/{cat.failed_build}.log.gz")).header("Content-Type") == \
        "application/gzip"


def test_project_json_has_the_same_data_for_machines(served):
    cat, _ = served
    resp = fetch(url(served, f"/project/{DEMO}/json/"))
    assert resp.status == 200 and resp.header("Content-Type") == "application/json"
    doc = json.loads(resp.body)
    assert doc["name"] == DEMO and doc["display_name"] == DEMO_DISPLAY
    # One column per build target: both builders are cp311, on two platforms.
    assert doc["targets"] == ["cp311-linux_armv7l", "cp311-linux_x86_64"]
    states = {r["version"]: r["builds"]["cp311-linux_x86_64"]["state"] for r in doc["releases"]}
    assert states == {"3.0": "failed", "2.0": "built", "1.2": "built", "1.1": "built",
                      "1.0": "built"}
    failed = doc["releases"][0]["builds"]["cp311-linux_x86_64"]
    assert failed["log_url"] == f"/logs/{cat.failed_build}.log"
    assert fetch(url(served, failed["log_url"])).status == 200
    assert [r["version"] for r in doc["releases"] if r["yanked"]] == ["1.1"]
    assert {f["filename"] for f in doc["files"]} == {
        f"pwidx_demo-{v}-py3-none-any.whl" for v in ("1.0", "1.1", "1.2", "2.0")}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in doc["files"])
    assert doc["description"] == "A long description."


def test_every_html_page_served_parses_strictly(served):
    pages = ["/simple/"] + [f"/simple/{p}/" for p in (DEMO, ARM)] + \
        [f"/project/{p}/" for p in (DEMO, ARM)]
    for path in pages:
        resp = fetch(url(served, path), "text/html")
        assert resp.status == 200, path
        parse_html(resp.body, path)
    for path in ("/simple/", f"/simple/{DEMO}/", f"/simple/{ARM}/"):
        doc = json.loads(fetch(url(served, path), JSON).body)
        validate(doc, SIMPLE_ROOT_SCHEMA if path == "/simple/" else SIMPLE_PROJECT_SCHEMA)


# --------------------------------------------------------- writing the files


def test_root_page_is_rewritten_only_when_the_set_of_projects_changes(served):
    cat, server = served
    root = server.www_root / "simple" / "index.html"
    before = root.stat().st_mtime_ns
    assert index.write_root(cat.master, cat.cfg.www_root) is False
    index.write_project(cat.master, cat.cfg.www_root, DEMO, cat.options(True))
    assert root.stat().st_mtime_ns == before


def test_a_new_project_directory_is_never_visible_half_written(served):
    """While a project is written for the first time, over and over, a reader that sees
    the directory always finds both variants."""
    cat, server = served
    simple = server.www_root / "simple"
    project = server.www_root / "project"
    stop = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(",".join(sorted(os.listdir(simple / ARM))))
            except FileNotFoundError:
                continue  # between the writer's renames: not there at all is fine
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):
            for parent in (simple, project):
                os.rename(parent / ARM, parent / f".gone-{ARM}")
            index.write_project(cat.master, cat.cfg.www_root, ARM, cat.options(True))
            for parent in (simple, project):
                subprocess.run(["rm", "-rf", str(parent / f".gone-{ARM}")], check=True)
    finally:
        stop.set()
        thread.join()
    assert seen, "the reader saw the directory"
    assert set(seen) == {"index.html,index.json"}, set(seen)
    assert sorted(os.listdir(project / ARM)) == ["index.html", "json"]


def test_index_rebuild_command_regenerates_everything(served, tmp_path):
    cat, server = served
    conf = write_role_template(
        tmp_path / "master.conf", "master", "master.conf.j2", mode=0o600,
        master_database_host="127.0.0.1", master_database_port=cat.pg.port,
        master_database_name=cat.database, master_database_user="ix_master",
        master_database_password="ix-master-pw", master_database_sslmode="disable",
        master_www_root=str(server.www_root), master_incoming_root=str(tmp_path / "in"),
        master_quarantine_root=str(tmp_path / "q"), master_upstream_url="http://x/simple/",
        master_ca_bundle="", master_max_wheel_size=1 << 20, master_max_log_size=1 << 20,
        master_public_index_url="http://farm.example/simple/", master_armv6l_alias=True,
        master_watch_mode="allowlist", master_watch_projects=[], master_watch_projects_file="",
        master_watch_poll_seconds=60, master_watch_on_removal="keep", master_watch_history="all",
        master_watch_max_backoff_seconds=900, master_watch_priority=0,
        master_logs_access_log=str(server.access_log), master_logs_key_dir=str(tmp_path / "keys"),
        master_logs_key_keep_months=1, master_logs_batch_lines=10000)
    for path in ("simple/index.html", "simple/index.json.gz", f"simple/{DEMO}/index.json",
                 f"project/{ARM}/json/index.json"):
        (server.www_root / path).unlink()
    done = subprocess.run([sys.executable, "-m", "pinwheel", "index", "rebuild", "--config",
                           str(conf)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 project(s)" in done.stdout
    assert "\r" not in done.stderr, "no progress bar when stderr is not a terminal"
    for path in ("simple/index.html", "simple/index.json.gz", f"simple/{DEMO}/index.json",
                 f"project/{ARM}/json/index.json"):
        assert (server.www_root / path).is_file(), path
    doc = json.loads(fetch(url(served, f"/simple/{ARM}/"), JSON).body)
    assert len(doc["files"]) == 3, "the armv6l alias is listed (armv6l_alias = true)"


def test_ingesting_a_build_rewrites_only_that_projects_pages_and_the_root_if_new(served):
    cat, server = served
    www = server.www_root
    untouched = [www / "simple" / ARM / "index.html", www / "simple" / ARM / "index.json",
                 www / "project" / ARM / "index.html", www / "simple" / DEMO / "index.json"]
    before = {p: p.stat().st_mtime_ns for p in untouched}
    root_before = (www / "simple" / "index.html").read_bytes()
    cat.release("pwidx-new", "pwidx-new", "1.0")
    cat.build("ix_x86", "pwidx-new", "1.0", "py3-none-any")
    try:
        assert ingest.process_pending(cat.master, cat.cfg) == 1
        assert {p: p.stat().st_mtime_ns for p in untouched} == before
        doc = json.loads(fetch(url(served, "/simple/pwidx-new/"), JSON).body)
        validate(doc, SIMPLE_PROJECT_SCHEMA)
        assert doc["versions"] == ["1.0"]
        assert (www / "project" / "pwidx-new" / "index.html").is_file()
        root = json.loads(fetch(url(served, "/simple/"), JSON).body)
        assert {"name": "pwidx-new"} in root["projects"], "a new project rewrites the root"
        assert (www / "simple" / "index.html").read_bytes() != root_before
    finally:
        unpublish(cat, "pwidx-new")


def unpublish(cat: Catalogue, package: str) -> None:
    """What an operator's removal amounts to: no published file left, then the pages."""
    cat.admin("UPDATE files SET state = 'quarantined', reason = 'removed by the operator' "
              "WHERE package = %s AND state = 'published'", (package,))
    assert index.write_project(cat.master, cat.cfg.www_root, package, cat.options(True)) is False
    index.write_root(cat.master, cat.cfg.www_root)


# ------------------------------------------------------------------ pruning


def test_a_project_no_longer_published_leaves_the_served_tree(served):
    cat, server = served
    www = server.www_root
    cat.release("pwidx-gone", "PwIdx.Gone", "1.0")
    cat.build("ix_x86", "pwidx-gone", "1.0", "py3-none-any")
    assert ingest.process_pending(cat.master, cat.cfg) == 1
    wheel = "/packages/pwidx-gone/pwidx_gone-1.0-py3-none-any.whl"
    served_paths = ["/simple/pwidx-gone/", "/project/pwidx-gone/", "/project/pwidx-gone/json/",
                    wheel, f"{wheel}.metadata"]
    assert [fetch(url(served, p)).status for p in served_paths] == [200] * 5
    unpublish(cat, "pwidx-gone")
    assert [fetch(url(served, p)).status for p in served_paths] == [404] * 5
    for sub in index.PROJECT_DIRS:
        assert not (www / sub / "pwidx-gone").exists(), sub
        assert not [n for n in os.listdir(www / sub) if "pwidx-gone" in n], "no leftovers"
    root = json.loads(fetch(url(served, "/simple/"), JSON).body)
    assert {"name": "pwidx-gone"} not in root["projects"]
    # The other projects are untouched.
    assert fetch(url(served, f"/simple/{DEMO}/")).status == 200


def test_rebuild_removes_directories_of_names_that_are_not_published(served):
    cat, server = served
    www = server.www_root
    for sub in index.PROJECT_DIRS:  # left by an older writer, or by a hand-made copy
        (www / sub / "pwidx-stray").mkdir()
        (www / sub / "pwidx-stray" / "index.html").write_text("stale")
    (www / "simple" / "not-a-Project").mkdir()  # not a normalised name: never served, left
    try:
        assert fetch(url(served, "/simple/pwidx-stray/")).status == 200
        cat.rebuild(armv6l_alias=True)
        for sub in index.PROJECT_DIRS:
            assert not (www / sub / "pwidx-stray").exists(), sub
        assert fetch(url(served, "/simple/pwidx-stray/")).status == 404
        assert fetch(url(served, f"/simple/{ARM}/")).status == 200
    finally:
        (www / "simple" / "not-a-Project").rmdir()


def test_unpublished_wheels_of_a_published_project_are_deleted(served):
    cat, server = served
    directory = server.www_root / "packages" / ARM
    stale = "pwidx_arm-0.9-cp311-cp311-linux_x86_64.whl"
    for name in (stale, f"{stale}.metadata"):
        (directory / name).write_bytes(b"not published")
    (directory / "README").write_text("not a wheel: left alone")
    armv6l = "pwidx_arm-1.0-cp311-cp311-linux_armv6l.whl"
    try:
        assert fetch(url(served, f"/packages/{ARM}/{stale}")).status == 200
        # The armv6l setting turned off: the aliases go with the stale files.
        cat.rebuild(armv6l_alias=False)
        names = sorted(os.listdir(directory))
        assert names == ["README",
                         "pwidx_arm-1.0-cp311-cp311-linux_armv7l.whl",
                         "pwidx_arm-1.0-cp311-cp311-linux_armv7l.whl.metadata",
                         "pwidx_arm-1.0-cp311-cp311-linux_x86_64.whl",
                         "pwidx_arm-1.0-cp311-cp311-linux_x86_64.whl.metadata"], names
        assert fetch(url(served, f"/packages/{ARM}/{stale}")).status == 404
        assert fetch(url(served, f"/packages/{ARM}/{armv6l}")).status == 404
    finally:
        (directory / "README").unlink()
        cat.rebuild(armv6l_alias=True)
    assert fetch(url(served, f"/packages/{ARM}/{armv6l}")).status == 200
