"""What refuses requests another site makes a browser send to the console page.

- The login form carries a *pre-session* CSRF token (login CSRF: an attacker's page must not log
  a victim into the attacker's account): the login page sets a random nonce in a cookie
  (HttpOnly, SameSite=Strict, path ``/console/login``) and puts in the form a token signed with
  ``web_secret_key`` over that nonce and the time (a signed double submit). A POST whose token
  does not match its cookie's nonce, or is older than LOGIN_FORM_SECONDS, is refused.
- Every POST of the page is refused if the browser says it comes from another site: by
  ``Sec-Fetch-Site`` where the browser sends it (it is not affected by referrer policies), else
  by ``Origin``, else by ``Referer``. A client that sends none of them (not a browser, or a very
  old one) still needs the tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

LOGIN_COOKIE = "ucloud_login"
LOGIN_FORM_SECONDS = 3600  # how long a login page's form may be sent
NONCE_BYTES = 24


def new_nonce() -> str:
    return secrets.token_urlsafe(NONCE_BYTES)


def _mac(secret: str, nonce: str, issued: str) -> str:
    body = f"login\0{nonce}\0{issued}".encode()
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def login_token(secret: str, nonce: str, at: float | None = None) -> str:
    issued = str(int(time.time() if at is None else at))
    return f"{issued}.{_mac(secret, nonce, issued)}"


def login_token_ok(secret: str, nonce: str, token: str, at: float | None = None) -> bool:
    """Whether ``token`` was made for this nonce by a login page less than
    LOGIN_FORM_SECONDS ago."""
    issued, _, mac = token.partition(".")
    if not nonce or not issued.isdigit() or len(issued) > 12 or len(mac) != 64:
        return False
    if not hmac.compare_digest(mac, _mac(secret, nonce, issued)):
        return False
    age = (time.time() if at is None else at) - int(issued)
    return -60 <= age <= LOGIN_FORM_SECONDS  # a minute's grace for clocks of several APIs


def cross_site(headers: Mapping[str, str], host: str) -> str | None:
    """Why a request that changes something must be refused as sent by another site (None:
    it was not, as far as the browser says). ``host`` is the request's Host (host[:port])."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        # same-site is refused too: a sibling subdomain may be someone else's.
        if site in ("same-origin", "none"):
            return None
        return f"this request came from another site (Sec-Fetch-Site: {site})"
    origin = headers.get("Origin")
    if origin is not None:
        if origin == "null" or urlsplit(origin).netloc != host:
            return f"this request came from another site (Origin: {origin})"
        return None
    referer = headers.get("Referer")
    if referer is not None and urlsplit(referer).netloc != host:
        return "this request came from another site (Referer)"
    return None
