"""``ucloud vm console`` and ``ucloud token``: reach a VM's console; log in on the web page."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import tty
from collections.abc import Iterator
from urllib.parse import urlsplit

from websockify.websocket import WebSocket, WebSocketWantReadError

from ucloud.cli.errors import ExitCode, Refused, Unreachable
from ucloud.cli.output import when
from ucloud.cli.session import Session
from ucloud.cli.vms import resolve

ESCAPE = b"\x1d"  # Ctrl-], as telnet and virsh console
ESCAPE_NAME = "Ctrl-]"


def token(s: Session, args: argparse.Namespace) -> int:
    """The current TOTP code, for the console page's login form."""
    code = s.config.credentials()["token"]
    s.out.text(code)
    s.out.data({"token": code})
    return ExitCode.OK


def console(s: Session, args: argparse.Namespace) -> int:
    vmid = resolve(s.api, args.vm)
    reply = s.api.post("/vm/console", vmid=vmid, serial=args.serial)
    if not args.serial:
        s.out.text(reply["url"])
        s.out.progress(f"open it in a browser before {when(reply['expires'])}; it works once")
        s.out.data(reply)
        return ExitCode.OK
    return serial(s, reply["websocket"], sys.stdin.fileno(), sys.stdout.fileno())


class _Client(WebSocket):
    """websockify's client sends the path without its query: the token is in the query."""

    def __init__(self, query: str) -> None:
        super().__init__()
        self._query = query

    def send_request(self, type: str, path: str) -> None:
        super().send_request(type, f"{path}?{self._query}")

    def decode_buffered(self) -> None:
        """Decode frames that came in the same read as the handshake's answer. websockify's
        client leaves them in its buffer, and its recv() then waits on the socket for more,
        while the server (a VNC server says its version first) waits for us: the two wait
        until the proxy's next ping. Found by bench/consoles.py (an open in 20 took a ping)."""
        buffered: bytes = self.__dict__["_recv_buffer"]  # set by websockify's untyped base
        while (frame := self._decode_hybi(buffered)) is not None:
            buffered = buffered[frame["length"] :]
            self._recv_queue.append(frame)
        self.__dict__["_recv_buffer"] = buffered

    def read(self) -> bytes | None:
        """The next data, waiting for it; None once closed. (recv() raises WantRead when a
        frame has arrived only in part, even on a blocking socket.)"""
        while True:
            try:
                data: bytes | None = self.recv()
                return data
            except WebSocketWantReadError:
                continue


def connect(url: str) -> _Client:
    client = _Client(urlsplit(url).query)
    try:
        client.connect(url, protocols=["binary"])
    except OSError as e:
        raise Unreachable(f"cannot reach the console proxy at {url.split('?')[0]}: {e}") from e
    except Exception as e:  # websockify raises plain Exceptions for refused handshakes
        raise Refused(f"the console proxy refused: {e}", 403) from e
    client.decode_buffered()
    return client


def serial(s: Session, url: str, stdin: int, stdout: int) -> int:
    ws = connect(url)
    s.out.progress(f"connected to the serial console; leave with {ESCAPE_NAME}")
    reading = True
    with _raw(stdin):
        try:
            while True:
                waiting = [ws.socket, stdin] if reading else [ws.socket]
                ready = [ws.socket] if ws.pending() else select.select(waiting, [], [])[0]
                if ws.socket in ready:
                    try:
                        data = ws.recv()
                    except WebSocketWantReadError:
                        continue
                    if data is None:
                        s.out.progress("\r\nthe console closed")
                        return ExitCode.OK
                    os.write(stdout, data)
                if stdin in ready:
                    typed = os.read(stdin, 1024)
                    if not typed:
                        reading = False  # input ended (a pipe): show what comes until closed
                        continue
                    before, escaped, _ = typed.partition(ESCAPE)
                    if before:
                        ws.send(before)
                    if escaped:
                        s.out.progress("\r\nleft the console")
                        return ExitCode.OK
        finally:
            with contextlib.suppress(Exception):
                ws.close()


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """The terminal in raw mode (keys go to the VM as typed), restored after."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
