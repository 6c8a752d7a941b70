"""``ucloud-filescanner``: register users' uploaded files until SIGTERM."""

from __future__ import annotations

import sys

from ucloud import daemon
from ucloud.filescanner.daemon import FileScanner
from ucloud.store import Store


def main() -> int:
    settings, log, stop = daemon.start("filescanner")
    store = Store(settings)
    daemon.serve_metrics(settings, settings.filescanner_metrics_port, store, "the file scanner")
    try:
        FileScanner(store, settings).run(stop)
    finally:
        store.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
