"""Checks for what the index serves: raw HTTP, a strict HTML5 parse, the PEP 691 JSON shape.

``fetch`` speaks HTTP/1.1 with ``http.client`` and never follows redirects, so
tests see exactly what nginx answered. ``parse_html`` fails on any HTML5 parse
error (html5lib, strict). ``SIMPLE_PROJECT_SCHEMA`` / ``SIMPLE_ROOT_SCHEMA`` are
JSON Schemas of PEP 691 as extended by PEP 700 (versions, size, upload-time),
PEP 714 (core-metadata; the old dist-info-metadata key is refused) and PEP 792
(project-status).
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import html5lib
import jsonschema
from html5lib.html5parser import ParseError

PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; "
              "q=0.1, text/html; q=0.01")
UV_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
             "text/html;q=0.01")
BROWSER_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                  "image/webp,*/*;q=0.8")

_HASHES = {"type": "object", "additionalProperties": {"type": "string",
                                                      "pattern": "^[0-9a-f]+$"}}
SIMPLE_PROJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["meta", "name", "files", "versions"],
    "properties": {
        "meta": {"type": "object", "required": ["api-version"],
                 "properties": {"api-version": {"const": "1.4"}}},
        "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"},
        "project-status": {
            "type": "object", "required": ["status"],
            "properties": {"status": {"enum": ["active", "archived", "quarantined",
                                               "deprecated"]},
                           "reason": {"type": "string"}},
            "additionalProperties": False},
        "versions": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "files": {"type": "array", "items": {
            "type": "object",
            "required": ["filename", "url", "hashes", "size", "upload-time"],
            "properties": {
                "filename": {"type": "string", "pattern": r"\.whl$"},
                "url": {"type": "string", "minLength": 1},
                "hashes": {**_HASHES, "required": ["sha256"]},
                "requires-python": {"type": "string"},
                "core-metadata": {"oneOf": [{"type": "boolean"}, _HASHES]},
                "yanked": {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
                "size": {"type": "integer", "minimum": 0},
                "upload-time": {"type": "string", "pattern":
                                r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$"},
            },
            "not": {"required": ["dist-info-metadata"]},
            "additionalProperties": False,
        }},
    },
    "additionalProperties": False,
}
SIMPLE_ROOT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["meta", "projects"],
    "properties": {
        "meta": {"type": "object", "required": ["api-version"],
                 "properties": {"api-version": {"const": "1.4"}}},
        "projects": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}}, "additionalProperties": False}},
    },
    "additionalProperties": False,
}


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []

    @property
    def vary(self) -> set[str]:
        return {v.strip().lower() for h in self.all("Vary") for v in h.split(",")}


def fetch(url: str, accept: str | None = None, headers: dict[str, str] | None = None,
          method: str = "GET") -> Response:
    """One request, no redirects followed, no Accept header unless given."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        sent = dict(headers or {})
        if accept is not None:
            sent["Accept"] = accept
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                     headers=sent)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def parse_html(text: str | bytes, what: str = "page") -> Any:
    """Parse with html5lib in strict mode: any HTML5 parse error fails."""
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    try:
        return parser.parse(text)
    except ParseError as exc:
        raise AssertionError(f"{what} is not valid HTML5: {exc}") from None


def validate(document: Any, schema: dict[str, Any]) -> None:
    jsonschema.validate(document, schema)
