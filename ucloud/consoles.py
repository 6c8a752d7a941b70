"""Console tokens and relay tickets: what lets a user, and only that user, reach one VM's console.

A console is opened in two hops (docs/design-decisions.md, "Consoles"):

1. The API gives the VM's owner a *token*: 32 random bytes, shown once. etcd keeps only its
   SHA-256 under ``<prefix>/console-token/<digest>``, bound to a lease, with the VM, the user,
   the console (VNC or serial) and when it expires. ``ucloud-console`` *consumes* it when a
   WebSocket opens: a compare-and-swap delete of the key as read, so of two connections with one
   token exactly one wins. Only then does it read the VM, so it finds the VM's current host.
2. ``ucloud-console`` asks that host's ``ucloud-console-relay`` (found under
   ``<prefix>/console-relay/<host>``, a key under the relay's lease) for the console with a
   *ticket*: the VM, the console, an expiry a few seconds away and a nonce, signed with HMAC-SHA256
   by the secret the two share. The relay refuses a bad signature, an old ticket and a nonce it
   has seen, and splices the connection to the VM's local socket.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from ucloud.models import VM, Status, Stored, now
from ucloud.store import Store

TOKEN_BYTES = 32
TICKET_SECONDS = 10.0  # how long a ticket may take from ucloud-console to the relay
MIN_SECRET = 32
# A VM has a display and a serial port only while QEMU runs it.
OPEN_STATUSES = frozenset({Status.RUNNING, Status.SUSPENDED})


class Console(StrEnum):
    VNC = "vnc"
    SERIAL = "serial"


class Refused(Exception):
    """A console connection that must not go through; the message is safe to show the user,
    ``why`` a short fixed code for metrics (``ucloud_console_connections_total{result}``)."""

    def __init__(self, message: str, why: str = "other") -> None:
        super().__init__(message)
        self.why = why


class ConsoleToken(Stored):
    kind: ClassVar[str] = "console-token"

    digest: str  # SHA-256 of the token, hex: the token itself is never stored
    vm: str
    owner: str
    owner_realm: str
    console: Console
    expires: float

    @property
    def id(self) -> str:
        return self.digest


class ConsoleRelay(Stored):
    """A host's console relay, while it runs (under its lease)."""

    kind: ClassVar[str] = "console-relay"

    host: str
    address: str  # host:port, as ucloud-console reaches it
    since: float = Field(default_factory=now)

    @property
    def id(self) -> str:
        return self.host


@dataclass(frozen=True)
class Issued:
    token: str
    expires: float


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(store: Store, vm: VM, console: Console, ttl: int) -> Issued:
    """A new single-use token for ``vm``'s console, bound to its owner, stored as a hash."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = time.time() + ttl
    record = ConsoleToken(
        digest=digest(token),
        vm=vm.uuid,
        owner=vm.owner,
        owner_realm=vm.owner_realm,
        console=console,
        expires=expires,
    )
    # The lease only cleans up; `expires` is what counts (a lease may outlive its TTL a little).
    store.create(record, lease=store.lease(ttl + 5))
    return Issued(token, expires)


def consume(store: Store, token: str, at: float | None = None) -> ConsoleToken:
    """The token's record, deleted by compare-and-swap so that no one can use it again."""
    if not 20 <= len(token) <= 100:
        raise Refused("not a console token", "malformed_token")
    found = store.get(ConsoleToken, digest(token))
    if found is None:
        raise Refused(
            "unknown console token (used already, expired, or never issued)", "unknown_token"
        )
    if not store.delete(found):
        raise Refused("this console token was used already", "used_token")
    if found.value.expires < (time.time() if at is None else at):
        raise Refused("this console token has expired: ask for a new console", "expired_token")
    return found.value


@dataclass(frozen=True)
class Target:
    """Where a consumed token leads: the relay of the VM's current host, and what to ask it."""

    vm: str
    console: Console
    host: str
    relay: str  # host:port


def resolve(store: Store, token: ConsoleToken) -> Target:
    """The VM's console as things are now: its current host and that host's relay."""
    found = store.get(VM, token.vm)
    if found is None:
        raise Refused("the VM no longer exists", "vm_gone")
    vm = found.value
    if (vm.owner, vm.owner_realm) != (token.owner, token.owner_realm):
        raise Refused("the VM no longer belongs to the token's user", "other_user")
    if vm.status not in OPEN_STATUSES or not vm.hostname:
        raise Refused(
            f"VM {vm.name} is {vm.status}: it has a console only while it runs", "vm_not_running"
        )
    relay = store.get(ConsoleRelay, vm.hostname)
    if relay is None:
        raise Refused(f"the console relay of host {vm.hostname} is not running", "relay_down")
    return Target(vm.uuid, token.console, vm.hostname, relay.value.address)


# --- tickets ---------------------------------------------------------------------------------


def check_secret(secret: str) -> str:
    if len(secret) < MIN_SECRET:
        raise ValueError(
            f"console_relay_secret must be at least {MIN_SECRET} characters "
            "(e.g. `openssl rand -hex 32`)"
        )
    return secret


def _mac(secret: str, body: str) -> str:
    return hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()


def ticket(secret: str, vm: str, console: Console, at: float | None = None) -> bytes:
    """One line asking a relay for ``vm``'s console."""
    expires = (time.time() if at is None else at) + TICKET_SECONDS
    body = f"{vm} {console} {expires:.3f} {secrets.token_hex(16)}"
    return f"{body} {_mac(secret, body)}\n".encode()


@dataclass(frozen=True)
class Ticket:
    vm: str
    console: Console
    expires: float
    nonce: str


def read_ticket(secret: str, line: bytes, at: float | None = None) -> Ticket:
    """The ticket in ``line`` if its signature is good and it has not expired (a relay must
    still refuse a nonce it has seen)."""
    try:
        vm, console, expires, nonce, mac = line.decode("ascii").split()
        parsed = Ticket(vm, Console(console), float(expires), nonce)
    except ValueError:
        raise Refused("malformed ticket", "malformed_ticket") from None
    if not hmac.compare_digest(mac, _mac(secret, f"{vm} {console} {expires} {nonce}")):
        raise Refused("bad ticket signature", "bad_signature")
    if parsed.expires < (time.time() if at is None else at):
        raise Refused("ticket expired", "expired_ticket")
    if not VM.is_id(vm) or "." in vm or len(vm) > 64:
        raise Refused("malformed ticket", "malformed_ticket")
    return parsed


# --- where a host keeps a VM's console sockets -----------------------------------------------


def vnc_socket(vnc_dir: str | Path, vm: str) -> Path:
    return Path(vnc_dir) / f"{vm}.sock"


def serial_socket(vnc_dir: str | Path, vm: str) -> Path:
    return Path(vnc_dir) / f"{vm}.tty"


def socket_for(vnc_dir: str | Path, vm: str, console: Console) -> Path:
    return vnc_socket(vnc_dir, vm) if console == Console.VNC else serial_socket(vnc_dir, vm)
