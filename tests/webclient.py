"""The console page's login as a browser's form sends it, through Flask's test client: for the
tests of its sessions (test_web_sessions) and of what one tenant's session reaches
(test_tenancy)."""

from __future__ import annotations

import re

from tests.conftest import Account
from ucloud.web import SESSION_COOKIE


def login_form(client) -> str:
    r = client.get("/console/login")
    assert r.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert found, r.text
    return found.group(1)


def log_in(client, account: Account, token: str = "", **headers: str):
    """The login POST as the login page's form sends it (a fresh form each time), with
    ``token``, else a token of a step the account has not logged in with."""
    form = {
        "name": account.name,
        "realm": account.realm,
        "token": token or account.login_token(),
        "csrf": login_form(client),
    }
    return client.post("/console/login", data=form, headers=headers)


def logged_in(web_app, account: Account):
    """A test client logged in as ``account``: the client, its session cookie, its CSRF token."""
    client = web_app.test_client()
    r = log_in(client, account)
    assert r.status_code == 302 and r.headers["Location"].endswith("/console/"), r.text
    cookie = client.get_cookie(SESSION_COOKIE, path="/console")
    assert cookie is not None
    page = client.get("/console/")
    found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert found, page.text
    return client, cookie.value, found.group(1)
