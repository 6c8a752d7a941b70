"""The console page's routes: HTML pages, and the JSON calls their scripts make."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from pydantic import ValidationError
from werkzeug.wrappers import Response as BaseResponse

from ucloud import sshkeys, websessions
from ucloud.api import errors
from ucloud.api.consoles import open_console, websocket_base
from ucloud.api.endpoint import Principal, context, verified_user
from ucloud.api.schemas import Credentials
from ucloud.api.vms import apply, owned_vm
from ucloud.consoles import Console
from ucloud.models import Action
from ucloud.web import ASSETS, SESSION_COOKIE, assets_dir, guard

bp = Blueprint(
    "web",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

CSRF_HEADER = "X-CSRF-Token"
WEB_ACTIONS = (Action.START, Action.STOP, Action.SUSPEND, Action.RESUME, Action.REBOOT)
LOGIN_FAILED = "unknown user, or the token is wrong or expired"
LOGIN_CODE_USED = "this token was used already: log in with the next one"
LOGIN_FORM_STALE = "the login form expired or was not sent from this page: log in again"


@bp.before_request
def _configured() -> None:
    if not context().settings.web_secret_key:
        abort(503, "the console page is off: web_secret_key is not set")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        why = guard.cross_site(dict(request.headers), request.host)
        if why is not None:
            raise errors.Forbidden(f"{why}: use the console page itself")


@bp.after_request
def _headers(response: Response) -> Response:
    # Pages and their answers are the user's own: never cached, never framed by another site.
    # Scripts and styles are the same for everyone: cached a while.
    static = request.endpoint in ("web.static", "web.asset")
    response.headers["Cache-Control"] = "public, max-age=3600" if static else "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on the
    # page's own POSTs, and the cross-site check needs the real one. Other sites get nothing.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@dataclass(frozen=True)
class Current:
    """The request's session: its id (from the cookie) and its user."""

    session_id: str
    user: Principal

    @property
    def csrf(self) -> str:
        return websessions.csrf_token(context().settings.web_secret_key, self.session_id)


def _current() -> Current | None:
    """The request's session, if it is live and its user still is as at login: one read of
    its record in etcd (a logout on another ucloud-api counts at once), the user from the
    watch-fed catalog. Read once per request."""
    if "web_session" not in g:
        g.web_session = None
        session_id = request.cookies.get(SESSION_COOKIE, "")
        ctx = context()
        found = websessions.find(ctx.store, session_id) if session_id else None
        if found is not None and websessions.valid_for(found, ctx.catalog.user(found.user)):
            realm, name = found.user.split("/", 1)
            admin = realm == ctx.settings.admin_realm
            g.web_session = Current(session_id, Principal(name, realm, admin=admin))
    return g.web_session


def _user() -> Principal | None:
    current = _current()
    return current.user if current else None


def _session_user() -> Principal:
    user = _user()
    if user is None:
        raise errors.Unauthorized("not logged in (or the session expired): log in again")
    return user


def _acting_user() -> Principal:
    """The session's user for a change: the request must carry the session's CSRF token."""
    user = _session_user()
    current = _current()
    assert current is not None
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent, current.csrf):
        raise errors.Forbidden("missing or wrong CSRF token: reload the page")
    return user


def _page(template: str, **values: Any) -> Any:
    current = _current()
    if current is None:
        return redirect(url_for("web.login"))
    return render_template(template, user=current.user, csrf=current.csrf, **values)


def _cookie(response: BaseResponse, name: str, value: str, max_age: int, path: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=context().settings.web_cookie_secure,
        httponly=True,
        samesite="Strict",
    )


# --- pages -----------------------------------------------------------------------------------


def _login_page(status: int = 200, error: str = "", name: str = "", realm: str = "users") -> Any:
    """The login form, with a pre-session CSRF token signed over its cookie's nonce."""
    nonce = request.cookies.get(guard.LOGIN_COOKIE, "")
    if not 20 <= len(nonce) <= 64:
        nonce = guard.new_nonce()
    token = guard.login_token(context().settings.web_secret_key, nonce)
    page = render_template("login.html", error=error, name=name, realm=realm, login_csrf=token)
    response = make_response(page, status)
    login_path = url_for("web.login")
    _cookie(response, guard.LOGIN_COOKIE, nonce, guard.LOGIN_FORM_SECONDS, login_path)
    return response


@bp.get("/login")
def login() -> Any:
    return _login_page()


@bp.post("/login")
def login_post() -> Any:
    form = request.form
    ctx = context()
    name, realm = form.get("name", ""), form.get("realm", "")
    nonce = request.cookies.get(guard.LOGIN_COOKIE, "")
    if not guard.login_token_ok(ctx.settings.web_secret_key, nonce, form.get("csrf", "")):
        return _login_page(403, LOGIN_FORM_STALE, name, realm)
    try:
        creds = Credentials.model_validate(
            {"name": name, "realm": realm, "token": form.get("token", "")}
        )
        user, step = verified_user(creds)
    except (ValidationError, errors.APIError):
        return _login_page(401, LOGIN_FAILED, name, realm)
    if not websessions.take_step(ctx.store, user, step):
        # Used already (or the user was deleted or given a new seed in the instant since).
        return _login_page(401, LOGIN_CODE_USED, name, realm)
    old = request.cookies.get(SESSION_COOKIE, "")
    if old:
        websessions.end(ctx.store, old)  # a new login replaces this browser's session
    lifetime = ctx.settings.web_session_lifetime
    session_id, _ = websessions.begin(
        ctx.store, user, lifetime, request.remote_addr or "", request.user_agent.string
    )
    response = redirect(url_for("web.vms"))
    _cookie(response, SESSION_COOKIE, session_id, lifetime, "/console")
    _cookie(response, guard.LOGIN_COOKIE, "", 0, url_for("web.login"))  # used: gone
    return response


@bp.post("/logout")
def logout() -> Any:
    _acting_user()
    current = _current()
    assert current is not None
    websessions.end(context().store, current.session_id)
    response = jsonify(message="logged out")
    _cookie(response, SESSION_COOKIE, "", 0, "/console")
    return response


@bp.get("/")
def vms() -> Any:
    return _page("vms.html")


@bp.get("/vm/<vmid>")
def vm_page(vmid: str) -> Any:
    user = _user()
    if user is None:
        return redirect(url_for("web.login"))
    vm = owned_vm(vmid, user).value
    # As `ucloud vm status` shows them: compare with what ssh shows when it first connects.
    host_keys = [sshkeys.host_key_label(k) for k in vm.host_keys]
    return _page("vm.html", vm=vm, host_keys=host_keys)


@bp.get("/vnc")
def vnc_viewer() -> Any:
    """A console URL from ``/vm/console``: the token is in the fragment, the page needs no
    session."""
    return render_template("viewer.html", console="vnc", websocket=_websocket_base())


@bp.get("/serial")
def serial_viewer() -> Any:
    return render_template("viewer.html", console="serial", websocket=_websocket_base())


def _websocket_base() -> str:
    return websocket_base(context().settings)


@bp.get("/assets/<package>/<path:path>")
def asset(package: str, path: str) -> Any:
    if package not in ASSETS:
        abort(404)
    return send_from_directory(assets_dir(context().settings) / ASSETS[package], path)


# --- what the pages' scripts call ------------------------------------------------------------


@bp.get("/api/vms")
def api_vms() -> Any:
    user = _session_user()
    owner = None if user.admin else (user.realm, user.name)
    return Response(
        b'{"vms":' + context().catalog.vms_json(owner) + b"}", 200, mimetype="application/json"
    )


@bp.get("/api/vm/<vmid>")
def api_vm(vmid: str) -> Any:
    user = _session_user()
    return Response(
        context().catalog.vm_json(owned_vm(vmid, user)), 200, mimetype="application/json"
    )


@bp.post("/api/vm/<vmid>/action")
def api_action(vmid: str) -> Any:
    user = _acting_user()
    body = request.get_json(silent=True) or {}
    try:
        action = Action(body.get("action", ""))
    except ValueError:
        action = None
    if action not in WEB_ACTIONS:
        raise errors.BadRequest(f"action must be one of: {', '.join(WEB_ACTIONS)}")
    vm = apply(vmid, action, user)
    return jsonify(message=f"{action} queued", vm=vm.model_dump(mode="json")), 202


@bp.post("/api/vm/<vmid>/console")
def api_console(vmid: str) -> Any:
    user = _acting_user()
    body = request.get_json(silent=True) or {}
    kind = Console.SERIAL if body.get("serial") else Console.VNC
    return jsonify(open_console(owned_vm(vmid, user).value, kind))
