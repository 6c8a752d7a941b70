"""The CLI's WebSocket client (ucloud.cli.console) against a server that sends its first frame
in the same packet as the handshake's answer, as ucloud-console does when the VNC server speaks
first: the frame must be read at once, not after the server's next ping. And the serial console
in a real terminal (a pty): raw, so every key goes to the VM as typed, until the escape key."""

from __future__ import annotations

import base64
import hashlib
import os
import pty
import socket
import termios
import threading
from types import SimpleNamespace

from ucloud.cli.console import ESCAPE, connect, serial

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_a_frame_that_came_with_the_handshake_is_read_at_once():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, str] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            head = request.decode().split("\r\n")
            seen["path"] = head[0].split()[1]
            headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
            accept = base64.b64encode(
                hashlib.sha1((headers["Sec-WebSocket-Key"] + GUID).encode()).digest()
            ).decode()
            answer = (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
                "Sec-WebSocket-Protocol: binary\r\n\r\n"
            ).encode()
            payload = b"RFB 003.008\n"
            conn.sendall(answer + bytes([0x82, len(payload)]) + payload)  # one packet
            conn.recv(1)  # wait for the client to go away

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = connect(f"ws://127.0.0.1:{port}/?token=abc")
    client.socket.settimeout(2)  # without the fix: blocks for more data, times out
    try:
        assert client.read() == b"RFB 003.008\n"
        assert seen["path"] == "/?token=abc"  # the token rides in the query
    finally:
        client.socket.close()
        listener.close()
        thread.join(5)


def answer_handshake(conn: socket.socket) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    head = request.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    accept = base64.b64encode(
        hashlib.sha1((headers["Sec-WebSocket-Key"] + GUID).encode()).digest()
    ).decode()
    conn.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
            "Sec-WebSocket-Protocol: binary\r\n\r\n"
        ).encode()
    )


def client_frames(conn: socket.socket) -> bytes:
    """The payloads of the client's (masked, short) frames until it closes or goes away."""
    data, received = b"", b""
    while True:
        while len(data) < 6 or len(data) < 6 + (data[1] & 0x7F):
            chunk = conn.recv(4096)
            if not chunk:
                return received
            data += chunk
        opcode, length, mask = data[0] & 0x0F, data[1] & 0x7F, data[2:6]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[6 : 6 + length]))
        data = data[6 + length :]
        if opcode == 0x8:  # close
            return received
        received += payload


def test_the_serial_console_puts_the_terminal_in_raw_mode_and_leaves_on_the_escape_key():
    """Ctrl-C and a line not ended go to the VM as they are (a cooked terminal would take
    Ctrl-C as a signal and hold the line until Enter), Ctrl-] leaves at once, and the terminal
    is as it was after."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got: dict[str, bytes] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            answer_handshake(conn)
            conn.sendall(bytes([0x82, 7]) + b"login: ")
            got["typed"] = client_frames(conn)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    said: list[str] = []
    out = SimpleNamespace(out=SimpleNamespace(progress=said.append))
    result: list[int] = []
    cli = threading.Thread(
        target=lambda: result.append(
            serial(out, f"ws://127.0.0.1:{port}/?token=abc", slave, slave)  # type: ignore[arg-type]
        ),
        daemon=True,
    )
    try:
        cli.start()
        shown = b""
        while b"login: " not in shown:
            shown += os.read(master, 100)
        os.write(master, b"\x03ls -l" + ESCAPE)
        cli.join(10)
        assert result == [0], said  # left, without waiting for an Enter
        server.join(10)
        assert got["typed"] == b"\x03ls -l"  # as typed, the escape key not sent
        assert termios.tcgetattr(slave) == before
        assert said[-1].strip() == "left the console"
    finally:
        os.close(master)
        os.close(slave)
        listener.close()
