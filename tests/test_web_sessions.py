"""The console page's sessions and login form, through Flask's test client against a real etcd:
a session ends for every copy of its cookie when its user logs out, is deleted or gets a new
TOTP seed, when an administrator ends it, and when its lifetime is over; a login POST without
the login form's token, or sent by another site, is refused and makes no session; a TOTP token
logs in once."""

from __future__ import annotations

import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Account, make_account
from tests.servers import wait_for
from tests.webclient import log_in, logged_in, login_form
from ucloud import auth, websessions
from ucloud.config import Settings
from ucloud.models import User
from ucloud.store import Store
from ucloud.web import SESSION_COOKIE
from ucloud.web.guard import LOGIN_COOKIE

LIFETIME = 4
RACERS = 8  # logins sent at once with one token


@pytest.fixture
def web_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "web_secret_key": secrets.token_hex(32),
            "web_cookie_secure": False,
            "web_session_lifetime": LIFETIME,
        }
    )


@pytest.fixture
def web_app(web_settings: Settings, store: Store):
    from ucloud.api import create_app

    app = create_app(web_settings, store)
    yield app
    app.extensions["ucloud"].catalog.stop()


def with_cookie(web_app, session_id: str):
    """Another browser, holding a copy of a session's cookie."""
    client = web_app.test_client()
    client.set_cookie(SESSION_COOKIE, session_id, path="/console")
    return client


def answers(client) -> int:
    return client.get("/console/api/vms").status_code


def wait_user_seen(web_app, who: str, seed: str = "") -> None:
    """Until the catalog has the user (with this seed, if given)."""
    catalog = web_app.extensions["ucloud"].catalog

    def seen() -> bool:
        user = catalog.user(who)
        return user is not None and seed in ("", user.totp_secret)

    wait_for(seen, 30, f"the catalog to see {who}")


def sessions(store: Store, who: str = "users/carol") -> int:
    return len(websessions.of_user(store, who))


@pytest.fixture
def user(web_app, store: Store) -> Account:
    account = make_account(store, "carol")
    wait_user_seen(web_app, "users/carol")
    return account


@pytest.fixture
def root(web_app, store: Store, web_settings: Settings) -> Account:
    account = make_account(store, "root", web_settings.admin_realm)
    wait_user_seen(web_app, f"{web_settings.admin_realm}/root")
    return account


def test_the_cookie_holds_a_random_id_and_etcd_only_its_hash(web_app, user, store):
    _, session_id, _ = logged_in(web_app, user)
    sessions, _ = store.list(websessions.WebSession)
    assert list(sessions) == [websessions.digest(session_id)]
    record = sessions[websessions.digest(session_id)].value
    assert record.user == "users/carol"
    assert session_id not in record.model_dump_json()


def test_a_copied_cookie_stops_working_after_logout(web_app, user, store):
    client, session_id, csrf = logged_in(web_app, user)
    copy = with_cookie(web_app, session_id)
    assert answers(copy) == 200

    # Logging out needs the session's CSRF token too.
    assert client.post("/console/logout").status_code == 403
    assert answers(copy) == 200
    r = client.post("/console/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text

    assert answers(copy) == 401
    assert answers(client) == 401
    r = copy.post(
        "/console/api/vm/x/action", json={"action": "stop"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 401
    assert not store.list(websessions.WebSession)[0]


def test_a_new_totp_seed_ends_the_users_sessions(web_app, user, root):
    _, first, _ = logged_in(web_app, user)
    _, second, _ = logged_in(web_app, user)
    assert answers(with_cookie(web_app, first)) == 200
    assert answers(with_cookie(web_app, second)) == 200
    client = web_app.test_client()
    r = client.post("/user/reset-totp", json=root.creds(user="carol", user_realm="users"))
    assert r.status_code == 200, r.text
    assert answers(with_cookie(web_app, first)) == 401
    assert answers(with_cookie(web_app, second)) == 401
    # The new seed's token of now logs in, though the old seed's logins took this step and
    # the next: the steps taken were the old seed's.
    reseeded = Account(user.name, user.realm, r.json["seed"])
    wait_user_seen(web_app, "users/carol", reseeded.secret)
    logged_in(web_app, reseeded)


def test_a_session_opened_with_an_old_seed_is_refused(web_app, user, store):
    """A login that raced a seed reset: its record was written after the reset ended the
    user's sessions, but it names the old seed."""
    old = store.get(User, "users/carol")
    assert old is not None
    session_id, _ = websessions.begin(store, old.value, LIFETIME)
    assert answers(with_cookie(web_app, session_id)) == 200

    def reseed(u: User) -> None:
        u.totp_secret = auth.new_secret()

    store.update(User, "users/carol", reseed)
    copy = with_cookie(web_app, session_id)
    wait_for(lambda: answers(copy) == 401, 30, "the old seed's session to be refused")
    assert store.get(websessions.WebSession, websessions.digest(session_id)) is not None


def test_deleting_the_user_ends_their_sessions(web_app, user, root, store):
    _, session_id, _ = logged_in(web_app, user)
    copy = with_cookie(web_app, session_id)
    assert answers(copy) == 200
    assert store.get(websessions.LoginStep, "users/carol") is not None
    client = web_app.test_client()
    r = client.post("/user/delete", json=root.creds(user="carol", user_realm="users"))
    assert r.status_code == 202, r.text
    assert answers(copy) == 401
    assert not store.list(websessions.WebSession)[0]
    # The record of the user's last login goes with the user.
    assert not store.list(websessions.LoginStep)[0]


def test_an_administrator_lists_and_ends_a_users_sessions(web_app, user, root):
    _, first, _ = logged_in(web_app, user)
    _, second, _ = logged_in(web_app, user)
    api = web_app.test_client()
    creds = root.creds(user="carol", user_realm="users")
    r = api.get("/user/sessions", json=creds)
    assert r.status_code == 200, r.text
    listed = r.json["sessions"]
    assert len(listed) == 2
    assert {s["session"] for s in listed} == {
        websessions.digest(first)[:16],
        websessions.digest(second)[:16],
    }
    assert all(s["expires"] > time.time() for s in listed)

    # Users may not.
    r = api.get("/user/sessions", json=user.creds(user="carol", user_realm="users"))
    assert r.status_code == 403

    r = api.post("/user/end-sessions", json={**creds, "session": websessions.digest(first)[:16]})
    assert r.status_code == 200 and r.json["ended"] == 1, r.text
    assert answers(with_cookie(web_app, first)) == 401
    assert answers(with_cookie(web_app, second)) == 200
    r = api.post("/user/end-sessions", json=root.creds(user="carol", user_realm="users"))
    assert r.status_code == 200 and r.json["ended"] == 1, r.text
    assert answers(with_cookie(web_app, second)) == 401
    r = api.post("/user/end-sessions", json=root.creds(user="nobody", user_realm="users"))
    assert r.status_code == 404


def test_a_session_ends_with_its_lifetime(web_app, user):
    _, session_id, _ = logged_in(web_app, user)
    copy = with_cookie(web_app, session_id)
    assert answers(copy) == 200
    time.sleep(LIFETIME + 0.5)
    assert answers(copy) == 401


@pytest.mark.parametrize("csrf", ["", "x", "1700000000." + "0" * 64])
def test_a_login_without_the_forms_token_is_refused(web_app, user, store, csrf):
    client = web_app.test_client()
    login_form(client)  # the nonce cookie is there: only the token is wrong
    form = {
        "name": user.name,
        "realm": user.realm,
        "token": auth.current_token(user.secret),
        "csrf": csrf,
    }
    r = client.post("/console/login", data=form)
    assert r.status_code == 403
    assert "the login form expired or was not sent from this page" in r.text
    assert client.get_cookie(SESSION_COOKIE, path="/console") is None
    assert not store.list(websessions.WebSession)[0]


def test_a_login_with_another_browsers_form_token_is_refused(web_app, user, store):
    """The token is bound to its browser's nonce cookie: an attacker's own form token, sent
    from a victim's browser (which has its own nonce, or none), does not match."""
    attacker = web_app.test_client()
    token = login_form(attacker)
    victim = web_app.test_client()
    form = {
        "name": user.name,
        "realm": user.realm,
        "token": auth.current_token(user.secret),
        "csrf": token,
    }
    assert victim.post("/console/login", data=form).status_code == 403  # no nonce cookie
    login_form(victim)
    assert victim.post("/console/login", data=form).status_code == 403  # its own nonce
    assert not store.list(websessions.WebSession)[0]
    assert attacker.get_cookie(LOGIN_COOKIE, path="/console/login") is not None


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Referer": "http://attacker.example/page"},
    ],
)
def test_a_login_another_site_sends_is_refused(web_app, user, store, headers):
    client = web_app.test_client()
    r = log_in(client, user, **headers)
    assert r.status_code == 403
    assert "came from another site" in r.json["error"]
    assert not store.list(websessions.WebSession)[0]


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://localhost"},
        {"Referer": "http://localhost/console/login"},
    ],
)
def test_a_login_from_the_page_itself_is_let_through(web_app, user, headers):
    r = log_in(web_app.test_client(), user, **headers)
    assert r.status_code == 302, r.text


def test_a_wrong_totp_token_makes_no_session_and_a_good_one_then_works(web_app, user, store):
    client = web_app.test_client()
    token = login_form(client)
    form = {"name": user.name, "realm": user.realm, "token": "000000", "csrf": token}
    r = client.post("/console/login", data=form)
    assert r.status_code == 401
    assert not store.list(websessions.WebSession)[0]
    # The refusal's page has a fresh form token, which works.
    token = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert token
    form.update(token=user.login_token(), csrf=token.group(1))
    assert client.post("/console/login", data=form).status_code == 302


def test_a_token_logs_in_once(web_app, user, store):
    """RFC 6238 §5.2: a token that logged in (seen over a shoulder, or in a proxy's log) does
    not log in again while it is still valid; a token of a later step does."""
    token = user.login_token()
    assert log_in(web_app.test_client(), user, token).status_code == 302
    again = web_app.test_client()
    r = log_in(again, user, token)
    assert r.status_code == 401
    assert "this token was used already: log in with the next one" in r.text
    assert again.get_cookie(SESSION_COOKIE, path="/console") is None
    assert sessions(store) == 1
    # The next step's token logs in; then the first one is older than the last login's.
    assert log_in(again, user).status_code == 302
    assert sessions(store) == 2
    assert log_in(web_app.test_client(), user, token).status_code == 401
    assert sessions(store) == 2


def test_logins_racing_with_one_token_make_exactly_one_session(web_app, user, store):
    token = user.login_token()
    clients = [web_app.test_client() for _ in range(RACERS)]
    forms = [login_form(c) for c in clients]  # each browser's own login form
    start = threading.Barrier(RACERS)

    def post(i: int) -> int:
        form = {"name": user.name, "realm": user.realm, "token": token, "csrf": forms[i]}
        start.wait()
        return clients[i].post("/console/login", data=form).status_code

    with ThreadPoolExecutor(RACERS) as pool:
        codes = sorted(pool.map(post, range(RACERS)))
    assert codes == [302] + [401] * (RACERS - 1)
    assert sessions(store) == 1


def test_behind_tls_the_cookies_are_secure_httponly_strict_and_last_the_lifetime(
    web_settings: Settings, store: Store, user
):
    """The default (web_cookie_secure on): a browser sends the session's cookie over HTTPS
    only, never to scripts or other sites' requests, and forgets it with the session."""
    from ucloud.api import create_app

    app = create_app(web_settings.model_copy(update={"web_cookie_secure": True}), store)
    try:
        wait_for(lambda: app.extensions["ucloud"].catalog.user("users/carol"), 30, "carol")
        client = app.test_client()
        https = {"base_url": "https://localhost"}
        page = client.get("/console/login", **https)
        form = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert form, page.text
        data = {
            "name": user.name,
            "realm": user.realm,
            "token": user.login_token(),
            "csrf": form.group(1),
        }
        r = client.post("/console/login", data=data, **https)
        assert r.status_code == 302, r.text
        cookies = {c.split("=", 1)[0]: c for c in r.headers.getlist("Set-Cookie")}
        session = [a.strip() for a in cookies[SESSION_COOKIE].split(";")]
        for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/console"):
            assert attribute in session, session
        assert f"Max-Age={LIFETIME}" in session, session
        for attribute in ("Secure", "HttpOnly", "SameSite=Strict"):
            assert attribute in page.headers["Set-Cookie"], page.headers["Set-Cookie"]
    finally:
        app.extensions["ucloud"].catalog.stop()
