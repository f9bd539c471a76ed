"""Which app URLs the server may call: the `--app-url-allow` list.

Registration (`POST /fn/register`) and sync (`POST /v1/apps/sync`) make the server send
requests to URLs it is given: the sync PUTs to the URL, and every run of a registered function
POSTs to the URLs the app registered. Exposed on a network, that is a request-forgery primitive
into whatever the server can reach (cloud metadata services, admin ports). The allow-list bounds
it: when set, every such URL must name an allowed host, checked at sync, at registration and
before every call to an app.

Entries are host names (`app.internal`), domain suffixes (`.svc.cluster.local` or
`*.svc.cluster.local`: any name under it), IP addresses and networks (`10.0.0.0/8`, `::1`).
Names are compared as written and never resolved: a network entry matches only URLs whose host
is an IP address inside it, so no DNS answer (or DNS rebinding) can widen the list, at the cost
of having to list `localhost` by name if apps register with it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from stepwell.core.config import ConfigError
from stepwell.core.protocol import ProtocolError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")


class AppUrlNotAllowed(ProtocolError):
    """An app URL outside the configured allow-list (HTTP 403 where a request carried it)."""


def split_entries(values: str | Iterable[str] | None) -> list[str]:
    """Entries from an option that may be repeated and comma- or space-separated."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [part for value in values for part in re.split(r"[\s,]+", value) if part]


def _host_of(url: str) -> str:
    """The URL's host, lowercased, without brackets or a trailing dot; ValueError if none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("it is not an http(s) URL")
    host = parts.hostname
    if not host:
        raise ValueError("it names no host")
    return host.rstrip(".")


@dataclass(frozen=True)
class AppUrlPolicy:
    """A parsed `--app-url-allow` list (see the module docstring)."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[Network, ...]
    shown: str                      # the list as the operator wrote it, for messages

    @classmethod
    def parse(cls, values: str | Iterable[str] | None) -> AppUrlPolicy | None:
        """The policy for an option's value; None (any URL) when it is empty or `*`.
        Raises ConfigError naming an entry that is neither a host name nor a network."""
        entries = split_entries(values)
        if not entries or "*" in entries:
            return None
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for entry in entries:
            lowered = entry.lower().rstrip(".")
            try:
                networks.append(ipaddress.ip_network(lowered.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            suffix = lowered.removeprefix("*").startswith(".")
            name = lowered.removeprefix("*").removeprefix(".")
            if not _NAME_RE.match(name):
                raise ConfigError(
                    f"--app-url-allow entry {entry!r} is neither a host name (app.internal), "
                    "a domain suffix (.internal) nor an IP network (10.0.0.0/8)")
            if suffix:
                suffixes.append("." + name)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(networks), ",".join(entries))

    def allows_host(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.names or any(host.endswith(s) for s in self.suffixes)
        mapped = getattr(address, "ipv4_mapped", None)
        return any(a in net for a in (address, mapped) if a is not None
                   for net in self.networks if net.version == a.version)

    def check(self, url: str, what: str = "app URL") -> None:
        """Raise AppUrlNotAllowed (with the reason and the list) unless `url` may be called."""
        try:
            host = _host_of(url)
        except ValueError as exc:
            raise AppUrlNotAllowed(f"the {what} {url!r} cannot be called: {exc}") from None
        if not self.allows_host(host):
            raise AppUrlNotAllowed(
                f"the {what} {url!r} is not allowed: its host {host!r} is not in the server's "
                f"app URL allow-list ({self.shown}); see --app-url-allow")
