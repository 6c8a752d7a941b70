"""schemathesis hooks for tests/test_openapi_conformance.py (loaded by the schemathesis
command through SCHEMATHESIS_HOOKS): sign every generated request as the administrator the
test made, whose name, realm and TOTP secret come in UCLOUD_ST_* variables."""

from __future__ import annotations

import os
from typing import Any

import schemathesis

from ucloud import auth


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A current token, and the administrator's name and realm, wherever the generated request
    has those fields as strings. A request generated without them, or with another type, is
    left as it is: it is invalid input, and must be refused."""
    fields = {
        "name": os.environ["UCLOUD_ST_NAME"],
        "realm": os.environ["UCLOUD_ST_REALM"],
        "token": auth.current_token(os.environ["UCLOUD_ST_SECRET"]),
    }
    for data in (case.body, case.query):
        if isinstance(data, dict):
            for key, value in fields.items():
                if isinstance(data.get(key), str):
                    data[key] = value
