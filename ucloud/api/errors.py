"""Errors the API answers with: every one a JSON ``{"error": message}`` with a 4xx/5xx code."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ucloud.quota import QuotaExceeded
from ucloud.store import Unavailable


class APIError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


def describe(error: ValidationError) -> str:
    """A pydantic error as one line a user can act on: ``specs.ram: must be >= 0; ...``."""
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def _json(message: str, status: int) -> tuple[Any, int]:
    return jsonify(error=message), status


def register(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(e: APIError) -> tuple[Any, int]:
        return _json(e.message, e.status)

    @app.errorhandler(QuotaExceeded)
    def over_quota(e: QuotaExceeded) -> tuple[Any, int]:
        return _json(str(e), 403)

    @app.errorhandler(ValidationError)
    def invalid(e: ValidationError) -> tuple[Any, int]:
        return _json(describe(e), 400)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Any:
        message = e.description or e.name
        if isinstance(e, RequestEntityTooLarge) and request.max_content_length:
            # Werkzeug's text names no limit; JSON's escapes count (a user-data's control
            # characters take six bytes each), so the sender needs the number.
            message = (
                f"the request body is over the API's limit of {request.max_content_length} bytes"
            )
        response = jsonify(error=message)
        response.status_code = e.code or 500
        # Keep what the exception says beyond its body: a 405's Allow header.
        for name, value in e.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> tuple[Any, int]:
        if isinstance(e, Unavailable):
            return _json("the cluster store (etcd) is unavailable; try again shortly", 503)
        app.logger.exception("unhandled error")
        return _json("internal error; the administrator can find it in the API log", 500)
