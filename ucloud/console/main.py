"""``ucloud-console`` (the proxy users reach) and ``ucloud-console-relay`` (one per host)."""

from __future__ import annotations

import os
import sys

from prometheus_client import REGISTRY

from ucloud import daemon
from ucloud.metrics import StateCollector


def proxy() -> int:
    # websockify imports numpy, whose OpenBLAS starts a pool of worker threads; the proxy forks
    # a process per console, and a process with threads should not fork (their locks are
    # copied held). One BLAS thread is no pool: nothing here multiplies matrices.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from ucloud.console.proxy import ConsoleProxy

    settings, log, _ = daemon.start("console")
    proxy = ConsoleProxy(settings)
    REGISTRY.register(proxy.meter.collector)
    # Started before the first fork; the children never touch a metric (console/metrics.py).
    daemon.serve_metrics(settings, settings.console_metrics_port, None, "ucloud-console")
    # websockify runs its own accept loop and handles SIGTERM/SIGINT itself.
    proxy.start_server()
    log.info("stopped")
    return 0


def relay() -> int:
    from ucloud.console.relay import Relay

    settings, log, stop = daemon.start("console-relay")
    relay = Relay(settings)
    REGISTRY.register(StateCollector("relay sessions", relay.families))
    daemon.serve_metrics(
        settings, settings.console_relay_metrics_port, None, f"relay {settings.hostname}"
    )
    relay.run(stop)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(relay() if sys.argv[1:] == ["relay"] else proxy())
