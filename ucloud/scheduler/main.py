"""``ucloud-scheduler``: campaign for leadership, then reconcile until stopped or deposed."""

from __future__ import annotations

import sys
import threading

from prometheus_client import REGISTRY

from ucloud import daemon
from ucloud.scheduler.daemon import Scheduler
from ucloud.scheduler.metrics import SchedulerCollector
from ucloud.store import Guard, Store


def main() -> int:
    settings, log, stop = daemon.start("scheduler")
    store = Store(settings)
    collector = SchedulerCollector()
    REGISTRY.register(collector)
    daemon.serve_metrics(settings, settings.scheduler_metrics_port, store, "the scheduler")

    def work(guard: Guard, lost: threading.Event) -> None:
        collector.scheduler = Scheduler(store, settings, guard)
        try:
            collector.scheduler.run(stop, lost)
        finally:
            collector.scheduler = None

    daemon.lead(store, "scheduler", settings.scheduler_lease_ttl, stop, work)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
