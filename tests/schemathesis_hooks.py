"""schemathesis hooks for tests/test_openapi_conformance.py (loaded by the schemathesis
command through SCHEMATHESIS_HOOKS): sign every generated request as the administrator the
test made, whose name, realm and TOTP secret come in UCLOUD_ST_* variables, and point half of
the valid ids it generates at objects that exist (UCLOUD_ST_IDS, a JSON object of field ->
id), so that operations on a VM, a host, a file or an image get past their 404."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import schemathesis

from ucloud import auth
from ucloud.models import NAME_PATTERN


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
    ids = json.loads(os.environ.get("UCLOUD_ST_IDS", "{}"))
    for data in (case.body, case.query):
        if not isinstance(data, dict):
            continue
        for key, value in fields.items():
            if isinstance(data.get(key), str):
                data[key] = value
        for key, existing in ids.items():
            generated = data.get(key)
            # Only a valid id (one the schema allows: a name, at most 64 characters) is
            # replaced, by another valid one: an invalid id must still be refused.
            if (
                isinstance(generated, str)
                and _VALID_ID.fullmatch(generated)
                and len(generated) % 2 == 0  # half of them, the same half in every run
            ):
                data[key] = existing


_VALID_ID = re.compile(NAME_PATTERN)
