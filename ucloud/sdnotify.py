"""systemd's notification protocol (sd_notify(3)), for units with Type=notify and a
watchdog. Without ``NOTIFY_SOCKET`` (not started by systemd) it does nothing."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> None:
    """Send ``state`` (e.g. ``READY=1``, ``WATCHDOG=1``) to systemd, if it is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(address)
            s.sendall(state.encode())
        except OSError:
            pass  # systemd went away: nothing to tell
