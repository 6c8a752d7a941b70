"""``ucloud-console`` (the proxy users reach) and ``ucloud-console-relay`` (one per host)."""

from __future__ import annotations

import sys

from ucloud import daemon


def proxy() -> int:
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
