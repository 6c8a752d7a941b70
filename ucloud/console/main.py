"""``ucloud-console`` (the proxy users reach) and ``ucloud-console-relay`` (one per host)."""

from __future__ import annotations

import os
import sys

from ucloud import daemon


def proxy() -> int:
    # websockify imports numpy, whose OpenBLAS starts a pool of worker threads; the proxy forks
    # a process per console, and a process with threads should not fork (their locks are
    # copied held). One BLAS thread is no pool: nothing here multiplies matrices.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from ucloud.console.proxy import ConsoleProxy

    settings, log, _ = daemon.start("console")
    # websockify runs its own accept loop and handles SIGTERM/SIGINT itself.
    ConsoleProxy(settings).start_server()
    log.info("stopped")
    return 0


def relay() -> int:
    from ucloud.console.relay import Relay

    settings, log, stop = daemon.start("console-relay")
    Relay(settings).run(stop)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(relay() if sys.argv[1:] == ["relay"] else proxy())
