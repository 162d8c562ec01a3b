"""Reading an upstream index (PyPI or any PEP 503/691 index).

PEP 691 JSON is asked for first; an index that answers HTML is parsed as
PEP 503. Only the standard library is used.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import ssl
import time
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


class UpstreamUnavailable(UpstreamError):
    """The upstream cannot be reached or answers 5xx: try again later, after a pause."""


class RateLimited(UpstreamUnavailable):
    """The upstream asked us to slow down (HTTP 429, or 503 while unavailable)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, from Retry-After, or None


@dataclass(frozen=True)
class UpstreamFile:
    filename: str
    url: str
    sha256: str | None
    requires_python: str | None
    yanked: Yanked          # False, True, or the reason (PEP 592)
    core_metadata: bool = False  # the upstream serves <url>.metadata (PEP 658 / 714)

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
            metadata = f.get("core-metadata", f.get("data-dist-info-metadata", False))
            files.append(UpstreamFile(f["filename"], url, sha.lower() if sha else None,
                                      f.get("requires-python") or None,
                                      yanked if isinstance(yanked, (bool, str)) else bool(yanked),
                                      bool(metadata)))
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
        metadata = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        files.append(UpstreamFile(filename, url, sha, attrs.get("data-requires-python") or None,
                                  yanked, metadata is not None and metadata != "false"))
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


# ------------------------------------------------- conditional requests (watch)


@dataclass(frozen=True)
class Page:
    """One answer to a conditional GET: ``body`` is None when unchanged (HTTP 304)."""

    url: str
    content_type: str
    body: bytes | None
    etag: str | None
    last_modified: str | None
    serial: int | None       # X-PyPI-Last-Serial, when the upstream sends it

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.body).hexdigest() if self.body is not None else None


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _serial(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def fetch_page(url: str, etag: str | None = None, last_modified: str | None = None,
               timeout: float = 60.0, ca_bundle: str = "") -> Page:
    """GET ``url`` with If-None-Match / If-Modified-Since from the last answer.

    Raises ProjectNotFound (404 or 410), RateLimited (429, 503) or UpstreamError.
    """
    if not url.startswith(("http://", "https://")):
        raise UpstreamError(f"{url}: only http and https upstreams are supported")
    headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only, checked above
    try:
        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310 - checked above
            body = resp.read(MAX_PAGE + 1)
            if len(body) > MAX_PAGE:
                raise UpstreamError(f"{url}: page larger than {MAX_PAGE} bytes")
            return Page(resp.geturl(), resp.headers.get_content_type(), body,
                        resp.headers.get("ETag"), resp.headers.get("Last-Modified"),
                        _serial(resp.headers.get("X-PyPI-Last-Serial")))
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return Page(url, "", None, exc.headers.get("ETag") or etag,
                        exc.headers.get("Last-Modified") or last_modified,
                        _serial(exc.headers.get("X-PyPI-Last-Serial")))
        if exc.code in (404, 410):
            raise ProjectNotFound(f"{url}: not found upstream (HTTP {exc.code})") from exc
        if exc.code in (429, 503):
            wait = retry_after(exc.headers.get("Retry-After"))
            raise RateLimited(f"{url}: HTTP {exc.code} {exc.reason}"
                              + (f" (Retry-After {wait:.0f} s)" if wait is not None else ""),
                              wait) from exc
        if exc.code >= 500:
            raise UpstreamUnavailable(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        raise UpstreamError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UpstreamUnavailable(f"{url}: cannot reach the upstream index ({reason})") from exc


def project_url(index_url: str, name: str) -> str:
    return urllib.parse.urljoin(index_url.rstrip("/") + "/", names.normalise(name) + "/")


def parse_project_page(page: Page, requested: str) -> UpstreamProject:
    """The project on a fetched page (PEP 691 JSON or PEP 503 HTML)."""
    if page.body is None:
        raise UpstreamError(f"{page.url}: no page to parse (unchanged)")
    if page.content_type == JSON_TYPE:
        return parse_json(page.body, page.url, requested)
    if page.content_type in ("text/html", "application/vnd.pypi.simple.v1+html"):
        return parse_html(page.body, page.url, requested)
    raise UpstreamError(f"{page.url}: unexpected content type {page.content_type!r}")


def project_serial(page: Page) -> int | None:
    """A project page's serial: PEP 691 ``meta._last-serial`` (PyPI), else the header."""
    if page.body is not None and page.content_type == JSON_TYPE:
        try:
            meta = json.loads(page.body).get("meta") or {}
            value = meta.get("_last-serial")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        except (ValueError, AttributeError):
            pass
    return page.serial


@dataclass(frozen=True)
class RootListing:
    """The upstream's project list: normalised name -> (spelling, serial or None)."""

    projects: dict[str, tuple[str, int | None]]
    serial: int | None       # the whole index's serial (meta or header), if any

    @property
    def has_serials(self) -> bool:
        return any(serial is not None for _, serial in self.projects.values())


def parse_root(page: Page) -> RootListing:
    """The root page: PEP 691 JSON (with PyPI's ``_last-serial``) or PEP 503 HTML."""
    if page.body is None:
        raise UpstreamError(f"{page.url}: no page to parse (unchanged)")
    found: dict[str, tuple[str, int | None]] = {}

    def add(name: str, serial: int | None) -> None:
        if not names.is_valid_name(name):
            return  # an unusable name cannot become a project: ignored
        key = names.normalise(name)
        old = found.get(key)
        if old is None or (serial or -1) > (old[1] or -1):
            found[key] = (name, serial)

    if page.content_type == JSON_TYPE:
        try:
            data: Any = json.loads(page.body)
            for entry in data["projects"]:
                raw = entry.get("_last-serial")
                add(str(entry["name"]), raw if isinstance(raw, int)
                    and not isinstance(raw, bool) else None)
            meta = data.get("meta") or {}
            top = meta.get("_last-serial")
            serial = top if isinstance(top, int) and not isinstance(top, bool) else page.serial
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"{page.url}: malformed PEP 691 root JSON ({exc})") from exc
        return RootListing(found, serial)
    if page.content_type in ("text/html", "application/vnd.pypi.simple.v1+html"):
        parser = _AnchorParser()
        parser.feed(page.body.decode("utf-8", "replace"))
        for _attrs, text in parser.anchors:
            add(text, None)
        return RootListing(found, page.serial)
    raise UpstreamError(f"{page.url}: unexpected content type {page.content_type!r}")


# ------------------------------------------------ keep-alive fetches (import)


class Session:
    """Conditional GETs over one kept-alive HTTP connection (one thread's own).

    Answers like :func:`fetch_page`, without a new TCP (and TLS) connection per
    page: an initial import fetches every project of the upstream. A redirect,
    or a URL on another host, is left to :func:`fetch_page`.
    """

    def __init__(self, index_url: str, timeout: float = 60.0, ca_bundle: str = "") -> None:
        parts = urllib.parse.urlsplit(index_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(f"{index_url}: only http and https upstreams are supported")
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.host = parts.hostname
        self.port = parts.port
        self.timeout = timeout
        self.ca_bundle = ca_bundle
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                context = (ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle
                           else ssl.create_default_context())
                self._conn = http.client.HTTPSConnection(self.host, self.port,
                                                         timeout=self.timeout, context=context)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def fetch_page(self, url: str, etag: str | None = None,
                   last_modified: str | None = None) -> Page:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != self.scheme or parts.netloc != self.netloc:
            return fetch_page(url, etag, last_modified, self.timeout, self.ca_bundle)
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        for attempt in (1, 2):
            try:
                conn = self._connection()
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read(MAX_PAGE + 1)
                if resp.will_close:
                    self.close()
                break
            except (http.client.HTTPException, OSError) as exc:
                # The server closed the kept-alive connection between two requests: once
                # more on a new one, then it is the upstream's trouble.
                self.close()
                if attempt == 2:
                    raise UpstreamUnavailable(
                        f"{url}: cannot reach the upstream index ({exc})") from exc
        status = resp.status
        if status == 200:
            if len(body) > MAX_PAGE:
                raise UpstreamError(f"{url}: page larger than {MAX_PAGE} bytes")
            content_type = resp.headers.get_content_type()
            return Page(url, content_type, body, resp.headers.get("ETag"),
                        resp.headers.get("Last-Modified"),
                        _serial(resp.headers.get("X-PyPI-Last-Serial")))
        if status == 304:
            return Page(url, "", None, resp.headers.get("ETag") or etag,
                        resp.headers.get("Last-Modified") or last_modified,
                        _serial(resp.headers.get("X-PyPI-Last-Serial")))
        if status in (301, 302, 303, 307, 308):
            return fetch_page(url, etag, last_modified, self.timeout, self.ca_bundle)
        if status in (404, 410):
            raise ProjectNotFound(f"{url}: not found upstream (HTTP {status})")
        if status in (429, 503):
            wait = retry_after(resp.headers.get("Retry-After"))
            raise RateLimited(f"{url}: HTTP {status} {resp.reason}"
                              + (f" (Retry-After {wait:.0f} s)" if wait is not None else ""),
                              wait)
        if status >= 500:
            raise UpstreamUnavailable(f"{url}: HTTP {status} {resp.reason}")
        raise UpstreamError(f"{url}: HTTP {status} {resp.reason}")
