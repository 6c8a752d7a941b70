"""Metrics of ``ucloud-console`` and of the relays (docs/design-decisions.md, "Metrics").

ucloud-console: websockify forks a process per connection, and a forked child never touches a
metric: the parent's scrape thread may hold a metric's lock at the moment of the fork, and what
a child counted would die with it. A child only reports what happens, one datagram per event
on a socket pair made before the first fork (``Events``); the parent reads them in its accept
loop (websockify's ``poll``, at least once a second) and keeps the counters and its table of
open sessions (``Meter``), from which the sessions gauge is computed at each scrape. A child
that dies without saying so (killed) is taken off the table when the parent sees it gone.

A relay is one process (a thread per connection): it counts its tickets and keeps its open
sessions in its own table (``ucloud.console.relay``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import Counter as Tally
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.core import Metric

from ucloud.consoles import Console
from ucloud.metrics import StateCollector, gauge

# The console kind of a connection whose token itself was refused (none, unknown, used, expired).
UNKNOWN = "unknown"
KINDS = tuple(str(c) for c in Console)

CONNECTIONS = Counter(
    "ucloud_console_connections_total",
    "Console WebSocket connections by console kind (unknown: the token itself was refused) "
    "and result: accepted, or why refused (unknown_token, used_token, expired_token, "
    "other_user, vm_not_running, relay_down, relay_unreachable, relay_refused, ...)",
    ["console", "result"],
)
SESSION_SECONDS = Histogram(
    "ucloud_console_session_duration_seconds",
    "How long accepted consoles stayed open, by console kind",
    ["console"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600),
)
RELAY_TICKETS = Counter(
    "ucloud_console_relay_tickets_total",
    "Connections to this host's console relay by result: accepted, or why refused "
    "(bad_signature, expired_ticket, used_ticket, malformed_ticket, no_ticket, not_here)",
    ["host", "result"],
)


@dataclass(frozen=True)
class Session:
    console: str
    host: str
    since: float  # monotonic


class Meter:
    """The parent's side: counts the children's events and keeps their open sessions."""

    def __init__(self) -> None:
        self.sessions: dict[int, Session] = {}  # child pid -> its open console
        self.hosts: set[str] = set()  # hosts consoles were opened on (their 0s are series)

    def handle(self, event: bytes, now: float) -> None:
        """One event from a child; one that cannot be read is dropped (it counts nothing)."""
        words = event.decode("ascii", errors="replace").split()
        match words:
            case ["connection", console, result]:
                CONNECTIONS.labels(console, result).inc()
            case ["opened", pid, console, host] if pid.isdigit():
                self.sessions[int(pid)] = Session(console, host, now)
                self.hosts.add(host)
            case ["closed", pid] if pid.isdigit():
                self._end(int(pid), now)

    def forget_gone(self, alive: Collection[int], now: float) -> None:
        """End the sessions of children that exited without saying so."""
        for pid in [p for p in self.sessions if p not in alive]:
            self._end(pid, now)

    def _end(self, pid: int, now: float) -> None:
        session = self.sessions.pop(pid, None)
        if session is not None:
            SESSION_SECONDS.labels(session.console).observe(now - session.since)

    def families(self) -> Iterable[Metric]:
        yield sessions_gauge(
            "ucloud_console_sessions",
            "Consoles open through this ucloud-console now, by console kind and the VM's host",
            [(s.console, s.host) for s in list(self.sessions.values())],
            set(self.hosts),
        )

    @property
    def collector(self) -> StateCollector:
        return StateCollector("console sessions", self.families)


def sessions_gauge(
    name: str, documentation: str, open_now: list[tuple[str, str]], hosts: Iterable[str]
) -> Metric:
    """``name{console, host}``: how many (console, host) pairs ``open_now`` holds, for each
    console kind of each of ``hosts`` (0s too: a count that falls to 0 reads 0, not nothing)."""
    counts = Tally(open_now)
    family = gauge(name, documentation, ["console", "host"])
    for host in sorted(set(hosts) | {host for _, host in open_now}):
        for kind in KINDS:
            family.add_metric([kind, host], float(counts[(kind, host)]))
    return family


class Events:
    """A socket pair made by the parent before it forks: children ``send``, the parent
    ``drain``s into its ``Meter``."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self._reader, self._writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._reader.setblocking(False)

    # --- in a child -------------------------------------------------------------------------

    def send(self, *words: str) -> None:
        # Never blocks a console: with the parent behind by hundreds of events, one is lost.
        with contextlib.suppress(OSError):
            self._writer.send(" ".join(words).encode(), socket.MSG_DONTWAIT)

    def connection(self, console: str, result: str) -> None:
        self.send("connection", console, result)

    def opened(self, console: str, host: str) -> None:
        self.send("opened", str(os.getpid()), console, host)

    def closed(self) -> None:
        self.send("closed", str(os.getpid()))

    # --- in the parent ----------------------------------------------------------------------

    def drain(self, alive: Callable[[], Collection[int]]) -> None:
        """Count the events waiting, then end the sessions of children not ``alive()``."""
        while True:
            try:
                event = self._reader.recv(512)
            except BlockingIOError:
                break
            self.meter.handle(event, time.monotonic())
        self.meter.forget_gone(alive(), time.monotonic())
