"""Consoles through ucloud-console on the real stack: tokens, refusals, the relays, the CLI.
(The console page in a browser: tests/test_console_page.py.)"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.console_stack import (  # noqa: F401  (fixtures)
    ConsoleStack,
    console_libvirtds_fixture,
    stack_fixture,
)
from tests.rfb import first_frame, lit, over_socket, over_websocket
from ucloud import consoles
from ucloud.cli.console import connect
from ucloud.consoles import ConsoleToken

BOOT = "UCLOUD-BOOT-OK"
REPO = Path(__file__).resolve().parent.parent


def open_console(stack: ConsoleStack, vm: str, serial: bool = False) -> dict:
    r = stack.post("/vm/console", stack.alice, vmid=stack.vms[vm], serial=serial)
    assert r.status_code == 200, r.text
    return r.json()


def opened(stack: ConsoleStack, host: str) -> int:
    return stack.relay_log(host).count(" opened")


def test_a_console_url_shows_the_vms_screen(stack: ConsoleStack):
    reply = open_console(stack, "boot")
    assert reply["url"].startswith(f"{stack.api_url}/console/vnc#token=")
    assert reply["expires"] == pytest.approx(time.time() + 60, abs=5)
    token = reply["url"].split("#token=")[1]
    # Stored only as its hash.
    (stored,) = stack.store.list(ConsoleToken)[0].values()
    assert stored.value.digest == consoles.digest(token)
    assert token not in stored.value.model_dump_json()

    frame = first_frame(over_websocket(connect(reply["websocket"])))
    assert (frame.width, frame.height) == (720, 400)  # VGA text mode
    assert lit(frame, range(0, 16)) > 200  # "UCLOUD-BOOT-OK" on its first line
    assert not stack.store.list(ConsoleToken)[0]  # used up

    # The same picture as the display's own socket on its host gives.
    vm = stack.vm(stack.vms["boot"])
    direct = socket.socket(socket.AF_UNIX)
    direct.connect(str(consoles.vnc_socket(stack.hosts[vm.hostname].vnc_dir, vm.uuid)))
    with direct:
        assert (
            first_frame(over_socket(direct)).pixels[: 720 * 16 * 4] == frame.pixels[: 720 * 16 * 4]
        )
