"""Accounts, for administrators: list users, delete one (and what they own), reset a user's
TOTP seed, list and end a user's console-page sessions, delete a host that is empty and out of
service.

Deleting what a user owns takes the normal paths, so nothing is removed behind a daemon's back:
VMs are asked to be deleted (desired ``deleted``: their hosts remove domains and disks), images
too (the image scanner removes them from storage once no disk is cloned from them), files are
removed from the user's upload directory (with their records), SSH keys are deleted, networks
are marked ``deleted`` (deleted at once if no VM is on them, else by the scheduler when their
last VM, one of the user's being deleted, goes); then the user's quota records and the user
go, and the record of their last console-page login. Owned things are listed again after the
user is gone, so a request that was already authenticated when the deletion began cannot leave
a VM behind.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint
from pydantic import Field, StrictBool

from ucloud import auth, uploads, websessions
from ucloud.api import errors, networks
from ucloud.api.endpoint import Principal, Reply, context, endpoint, existing_user
from ucloud.api.images import mark_deleted
from ucloud.api.schemas import Credentials, HostRef, Listing, Name
from ucloud.api.users import credentials
from ucloud.api.vms import apply
from ucloud.models import (
    VM,
    Action,
    Desired,
    File,
    Host,
    HostStatus,
    Image,
    ImageDesired,
    Network,
    SSHKey,
    Status,
    User,
    placement_folder,
)
from ucloud.quota import Quota, Usage
from ucloud.store import Store, Versioned

log = logging.getLogger(__name__)

bp = Blueprint("account", __name__)

Owner = tuple[str, str]  # (realm, name)


class UserRef(Credentials):
    user: Name = Field(description="the user's name")
    user_realm: Name = Field(description="the user's realm")


class UserDelete(UserRef):
    delete_owned: StrictBool = Field(
        False,
        description="also delete the user's VMs, images, files, SSH keys and networks (else: "
        "409 if any)",
    )


# --- users ----------------------------------------------------------------------------------


@endpoint(bp, "/user/list", "GET", summary="Every user, with what they own", admin=True)
def list_users(body: Listing, user: Principal) -> Reply:
    store = context().store
    users, _ = store.list(User)
    owned = Owned.read(store)
    answer = []
    for _, found in sorted(users.items()):
        u = found.value
        counts = owned.counts((u.realm, u.name))
        answer.append({"name": u.name, "realm": u.realm, "created": u.created, "owns": counts})
    return {"users": answer}, 200


@endpoint(
    bp,
    "/user/delete",
    summary="Delete a user (administrators); with delete_owned, what they own too",
    admin=True,
    responses={202: "deleted; owned things being deleted", 404: "no such user", 409: "owns"},
)
def delete_user(body: UserDelete, user: Principal) -> Reply:
    ctx = context()
    owner = (body.user_realm, body.user)
    if owner == (user.realm, user.name):
        raise errors.Conflict("you cannot delete yourself: ask another administrator")
    who = existing_user(body.user_realm, body.user)
    owned = Owned.read(ctx.store)
    counts = owned.counts(owner)
    if any(counts.values()) and not body.delete_owned:
        raise errors.Conflict(
            f"user {who} owns {describe(counts)}: delete them first, or ask to delete them "
            f"with the user (delete_owned; ucloud user delete {body.user} --realm "
            f"{body.user_realm} --delete-owned)"
        )
    owned.check_images_unused_by_others(owner)
    owned.check_networks_unused_by_others(owner)
    deleted = delete_owned(owned, owner, user)
    # The user goes, then what they own is looked at again: a request authenticated before
    # the user went may have created something meanwhile.
    # The login step last: no login records one once the user is gone (websessions.take_step).
    for kind in (User, Quota, Usage, websessions.LoginStep):
        # Compared with the record as read: one changed meanwhile (a seed reset) is read again.
        while (record := ctx.store.get(kind, who)) is not None and not ctx.store.delete(record):
            pass
    websessions.end_all(ctx.store, who)  # after the user: a login meanwhile is refused anyway
    more = delete_owned(Owned.read(ctx.store), owner, user)
    # Releases made by that second look recorded a usage again: it goes too.
    while (usage := ctx.store.get(Usage, who)) is not None and not ctx.store.delete(usage):
        pass
    total = Counter(deleted) + Counter(more)
    log.info("user %s deleted by %s/%s; deleting %s", who, user.realm, user.name, dict(total))
    return {"message": f"user {who} deleted", "deleting": {k: total[k] for k in counts}}, 202


@endpoint(
    bp,
    "/user/reset-totp",
    summary="Give a user a new TOTP seed (the old one stops working at once)",
    admin=True,
    responses={200: "done: the new seed", 404: "no such user"},
)
def reset_totp(body: UserRef, user: Principal) -> Reply:
    def change(u: User) -> None:
        u.totp_secret = auth.new_secret()

    store = context().store
    written = store.update(User, f"{body.user_realm}/{body.user}", change)
    if written is None:
        raise errors.NotFound(f"no user {body.user_realm}/{body.user}")
    # Its sessions were opened with the old seed. (One opened in the instant of the reset is
    # refused anyway: a session names the seed it was opened with.)
    websessions.end_all(store, written.value.id)
    return credentials(written.value), 200


class SessionsEnd(UserRef):
    session: str = Field(
        "",
        pattern=r"^[0-9a-f]{0,64}$",
        description="end only this session (as /user/sessions names it); empty: all of them",
    )


@endpoint(
    bp,
    "/user/sessions",
    "GET",
    summary="A user's console-page sessions: when they began and end, from where",
    admin=True,
    responses={200: "the sessions", 404: "no such user"},
)
def list_sessions(body: UserRef, user: Principal) -> Reply:
    store = context().store
    who = existing_user(body.user_realm, body.user)
    live = [s.value.public() for s in websessions.of_user(store, who)]
    return {"user": who, "sessions": live}, 200


@endpoint(
    bp,
    "/user/end-sessions",
    summary="End a user's console-page sessions (all, or one): they must log in again",
    admin=True,
    responses={200: "ended", 404: "no such user"},
)
def end_sessions(body: SessionsEnd, user: Principal) -> Reply:
    store = context().store
    who = existing_user(body.user_realm, body.user)
    ended = websessions.end_all(store, who, only=body.session)
    log.info("%d console session(s) of %s ended by %s/%s", ended, who, user.realm, user.name)
    return {"message": f"{ended} session(s) of {who} ended", "ended": ended}, 200


# --- hosts ----------------------------------------------------------------------------------


@endpoint(
    bp,
    "/host/delete",
    summary="Delete a host that runs no VM and is DEAD or in maintenance",
    admin=True,
    responses={200: "deleted", 404: "no such host", 409: "in service, or has VMs"},
)
def delete_host(body: HostRef, user: Principal) -> Reply:
    store = context().store
    found = store.get(Host, body.hostname)
    if found is None:
        raise errors.NotFound(f"no host {body.hostname}")
    host = found.value
    if host.status == HostStatus.UP and host.admin_state != "MAINTENANCE":
        raise errors.Conflict(
            f"host {host.name} is UP and in service: put it in maintenance first (ucloud host "
            f"maintenance {host.name} on), move its VMs away, and stop its agent"
        )
    placed, _ = store.list_index(placement_folder(host.name))
    vms, _ = store.list(VM)
    on_it = sorted(
        set(placed)
        | {id for id, v in vms.items() if host.name in (v.value.hostname, v.value.fencing)}
    )
    if on_it:
        raise errors.Conflict(
            f"host {host.name} still has {len(on_it)} VM(s) ({', '.join(on_it[:5])}): stop "
            "them and start them elsewhere, or delete them, first"
        )
    # Compared with the host as read: a host that came back UP meanwhile is not deleted.
    if not store.delete(found):
        raise errors.Conflict(f"host {host.name} changed meanwhile: look again and retry")
    return {"message": f"host {host.name} deleted", "host": host.model_dump(mode="json")}, 200


# --- what a user owns -----------------------------------------------------------------------


@dataclass(frozen=True)
class Things:
    """What one user owns."""

    vms: list[VM]
    images: list[Image]
    files: list[File]
    keys: list[SSHKey]
    networks: list[Network]


class Owned:
    """Every VM, image, file, SSH key and network, to find a user's (administrators'
    requests, rare)."""

    def __init__(
        self,
        vms: dict[str, Versioned[VM]],
        images: dict[str, Versioned[Image]],
        files: dict[str, Versioned[File]],
        keys: dict[str, Versioned[SSHKey]],
        networks: dict[str, Versioned[Network]],
    ) -> None:
        self.vms, self.images, self.files = vms, images, files
        self.keys, self.networks = keys, networks

    @classmethod
    def read(cls, store: Store) -> Owned:
        return cls(
            store.list(VM)[0],
            store.list(Image)[0],
            store.list(File)[0],
            store.list(SSHKey)[0],
            store.list(Network)[0],
        )

    def of(self, owner: Owner) -> Things:
        def mine(objects: dict[str, Versioned[Any]]) -> list[Any]:
            return [
                o.value for o in objects.values() if (o.value.owner_realm, o.value.owner) == owner
            ]

        return Things(
            mine(self.vms),
            mine(self.images),
            mine(self.files),
            mine(self.keys),
            mine(self.networks),
        )

    def counts(self, owner: Owner) -> dict[str, int]:
        """What the user still has (not already being deleted)."""
        things = self.of(owner)
        return {
            "vms": sum(v.desired != Desired.DELETED for v in things.vms),
            "images": sum(i.desired != ImageDesired.DELETED for i in things.images),
            "files": sum(not f.removed for f in things.files),
            "keys": len(things.keys),
            "networks": sum(not n.deleted for n in things.networks),
        }

    def check_networks_unused_by_others(self, owner: Owner) -> None:
        """409 if another user's VM (not being deleted) is attached to one of the user's
        networks (a shared one): the network could not be deleted while it is. (One being
        deleted lets go of it when it goes, as the user's own VMs do.)"""
        mine = {n.uuid for n in self.of(owner).networks}
        others = sorted(
            v.value.uuid
            for v in self.vms.values()
            if mine & set(v.value.networks)
            and (v.value.owner_realm, v.value.owner) != owner
            and v.value.desired != Desired.DELETED
        )
        if others:
            raise errors.Conflict(
                f"other users' VMs are attached to this user's networks ({', '.join(others[:5])})"
                ": those VMs must be detached or deleted first"
            )

    def check_images_unused_by_others(self, owner: Owner) -> None:
        """409 if another user's VM was made from one of the user's (public) images: it
        could not be removed from storage while that VM's disk is cloned from it."""
        mine = {i.uuid for i in self.of(owner).images}
        others = sorted(
            v.value.uuid
            for v in self.vms.values()
            if v.value.image in mine and (v.value.owner_realm, v.value.owner) != owner
        )
        if others:
            raise errors.Conflict(
                f"other users' VMs use this user's images ({', '.join(others[:5])}): "
                "those VMs must be deleted first"
            )


def delete_owned(owned: Owned, owner: Owner, by: Principal) -> dict[str, int]:
    """Ask for the deletion of everything ``owner`` owns, through the normal paths. VMs
    first: a network is deleted when the last of them goes."""
    things = owned.of(owner)
    done = {"vms": 0, "images": 0, "files": 0, "keys": 0, "networks": 0}
    for vm in things.vms:
        if vm.desired == Desired.DELETED or vm.status == Status.DELETING:
            continue
        try:
            apply(vm.uuid, Action.DELETE, by)
            done["vms"] += 1
        except (errors.NotFound, errors.Conflict):
            pass  # deleted meanwhile, or being deleted already
    for image in things.images:
        if image.desired != ImageDesired.DELETED and mark_deleted(image.uuid) is not None:
            done["images"] += 1
    done["files"] = delete_files(owner, things.files)
    store = context().store
    for key in things.keys:
        while (found := store.get(SSHKey, key.id)) is not None and not store.delete(found):
            pass
        done["keys"] += 1
    for network in things.networks:
        if not network.deleted and networks.mark_deleted(network.uuid):
            done["networks"] += 1
    return done


def delete_files(owner: Owner, files: list[File]) -> int:
    """Remove the user's upload directory, then their file records (which the file scanner
    would otherwise only mark removed)."""
    ctx = context()
    realm, name = owner
    count = sum(not f.removed for f in files)
    if realm == ctx.settings.upload_realm:
        try:
            shutil.rmtree(uploads.user_dir(Path(ctx.settings.upload_root), name))
        except FileNotFoundError:
            pass
        except (uploads.Unusable, OSError) as e:
            raise errors.APIError(f"cannot remove the user's upload directory: {e}", 500) from e
    for f in files:
        while (found := ctx.store.get(File, f.uuid)) is not None and not ctx.store.delete(found):
            pass  # the file scanner marked it removed meanwhile: delete that
    return count


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) or "nothing"
