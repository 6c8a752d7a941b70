"""The console page: users log in with a TOTP token, see their VMs, act on them and open their
consoles. A blueprint of ``ucloud-api`` under ``/console/``: it reads through the API's catalog
and acts through the API's own code (``ucloud.api.vms.apply``), so its rules and messages are
the API's.

Sessions are records in etcd (``ucloud.websessions``) that a logout, a deleted user or a reset
TOTP seed ends at once; the cookie holds only the session's random id (HttpOnly,
SameSite=Strict, Secure unless ``web_cookie_secure`` is off, lasting ``web_session_lifetime``).
Every action is a POST carrying the session's CSRF token in ``X-CSRF-Token``; the login form
carries a pre-session one, and POSTs another site makes a browser send are refused
(``ucloud.web.guard``).
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

import ucloud
from ucloud.config import Settings

SESSION_COOKIE = "ucloud_console"

# What the page serves, under the node_modules that `npm ci` makes from package-lock.json:
# xterm.js as its package ships it; noVNC (some 50 ES modules) as the one module that `npm ci`
# bundles it into (package.json's build script), one request instead of 50.
ASSETS = {"novnc": ".ucloud/novnc", "xterm": "@xterm/xterm"}


def assets_dir(settings: Settings) -> Path:
    if settings.web_assets_dir:
        return Path(settings.web_assets_dir)
    return Path(ucloud.__file__).resolve().parent.parent / "node_modules"


def install_web(app: Flask, settings: Settings) -> None:
    from ucloud.web.pages import bp

    app.register_blueprint(bp)
