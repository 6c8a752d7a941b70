"""The OpenAPI document, made from the registered routes, the pydantic models that validate
their requests and describe their answers, and the answers every route can give.

Nothing here is written twice: a request's fields, limits and name patterns are its body
model's (the one the server validates with), a success's body its reply model's
(ucloud.api.replies), and the status codes are the route's own (its ``responses``) and those
every route gives (COMMON). tests/test_openapi_conformance.py runs schemathesis against a live
API to check that the document tells the truth.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import ucloud
from ucloud.api.endpoint import ROUTES, Route
from ucloud.api.replies import Error
from ucloud.api.schemas import Credentials

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"

# What every route may answer besides its own responses; 401 and 403 where they apply.
COMMON: dict[int, str] = {
    400: "invalid request: the message says which field is wrong and why",
    405: "the path does not take this method; the Allow header lists those it takes",
    413: "the request body is larger than the API accepts (setting UCLOUD_API_MAX_BODY)",
    503: "the cluster store (etcd) is unavailable; nothing was changed; try again shortly",
}
UNAUTHORIZED = "unknown user, or the token is wrong or expired"
FORBIDDEN = "only administrators may do this"


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(document())


def document() -> dict[str, Any]:
    modes: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (Error, "serialization")
    ]
    for route in ROUTES:
        modes.append((route.body, "validation"))
        if route.reply is not None:
            modes.append((route.reply, "serialization"))
    refs, defs = models_json_schema(list(dict.fromkeys(modes)), ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    paths: dict[str, Any] = {}
    for route in ROUTES:
        body_ref = refs[(route.body, "validation")]
        reply_ref = refs[(route.reply, "serialization")] if route.reply is not None else None
        body_schema = schemas[body_ref["$ref"].rsplit("/", 1)[1]]
        op = _operation(route, body_ref, body_schema, reply_ref, refs[(Error, "serialization")])
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ucloud API",
            "version": ucloud.__version__,
            "description": "Every request names its user (name, realm) and carries a current "
            'TOTP token. Errors are JSON objects {"error": message}.',
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(
    route: Route,
    body_ref: dict[str, Any],
    body_schema: dict[str, Any],
    reply_ref: dict[str, Any] | None,
    error_ref: dict[str, Any],
) -> dict[str, Any]:
    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    if route.operation is not None:
        return route.operation

    codes = dict(COMMON)
    if issubclass(route.body, Credentials):
        codes[401] = UNAUTHORIZED
    if route.admin:
        codes[403] = FORBIDDEN
    codes.update(route.responses)
    responses: dict[str, Any] = {}
    for code, description in sorted(codes.items()):
        if code < 400:
            responses[str(code)] = answer(description, reply_ref or {"type": "object"})
        else:
            responses[str(code)] = answer(description, error_ref)
    responses["405"]["headers"] = {
        "Allow": {
            "description": "the methods the path takes",
            "required": True,
            "schema": {"type": "string"},
        }
    }
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.path.strip("/").replace("/", "_"),
        "responses": responses,
    }
    if route.method == "GET":
        # Fields come as query parameters (the original clients send a JSON body instead,
        # which the server takes too).
        op["parameters"] = [
            {
                "name": name,
                "in": "query",
                "required": name in body_schema.get("required", []),
                "schema": prop,
            }
            for name, prop in body_schema["properties"].items()
        ]
    else:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_ref}},
        }
    return op
