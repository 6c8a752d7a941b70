"""``ucloud-console-relay``: on each host, the one way to its VMs' displays and serial ports.

It listens on ``console_relay_bind`` (an address of the hosts' management network), takes one
signed ticket line per connection (``ucloud.consoles.read_ticket``), answers ``OK`` or
``NO <reason>``, and then splices the connection to the VM's local socket. It announces its
address under ``<prefix>/console-relay/<host>``, bound to its lease, so ucloud-console finds it
and stops using it when it is gone.

QEMU serves a serial socket to one client at a time: a new serial console of a VM closes the
one before it (like ``virsh console --force``), so a forgotten browser tab never locks a user
out of their VM's serial port.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterable

from prometheus_client.core import Metric

from ucloud import retry
from ucloud.config import Settings
from ucloud.console.metrics import RELAY_TICKETS, sessions_gauge
from ucloud.console.splice import splice
from ucloud.consoles import (
    TICKET_SECONDS,
    Console,
    ConsoleRelay,
    Refused,
    Ticket,
    check_secret,
    read_ticket,
    socket_for,
)
from ucloud.retry import Backoff
from ucloud.store import Store, StoreError

log = logging.getLogger(__name__)

LEASE_TTL = 10
MAX_TICKET = 512


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Relay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secret = check_secret(settings.console_relay_secret)
        self.address = settings.console_relay_address or settings.console_relay_bind
        self._lock = threading.Lock()
        self._nonces: dict[str, float] = {}  # seen nonce -> when its ticket expires
        self._serial: dict[str, socket.socket] = {}  # VM -> its serial console's client
        self._open: dict[socket.socket, Console] = {}  # client -> its console, while open
        self.server = _Server(split_address(settings.console_relay_bind), self)

    def families(self) -> Iterable[Metric]:
        with self._lock:
            open_now = [(str(c), self.settings.hostname) for c in self._open.values()]
        yield sessions_gauge(
            "ucloud_console_relay_sessions",
            "Consoles this relay is splicing to its host's VMs now, by console kind",
            open_now,
            [self.settings.hostname],
        )

    # --- the daemon ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self.server.serve_forever, name="relay", daemon=True).start()
        log.info("relaying consoles of host %s on %s", self.settings.hostname, self.address)
        store = Store(self.settings)
        try:
            # Announce again whenever the lease is lost (etcd was away longer than its TTL).
            while (
                retry.until_done(
                    stop,
                    "announce the relay",
                    lambda: self._announce(store, stop),
                    Backoff.of(self.settings),
                    (StoreError,),
                )
                and not stop.is_set()
            ):
                pass
        finally:
            self.server.shutdown()
            self.server.server_close()
            store.close()

    def _announce(self, store: Store, stop: threading.Event) -> None:
        """Hold a lease with the relay's key under it until stopped or the lease is lost."""
        lost = threading.Event()
        keep = store.hold_lease(LEASE_TTL, lost.set)
        try:
            store.put_owned(
                ConsoleRelay(host=self.settings.hostname, address=self.address), keep.lease
            )
            while not stop.is_set() and not lost.is_set():
                stop.wait(1)
        finally:
            # Revoked: ucloud-console stops sending tickets here at once.
            keep.stop(revoke=stop.is_set())

    # --- one connection --------------------------------------------------------------------------

    def admit(self, line: bytes) -> Ticket:
        ticket = read_ticket(self.secret, line)
        now = time.time()
        with self._lock:
            for nonce, expires in list(self._nonces.items()):
                if expires < now - TICKET_SECONDS:
                    del self._nonces[nonce]
            if ticket.nonce in self._nonces:
                raise Refused("ticket used already", "used_ticket")
            self._nonces[ticket.nonce] = ticket.expires
        return ticket

    def serve(self, client: socket.socket) -> None:
        client.settimeout(5)
        try:
            line = _read_line(client)
            ticket = self.admit(line)
            target = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                target.connect(str(socket_for(self.settings.vnc_dir, ticket.vm, ticket.console)))
            except OSError:
                target.close()
                raise Refused(
                    "the VM's console is not on this host (moved or stopped)", "not_here"
                ) from None
        except Refused as e:
            log.warning("refused a console connection: %s", e)
            RELAY_TICKETS.labels(self.settings.hostname, e.why).inc()
            client.sendall(f"NO {e}\n".encode())
            return
        except OSError:
            return
        with target:
            client.sendall(b"OK\n")
            client.settimeout(None)
            RELAY_TICKETS.labels(self.settings.hostname, "accepted").inc()
            if ticket.console == Console.SERIAL:
                self._take_serial(ticket.vm, client)
            log.info("console %s of VM %s opened", ticket.console, ticket.vm)
            with self._lock:
                self._open[client] = ticket.console
            try:
                splice(client, target)
            finally:
                with self._lock:
                    del self._open[client]
                    if self._serial.get(ticket.vm) is client:
                        del self._serial[ticket.vm]
                log.info("console %s of VM %s closed", ticket.console, ticket.vm)

    def _take_serial(self, vm: str, client: socket.socket) -> None:
        with self._lock:
            before = self._serial.get(vm)
            self._serial[vm] = client
        if before is not None:
            with contextlib.suppress(OSError):
                before.shutdown(socket.SHUT_RDWR)


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        if len(line) > MAX_TICKET:
            raise Refused("malformed ticket", "malformed_ticket")
        chunk = sock.recv(1)
        if not chunk:
            raise Refused("no ticket", "no_ticket")
        line += chunk
    return line


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.relay.serve(self.request)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], relay: Relay) -> None:
        self.relay = relay
        super().__init__(address, _Handler)
