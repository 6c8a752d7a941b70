"""Fetching an image from an http(s) URL for the image scanner, without being turned against
the cluster's own network (server-side request forgery).

A URL's host name is resolved once; every address it resolves to must be allowed, and the
connection goes to the checked address (never resolved again: a name that answers a public
address to the check and a private one to the connection, DNS rebinding, gains nothing). TLS
is still verified against the name. Allowed are global unicast addresses, and those in the
networks an administrator allows (``import_allow_networks``: an internal mirror); refused are
loopback, link-local (169.254.169.254, the cloud metadata address), private, shared,
multicast, reserved and unspecified addresses, IPv4-mapped ones included. Redirects are
followed (at most MAX_REDIRECTS), each one checked the same way. The body is written to an
unlinked temporary file, at most ``limit`` bytes, with a timeout for each read and a deadline
for the whole download.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from ucloud.imagescanner.inspect import Refused

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CHUNK = 1 << 20
USER_AGENT = "ucloud-imagescanner"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Policy:
    allowed_networks: Sequence[Network] = ()
    limit: int = 100 << 30  # bytes
    timeout: float = 30.0  # seconds for a connection or one read
    deadline: float = 3600.0  # seconds for the whole download

    @staticmethod
    def networks(text: str) -> list[Network]:
        """``import_allow_networks``: comma-separated networks (``10.1.2.0/24, fd00::/8``)."""
        return [ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip()]


def refusal(address: Address, allowed: Sequence[Network]) -> str | None:
    """Why ``address`` may not be fetched from (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        return f"{address} is {'unspecified' if address.is_unspecified else 'multicast'}"
    if any(address.version == n.version and address in n for n in allowed):
        return None
    for kind, matches in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
    ):
        if matches:
            return f"{address} is a {kind} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # the name, for the Host header and TLS
    port: int
    path: str  # path and query
    address: str  # where to connect: the checked address


def check(url: str, allowed: Sequence[Network]) -> Target:
    """Parse ``url`` and resolve its host once; Refused unless every address is allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise Refused(f"{url!r} is not a valid URL ({e})") from e
    if parts.scheme not in ("http", "https"):
        raise Refused(f"only http and https URLs can be imported, not {parts.scheme or url!r}")
    if not parts.hostname:
        raise Refused(f"{url!r} names no host")
    if parts.username or parts.password:
        raise Refused("URLs with a user name or password are not accepted")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Refused(f"cannot resolve {parts.hostname}: {e}") from e
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for text in addresses:
        why = refusal(ipaddress.ip_address(text.split("%")[0]), allowed)
        if why is not None:
            raise Refused(
                f"{parts.hostname} resolves to {text}, which images are not fetched from: {why}"
                " (an administrator may allow its network: import_allow_networks)"
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url, parts.scheme, parts.hostname, port, path, addresses[0])


class _Pinned(http.client.HTTPConnection):
    """HTTP to the checked address, whatever the name resolves to now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.target = target

    def connect(self) -> None:
        self.sock = socket.create_connection((self.target.address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    """HTTPS to the checked address; the certificate is verified against the name."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self.tls)
        self.target = target

    def connect(self) -> None:
        raw = socket.create_connection((self.target.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.target.host)


@contextmanager
def download(
    url: str,
    policy: Policy,
    directory: str,
    progress: Callable[[float], None] | None = None,
) -> Iterator[int]:
    """The body of ``url`` in an unlinked temporary file in ``directory``: its descriptor,
    closed afterwards. Refused (with the reason, for the user) on any refusal or failure."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory) as file:
        fd = file.fileno()
        _fetch(url, policy, fd, progress)
        yield fd


def _fetch(url: str, policy: Policy, fd: int, progress: Callable[[float], None] | None) -> None:
    started = time.monotonic()
    for _ in range(MAX_REDIRECTS + 1):
        target = check(url, policy.allowed_networks)
        kind = _PinnedTLS if target.scheme == "https" else _Pinned
        connection = kind(target, policy.timeout)
        try:
            try:
                connection.request("GET", target.path, headers={"User-Agent": USER_AGENT})
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise Refused(f"cannot fetch {url}: {_brief(e)}") from e
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise Refused(f"{url} redirects nowhere (no Location)")
                url = urljoin(url, location)
                log.info("following a redirect to %s", url)
                continue
            if response.status != 200:
                raise Refused(f"{url} answered {response.status} {response.reason}")
            _save(response, url, policy, fd, started, progress)
            return
        finally:
            connection.close()
    raise Refused(f"more than {MAX_REDIRECTS} redirects, from {url}")


def _save(
    response: http.client.HTTPResponse,
    url: str,
    policy: Policy,
    fd: int,
    started: float,
    progress: Callable[[float], None] | None,
) -> None:
    length = response.getheader("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    if expected is not None and expected > policy.limit:
        raise Refused(f"{url} is {expected} bytes; at most {policy.limit} bytes are fetched")
    received = 0
    while True:
        if time.monotonic() - started > policy.deadline:
            raise Refused(f"fetching {url} took longer than {policy.deadline:g} s")
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise Refused(f"fetching {url} failed after {received} bytes: {_brief(e)}") from e
        if not chunk:
            break
        received += len(chunk)
        if received > policy.limit:
            raise Refused(f"{url} is larger than {policy.limit} bytes, the most fetched")
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        if progress is not None and expected:
            progress(100.0 * received / expected)
    if expected is not None and received != expected:
        raise Refused(f"{url} ended after {received} of {expected} bytes")


def _brief(e: BaseException) -> str:
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    return str(e) or type(e).__name__
