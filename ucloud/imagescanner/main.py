"""``ucloud-imagescanner``: campaign for leadership, then make and delete images until stopped.

One scanner acts at a time (an etcd election, as the scheduler's): an image left CREATING is
made again from the start, which is safe only when no other scanner may still be making it.
Run it where both the upload root and Ceph are reachable.
"""

from __future__ import annotations

import sys

from ucloud import daemon
from ucloud.imagescanner.daemon import ImageScanner
from ucloud.storage import open_storage
from ucloud.store import Store


def main() -> int:
    settings, log, stop = daemon.start("imagescanner")
    store = Store(settings)
    storage = open_storage(settings)
    daemon.serve_metrics(settings, settings.imagescanner_metrics_port, store, "the image scanner")
    daemon.lead(
        store,
        "imagescanner",
        settings.imagescanner_lease_ttl,
        stop,
        lambda guard, lost: ImageScanner(store, settings, storage, guard).run(stop, lost),
    )
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
