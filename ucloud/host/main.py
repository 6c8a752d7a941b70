"""``ucloud-host``: run the host agent on this hypervisor until SIGTERM.

Stopping the agent leaves its VMs running; a restarted agent adopts them.
"""

from __future__ import annotations

import sys

from ucloud import daemon
from ucloud.host.agent import HostAgent
from ucloud.host.hypervisor import open_hypervisor
from ucloud.storage import open_storage
from ucloud.store import Store


def main() -> int:
    settings, log, stop = daemon.start("host")
    agent = HostAgent(Store(settings), settings, open_hypervisor(settings), open_storage(settings))
    agent.run(stop)
    log.info("stopped; VMs keep running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
