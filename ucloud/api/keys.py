"""SSH key endpoints: a user's public keys, by name, to put into new VMs.

Keys live under ``<prefix>/sshkey/<realm>/<user>/<name>``: a user's keys are one folder, read
with one prefix list. Another user's key is invisible (404), administrators' included: a key is
its owner's, and ``/vm/create`` takes the caller's own keys only.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ucloud import sshkeys
from ucloud.api import errors, replies
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.schemas import KeyAdd, KeyRef, Listing
from ucloud.models import SSHKey
from ucloud.store import Conflict

bp = Blueprint("key", __name__)

# Keys a user may have: each is copied into every new VM's record, and etcd is no key store.
MAX_KEYS = 100


@endpoint(
    bp,
    "/key/add",
    summary="Add an SSH public key",
    responses={
        201: "added",
        400: "not a key ucloud accepts",
        409: "the name is taken, or the caller has the most keys one may have",
    },
    reply=replies.KeyDone,
)
def add(body: KeyAdd, user: Principal) -> Reply:
    if len(owned_keys(user)) >= MAX_KEYS:
        raise errors.Conflict(f"you have {MAX_KEYS} keys, the most one may have: delete one first")
    try:
        key = sshkeys.parse(body.public_key)
    except sshkeys.InvalidKey as e:
        raise errors.BadRequest(f"public_key: {e}") from e
    new = SSHKey(
        name=body.key_name,
        owner=user.name,
        owner_realm=user.realm,
        public_key=key.line,
        type=key.type,
        bits=key.bits,
        fingerprint=key.fingerprint,
    )
    try:
        context().store.create(new)
    except Conflict as e:
        raise errors.Conflict(f"you already have a key named {body.key_name}") from e
    return {"message": "key added", "key": public(new)}, 201


@endpoint(bp, "/key/list", "GET", summary="The caller's SSH keys", reply=replies.KeyList)
def list_keys(body: Listing, user: Principal) -> Reply:
    return {"keys": [public(k) for k in owned_keys(user)]}, 200


@endpoint(
    bp,
    "/key/delete",
    summary="Delete an SSH key",
    responses={200: "deleted", 404: "no such key"},
    reply=replies.KeyDone,
)
def delete(body: KeyRef, user: Principal) -> Reply:
    store = context().store
    found = store.get(SSHKey, f"{user.realm}/{user.name}/{body.key_name}")
    # VMs made with the key keep it: it was copied into each one's first-boot data.
    if found is None or not store.delete(found):
        raise errors.NotFound(f"no key {body.key_name}")
    return {"message": "key deleted", "key": public(found.value)}, 200


def owned_keys(user: Principal) -> list[SSHKey]:
    """The user's own keys, oldest first."""
    items, _ = context().store.list(SSHKey, under=f"{user.realm}/{user.name}/")
    return sorted((v.value for v in items.values()), key=lambda k: (k.created, k.name))


def public(key: SSHKey) -> dict[str, Any]:
    return key.model_dump(mode="json")
