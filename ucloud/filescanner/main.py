"""``ucloud-filescanner``: register users' uploaded files until SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

from ucloud.config import load_settings
from ucloud.filescanner.daemon import FileScanner
from ucloud.logs import setup_logging
from ucloud.store import Store


def main() -> int:
    settings = load_settings()
    log = setup_logging("filescanner", settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    store = Store(settings)
    try:
        FileScanner(store, settings).run(stop)
    finally:
        store.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
