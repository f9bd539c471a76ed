"""The request guard: one ASGI middleware in front of every route, so no route can forget it.

A server on a developer's laptop is reachable by every web page the developer opens. Browsers
let any page send "simple" cross-site requests (a `text/plain` POST, a form) without asking,
and a DNS-rebinding page can even read the answers by making its own host name resolve to
127.0.0.1. So, before any handler runs:

1. **Host allow-list.** The `Host` header must name this server: by default only the loopback
   names `localhost`, `127.0.0.1` and `[::1]` (any port), plus the host the server was bound
   to; more with `--allowed-host` / `STEPWELL_ALLOWED_HOSTS`, or `*` for any. A rebinding page
   sends its own name, and gets 421 Misdirected Request.
2. **No cross-site writes.** A request that can change state (any method but GET, HEAD and
   OPTIONS) is refused with 403 when the browser says it comes from another site or origin
   (`Sec-Fetch-Site: cross-site` or `same-site`: another port of 127.0.0.1 is "same-site"),
   or its `Origin` is not this server's. SDKs, curl and scripts send neither header.
3. **JSON means JSON.** A request body sent to a route must be declared `application/json`
   (parameters such as `; charset=utf-8` are fine, as the SDKs send), else 415. A page cannot
   send that cross-origin without a CORS preflight, which this server never grants.

Unknown paths and methods pass through, so they still get the router's 404 / 405.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_MEDIA_TYPE: Final = "application/json"
HOSTS_ENV: Final = "STEPWELL_ALLOWED_HOSTS"
HOST_CACHE: Final = 256
_WILDCARD_BINDS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})
_HOST_RE = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[^\[\]:/@\s]+))(?::(?P<port>\d{1,5}))?$")


def _split_host(value: str) -> tuple[str, str | None] | None:
    """`name[:port]` or `[v6][:port]` as (normalized host, port), or None if it is not one.
    Hosts are lowercased, IPv6 addresses written in brackets and compressed."""
    m = _HOST_RE.match(value.strip())
    if m is None:
        return None
    if m.group("v6") is not None:
        try:
            host = f"[{ipaddress.IPv6Address(m.group('v6')).compressed}]"
        except ValueError:
            return None
    else:
        host = m.group("name").lower().rstrip(".")
    return host, m.group("port")


@dataclass(frozen=True)
class HostAllowList:
    """Host names (any port), `name:port` (that port only), `.suffix` / `*.suffix` (names under
    a domain), or `*` (anything)."""

    any_host: bool
    names: frozenset[str]
    name_ports: frozenset[tuple[str, str]]
    suffixes: tuple[str, ...]
    shown: str

    @classmethod
    def of(cls, entries: str | Iterable[str]) -> HostAllowList:
        """Entries may also be comma- or space-separated. Raises ValueError naming an entry
        that is not a host."""
        names: set[str] = set()
        name_ports: set[tuple[str, str]] = set()
        suffixes: list[str] = []
        shown: list[str] = []
        any_host = False
        for raw in _split_entries(entries):
            entry = raw
            shown.append(entry)
            if entry == "*":
                any_host = True
                continue
            if entry.startswith(("*.", ".")):
                suffix = entry.removeprefix("*").lower().rstrip(".")
                if _split_host(suffix[1:]) is None or ":" in suffix:
                    raise ValueError(f"allowed host {raw!r} is not a domain suffix like "
                                     ".example.com")
                suffixes.append(suffix)
                continue
            if ":" in entry and not entry.startswith("["):
                with contextlib.suppress(ValueError):      # a bare IPv6 address: ::1
                    entry = f"[{ipaddress.IPv6Address(entry).compressed}]"
            split = _split_host(entry)
            if split is None:
                raise ValueError(f"allowed host {raw!r} is not a host name, an IP address or "
                                 "host:port")
            host, port = split
            if port is None:
                names.add(host)
            else:
                name_ports.add((host, port))
        return cls(any_host, frozenset(names), frozenset(name_ports), tuple(suffixes),
                   ", ".join(shown))

    def allows(self, header: str) -> bool:
        if self.any_host:
            return True
        split = _split_host(header)
        if split is None:
            return False
        host, port = split
        return (host in self.names or (host, port or "") in self.name_ports
                or any(host.endswith(s) for s in self.suffixes))


def allowed_hosts(configured: Iterable[str] | None, bound_host: str | None = None) -> list[str]:
    """The allow-list a server uses: the loopback names, the host it is bound to (unless it is
    a wildcard address) and the configured entries (comma- or space-separated)."""
    entries = list(LOOPBACK_HOSTS)
    if bound_host and bound_host.strip() not in _WILDCARD_BINDS:
        entries.append(bound_host.strip())
    return entries + _split_entries(configured or ())


def _split_entries(values: str | Iterable[str]) -> list[str]:
    if isinstance(values, str):
        values = [values]
    return [part for value in values for part in re.split(r"[\s,]+", value) if part]


def _error(status: int, message: str) -> JSONResponse:
    headers = {"connection": "close"} if status == 421 else None
    return JSONResponse({"error": message, "status": status}, status_code=status,
                        headers=headers)


class RequestGuard:
    """The middleware (see the module docstring). `routes` are the app's routes, used only to
    let unknown paths and methods through to the router's 404 / 405."""

    def __init__(self, app: ASGIApp, *, hosts: HostAllowList,
                 routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.hosts = hosts
        self.routes = list(routes)
        self._hosts_seen: dict[str, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope, _headers(scope))
        if problem is not None:
            await _error(*problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def problem(self, scope: Scope, headers: Mapping[str, str]) -> tuple[int, str] | None:
        """(status, message) of the first rule the request breaks, or None."""
        host = headers.get("host")
        if not host:
            return 400, "the request has no Host header; send the server's host name"
        if not self._host_allowed(host):
            return 421, (f"this server does not answer to the host name {host!r} (a DNS "
                         f"rebinding defence); it answers to: {self.hosts.shown}. Add names "
                         f"with --allowed-host or {HOSTS_ENV}")
        method = str(scope.get("method", "GET")).upper()
        if scope["type"] != "http" or method in SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site", "").strip().lower()
        if site in ("cross-site", "same-site"):
            return 403, (f"{method} {scope['path']} from another web site is refused "
                         f"(Sec-Fetch-Site: {site}): state-changing requests must come from "
                         "this server's own pages or from a non-browser client")
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            return 403, (f"{method} {scope['path']} from the page at {origin!r} is refused: "
                         "state-changing requests must come from this server's own pages "
                         "or from a non-browser client (no Origin header)")
        if _has_body(headers):
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            # JSON first: matching the path against every route costs more than this check,
            # and a JSON body passes either way.
            if media_type != JSON_MEDIA_TYPE and self._routed(scope):
                got = f"'{headers['content-type']}'" if "content-type" in headers else "none"
                return 415, (f"{method} {scope['path']} takes a JSON body: send it with "
                             f"'Content-Type: {JSON_MEDIA_TYPE}' (got {got})")
        return None

    def _host_allowed(self, host: str) -> bool:
        """`hosts.allows`, remembered: a server hears the same few Host values on every
        request, and parsing one is a regular expression and an IP address check. The cache
        is bounded (a client making up names cannot grow it past HOST_CACHE entries)."""
        known = self._hosts_seen.get(host)
        if known is None:
            known = self.hosts.allows(host)
            if len(self._hosts_seen) >= HOST_CACHE:
                self._hosts_seen.clear()
            self._hosts_seen[host] = known
        return known

    def _routed(self, scope: Scope) -> bool:
        """Whether a route takes this path and method (else the router answers 404 / 405)."""
        return any(route.matches(scope)[0] == Match.FULL for route in self.routes)


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by (lowercase) name, the first of each name as Starlette's
    `Headers` reads them: a dict built once rather than a list scanned for each of the guard's
    half a dozen lookups (this runs for every request)."""
    return {name.decode("latin-1"): value.decode("latin-1")
            for name, value in reversed(list(scope["headers"]))}


def _has_body(headers: Mapping[str, str]) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in headers


_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


def _same_origin(origin: str, host: str) -> bool:
    """Whether `Origin` names this server as the client reached it (`Host`). The scheme is not
    compared: behind a TLS-terminating proxy the page is https and this hop is http."""
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False                        # "null" (sandboxed pages, file://) and junk
    ours = _split_host(host)
    theirs = _split_host(parts.netloc.rpartition("@")[2])
    if ours is None or theirs is None:
        return False
    if ours[0] != theirs[0]:
        return False
    if ours[1] is None:                     # default port: the page's must be default too
        return origin_port is None
    port = str(origin_port) if origin_port is not None else _DEFAULT_PORTS[parts.scheme]
    return port == ours[1]
