"""Reading an upstream index (PyPI or any PEP 503/691 index).

PEP 691 JSON is asked for first; an index that answers HTML is parsed as
PEP 503. Only the standard library is used.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Union

from . import __version__, names

ACCEPT = ("application/vnd.pypi.simple.v1+json, "
          "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1")
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
USER_AGENT = f"pinwheel/{__version__} (+https://github.com/pinwheel)"
MAX_PAGE = 64 << 20

Yanked = Union[bool, str]


class UpstreamError(Exception):
    """The upstream could not be read, or answered something unusable."""


class ProjectNotFound(UpstreamError):
    """The upstream has no such project."""


@dataclass(frozen=True)
class UpstreamFile:
    filename: str
    url: str
    sha256: str | None
    requires_python: str | None
    yanked: Yanked          # False, True, or the reason (PEP 592)

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith(names.SDIST_SUFFIXES)


@dataclass(frozen=True)
class UpstreamProject:
    name: str               # as the upstream spells it (PEP 691 "name", or the request)
    files: list[UpstreamFile]


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._current = dict(attrs)
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self.anchors.append((self._current, "".join(self._text).strip()))
            self._current = None


def _fetch(url: str, timeout: float, ca_bundle: str = "") -> tuple[str, bytes, str]:
    if not url.startswith(("http://", "https://")):
        raise UpstreamError(f"{url}: only http and https upstreams are supported")
    req = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        url, headers={"Accept": ACCEPT, "User-Agent": USER_AGENT})
    try:
        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310 - checked above
            body = resp.read(MAX_PAGE + 1)
            if len(body) > MAX_PAGE:
                raise UpstreamError(f"{url}: page larger than {MAX_PAGE} bytes")
            return resp.headers.get_content_type(), body, resp.geturl()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ProjectNotFound(f"{url}: not found upstream (HTTP 404)") from exc
        raise UpstreamError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UpstreamError(f"{url}: cannot reach the upstream index ({reason})") from exc


def _split_hash(url: str) -> tuple[str, str | None]:
    base, _, fragment = url.partition("#")
    key, _, value = fragment.partition("=")
    return base, value.lower() if key == "sha256" and value else None


def parse_json(body: bytes, base_url: str, requested: str) -> UpstreamProject:
    try:
        data: Any = json.loads(body)
        files = []
        for f in data["files"]:
            url = urllib.parse.urljoin(base_url, f["url"])
            sha = (f.get("hashes") or {}).get("sha256")
            yanked = f.get("yanked", False)
            files.append(UpstreamFile(f["filename"], url, sha.lower() if sha else None,
                                      f.get("requires-python") or None,
                                      yanked if isinstance(yanked, (bool, str)) else bool(yanked)))
        return UpstreamProject(str(data.get("name") or requested), files)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpstreamError(f"{base_url}: malformed PEP 691 JSON ({exc})") from exc


def parse_html(body: bytes, base_url: str, requested: str) -> UpstreamProject:
    parser = _AnchorParser()
    parser.feed(body.decode("utf-8", "replace"))
    files = []
    for attrs, text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url, sha = _split_hash(urllib.parse.urljoin(base_url, href))
        filename = text or urllib.parse.unquote(url.rsplit("/", 1)[-1])
        yanked: Yanked = False
        if "data-yanked" in attrs:
            yanked = attrs["data-yanked"] or True
        files.append(UpstreamFile(filename, url, sha, attrs.get("data-requires-python") or None,
                                  yanked))
    return UpstreamProject(requested, files)


def project(index_url: str, name: str, timeout: float = 60.0,
            ca_bundle: str = "") -> UpstreamProject:
    """The files of one project on the upstream index."""
    if not names.is_valid_name(name):
        raise UpstreamError(f"{name!r} is not a valid project name")
    url = urllib.parse.urljoin(index_url.rstrip("/") + "/", names.normalise(name) + "/")
    content_type, body, final_url = _fetch(url, timeout, ca_bundle)
    if content_type == JSON_TYPE:
        return parse_json(body, final_url, name)
    if content_type in ("text/html", "application/vnd.pypi.simple.v1+html"):
        return parse_html(body, final_url, name)
    raise UpstreamError(f"{url}: unexpected content type {content_type!r}")
