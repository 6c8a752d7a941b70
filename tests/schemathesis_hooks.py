"""schemathesis hooks for tests/test_openapi_conformance.py (loaded by the schemathesis
command through SCHEMATHESIS_HOOKS).

- Sign every generated request as the administrator the test made (UCLOUD_ST_NAME, _REALM,
  _SECRET), and the upload's headers as a user of the upload realm (UCLOUD_ST_UPLOADER: name,
  realm, secret), whose upload directory it is; half of the uploads announce their body's
  true sha512, so they are stored (and a second one of a name is refused: 409).
- Point half of the valid values it generates at objects that exist (UCLOUD_ST_IDS: field ->
  fields to set), so that operations on a VM, a host, a user, a network, a key, a file or an
  image get past their 404; a deleting operation points at an object of its own (the
  "METHOD /path" entries), so that it does not take away what the others work on.
- Write each answer's "METHOD /path status" to UCLOUD_ST_ANSWERS, for the test to check that
  every operation was reached, not only refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import MutableMapping
from typing import Any

import schemathesis

from ucloud import auth
from ucloud.models import NAME_PATTERN

_VALID_ID = re.compile(NAME_PATTERN)
# Fields whose valid values are no names (a URL, an SSH key line): a generated string up to
# this long is valid for them.
_FREE_FORM = {"url", "public_key"}
_FREE_FORM_MAX = 2048


def _chosen(key: str, generated: object) -> bool:
    """Whether to replace this generated value: only a valid one (an invalid value must still
    be refused), and only half of them (the same half in every run)."""
    if not isinstance(generated, str) or len(generated) % 2:
        return False
    if key in _FREE_FORM:
        return len(generated) <= _FREE_FORM_MAX
    return _VALID_ID.fullmatch(generated) is not None


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Credentials wherever the generated request has those fields as strings. A request
    generated without them, or with another type, is left as it is: it is invalid input, and
    must be refused."""
    fields = {
        "name": os.environ["UCLOUD_ST_NAME"],
        "realm": os.environ["UCLOUD_ST_REALM"],
        "token": auth.current_token(os.environ["UCLOUD_ST_SECRET"]),
    }
    given = json.loads(os.environ.get("UCLOUD_ST_IDS", "{}"))
    ids = {k: v for k, v in given.items() if " " not in k}
    ids.update(given.get(f"{case.method.upper()} {case.path}", {}))
    for data in (case.body, case.query):
        if not isinstance(data, dict):
            continue
        for key, value in fields.items():
            if isinstance(data.get(key), str):
                data[key] = value
        for key, existing in ids.items():
            if _chosen(key, data.get(key)):
                for field, value in existing.items():
                    if field == key or isinstance(data.get(field), str):
                        data[field] = value
    if isinstance(case.headers, MutableMapping) and "UCLOUD_ST_UPLOADER" in os.environ:
        _sign_upload(case)


def _sign_upload(case: Any) -> None:
    uploader = json.loads(os.environ["UCLOUD_ST_UPLOADER"])
    headers = case.headers
    for header, value in (
        ("X-UCloud-User", uploader["name"]),
        ("X-UCloud-Realm", uploader["realm"]),
        ("X-UCloud-Token", auth.current_token(uploader["secret"])),
    ):
        if isinstance(headers.get(header), str):
            headers[header] = value
    body = getattr(case.body, "data", case.body)  # an octet-stream body comes as Binary
    body = body.encode() if isinstance(body, str) else body
    announced = headers.get("X-UCloud-SHA512")
    if isinstance(body, bytes) and isinstance(announced, str) and len(announced) % 2 == 0:
        headers["X-UCloud-SHA512"] = hashlib.sha512(body).hexdigest()


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    path = os.environ.get("UCLOUD_ST_ANSWERS")
    if path:
        with open(path, "a") as f:
            f.write(f"{case.method.upper()} {case.path} {response.status_code}\n")
