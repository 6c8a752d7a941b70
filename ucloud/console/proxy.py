"""``ucloud-console``: the WebSocket proxy users' browsers and CLIs reach, built on websockify.

Each connection carries a console token in its query (``?token=...``). websockify forks a
process per connection; in it, before the WebSocket handshake is answered, the token plugin
consumes the token and finds the VM's current host (``ucloud.consoles``). A refused connection
gets an HTTP 403 with the reason and never reaches a relay. An accepted one is handed to the
host's relay with a signed ticket, and websockify moves the bytes.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
from urllib.parse import parse_qs, urlparse

from websockify.websocketproxy import ProxyRequestHandler, WebSocketProxy

from ucloud.config import Settings
from ucloud.console.metrics import UNKNOWN, Events, Meter
from ucloud.console.relay import split_address
from ucloud.consoles import (
    ConsoleToken,
    Refused,
    Target,
    check_secret,
    consume,
    resolve,
    ticket,
)
from ucloud.store import Store, StoreError

log = logging.getLogger(__name__)


class ConsoleTokens:
    """websockify's token plugin, ours: consumes the token, then finds where its VM is now."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Opened in the connection's process: a gRPC channel must not cross a fork.
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings)
        return self._store

    def consume(self, token: str) -> ConsoleToken:
        return consume(self.store, token)

    def resolve(self, token: ConsoleToken) -> Target:
        return resolve(self.store, token)

    def lookup(self, token: str) -> Target:
        return self.resolve(self.consume(token))


class ConsoleRequestHandler(ProxyRequestHandler):
    server: ConsoleProxy
    target: Target
    console = UNKNOWN  # the kind asked for, once the token is read

    def validate_connection(self) -> None:
        args = parse_qs(urlparse(self.path).query)
        token = (args.get("token") or [""])[0]
        if not token:
            self._refuse(403, "no console token", "no_token")
        plugin = self.server.token_plugin
        try:
            consumed = plugin.consume(token)
            self.console = str(consumed.console)
            self.target = plugin.resolve(consumed)
        except Refused as e:
            self._refuse(403, str(e), e.why)
        except StoreError as e:
            log.warning("console token not checked: %s", e)
            self._refuse(
                503, "the cluster's store is not answering; try again", "store_unavailable"
            )

    def _refuse(self, code: int, reason: str, why: str) -> None:
        log.warning("refused a console connection from %s: %s", self.client_address[0], reason)
        self.server.events.connection(self.console, why)
        self.send_error(code, reason)
        raise self.server.EClose(reason)

    def new_websocket_client(self) -> None:
        t = self.target
        events = self.server.events
        try:
            relay = socket.create_connection(split_address(t.relay), timeout=5)
        except OSError as e:
            log.warning("relay of host %s at %s: %s", t.host, t.relay, e)
            events.connection(self.console, "relay_unreachable")
            raise self.CClose(1011, f"cannot reach the console relay of host {t.host}") from e
        try:
            relay.sendall(ticket(self.server.relay_secret, t.vm, t.console))
            answer = _read_answer(relay)
            if answer != "OK":
                events.connection(self.console, "relay_refused")
                raise self.CClose(1011, answer.removeprefix("NO ") or "refused by the relay")
            relay.settimeout(None)
            relay.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("console %s of VM %s on host %s opened", t.console, t.vm, t.host)
            events.connection(self.console, "accepted")
            events.opened(self.console, t.host)
            try:
                self.do_proxy(relay)
            finally:
                events.closed()
        finally:
            relay.close()


def _read_answer(sock: socket.socket) -> str:
    answer = b""
    while not answer.endswith(b"\n") and len(answer) < 512:
        chunk = sock.recv(1)
        if not chunk:
            break
        answer += chunk
    return answer.decode(errors="replace").strip()


class ConsoleProxy(WebSocketProxy):
    def __init__(self, settings: Settings) -> None:
        host, port = split_address(settings.console_proxy_bind)
        super().__init__(
            RequestHandlerClass=ConsoleRequestHandler,
            listen_host=host,
            listen_port=port,
            token_plugin=ConsoleTokens(settings),
            web="",  # WebSockets only: plain GETs get 405
            # A ping every 5 s: a console whose browser went away is closed within seconds.
            heartbeat=5,
        )
        self.relay_secret = check_secret(settings.console_relay_secret)
        self.meter = Meter()
        # Made before the first fork: every connection's process reports on it.
        self.events = Events(self.meter)

    def poll(self) -> None:
        # websockify's accept loop calls this at least once a second, in the parent.
        self.events.drain(lambda: {p.pid or 0 for p in multiprocessing.active_children()})
