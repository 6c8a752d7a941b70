"""The console page in a real headless Chromium: log in with a TOTP token, see and act on one's
VMs, see a VM's SSH host keys, open its display (noVNC) and serial port (xterm.js); and what it
refuses."""

from __future__ import annotations

import re
import socket
import time

import pyotp
import requests

from tests.browser import browser_fixture, web_fixture  # noqa: F401  (fixtures)
from tests.clirun import CLI
from tests.conftest import Account
from tests.console_stack import (  # noqa: F401  (fixtures)
    ConsoleStack,
    console_libvirtds_fixture,
    stack_fixture,
)
from tests.keyfiles import fingerprint, keygen
from tests.rfb import first_frame, over_socket
from tests.servers import wait_for
from ucloud import auth, consoles, websessions
from ucloud.models import VM, Status

BAND = 16  # the guest's first text line: "UCLOUD-BOOT-OK", which stays put


def log_in(web, stack: ConsoleStack, account: Account, token: str | None = None):
    page = web.new_page()
    page.goto(f"{stack.api_url}/console/")
    assert page.url.endswith("/console/login")  # no session: the login page
    page.fill("input[name=name]", account.name)
    page.fill("input[name=realm]", account.realm)
    page.fill("input[name=token]", token or account.login_token())
    page.click("button[type=submit]")
    return page


def test_login_refuses_a_wrong_or_too_old_token(web, stack: ConsoleStack):
    page = log_in(web, stack, stack.alice, token="000000")
    assert page.text_content("#login-error") == "unknown user, or the token is wrong or expired"
    too_old = pyotp.TOTP(stack.alice.secret).at(time.time() - 150)  # 5 steps ago
    page = log_in(web, stack, stack.alice, token=too_old)
    assert page.locator("#login-error").is_visible()
    assert [c["name"] for c in web.cookies()] == ["ucloud_login"]  # the form's nonce: no session


def test_log_in_see_the_vms_and_stop_and_start_one(web, stack: ConsoleStack):
    page = log_in(web, stack, stack.alice)
    assert page.url.endswith("/console/")
    cookie = next(c for c in web.cookies() if c["name"] == "ucloud_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    vmid = stack.vms["boot"]
    row = page.locator(f"tr[data-vm='{vmid}']")
    status = row.locator("td.status")
    status.filter(has_text="RUNNING").wait_for()
    assert page.locator("tr[data-vm]").count() == 2  # alice's two VMs

    # A refusal shows the API's own message.
    api = stack.post("/vm/action", stack.alice, vmid=vmid, action="resume")
    assert api.status_code == 409
    row.locator("button[data-action=resume]").click()
    page.locator("#message", has_text=api.json()["error"]).wait_for()

    row.locator("button[data-action=stop]").click()
    page.locator("#message", has_text="stop queued").wait_for()
    # The list follows without a reload.
    status.filter(has_text="STOPPED").wait_for(timeout=60_000)
    row.locator("button[data-action=start]").click()
    status.filter(has_text="RUNNING").wait_for(timeout=60_000)
    assert stack.vm(vmid).status == Status.RUNNING

    # A copy of the cookie (another browser, a stolen one) works until the logout, not after.
    copy = requests.Session()
    copy.cookies.set("ucloud_console", cookie["value"], path="/console")
    assert copy.get(f"{stack.api_url}/console/api/vms", timeout=30).status_code == 200

    page.click("#logout")
    page.wait_for_url("**/console/login")
    page.goto(f"{stack.api_url}/console/")
    assert page.url.endswith("/console/login")
    assert copy.get(f"{stack.api_url}/console/api/vms", timeout=30).status_code == 401
    gone = websessions.digest(cookie["value"])
    assert stack.store.get(websessions.WebSession, gone) is None


def test_a_login_form_on_another_site_logs_no_one_in(web, stack: ConsoleStack):
    """Login CSRF: an attacker's page posts the attacker's own name, a current token and a
    login form token the attacker fetched; the victim's browser must not be logged in."""
    attacker = requests.Session()
    form = attacker.get(f"{stack.api_url}/console/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf
    page = web.new_page()
    page.set_content(
        f"""<form method="post" action="{stack.api_url}/console/login">
        <input name="name" value="{stack.bob.name}"><input name="realm" value="{stack.bob.realm}">
        <input name="token" value="{auth.current_token(stack.bob.secret)}">
        <input name="csrf" value="{csrf.group(1)}"><button type="submit">go</button></form>"""
    )
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "came from another site" in page.content()
    assert not [c for c in web.cookies() if c["name"] == "ucloud_console"]
    page.goto(f"{stack.api_url}/console/")
    assert page.url.endswith("/console/login")


def test_the_vms_screen_in_the_browser(web, stack: ConsoleStack):
    vmid = stack.vms["boot"]
    vm = stack.wait(vmid, Status.RUNNING)
    stack.booted()
    page = log_in(web, stack, stack.alice)
    page.goto(f"{stack.api_url}/console/vm/{vmid}")
    # The VM's page: its details and its events, newest first, as the API has them.
    assert page.text_content("#status") == "RUNNING"
    assert page.text_content("#host") == vm.hostname
    newest = page.locator("#events tbody tr").first.locator("td").nth(2)
    newest.filter(has_text=stack.vm(vmid).log[-1].message).wait_for()
    page.click("#open-vnc")
    page.locator("#console[data-state=connected]").wait_for()

    direct = socket.socket(socket.AF_UNIX)
    direct.connect(str(consoles.vnc_socket(stack.hosts[vm.hostname].vnc_dir, vmid)))
    with direct:
        truth = first_frame(over_socket(direct))
    # The server's pixels are B, G, R, x; the canvas's R, G, B, A.
    expected = [
        [truth.pixels[i + 2], truth.pixels[i + 1], truth.pixels[i]]
        for i in range(0, truth.width * BAND * 4, 4)
    ]

    def canvas_band() -> list[list[int]] | None:
        data = page.evaluate(
            """([w, h]) => {
                const c = document.querySelector('#console canvas');
                if (!c || c.width !== w) return null;
                return Array.from(c.getContext('2d').getImageData(0, 0, w, h).data);
            }""",
            [truth.width, BAND],
        )
        if data is None:
            return None
        return [data[i : i + 3] for i in range(0, len(data), 4)]

    wait_for(lambda: canvas_band() == expected, 30, "the guest's screen on the page")
    assert sum(1 for p in expected if any(p)) > 200  # there is text in the band


def test_a_vms_page_shows_its_ssh_host_keys_as_the_cli_does(
    web, stack: ConsoleStack, cli: CLI, tmp_path
):
    """What to compare with what ssh shows at the first connection. The keys are recorded in
    etcd as the host agent records them from a guest's console at first boot (the test bed's
    Linux guest prints none; tests/test_firstboot.py has a Debian guest's)."""
    vmid = stack.vms["linux"]
    page = log_in(web, stack, stack.alice)
    page.goto(f"{stack.api_url}/console/vm/{vmid}")
    assert page.text_content("#host-keys") == (
        "none seen on its console yet (reload this page after its first boot)"
    )

    pubs = [keygen(tmp_path, "ed25519", "-t", "ed25519"), keygen(tmp_path, "ecdsa", "-t", "ecdsa")]
    lines = [p.read_text().strip() for p in pubs]
    stack.store.update(VM, vmid, lambda vm: setattr(vm, "host_keys", lines))
    alice = cli.as_user(stack.api_url, stack.alice)

    def cli_shows() -> list[str]:
        code, out, err = alice("vm", "status", vmid)
        assert code == 0, err
        return [line.strip() for line in out.partition("host keys:")[2].splitlines()[: len(pubs)]]

    from_cli = wait_for(
        lambda: (shown := cli_shows())[0].startswith("SHA256:") and shown, 30, "the keys"
    )
    page.reload()
    on_page = page.locator("#host-keys .host-key").all_text_contents()
    assert on_page == from_cli
    # What ssh-keygen -l says of the guest's keys, as ssh shows them: fingerprint (type).
    assert on_page == [f"{fingerprint(p)} ({p.read_text().split()[0]})" for p in pubs]


def test_the_serial_console_in_the_browser(web, stack: ConsoleStack):
    vmid = stack.vms["linux"]
    wait_for(lambda: "UCLOUD-LINUX-BOOT-OK" in stack.console_log(vmid), 120, "the Linux guest")
    page = log_in(web, stack, stack.alice)
    page.goto(f"{stack.api_url}/console/vm/{vmid}")
    page.click("#open-serial")
    page.locator("#console[data-state=connected]").wait_for()
    page.locator("#console .xterm").click()
    page.keyboard.type("echo web-$((6*7))\n")
    page.locator("#console .xterm-rows", has_text="web-42").wait_for()
    assert "web-42" in stack.console_log(vmid)


def test_switching_consoles_on_a_vms_page_shows_no_error(web, stack: ConsoleStack):
    """Opening the display closes the serial console the page had open, and the other way
    round: the one closed on purpose must neither say it closed nor mark the new one closed."""
    vmid = stack.vms["boot"]
    host = stack.wait(vmid, Status.RUNNING).hostname
    page = log_in(web, stack, stack.alice)
    page.goto(f"{stack.api_url}/console/vm/{vmid}")
    state = page.locator("#console")

    def switch(button: str, closing: str, opening: str) -> None:
        closed = f"console {closing} of VM {vmid} closed"
        before = stack.relay_log(host).count(closed)
        page.click(button)
        page.locator(f"#console[data-state=connected][data-kind={opening}]").wait_for()
        wait_for(lambda: stack.relay_log(host).count(closed) > before, 30, f"{closing} closed")
        page.wait_for_timeout(1000)  # the browser's side of that close, if it shows
        assert state.get_attribute("data-state") == "connected"
        assert page.text_content("#message") == ""

    page.click("#open-serial")
    page.locator("#console[data-state=connected][data-kind=serial]").wait_for()
    switch("#open-vnc", "serial", "vnc")
    switch("#open-serial", "vnc", "serial")


def test_the_display_loads_its_script_in_one_request_and_again_if_that_one_fails(
    web, stack: ConsoleStack
):
    """noVNC comes as one module, bundled when it was installed; a fetch of it that fails (here
    the first: its connection reset) is made again, and the display opens without a reload."""
    vmid = stack.vms["boot"]
    stack.wait(vmid, Status.RUNNING)
    page = log_in(web, stack, stack.alice)
    page.goto(f"{stack.api_url}/console/vm/{vmid}")
    fetched: list[str] = []

    def first_one_fails(route) -> None:
        fetched.append(route.request.url)
        if len(fetched) == 1:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/console/assets/novnc/**", first_one_fails)
    page.click("#open-vnc")
    page.locator("#console[data-state=connected][data-kind=vnc]").wait_for()
    page.locator("#console canvas").wait_for()
    assert page.text_content("#message") == ""
    assert fetched == [f"{stack.api_url}/console/assets/novnc/rfb.js"] * 2


def session_of(stack: ConsoleStack, account: Account) -> tuple[requests.Session, str]:
    """A logged-in HTTP session and its CSRF token, as the page's script has them."""
    s = requests.Session()
    form = s.get(f"{stack.api_url}/console/login", timeout=30)
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert login_csrf, form.text
    r = s.post(
        f"{stack.api_url}/console/login",
        data={
            "name": account.name,
            "realm": account.realm,
            "token": account.login_token(),
            "csrf": login_csrf.group(1),
        },
        timeout=30,
    )
    assert r.status_code == 200 and r.url.endswith("/console/"), r.text
    found = re.search(r'name="csrf-token" content="([^"]+)"', r.text)
    assert found
    return s, found.group(1)


def test_actions_need_a_session_its_csrf_token_and_the_vm_of_its_user(stack: ConsoleStack):
    vmid = stack.vms["boot"]
    url = f"{stack.api_url}/console/api/vm/{vmid}"
    generation = stack.vm(vmid).generation
    # Tokens an earlier test asked for and never used may still be there (they expire).
    tokens_before = set(stack.store.list(consoles.ConsoleToken)[0])

    r = requests.post(f"{url}/action", json={"action": "stop"}, timeout=30)
    assert r.status_code == 401, r.text
    assert requests.get(f"{stack.api_url}/console/api/vms", timeout=30).status_code == 401
    page = requests.get(f"{stack.api_url}/console/vm/{vmid}", timeout=30, allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"].endswith("/console/login")

    alice, csrf = session_of(stack, stack.alice)
    r = alice.post(f"{url}/action", json={"action": "stop"}, timeout=30)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = alice.post(f"{url}/action", json={"action": "stop"}, headers={"X-CSRF-Token": "x"})
    assert r.status_code == 403
    r = alice.post(f"{url}/console", json={}, timeout=30)
    assert r.status_code == 403

    bob, bobs_csrf = session_of(stack, stack.bob)
    assert bob.get(f"{stack.api_url}/console/api/vms", timeout=30).json() == {"vms": []}
    assert bob.get(f"{stack.api_url}/console/vm/{vmid}", timeout=30).status_code == 404
    headers = {"X-CSRF-Token": bobs_csrf}
    r = bob.post(f"{url}/action", json={"action": "stop"}, headers=headers, timeout=30)
    assert r.status_code == 404, r.text
    r = bob.post(f"{url}/console", json={}, headers=headers, timeout=30)
    assert r.status_code == 404, r.text
    # Alice's CSRF token is no use in bob's session either.
    r = bob.post(f"{url}/action", json={"action": "stop"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403

    assert stack.vm(vmid).generation == generation  # nothing changed
    assert set(stack.store.list(consoles.ConsoleToken)[0]) == tokens_before  # no token made

    # And the session's own user may (the console token is made, not used).
    r = alice.post(f"{url}/console", json={}, headers={"X-CSRF-Token": csrf}, timeout=30)
    assert r.status_code == 200 and r.json()["websocket"].startswith(stack.websocket)


def test_a_console_url_opens_once_without_a_session(web, stack: ConsoleStack):
    vmid = stack.vms["boot"]
    stack.wait(vmid, Status.RUNNING)
    r = stack.post("/vm/console", stack.alice, vmid=vmid)
    url = r.json()["url"]
    page = web.new_page()
    page.goto(url)
    page.locator("#console[data-state=connected]").wait_for()
    page.locator("#console canvas").wait_for()
    assert "#" not in page.url  # the token left the address bar once used
    again = web.new_page()
    again.goto(url)
    again.locator("#console[data-state=disconnected]").wait_for(state="attached")  # empty: 0 px
    assert "refused" in again.text_content("#message")
