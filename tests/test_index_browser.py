"""The project page in a real browser: Debian's chromium, driven by Playwright.

The catalogue (index_catalogue.py) is published by the real ingest into an
nginx rendered from the master role's template, as in test_index_pages.py;
here a headless Chromium loads ``/project/<name>/`` from it, with and without
JavaScript and on a phone-sized screen, reads the grid of versions by targets as
rendered, and follows a build-log link. Screenshots are kept in
``test-artifacts/`` (ignored by git) for a person to look at.

Playwright's own browser downloads are never used (``playwright install`` is
not run): it launches ``/usr/bin/chromium`` from Debian (``make test-deps``),
each time with a fresh profile directory and no network service of its own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from index_catalogue import DEMO, DEMO_DISPLAY, YANK_REASON, Catalogue, served_catalogue

from harness.nginx import NginxServer

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PHONE = {"viewport": {"width": 360, "height": 740}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True}
X86, ARM7 = "cp311-linux_x86_64", "cp311-linux_armv7l"
# The grid as index_catalogue.py makes it: every release built on x86-64 but 3.0,
# whose build failed. The demo's wheels are pure (py3-none-any), so once the master
# verified one it covers armv7l too: those cells read "built" with the covering tag;
# 3.0 has no wheel, so nothing covers armv7l there.
EXPECTED_GRID = {
    "3.0": {ARM7: "none", X86: "failed"},
    "2.0": {ARM7: "built", X86: "built"},
    "1.2": {ARM7: "built", X86: "built"},
    "1.1": {ARM7: "built", X86: "built"},
    "1.0": {ARM7: "built", X86: "built"},
}
COVERED_NOTE = "by py3-none-any"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: install Debian's chromium package (make test-deps does)")


@pytest.fixture(scope="module")
def served(pg, pg_template) -> Iterator[tuple[Catalogue, NginxServer]]:
    with served_catalogue(pg, pg_template, "pinwheel_index_browser") as both:
        yield both


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        yield pw


@contextlib.contextmanager
def browser(playwright: Any, **options: Any) -> Iterator[Any]:
    """A Chromium with a fresh profile directory; yields its one browser context."""
    with tempfile.TemporaryDirectory(prefix="pinwheel-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            env={**os.environ, "HOME": profile}, timeout=60_000, **options)
        try:
            context.set_default_timeout(30_000)
            yield context
        finally:
            context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


def open_project_page(context: Any, served: tuple[Catalogue, NginxServer]) -> Any:
    page = context.pages[0] if context.pages else context.new_page()
    response = page.goto(f"{served[1].url}/project/{DEMO}/")
    assert response is not None and response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    return page


def rendered_grid(page: Any) -> dict[str, dict[str, str]]:
    """The grid as the browser laid it out: {version: {target: state class}}, read from
    the visible table whose first header cell is "version"."""
    table = page.locator("table", has=page.locator("thead th", has_text="version")).first
    assert table.is_visible()
    targets = [t.strip() for t in table.locator("thead th").all_inner_texts()]
    assert targets[0] == "version"
    grid: dict[str, dict[str, str]] = {}
    for row in table.locator("tbody tr").all():
        version = row.locator("th").inner_text().split()[0]
        classes = [td.get_attribute("class") for td in row.locator("td").all()]
        grid[version] = dict(zip(targets[1:], classes))
    return grid


def covering_notes(page: Any) -> dict[str, dict[str, str]]:
    """Each grid cell's "by <tag>" note (empty where the target's own build made it)."""
    table = page.locator("table", has=page.locator("thead th", has_text="version")).first
    targets = [t.strip() for t in table.locator("thead th").all_inner_texts()]
    notes: dict[str, dict[str, str]] = {}
    for row in table.locator("tbody tr").all():
        version = row.locator("th").inner_text().split()[0]
        cells = row.locator("td").all()
        notes[version] = {
            target: (cell.locator(".note").inner_text() if cell.locator(".note").count() else "")
            for target, cell in zip(targets[1:], cells)}
    return notes


def test_the_grid_shows_each_release_on_each_target_with_its_state(served, playwright):
    with browser(playwright) as context:
        page = open_project_page(context, served)
        assert page.title() == f"{DEMO_DISPLAY} · Pinwheel"
        assert page.locator("h1").inner_text() == DEMO_DISPLAY
        assert rendered_grid(page) == EXPECTED_GRID
        notes = covering_notes(page)
        for version, row in EXPECTED_GRID.items():
            covered = row[ARM7] == "built"
            assert notes[version] == {ARM7: COVERED_NOTE if covered else "", X86: ""}, notes
        # The states look different, not only carry different classes.
        colours = {state: page.locator(f"td.{state}").first.evaluate(
            "e => getComputedStyle(e).backgroundColor") for state in ("built", "failed", "none")}
        assert len(set(colours.values())) == 3, colours
        yanked = page.locator("tbody tr", has_text="1.1").first.locator(".yanked")
        assert YANK_REASON in yanked.first.inner_text()
        assert page.locator("pre", has_text="pip install").first.is_visible()
        screenshot(page, "project-page-desktop.png")


def test_a_build_log_link_opens_the_log_as_plain_text(served, playwright):
    cat, _ = served
    with browser(playwright) as context:
        page = open_project_page(context, served)
        link = page.locator("td.failed a")
        assert link.count() == 1
        with page.expect_navigation() as navigation:
            link.click()
        response = navigation.value
        assert response.url == f"{served[1].url}/logs/{cat.failed_build}.log"
        assert response.status == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.headers["x-content-type-options"] == "nosniff"
        # Chromium asks for gzip and gets the stored .gz; what it shows is the text.
        assert "fails on purpose" in page.locator("body").inner_text()
        assert page.locator("pre").count() == 1, "shown as text, not parsed as HTML"


def test_the_page_works_without_javascript(served, playwright):
    cat, _ = served
    with browser(playwright, java_script_enabled=False) as context:
        page = open_project_page(context, served)
        assert rendered_grid(page) == EXPECTED_GRID
        assert page.locator("td.hash code").count() == 4, "every file with its SHA-256"
        with page.expect_navigation() as navigation:
            page.locator("td.failed a").click()
        assert navigation.value.url.endswith(f"/logs/{cat.failed_build}.log")
        assert "fails on purpose" in page.locator("body").inner_text()
        screenshot(page, "project-page-log-no-javascript.png")


def test_the_page_fits_a_phone_screen_without_sideways_scrolling(served, playwright):
    with browser(playwright, **PHONE) as context:
        page = open_project_page(context, served)
        assert rendered_grid(page) == EXPECTED_GRID
        sizes = page.evaluate("""() => ({
            viewport: window.innerWidth,
            document: document.documentElement.scrollWidth,
            body: document.body.scrollWidth,
            font: parseFloat(getComputedStyle(document.body).fontSize)})""")
        assert sizes["viewport"] == PHONE["viewport"]["width"], sizes
        assert sizes["document"] <= sizes["viewport"], f"the page overflows sideways: {sizes}"
        assert sizes["body"] <= sizes["viewport"], sizes
        assert sizes["font"] >= 14, "readable without zooming"
        # Wide tables scroll inside their own box, not the page.
        for box in page.locator("div.scroll").all():
            width = box.evaluate("e => e.getBoundingClientRect().right")
            assert width <= sizes["viewport"], width
        screenshot(page, "project-page-phone.png")
