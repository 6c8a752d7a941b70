"""``ucloud-host``: run the host agent on this hypervisor until SIGTERM.

Stopping the agent leaves its VMs running; a restarted agent adopts them.
"""

from __future__ import annotations

import sys
import threading

from prometheus_client import REGISTRY

from ucloud import daemon
from ucloud.host.agent import HostAgent
from ucloud.host.hypervisor import open_hypervisor
from ucloud.host.metrics import HostMetrics
from ucloud.storage import open_storage
from ucloud.store import Store


def main() -> int:
    settings, log, stop = daemon.start("host")
    store = Store(settings)
    agent = HostAgent(store, settings, open_hypervisor(settings), open_storage(settings))
    host_metrics = HostMetrics(agent, settings)
    REGISTRY.register(host_metrics.collector)
    daemon.serve_metrics(settings, settings.host_metrics_port, store, f"host {agent.name}")
    threading.Thread(
        target=host_metrics.report_usage, args=(stop,), name="usage", daemon=True
    ).start()
    agent.run(stop)
    log.info("stopped; VMs keep running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
