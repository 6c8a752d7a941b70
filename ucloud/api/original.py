"""What a request in the original API's shape leaves out, filled in for it.

The original documents ``POST /vm/create`` with ``name``, ``realm``, ``seed`` and ``specs``
alone: no VM name and no image. A VM made that way gets a generated name, unique among its
owner's VMs, and the cluster's default image (the ``default_image`` setting).
"""

from __future__ import annotations

import secrets

from ucloud.api import errors
from ucloud.api.endpoint import Principal, context
from ucloud.models import Image


def vm_name(given: str | None, user: Principal) -> str:
    """``given``, or a new name (``vm-`` and 8 hex digits) none of the user's VMs has."""
    if given is not None:
        return given
    taken = context().catalog.vm_names((user.realm, user.name))
    while True:
        name = f"vm-{secrets.token_hex(4)}"
        if name not in taken:
            return name


def image_ref(given: str | None) -> str:
    """``given``, or the uuid of the cluster's default image (the ``default_image`` setting: a
    uuid, or the name of a public image, so no user's own image can stand in for it); a 400
    that says so when there is none."""
    if given is not None:
        return given
    ctx = context()
    default = ctx.settings.default_image
    if not default:
        raise errors.BadRequest(
            "image: this cluster has no default image (setting UCLOUD_DEFAULT_IMAGE): "
            "name one (see /image/list)"
        )
    found = ctx.store.get(Image, default)
    if found is not None and found.value.public:
        return found.value.uuid
    items, _ = ctx.store.list(Image)
    named = [v.value.uuid for v in items.values() if v.value.public and v.value.name == default]
    if len(named) != 1:
        raise errors.BadRequest(
            f"image: this cluster's default image {default!r} is "
            + ("ambiguous" if named else "not a public image")
            + ": name one (see /image/list)"
        )
    return named[0]
