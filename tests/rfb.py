"""Just enough of a VNC (RFB 3.8) client to say a display answered: the handshake and one full
frame in Raw encoding. Over a unix socket (the host's display) or a WebSocket (through
ucloud-console), for the console tests and bench/consoles.py."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass


class Stream:
    """Exact reads over anything that returns chunks of bytes, and None once closed."""

    def __init__(self, recv: Callable[[], bytes | None], send: Callable[[bytes], object]) -> None:
        self._recv, self.send = recv, send
        self._buffer = b""

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._recv()
            if chunk is None:
                raise ConnectionError(f"closed after {len(self._buffer)} of {n} bytes")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data


@dataclass(frozen=True)
class Frame:
    width: int
    height: int
    name: str
    pixels: bytes  # width x height, 4 bytes a pixel as the server sends them


def handshake(s: Stream) -> tuple[int, int, str, int]:
    """Version, security None, ClientInit (shared); the display's size, name and bytes a pixel."""
    version = s.read(12)
    if not version.startswith(b"RFB "):
        raise ConnectionError(f"not a VNC server: {version!r}")
    s.send(b"RFB 003.008\n")
    (count,) = struct.unpack("B", s.read(1))
    if count == 0:
        raise ConnectionError("the server refused the connection")
    types = s.read(count)
    if 1 not in types:
        raise ConnectionError(f"no 'None' security type offered: {list(types)}")
    s.send(b"\x01")
    if struct.unpack(">I", s.read(4))[0] != 0:
        raise ConnectionError("security handshake failed")
    s.send(b"\x01")  # shared: other viewers stay connected
    width, height = struct.unpack(">HH", s.read(4))
    pixel_format = s.read(16)
    (name_length,) = struct.unpack(">I", s.read(4))
    name = s.read(name_length).decode(errors="replace")
    return width, height, name, pixel_format[0] // 8


def first_frame(s: Stream) -> Frame:
    width, height, name, bpp = handshake(s)
    s.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
    return frame(s, width, height, name, bpp)


def frame(
    s: Stream, width: int, height: int, name: str = "", bpp: int = 4, incremental: bool = False
) -> Frame:
    """Ask for the whole screen (``incremental``: what changed), and read the answer."""
    s.send(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, width, height))
    pixels = bytearray(width * height * bpp)
    covered = 0
    while covered < width * height and not (incremental and covered):
        kind = s.read(1)[0]
        if kind != 0:
            raise ConnectionError(f"unexpected server message {kind}")
        s.read(1)
        (rects,) = struct.unpack(">H", s.read(2))
        for _ in range(rects):
            x, y, w, h, encoding = struct.unpack(">HHHHi", s.read(12))
            if encoding != 0:
                raise ConnectionError(f"unexpected encoding {encoding}")
            data = s.read(w * h * bpp)
            for row in range(h):
                start = ((y + row) * width + x) * bpp
                pixels[start : start + w * bpp] = data[row * w * bpp : (row + 1) * w * bpp]
            covered += w * h
    return Frame(width, height, name, bytes(pixels))


def lit(frame: Frame, rows: range) -> int:
    """How many pixels in ``rows`` are not black (text on the guest's screen)."""
    bpp = len(frame.pixels) // (frame.width * frame.height)
    start, end = rows.start * frame.width * bpp, rows.stop * frame.width * bpp
    band = frame.pixels[start:end]
    return sum(1 for i in range(0, len(band), bpp) if any(band[i : i + 3]))


def over_socket(sock: object) -> Stream:
    import socket

    assert isinstance(sock, socket.socket)
    sock.settimeout(60)
    return Stream(lambda: sock.recv(65536) or None, sock.sendall)


def over_websocket(ws: object, timeout: float = 60) -> Stream:
    ws.socket.settimeout(timeout)  # type: ignore[attr-defined]  # a test fails, never hangs
    return Stream(ws.read, ws.send)  # type: ignore[attr-defined]
