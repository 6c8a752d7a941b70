"""Consoles through ucloud-console on the real stack: tokens, refusals, the relays, the CLI.
(The console page in a browser: tests/test_console_page.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import make_account
from tests.console_stack import (  # noqa: F401  (fixtures)
    ConsoleStack,
    console_libvirtds_fixture,
    stack_fixture,
)
from tests.rfb import first_frame, frame, lit, over_socket, over_websocket
from tests.servers import wait_for
from ucloud import consoles
from ucloud.cli.console import connect
from ucloud.cli.errors import Refused
from ucloud.consoles import Console, ConsoleToken
from ucloud.models import AdminState, Host, Status

BOOT = "UCLOUD-BOOT-OK"


def open_console(stack: ConsoleStack, vm: str, serial: bool = False) -> dict:
    r = stack.post("/vm/console", stack.alice, vmid=stack.vms[vm], serial=serial)
    assert r.status_code == 200, r.text
    return r.json()


def opened(stack: ConsoleStack, host: str) -> int:
    return stack.relay_log(host).count(" opened")


def test_a_console_url_shows_the_vms_screen(stack: ConsoleStack):
    stack.booted()
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


def refused(url: str) -> str:
    with pytest.raises(Refused) as e:
        connect(url)
    return e.value.message


def test_refused_tokens_reach_no_console(stack: ConsoleStack):
    vmid = stack.vms["boot"]
    host = stack.vm(vmid).hostname
    before = opened(stack, host)

    used = open_console(stack, "boot")["websocket"]
    first_frame(over_websocket(connect(used)))
    assert opened(stack, host) == before + 1
    assert "used already" in refused(used) or "unknown console token" in refused(used)

    forged = f"{stack.websocket}?token={'A' * 43}"
    assert "unknown console token" in refused(forged)
    assert "no console token" in refused(stack.websocket)

    vm = stack.vm(vmid)
    expired = consoles.issue(stack.store, vm, Console.VNC, ttl=60)
    stack.store.update(
        ConsoleToken, consoles.digest(expired.token), lambda t: setattr(t, "expires", 1.0)
    )
    assert "expired" in refused(f"{stack.websocket}?token={expired.token}")

    # Bob cannot have a token for alice's VM; a token naming bob for it leads nowhere either.
    r = stack.post("/vm/console", stack.bob, vmid=vmid)
    assert r.status_code == 404, r.text
    bobs = consoles.issue(stack.store, vm.model_copy(update={"owner": "bob"}), Console.VNC, 60)
    assert "no longer belongs" in refused(f"{stack.websocket}?token={bobs.token}")

    # None of them reached the relay; nor does a ticket not signed with the cluster's secret.
    assert opened(stack, host) == before + 1
    relay = stack.hosts[host].console_relay_bind.rsplit(":", 1)
    with socket.create_connection((relay[0], int(relay[1])), timeout=5) as direct:
        direct.sendall(consoles.ticket("x" * 64, vmid, Console.VNC))
        assert direct.recv(100).startswith(b"NO bad ticket signature")
    assert opened(stack, host) == before + 1


def test_console_metrics_count_consoles_accepted_refused_and_open(stack: ConsoleStack):
    vmid = stack.vms["boot"]
    host = stack.vm(vmid).hostname
    relay_port = stack.hosts[host].console_relay_metrics_port

    def proxy() -> dict:
        return stack.metrics(stack.settings.console_metrics_port)

    def value(scraped: dict, name: str, **labels: str) -> float:
        return scraped.get((name, frozenset(labels.items())), 0.0)

    def open_now() -> float:
        return sum(v for (n, _), v in proxy().items() if n == "ucloud_console_sessions")

    def refused_reuses(scraped: dict) -> float:
        return sum(
            value(scraped, "ucloud_console_connections_total", console="unknown", result=why)
            for why in ("unknown_token", "used_token")
        )

    # Earlier tests' consoles are closed (a client gone is noticed within a heartbeat, 5 s).
    wait_for(lambda: open_now() == 0, 30, "no console to be open")
    before, relay_before = proxy(), stack.metrics(relay_port)

    url = open_console(stack, "boot")["websocket"]
    kept = connect(url)
    first_frame(over_websocket(kept))
    wait_for(
        lambda: value(proxy(), "ucloud_console_sessions", console="vnc", host=host) == 1,
        10,
        "the open console to be counted",
    )
    relayed = stack.metrics(relay_port)
    assert value(relayed, "ucloud_console_relay_sessions", console="vnc", host=host) == 1
    assert value(relayed, "ucloud_console_relay_tickets_total", host=host, result="accepted") == (
        value(relay_before, "ucloud_console_relay_tickets_total", host=host, result="accepted") + 1
    )

    refused(url)  # its token again
    after = wait_for(
        lambda: (m := proxy()) and refused_reuses(m) == refused_reuses(before) + 1 and m,
        10,
        "the refused console to be counted",
    )
    accepted = ("ucloud_console_connections_total", {"console": "vnc", "result": "accepted"})
    assert value(after, accepted[0], **accepted[1]) == value(before, accepted[0], **accepted[1]) + 1
    assert open_now() == 1  # the refused one opened nothing

    kept.close()
    wait_for(lambda: open_now() == 0, 10, "the closed console to be counted out")
    durations = "ucloud_console_session_duration_seconds_count"
    assert value(proxy(), durations, console="vnc") == value(before, durations, console="vnc") + 1
    relayed = stack.metrics(relay_port)
    assert value(relayed, "ucloud_console_relay_sessions", console="vnc", host=host) == 0
    # Labels are kinds, hosts and reasons: no token, no VM, no user in any series.
    text = requests.get(
        f"http://127.0.0.1:{stack.settings.console_metrics_port}/metrics", timeout=5
    ).text
    assert url.split("token=")[1] not in text and vmid not in text and "alice" not in text


def test_console_requests_are_checked(stack: ConsoleStack):
    r = stack.post("/vm/console", stack.alice, vmid=stack.vms["boot"], serial="yes please")
    assert r.status_code == 400, r.text  # not taken for true
    r = stack.post("/vm/console", stack.alice, vmid="no-such-vm")
    assert r.status_code == 404, r.text
    assert not stack.store.list(ConsoleToken)[0]


def test_a_console_keeps_working_while_others_open_and_close(stack: ConsoleStack):
    kept = over_websocket(connect(open_console(stack, "boot")["websocket"]))
    screen = first_frame(kept)
    for _ in range(8):
        other = connect(open_console(stack, "boot")["websocket"])
        first_frame(over_websocket(other))
        other.close()
    again = frame(kept, screen.width, screen.height)
    assert lit(again, range(0, 16)) == lit(screen, range(0, 16)) > 200


def test_cli_prints_a_console_url_and_the_current_token(stack: ConsoleStack, tmp_path: Path):
    env = client_env(stack, tmp_path)
    out = run_cli(env, "vm", "console", "boot")
    assert out.stdout.startswith(f"{stack.api_url}/console/vnc#token="), out.stderr
    assert "works once" in out.stderr
    code = run_cli(env, "token").stdout.strip()
    assert len(code) == 6 and code.isdigit()
    # The API takes it as this user's token (as the console page's login does).
    creds = {"name": stack.alice.name, "realm": stack.alice.realm, "token": code}
    r = requests.get(f"{stack.api_url}/vm/list", json=creds, timeout=30)
    assert r.status_code == 200, r.text


def test_serial_console_from_the_cli_is_interactive_and_logged(stack: ConsoleStack, tmp_path):
    vmid = stack.vms["linux"]
    wait_for(lambda: "UCLOUD-LINUX-BOOT-OK" in stack.console_log(vmid), 120, "the Linux guest")
    cli = subprocess.Popen(
        [sys.executable, "-m", "ucloud.cli.main", "vm", "console", "linux", "--serial"],
        env=client_env(stack, tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert cli.stdin is not None and cli.stdout is not None
        os.set_blocking(cli.stdout.fileno(), False)
        seen = b""

        def shows(text: bytes) -> bool:
            nonlocal seen
            seen += cli.stdout.read() or b""  # type: ignore[union-attr]
            return text in seen

        cli.stdin.write(b"echo serial-$((6*7))\n")
        cli.stdin.flush()
        wait_for(lambda: shows(b"serial-42"), 30, "the guest's answer on the CLI")
        cli.stdin.write(b"\x1d")
        cli.stdin.flush()
        assert cli.wait(10) == 0
        assert b"left the console" in cli.stderr.read()  # type: ignore[union-attr]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    # The host still keeps everything the serial port printed.
    assert "serial-42" in stack.console_log(vmid)


def test_a_vm_restarted_on_another_host_is_reached_there(stack: ConsoleStack):
    vmid = stack.vms["boot"]
    before = stack.vm(vmid).hostname
    early = open_console(stack, "boot")["websocket"]  # issued while it runs on `before`
    stack.store.update(Host, before, lambda h: setattr(h, "admin_state", AdminState.MAINTENANCE))
    try:
        assert stack.post("/vm/action", stack.alice, vmid=vmid, action="stop").status_code == 202
        stack.wait(vmid, Status.STOPPED)
        assert stack.post("/vm/action", stack.alice, vmid=vmid, action="start").status_code == 202
        after = stack.wait(vmid, Status.RUNNING).hostname
        assert after != before
        wait_for(lambda: BOOT in stack.console_log(vmid), 30, "the guest on its new host")
        # The host is looked up when the console opens: the early token leads there too.
        assert lit(first_frame(over_websocket(connect(early))), range(0, 16)) > 200
        fresh = open_console(stack, "boot")["websocket"]
        assert lit(first_frame(over_websocket(connect(fresh))), range(0, 16)) > 200
        assert opened(stack, after) >= 2
    finally:
        stack.store.update(Host, before, lambda h: setattr(h, "admin_state", AdminState.UP))


def test_a_migrated_vm_is_reached_on_its_target(stack: ConsoleStack):
    vmid = stack.vms["boot"]
    before = stack.vm(vmid).hostname
    early = open_console(stack, "boot")["websocket"]  # issued while it runs on `before`
    boots = all_boots(stack, vmid)
    admin = make_account(stack.store, f"mig-{uuid.uuid4().hex[:6]}", stack.settings.admin_realm)
    r = stack.post("/vm/migrate", admin, vmid=vmid)
    assert r.status_code == 202, r.text
    vm = wait_for(
        lambda: (v := stack.vm(vmid)).migration is None and v, 120, "the migration to end"
    )
    assert vm.hostname != before and vm.status == Status.RUNNING, vm.log[-3:]
    # Its screen and serial port are the target's now: the early token leads there, and the
    # guest's dots go on in the target's log (the same guest: no second boot).
    assert lit(first_frame(over_websocket(connect(early))), range(0, 16)) > 200
    assert opened(stack, vm.hostname) >= 1
    dots = stack.console_log(vmid).count(".")
    wait_for(lambda: stack.console_log(vmid).count(".") > dots, 30, "its dots on the target")
    assert all_boots(stack, vmid) == boots


def all_boots(stack: ConsoleStack, vmid: str) -> int:
    """How often the guest booted, as every host's serial log of it says."""
    logs = [Path(h.state_dir) / "console" / f"{vmid}.log" for h in stack.hosts.values()]
    return sum(p.read_text(errors="replace").count(BOOT) for p in logs if p.exists())


def client_env(stack: ConsoleStack, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(tmp_path),
        "UCLOUD_API_URL": stack.api_url,
        "UCLOUD_USER": stack.alice.name,
        "UCLOUD_REALM": stack.alice.realm,
        "UCLOUD_SEED": stack.alice.secret,
    }


def run_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ucloud.cli.main", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_a_vm_that_does_not_run_has_no_console(client, alice, image, store):
    body = alice.creds(vm_name="web", specs={"cpu": 1, "ram": 1}, image=image.uuid)
    vmid = client.post("/vm/create", json=body).json["uuid"]
    r = client.post("/vm/console", json=alice.creds(vmid=vmid))
    assert r.status_code == 409
    assert r.json == {"error": "VM web is PENDING: it has a console only while it runs"}
    assert not store.list(ConsoleToken)[0]
