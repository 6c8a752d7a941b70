"""``ucloud-imagescanner``: campaign for leadership, then make and delete images until stopped.

One scanner acts at a time (an etcd election, as the scheduler's): an image left CREATING is
made again from the start, which is safe only when no other scanner may still be making it.
Run it where both the upload root and Ceph are reachable.
"""

from __future__ import annotations

import signal
import sys
import threading

from ucloud.config import load_settings
from ucloud.election import Election
from ucloud.imagescanner.daemon import ImageScanner
from ucloud.logs import setup_logging
from ucloud.storage import open_storage
from ucloud.store import Store


def main() -> int:
    settings = load_settings()
    log = setup_logging("imagescanner", settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    store = Store(settings)
    storage = open_storage(settings)
    election = Election(store, "imagescanner", settings.imagescanner_lease_ttl)
    try:
        while not stop.is_set():
            guard = election.campaign(stop)
            if guard is None:
                break
            ImageScanner(store, settings, storage, guard).run(stop, election.lost)
            election.resign()
    finally:
        election.resign()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
