"""The console page: users log in with a TOTP token, see their VMs, act on them and open their
consoles. A blueprint of ``ucloud-api`` under ``/console/``: it reads through the API's catalog
and acts through the API's own code (``ucloud.api.vms.apply``), so its rules and messages are
the API's.

Sessions are Flask's signed cookies (``web_secret_key``): HttpOnly, SameSite=Strict, Secure
unless ``web_cookie_secure`` is off, lasting ``web_session_lifetime``. Every action is a POST
carrying the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from flask import Flask

import ucloud
from ucloud.config import Settings

# The npm packages the page serves (installed by `npm ci` from package-lock.json).
ASSETS = {"novnc": "@novnc/novnc", "xterm": "@xterm/xterm"}


def assets_dir(settings: Settings) -> Path:
    if settings.web_assets_dir:
        return Path(settings.web_assets_dir)
    return Path(ucloud.__file__).resolve().parent.parent / "node_modules"


def install_web(app: Flask, settings: Settings) -> None:
    from ucloud.web.pages import bp

    if settings.web_secret_key:
        app.secret_key = settings.web_secret_key
    app.config.update(
        SESSION_COOKIE_NAME="ucloud_console",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.web_cookie_secure,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=settings.web_session_lifetime),
    )
    app.register_blueprint(bp)
