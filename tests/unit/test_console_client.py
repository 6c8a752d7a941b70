"""The CLI's WebSocket client (ucloud.cli.console) against a server that sends its first frame
in the same packet as the handshake's answer, as ucloud-console does when the VNC server speaks
first: the frame must be read at once, not after the server's next ping."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading

from ucloud.cli.console import connect

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
