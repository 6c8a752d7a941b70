"""The OpenAPI document, made from the registered routes and their pydantic body models."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

import ucloud
from ucloud.api.endpoint import ROUTES, Route

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(document())


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {"error": {"type": "string"}},
            "required": ["error"],
        }
    }
    paths: dict[str, Any] = {}
    for route in ROUTES:
        schema = route.body.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[route.body.__name__] = schema
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ucloud API", "version": ucloud.__version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(route: Route, schema: dict[str, Any]) -> dict[str, Any]:
    if route.operation is not None:
        return route.operation
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
    responses: dict[str, Any] = {
        str(code): {"description": text} for code, text in route.responses.items()
    }
    responses["400"] = {"description": "invalid request", **error}
    responses["401"] = {"description": "unknown user or wrong token", **error}
    if route.admin:
        responses["403"] = {"description": "administrators only", **error}
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.path.strip("/").replace("/", "_"),
        "responses": responses,
    }
    body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": REF.format(model=route.body.__name__)}}
        },
    }
    if route.method == "GET":
        # Fields may come as query parameters (or, as the original clients send them, a body).
        op["parameters"] = [
            {
                "name": name,
                "in": "query",
                "required": name in schema.get("required", []),
                "schema": prop,
            }
            for name, prop in schema["properties"].items()
        ]
    else:
        op["requestBody"] = body
    return op
