"""Copy bytes both ways between two connected sockets until either side closes."""

from __future__ import annotations

import selectors
import socket

CHUNK = 65536


def splice(a: socket.socket, b: socket.socket) -> None:
    peer = {a: b, b: a}
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ)
        sel.register(b, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                src = key.fileobj
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(CHUNK)
                    if not data:
                        return
                    peer[src].sendall(data)
                except OSError:
                    return
