"""``ucloud-scheduler``: campaign for leadership, then reconcile until stopped or deposed."""

from __future__ import annotations

import signal
import sys
import threading

from ucloud.config import load_settings
from ucloud.election import Election
from ucloud.logs import setup_logging
from ucloud.scheduler.daemon import Scheduler
from ucloud.store import Store


def main() -> int:
    settings = load_settings()
    log = setup_logging("scheduler", settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    store = Store(settings)
    election = Election(store, "scheduler", settings.scheduler_lease_ttl)
    try:
        while not stop.is_set():
            guard = election.campaign(stop)
            if guard is None:
                break
            Scheduler(store, settings, guard).run(stop, election.lost)
            # Deposed or lease lost: hand leadership back and stand for it again.
            election.resign()
    finally:
        election.resign()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
