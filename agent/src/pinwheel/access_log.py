"""One line of nginx's JSON access log (the master role's ``pinwheel_json`` format) → a row.

The line is what ``log_format pinwheel_json escape=json`` writes (roles/master/templates/
nginx-site.conf.j2)::

    {"time":"2026-11-26T00:13:27.123+00:00","request":"GET /simple/numpy/ HTTP/1.1",
     "status":200,"bytes":1234,"user_agent":"pip/24.0 {...}","accept":"...",
     "content_type":"application/vnd.pypi.simple.v1+json","remote_addr":"192.0.2.7"}

:func:`parse_line` classifies the hit (wheel, simple, project, json, other), reads pip's and
uv's JSON user agent and replaces the client's address by a keyed hash of its network
(:class:`ClientHasher`, docs/downloads.md). Anything it cannot read raises
:class:`MalformedLine` with the reason: the importer counts it and keeps a sample.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from typing import NamedTuple

from .names import normalise

MAX_PATH = 1024          # downloads.path's limit
MAX_FIELD = 64           # any user agent field kept
SIMPLE_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
KINDS = ("wheel", "simple", "project", "json", "other")

_REQUEST_RE = re.compile(r"^([A-Z]{1,16}) (\S{1,65536})(?: HTTP/[0-9.]{1,8})?$")
_PROJECT_RE = r"[A-Za-z0-9._-]{1,200}"
_WHEEL_RE = re.compile(rf"^/packages/({_PROJECT_RE})/([^/]{{1,255}}\.whl)$")
_PACKAGE_FILE_RE = re.compile(rf"^/packages/({_PROJECT_RE})/")
_SIMPLE_RE = re.compile(rf"^/simple/(?:({_PROJECT_RE})/?)?$")
_PROJECT_PAGE_RE = re.compile(rf"^/project/({_PROJECT_RE})/?$")
_PROJECT_JSON_RE = re.compile(rf"^/project/({_PROJECT_RE})/json/?$")
# "pip/24.0 {json}" and "uv/0.4.18 {json}": the installer's JSON after its product token.
_JSON_AGENT_RE = re.compile(r"^([A-Za-z][A-Za-z0-9._-]{0,31})/(\S{1,32}) (\{.*)$", re.DOTALL)


class MalformedLine(ValueError):
    """A line that is not a record of the pinwheel_json format (the message says why)."""


class Agent(NamedTuple):
    installer_name: str | None = None
    installer_version: str | None = None
    python_version: str | None = None
    implementation_name: str | None = None
    distro_name: str | None = None
    distro_version: str | None = None
    system_name: str | None = None
    cpu: str | None = None


NO_AGENT = Agent()


class Hit(NamedTuple):
    """One row of ``downloads`` (without file_id, resolved in the database)."""

    accessed_at: datetime     # aware, UTC
    kind: str
    path: str
    status: int
    bytes: int
    package: str | None
    filename: str | None
    agent: Agent
    client: str | None


def _text(value: object) -> str | None:
    """A short clean string from a user agent field, else None."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return None
    text = "".join(c for c in str(value).strip()[:MAX_FIELD] if c.isprintable())
    return text or None   # never '': the daily summary keeps '' for unknown


def _get(obj: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


@lru_cache(maxsize=8192)
def parse_agent(user_agent: str) -> Agent:
    """The installer, Python, distro, system and CPU from pip's or uv's JSON user agent
    (any other agent: nothing; a broken JSON part: the product token only)."""
    m = _JSON_AGENT_RE.match(user_agent)
    if not m:
        return NO_AGENT
    try:
        data = json.loads(m.group(3))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return Agent(_text(m.group(1)), _text(m.group(2)))
    return Agent(
        installer_name=_text(_get(data, "installer", "name")) or _text(m.group(1)),
        installer_version=_text(_get(data, "installer", "version")) or _text(m.group(2)),
        python_version=_text(data.get("python")),
        implementation_name=_text(_get(data, "implementation", "name")),
        distro_name=_text(_get(data, "distro", "name")),
        distro_version=_text(_get(data, "distro", "version")),
        system_name=_text(_get(data, "system", "name")),
        cpu=_text(data.get("cpu")),
    )


def classify(path: str, content_type: str) -> tuple[str, str | None, str | None]:
    """(kind, normalised project or None, wheel file name or None) of a request path
    (without its query string)."""
    m = _WHEEL_RE.match(path)
    if m:
        return "wheel", normalise(m.group(1)), m.group(2)
    m = _SIMPLE_RE.match(path)
    if m:
        project = normalise(m.group(1)) if m.group(1) else None
        json_page = content_type.split(";", 1)[0].strip().lower() == SIMPLE_JSON_TYPE
        return ("json" if json_page else "simple"), project, None
    m = _PROJECT_JSON_RE.match(path)
    if m:
        return "json", normalise(m.group(1)), None
    m = _PROJECT_PAGE_RE.match(path)
    if m:
        return "project", normalise(m.group(1)), None
    m = _PACKAGE_FILE_RE.match(path)
    if m:  # a .metadata file or anything else under /packages/<project>/
        return "other", normalise(m.group(1)), None
    return "other", None, None


_IPV4_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


def client_network(address: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of an address, as text; None if it is not one."""
    m = _IPV4_RE.match(address)
    if m:  # the common case, without the ipaddress module's cost
        octets = [int(part) for part in m.groups()]
        if max(octets) <= 255 and all(p == "0" or not p.startswith("0") for p in m.groups()):
            return f"{octets[0]}.{octets[1]}.{octets[2]}.0/24"
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class ClientHasher:
    """``client``: HMAC-SHA256 of the client's network under the key of the hit's month.

    ``key_for_month("2026-11")`` returns that month's secret key (pinwheel.download_keys
    keeps them on the master and deletes old ones). The result is 32 hex digits: the same
    network in the same month gives the same value, so clients are countable; without the
    key it cannot be turned back into a network, and once the key is deleted nobody can.
    """

    def __init__(self, key_for_month: Callable[[str], bytes | None]) -> None:
        self._key_for_month = key_for_month
        self._keys: dict[str, bytes | None] = {}
        self._cache: dict[tuple[str, str], str | None] = {}

    def forget(self) -> None:
        """Drop the keys and values held in memory (after old keys were deleted)."""
        self._keys.clear()
        self._cache.clear()

    def __call__(self, month: str, address: str) -> str | None:
        network = client_network(address)
        if network is None:
            return None
        cached = self._cache.get((month, network), "")
        if cached != "":
            return cached
        if month not in self._keys:
            self._keys[month] = self._key_for_month(month)
        key = self._keys[month]
        value = None
        if key is not None:
            value = hmac.new(key, network.encode(), hashlib.sha256).hexdigest()[:32]
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[(month, network)] = value
        return value


def _int(record: dict, key: str, low: int, high: int) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MalformedLine(f"{key} is not a whole number from {low} to {high}: {value!r}")
    return value


def _str(record: dict, key: str, required: bool = False) -> str:
    value = record.get(key, None if required else "")
    if not isinstance(value, str):
        raise MalformedLine(f"{key} is missing or not a string")
    return value


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with its offset (nginx's $time_iso8601 with milliseconds), in UTC."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedLine(f"time is not an ISO 8601 time: {text[:40]!r}") from None
    if at.tzinfo is None:
        raise MalformedLine(f"time has no UTC offset: {text[:40]!r}")
    at = at.astimezone(timezone.utc)
    if not 2000 <= at.year <= 2999:
        raise MalformedLine(f"time is out of range: {text[:40]!r}")
    return at


def parse_line(line: bytes, hasher: ClientHasher) -> Hit:
    """The row of one log line (without its newline); :class:`MalformedLine` if unreadable."""
    try:
        record = json.loads(line)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedLine(f"not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise MalformedLine("not a JSON object")
    at = parse_time(_str(record, "time", required=True))
    request = _str(record, "request", required=True)
    m = _REQUEST_RE.match(request)
    # A request line nginx could not read (status 400) is kept as it came, kind "other".
    path = m.group(2).split("?", 1)[0] if m else ""
    status = _int(record, "status", 0, 999)
    size = _int(record, "bytes", 0, 1 << 62)
    kind, package, filename = classify(path, _str(record, "content_type"))
    if not path:
        path = request[:MAX_PATH]
    agent = parse_agent(_str(record, "user_agent")[:4096])
    client = hasher(f"{at.year:04d}-{at.month:02d}", _str(record, "remote_addr"))
    return Hit(at, kind, path[:MAX_PATH], status, size, package, filename, agent, client)
