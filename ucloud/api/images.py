"""File and image endpoints: uploaded files, images made from them, and image stores.

The API only records requests: the image scanner vets and converts files (ucloud.imagescanner)
and deletes images. An image store names the storage pool its images go to; administrators
create stores, and the store named by the image_store setting exists without being created.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ucloud import quota
from ucloud.api import errors, replies
from ucloud.api.endpoint import Principal, Reply, context, endpoint, visible
from ucloud.api.quotas import charged
from ucloud.api.schemas import ImageCreate, ImageRef, Listing, StoreCreate
from ucloud.models import VM, File, Image, ImageDesired, ImageStore
from ucloud.quota import Plan
from ucloud.store import Conflict, Versioned

bp = Blueprint("image", __name__)


# --- files ----------------------------------------------------------------------------------


@endpoint(
    bp,
    "/file/list",
    "GET",
    summary="The caller's uploaded files (not removed)",
    reply=replies.FileList,
)
def list_files(body: Listing, user: Principal) -> Reply:
    items, _ = context().store.list(File)
    files = sorted(
        (v.value for v in items.values() if not v.value.removed and user.owns(v.value)),
        key=lambda f: (f.owner_realm, f.owner, f.name),
    )
    return {"files": [f.model_dump(mode="json") for f in files]}, 200


# --- images ---------------------------------------------------------------------------------


@endpoint(
    bp,
    "/image/create",
    summary="Make an image from an uploaded file",
    responses={
        202: "queued",
        403: "only administrators make public images; or over the images quota",
        404: "no such file",
        409: "name taken",
    },
    reply=replies.ImageCreated,
)
def create(body: ImageCreate, user: Principal) -> Reply:
    file = owned_file(body.file_uuid, user)
    image = new_image(
        user, body.image_name, body.image_store, body.public, file=file.uuid, sha512=file.sha512
    )
    return {"message": "image creation queued", "uuid": image.uuid, "image": public(image)}, 202


def new_image(
    user: Principal,
    name: str,
    store_name: str | None,
    public: bool,
    *,
    file: str = "",
    sha512: str = "",
    url: str = "",
) -> Image:
    """Record a request for an image (made from a file, or a URL), charged to the
    user's quota; what the image scanner then makes. 403, 400 or 409 if it cannot be."""
    ctx = context()
    if public and not user.admin:
        raise errors.Forbidden("only administrators may make public images")
    store_name = store_name or ctx.settings.image_store
    pool = pool_of(store_name)
    items, _ = ctx.store.list(Image)
    if any(
        i.value.name == name
        and (i.value.owner, i.value.owner_realm) == (user.name, user.realm)
        and i.value.desired != ImageDesired.DELETED
        for i in items.values()
    ):
        raise errors.Conflict(f"you already have an image named {name}")
    image = Image(
        name=name,
        owner=user.name,
        owner_realm=user.realm,
        public=public,
        store=store_name,
        pool=pool,
        file=file,
        sha512=sha512,
        url=url,
    )
    charged((user.realm, user.name), lambda: Plan([(image, None)], quota.of_image(image)))
    return image


@endpoint(
    bp,
    "/image/list",
    "GET",
    summary="Public images and the caller's own",
    reply=replies.ImageList,
)
def list_images(body: Listing, user: Principal) -> Reply:
    items, _ = context().store.list(Image)
    images = sorted(
        (v.value for v in items.values() if v.value.public or user.owns(v.value)),
        key=lambda i: i.created,
    )
    return {"images": [public(i) for i in images]}, 200


@endpoint(
    bp,
    "/image/delete",
    summary="Delete an image no VM uses",
    responses={
        202: "queued",
        403: "a public image not the caller's",
        404: "no such image",
        409: "VMs use it",
    },
    reply=replies.ImageQueued,
)
def delete(body: ImageRef, user: Principal) -> Reply:
    store = context().store
    found = visible_image(body.uuid, user)
    if found is None:
        raise errors.NotFound(f"no image {body.uuid}")
    uuid = found.value.uuid
    if not user.owns(found.value):
        raise errors.Forbidden(f"image {body.uuid} is not yours: only its owner may delete it")
    # A VM created from the image meanwhile slips through; storage then refuses to remove an
    # image with clones, and the image scanner keeps trying and says why.
    vms, _ = store.list(VM)
    users = sorted(id for id, v in vms.items() if v.value.image == uuid)
    if users:
        raise errors.Conflict(
            f"image {body.uuid} is used by {len(users)} VM(s) ({', '.join(users[:5])}): "
            "delete them first"
        )

    deleted = mark_deleted(uuid)
    if deleted is None:
        raise errors.NotFound(f"no image {body.uuid}")
    return {"message": "image deletion queued", "image": public(deleted)}, 202


def mark_deleted(uuid: str) -> Image | None:
    """Ask for the image's deletion (desired ``deleted``), freeing its owner's quota in the
    same transaction; the image as now recorded, or None if there is none."""
    store = context().store
    result: list[Image] = []

    def plan() -> Plan | None:
        now = store.get(Image, uuid)
        result[:] = [now.value] if now is not None else []
        if now is None or now.value.desired == ImageDesired.DELETED:
            return None
        image = now.value.model_copy(update={"desired": ImageDesired.DELETED})
        result[:] = [image]
        return Plan([(image, now)], quota.of_image(image) - quota.of_image(now.value))

    first = store.get(Image, uuid)
    if first is None:
        return None
    charged((first.value.owner_realm, first.value.owner), plan)
    return result[0] if result else None


# --- image stores ---------------------------------------------------------------------------


@endpoint(
    bp,
    "/image/store/create",
    summary="Create an image store: which Ceph pool holds its images",
    admin=True,
    responses={201: "created", 409: "exists"},
    reply=replies.StoreCreated,
)
def create_store(body: StoreCreate, user: Principal) -> Reply:
    ctx = context()
    if body.image_store == ctx.settings.image_store:
        raise errors.Conflict(f"image store {body.image_store} exists (the default store)")
    new = ImageStore(name=body.image_store, pool=body.pool)
    try:
        ctx.store.create(new)
    except Conflict as e:
        raise errors.Conflict(f"image store {body.image_store} already exists") from e
    return {"message": "image store created", "image_store": new.model_dump(mode="json")}, 201


@endpoint(
    bp,
    "/image/store/list",
    "GET",
    summary="The image stores images can be made in",
    reply=replies.StoreList,
)
def list_stores(body: Listing, user: Principal) -> Reply:
    return {"image_stores": [s.model_dump(mode="json") for s in stores()]}, 200


# --- helpers --------------------------------------------------------------------------------


def stores() -> list[ImageStore]:
    """Every image store: the default one first, then those administrators created."""
    ctx = context()
    default = ImageStore(name=ctx.settings.image_store, pool=ctx.settings.image_pool, created=0)
    items, _ = ctx.store.list(ImageStore)
    return [default, *(v.value for _, v in sorted(items.items()) if v.value.name != default.name)]


def pool_of(store_name: str) -> str:
    for store in stores():
        if store.name == store_name:
            return store.pool
    raise errors.BadRequest(f"unknown image store {store_name!r}: see /image/store/list")


def owned_file(file_uuid: str, user: Principal) -> File:
    found = context().store.get(File, file_uuid)
    if found is None or not user.owns(found.value):
        # Another user's file is as invisible as a missing one.
        raise errors.NotFound(f"no file {file_uuid}")
    if found.value.removed:
        raise errors.NotFound(f"file {file_uuid} was removed from your upload directory")
    return found.value


def visible_image(ref: str, user: Principal) -> Versioned[Image] | None:
    """The image ``ref`` names for ``user``: theirs, or a public one."""
    return visible(Image, ref, user, lambda i: i.public)


def public(image: Image) -> dict[str, Any]:
    return image.model_dump(mode="json")
