"""One way to declare an endpoint: its body model, who may call it, and its handler.

A handler is ``def handler(body: SomeModel, user: Principal) -> Reply``. The decorator parses
and validates the request into ``SomeModel`` (taken from the handler's annotation), checks the
user's token, and records the route for the OpenAPI document.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from pydantic import BaseModel

from ucloud import auth
from ucloud.api.catalog import Catalog
from ucloud.api.errors import BadRequest, Forbidden, NotFound, Unauthorized
from ucloud.api.schemas import Credentials
from ucloud.config import Settings
from ucloud.models import Stored, User
from ucloud.store import Store, Versioned

# A reply's body: an object to serialise, or bytes that already are the JSON answer.
Reply = tuple[dict[str, Any] | bytes, int]


@dataclass(frozen=True)
class Principal:
    name: str
    realm: str
    admin: bool

    def owns(self, obj: Any) -> bool:
        """Whether this user may see and change ``obj`` (administrators may touch anything)."""
        return self.admin or (obj.owner == self.name and obj.owner_realm == self.realm)


S = TypeVar("S", bound=Stored)


def visible(
    kind: type[S], ref: str, user: Principal, shared: Callable[[S], bool]
) -> Versioned[S] | None:
    """The ``kind`` that ``ref`` names for ``user``, by the one rule of every endpoint: its
    uuid, if the user may see it (theirs, or ``shared`` with everyone); else its name, among
    the user's own, then among the shared ones. None if there is none; 400 if the name is
    ambiguous."""
    store = context().store
    found = store.get(kind, ref)
    if found is not None and (shared(found.value) or user.owns(found.value)):
        return found
    items, _ = store.list(kind)
    named = [v for v in items.values() if getattr(v.value, "name", None) == ref]
    candidates = [v for v in named if user.owns(v.value)] or [v for v in named if shared(v.value)]
    if len(candidates) > 1:
        raise BadRequest(f"{kind.kind} name {ref!r} is ambiguous: give its uuid")
    return candidates[0] if candidates else None


def existing_user(realm: str, name: str) -> str:
    """The id of the user ``realm/name``, for an administrator's request about them; 404 if
    there is no such user."""
    who = f"{realm}/{name}"
    if context().store.get(User, who) is None:
        raise NotFound(f"no user {who}")
    return who


@dataclass(frozen=True)
class Context:
    settings: Settings
    store: Store
    catalog: Catalog


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    body: type[BaseModel]
    summary: str
    admin: bool
    responses: dict[int, str]  # its own answers: success, and refusals such as 404 and 409
    reply: type[BaseModel] | None  # the body of its success, if described
    # The whole OpenAPI operation, for a route whose body is not a JSON object (an upload).
    operation: dict[str, Any] | None = None


ROUTES: list[Route] = []


def context() -> Context:
    return current_app.extensions["ucloud"]


def install(app: Flask, settings: Settings, store: Store) -> None:
    app.extensions["ucloud"] = Context(settings, store, Catalog(store).start())


def endpoint(
    bp: Blueprint,
    path: str,
    method: str = "POST",
    *,
    summary: str,
    admin: bool = False,
    responses: dict[int, str] | None = None,
    reply: type[BaseModel] | None = None,
) -> Callable[[Callable[..., Reply]], Callable[[], Any]]:
    """``responses``: the route's own answers (its success, and refusals it makes itself such
    as 403, 404 and 409); those of every route (400, 401, 405, 413, 503) are added by the
    OpenAPI document. ``reply``: the model of its success's body."""

    def decorate(handler: Callable[..., Reply]) -> Callable[[], Any]:
        body_model = next(iter(typing.get_type_hints(handler).values()))
        ROUTES.append(
            Route(path, method, body_model, summary, admin, responses or {200: "done"}, reply)
        )

        def view() -> Any:
            body = body_model.model_validate(_request_data())
            user = authenticate(body) if isinstance(body, Credentials) else None
            if admin and (user is None or not user.admin):
                raise Forbidden("only administrators may do this")
            payload, status = handler(body, user)
            if isinstance(payload, bytes):
                return Response(payload, status, mimetype="application/json")
            return jsonify(payload), status

        view.__name__ = handler.__name__
        bp.add_url_rule(path, endpoint=handler.__name__, view_func=view, methods=[method])
        return view

    return decorate


def _request_data() -> dict[str, Any]:
    """The request's fields: its JSON object body, with query parameters for GET requests
    (the original clients send GET requests with a JSON body)."""
    data: dict[str, Any] = {}
    if request.method == "GET":
        data.update(request.args.to_dict())
    if request.content_length or request.data:
        parsed = request.get_json(force=True, silent=True)
        if parsed is None:
            raise BadRequest("the request body is not valid JSON")
        if not isinstance(parsed, dict):
            raise BadRequest("the request body must be a JSON object")
        data.update(parsed)
    return data


def authenticate(body: Credentials) -> Principal:
    user, _ = verified_user(body)
    return Principal(user.name, user.realm, admin=user.realm == context().settings.admin_realm)


def verified_user(body: Credentials) -> tuple[User, int]:
    """The user the credentials are of (the catalog's record their token was checked against),
    and the 30-second step the token is from: for a login that takes each step once (the
    console page's). 401 if the user is unknown or the token wrong."""
    ctx = context()
    found = None
    if _plain(body.name) and _plain(body.realm):
        found = ctx.catalog.user(f"{body.realm}/{body.name}")
    step = None
    if found is not None:
        step = auth.token_step(found.totp_secret, body.token, ctx.settings.totp_valid_window)
    if found is None or step is None:
        # One message for both: do not tell a guesser which user names exist.
        raise Unauthorized("unknown user, or the token is wrong or expired")
    return found, step


def _plain(part: str) -> bool:
    return 0 < len(part) <= 64 and "/" not in part
