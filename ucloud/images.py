"""Turning a file into a ready image: import it into storage, then record it as CREATED."""

from __future__ import annotations

from ucloud.models import Image, ImageStatus
from ucloud.storage import Storage
from ucloud.store import Store


def register_image(
    store: Store,
    storage: Storage,
    source: str,
    name: str,
    owner: str,
    owner_realm: str,
    public: bool = True,
) -> Image:
    """Import ``source`` (a file qemu-img reads; vet untrusted files first) as a new image."""
    image = Image(name=name, owner=owner, owner_realm=owner_realm, public=public)
    image.size = storage.import_image(image.uuid, source)
    image.status = ImageStatus.CREATED
    store.create(image)
    return image
