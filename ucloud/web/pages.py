"""The console page's routes: HTML pages, and the JSON calls their scripts make."""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)
from pydantic import ValidationError

from ucloud.api import errors
from ucloud.api.consoles import open_console, websocket_base
from ucloud.api.endpoint import Principal, authenticate, context
from ucloud.api.schemas import Credentials
from ucloud.api.vms import apply, owned_vm
from ucloud.consoles import Console
from ucloud.models import Action
from ucloud.web import ASSETS, assets_dir

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


@bp.before_request
def _configured() -> None:
    if not context().settings.web_secret_key:
        abort(503, "the console page is off: web_secret_key is not set")


@bp.after_request
def _headers(response: Response) -> Response:
    # Pages and their answers are the user's own: never cached, never framed by another site.
    # Scripts and styles are the same for everyone (noVNC is some 40 modules): cached a while.
    static = request.endpoint in ("web.static", "web.asset")
    response.headers["Cache-Control"] = "public, max-age=3600" if static else "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _user() -> Principal | None:
    """The session's user, if the session is good and the user still exists."""
    ident = session.get("user")
    if not isinstance(ident, str) or "/" not in ident:
        return None
    realm, name = ident.split("/", 1)
    if context().catalog.user(ident) is None:
        return None
    return Principal(name, realm, admin=realm == context().settings.admin_realm)


def _session_user() -> Principal:
    user = _user()
    if user is None:
        raise errors.Unauthorized("not logged in (or the session expired): log in again")
    return user


def _acting_user() -> Principal:
    """The session's user for a change: the request must carry the session's CSRF token."""
    user = _session_user()
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
        raise errors.Forbidden("missing or wrong CSRF token: reload the page")
    return user


def _page(template: str, **values: Any) -> Any:
    user = _user()
    if user is None:
        return redirect(url_for("web.login"))
    return render_template(template, user=user, csrf=session["csrf"], **values)


# --- pages -----------------------------------------------------------------------------------


@bp.get("/login")
def login() -> Any:
    return render_template("login.html", error="", name="", realm="users")


@bp.post("/login")
def login_post() -> Any:
    form = request.form
    try:
        creds = Credentials.model_validate({k: form.get(k, "") for k in ("name", "realm", "token")})
        user = authenticate(creds)
    except (ValidationError, errors.APIError):
        message = "unknown user, or the token is wrong or expired"
        page = render_template(
            "login.html", error=message, name=form.get("name", ""), realm=form.get("realm", "")
        )
        return page, 401
    session.clear()
    session.permanent = True
    session.update(user=f"{user.realm}/{user.name}", csrf=secrets.token_urlsafe(32), at=time.time())
    return redirect(url_for("web.vms"))


@bp.post("/logout")
def logout() -> Any:
    _acting_user()
    session.clear()
    return jsonify(message="logged out")


@bp.get("/")
def vms() -> Any:
    return _page("vms.html")


@bp.get("/vm/<vmid>")
def vm_page(vmid: str) -> Any:
    user = _user()
    if user is None:
        return redirect(url_for("web.login"))
    vm = owned_vm(vmid, user).value
    return _page("vm.html", vm=vm)


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
