"""What every daemon's main() does: settings, logging, a stop event set by SIGTERM/SIGINT,
and, for daemons of which one acts at a time, the leadership loop."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from ucloud import metrics
from ucloud.config import Settings, load_settings
from ucloud.election import Election
from ucloud.logs import setup_logging
from ucloud.store import Guard, Store


def start(name: str) -> tuple[Settings, logging.Logger, threading.Event]:
    settings = load_settings()
    log = setup_logging(name, settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return settings, log, stop


def serve_metrics(
    settings: Settings, port: int, store: Store | None, what: str
) -> metrics.Server | None:
    """The daemon's /metrics on ``metrics_address:port`` (nothing when ``port`` is 0), with its
    watches' state when it has a store; a daemon registers its own collectors beside."""
    if store is not None:
        metrics.register_watches(store)
    return metrics.serve(port, settings.metrics_address, what=what)


def lead(
    store: Store,
    name: str,
    ttl: int,
    stop: threading.Event,
    work: Callable[[Guard, threading.Event], None],
) -> None:
    """Campaign; while leading, ``work(guard, lost)`` until it returns (stopped, deposed, or
    ``lost`` set when the lease expires); then hand leadership back and stand again."""
    election = Election(store, name, ttl)
    leading = metrics.LEADER.labels(name)
    leading.set(0)
    try:
        while not stop.is_set():
            guard = election.campaign(stop)
            if guard is None:
                break
            leading.set(1)
            try:
                work(guard, election.lost)
            finally:
                leading.set(0)
            election.resign()
    finally:
        election.resign()
