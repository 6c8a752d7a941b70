"""``POST /image/import``: an image fetched from an http(s) URL by the image scanner.

The API checks only the URL's form; the image scanner, which fetches, decides which addresses
may be reached (ucloud/imagescanner/fetch.py): a refusal is the image's ERROR with the reason.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Blueprint
from pydantic import Field, StrictBool, field_validator

from ucloud.api.endpoint import Principal, Reply, endpoint
from ucloud.api.images import new_image, public
from ucloud.api.schemas import Credentials, Name

bp = Blueprint("import", __name__)


# The URL's form, for the OpenAPI document and checked as it says (after the clearer checks
# below): urlsplit alone drops leading spaces and any tab or newline, so "ht\ttp://..." would
# pass as http.
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f/?#@]+([/?#][^\x00-\x20\x7f]*)?$"
_URL = re.compile(URL_PATTERN)


class ImageImport(Credentials):
    image_name: Name = Field(description="a name for the image")
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="an http(s) URL of the image (no user name or password)",
        json_schema_extra={"pattern": URL_PATTERN},
    )
    image_store: Name | None = Field(
        None, description="the image store to keep it in; default: the cluster's default store"
    )
    public: StrictBool = Field(False, description="usable by every user (administrators only)")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError as e:
            raise ValueError(f"not a valid URL ({e})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry a user name or password")
        if not _URL.fullmatch(url):
            raise ValueError(
                "must be an http:// or https:// URL without spaces or control characters"
            )
        return url


@endpoint(
    bp,
    "/image/import",
    summary="Make an image from an http(s) URL (fetched by the image scanner)",
    responses={
        202: "queued",
        403: "only administrators make public images; or over the images quota",
        409: "name taken",
    },
)
def import_image(body: ImageImport, user: Principal) -> Reply:
    image = new_image(user, body.image_name, body.image_store, body.public, url=body.url)
    return {"message": "image import queued", "uuid": image.uuid, "image": public(image)}, 202
