"""Where the gateway may POST an invocation's callback, and the POST itself.

A callback URL comes from a token holder, and the gateway POSTs to it from inside the network
it runs in. Unchecked, that lets anyone with a token reach what only the gateway's host can
(server-side request forgery): a cloud's metadata service at ``169.254.169.254``, an admin
port on loopback, a database on the private network. So the operator says where callbacks
may go (``hetfaas serve --callback-allow``, repeated):

- a host name, or a pattern of names (``hooks.example.org``, ``*.example.org``): admits that
  name, whatever it resolves to except the always-refused networks below;
- an address or a network (``127.0.0.1``, ``10.0.0.0/8``, ``fd00::/8``): admits every host
  that resolves into it, the always-refused networks too when it names them explicitly.

With a list, a callback goes only where it says. Without one, a callback may go anywhere but
the always-refused networks: link-local (``169.254.0.0/16``, ``fe80::/10``, where the clouds'
metadata services answer), unspecified, broadcast and multicast addresses.

The URL is checked when the call is accepted (a clear 422 for a URL the rules refuse as
written), and again at delivery, on every address its host resolves to; the POST then connects
to the address that was checked (no second lookup that DNS could answer otherwise) and never
follows a redirect. A delivery the rules refuse is recorded as ``refused`` and not retried.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError
from .errors import BadInput, CallbackRefused

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_REFUSED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local: cloud metadata services (AWS, GCP, Azure, OpenStack)
        "fe80::/10",
        "0.0.0.0/8",  # "this host": connects to loopback on Linux
        "::/128",
        "255.255.255.255/32",
        "224.0.0.0/4",  # multicast
        "ff00::/8",
    )
)


def _address(text: str) -> Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])  # (an IPv6 zone id is not an address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return ip


@dataclasses.dataclass(frozen=True)
class CallbackPolicy:
    """The operator's list (see the module); an empty one: anywhere but the always-refused
    networks. Decisions are pure functions of the host and its addresses."""

    names: tuple[str, ...] = ()  # lower-case host names and fnmatch patterns
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> CallbackPolicy:
        """From ``--callback-allow`` values: networks and addresses, else host names."""
        names, networks = [], []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                raise ConfigurationError("--callback-allow: an empty entry")
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            label = entry.removeprefix("*.")
            if "/" in entry or ":" in entry or not label or not all(
                part and all(ch.isalnum() or ch in "-_*" for ch in part)
                for part in label.split(".")
            ):  # fmt: skip
                raise ConfigurationError(
                    f"--callback-allow {raw!r}: neither an address, a network (10.0.0.0/8) "
                    "nor a host name or pattern (hooks.example.org, *.example.org)"
                )
            names.append(entry)
        return cls(tuple(names), tuple(networks))

    @property
    def restricted(self) -> bool:
        return bool(self.names or self.networks)

    def _named(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.names)

    def refuses_address(self, ip: Address, named: bool) -> str | None:
        """Why the gateway may not connect to ``ip`` (``named``: the URL's host matched a
        name of the list), or None."""
        if any(ip in net for net in self.networks):
            return None  # named by the operator, even in an always-refused network
        if any(ip in net for net in ALWAYS_REFUSED):
            return f"{ip} is in a network callbacks never reach (link-local, multicast, ...)"
        if self.restricted and not named:
            return f"{ip} is not in --callback-allow"
        return None

    def refuses(self, host: str, addresses: Sequence[Address]) -> str | None:
        """Why a callback to ``host``, which resolved to ``addresses``, may not go, or None.
        Every address must be allowed: DNS may answer with any of them."""
        if not addresses:
            return f"{host} resolves to no address"
        named = self._named(host)
        for ip in addresses:
            why = self.refuses_address(ip, named)
            if why is not None:
                return f"callback host {host}: {why}"
        return None

    def check_url(self, url: Any) -> None:
        """At accept time: the URL is an http(s) URL that the rules do not refuse as written
        (a literal address, or a name outside a list of names only). Raises BadInput."""
        if url is None:
            return
        if not (isinstance(url, str) and url.isascii() and url.startswith(("http://", "https://"))):
            raise BadInput(f"callback_url must be an http(s) URL (ASCII), got {url!r}")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a port that is not one)
        except ValueError as exc:
            raise BadInput(f"callback_url {url!r} is not a URL: {exc}") from exc
        host = parts.hostname
        if not host:
            raise BadInput(f"callback_url {url!r} names no host")
        try:
            ip = _address(host)
        except ValueError:
            if self.restricted and not self.networks and not self._named(host):
                raise BadInput(f"callback_url host {host} is not in the gateway's "
                               "--callback-allow") from None  # fmt: skip
            return  # a name: its addresses are checked at delivery
        why = self.refuses_address(ip, named=False)
        if why is not None:
            raise BadInput(f"callback_url: {why}")


class _PinnedHTTP(http.client.HTTPConnection):
    """A connection to ``host`` (its Host header) made to the address that was checked."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned_ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pinned_ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()  # the certificate is checked against host
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.pinned_ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_ip, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def post_json(url: str, body: bytes, timeout_s: float, policy: CallbackPolicy) -> int:
    """POST ``body`` (JSON) to ``url`` if ``policy`` lets it go there; the HTTP status (a
    redirect is a status like another: not followed). Raises CallbackRefused, OSError."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(_address(str(info[4][0])) for info in infos))
    why = policy.refuses(host, addresses)
    if why is not None:
        raise CallbackRefused(why)
    conn_cls = _PinnedHTTPS if https else _PinnedHTTP
    for i, address in enumerate(addresses):  # each checked address in turn, until one answers
        conn = conn_cls(host, port, str(address), timeout_s)
        try:
            conn.connect()
            break
        except OSError:
            conn.close()
            if i == len(addresses) - 1:
                raise
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    finally:
        conn.close()


__all__ = ["ALWAYS_REFUSED", "CallbackPolicy", "CallbackRefused", "post_json"]
