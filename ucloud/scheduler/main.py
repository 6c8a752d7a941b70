"""``ucloud-scheduler``: campaign for leadership, then reconcile until stopped or deposed."""

from __future__ import annotations

import sys

from ucloud import daemon
from ucloud.scheduler.daemon import Scheduler
from ucloud.store import Store


def main() -> int:
    settings, log, stop = daemon.start("scheduler")
    store = Store(settings)
    daemon.lead(
        store,
        "scheduler",
        settings.scheduler_lease_ttl,
        stop,
        lambda guard, lost: Scheduler(store, settings, guard).run(stop, lost),
    )
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
