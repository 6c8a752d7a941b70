"""The console page's login form tokens and its cross-site check (ucloud.web.guard)."""

from __future__ import annotations

import pytest

from ucloud.web import guard

pytestmark = pytest.mark.unit

SECRET = "s" * 64


def test_a_login_token_is_good_for_its_nonce_and_an_hour():
    nonce = guard.new_nonce()
    token = guard.login_token(SECRET, nonce, at=1000.0)
    assert guard.login_token_ok(SECRET, nonce, token, at=1000.0)
    assert guard.login_token_ok(SECRET, nonce, token, at=1000.0 + guard.LOGIN_FORM_SECONDS)
    assert not guard.login_token_ok(SECRET, nonce, token, at=1001.0 + guard.LOGIN_FORM_SECONDS)
    assert not guard.login_token_ok(SECRET, guard.new_nonce(), token, at=1000.0)
    assert not guard.login_token_ok("t" * 64, nonce, token, at=1000.0)
    assert not guard.login_token_ok(SECRET, "", token, at=1000.0)
    issued, mac = token.split(".")
    assert not guard.login_token_ok(SECRET, nonce, f"{int(issued) + 1}.{mac}", at=1000.0)
    for bad in ("", ".", "x", f"-5.{mac}", f"{issued}.{mac[:-1]}", f"{issued}{mac}"):
        assert not guard.login_token_ok(SECRET, nonce, bad, at=1000.0)


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),  # not a browser: the tokens alone decide
        ({"Sec-Fetch-Site": "same-origin"}, False),
        ({"Sec-Fetch-Site": "none"}, False),
        ({"Sec-Fetch-Site": "same-site"}, True),
        ({"Sec-Fetch-Site": "cross-site"}, True),
        # Sec-Fetch-Site decides where it is sent: a referrer policy does not change it.
        ({"Sec-Fetch-Site": "same-origin", "Origin": "null"}, False),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://console.example.org"}, True),
        ({"Origin": "https://console.example.org"}, False),
        ({"Origin": "https://evil.example.org"}, True),
        ({"Origin": "https://console.example.org.evil.example"}, True),
        ({"Origin": "null"}, True),
        ({"Referer": "https://console.example.org/console/login"}, False),
        ({"Referer": "https://evil.example.org/console.example.org"}, True),
    ],
)
def test_cross_site(headers, refused):
    assert (guard.cross_site(headers, "console.example.org") is not None) == refused
