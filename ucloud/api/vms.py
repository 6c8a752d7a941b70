"""VM endpoints: create, status, list, actions, delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint

from ucloud import quota
from ucloud.api import errors, firstboot, original, replies
from ucloud.api import networks as networks_api
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.images import visible_image
from ucloud.api.quotas import charged
from ucloud.api.schemas import Listing, VMAction, VMCreate, VMRef
from ucloud.models import (
    PUBLIC_EXCLUDE,
    VM,
    Action,
    Image,
    ImageDesired,
    ImageStatus,
    Specs,
    TransitionError,
)
from ucloud.network import ports
from ucloud.network.allocate import AllocationError
from ucloud.quota import Plan
from ucloud.store import Versioned

bp = Blueprint("vm", __name__)


@endpoint(
    bp,
    "/vm/create",
    summary="Create a VM",
    responses={
        202: "queued",
        403: "over the owner's quota (the message names the limit and the usage)",
        409: "its image is not ready or being deleted",
    },
    reply=replies.VMCreated,
)
def create(body: VMCreate, user: Principal) -> Reply:
    image = find_image(original.image_ref(body.image), user)
    networks = [networks_api.find_network(ref, user) for ref in body.networks]
    if len({n.value.uuid for n in networks}) != len(networks):
        raise errors.BadRequest("a network is named twice: a VM has one NIC on each network")
    specs = Specs(cpu=body.specs.cpu, ram=body.specs.ram, ssd=body.specs.ssd, hdd=body.specs.hdd)
    vm = VM(
        name=original.vm_name(body.vm_name, user),
        owner=user.name,
        owner_realm=user.realm,
        specs=specs,
        image=image.uuid,
    )
    vm.first_boot = firstboot.for_new_vm(body, user, vm)
    vm.record("api", f"created by {user.realm}/{user.name}")
    store = context().store

    def plan() -> Plan:
        # Called again on every retry: fresh networks (one being deleted refuses) and ports
        # (a MAC or an address taken meanwhile is chosen again).
        fresh = [ports.fresh_network(store, n) for n in networks]
        claims = ports.give_ports(store, vm, fresh)
        return Plan([(vm, None)], quota.of_vm(vm), unchanged=fresh, absent=claims)

    try:
        revision = charged((user.realm, user.name), plan)
    except ports.Changed as e:
        raise errors.Conflict(str(e)) from e
    except AllocationError as e:
        raise errors.Conflict(str(e)) from e
    assert revision is not None
    context().catalog.wrote(vm, revision)
    return {"message": "VM creation queued", "uuid": vm.uuid, "vm": public(vm)}, 202


@endpoint(
    bp,
    "/vm/status",
    "GET",
    summary="A VM's state and recent events",
    responses={200: "the VM", 404: "no such VM of the caller's"},
    reply=VM,
)
def status(body: VMRef, user: Principal) -> Reply:
    return context().catalog.vm_json(owned_vm(body.vmid, user)), 200


@endpoint(
    bp,
    "/vm/list",
    "GET",
    summary="The caller's VMs (every VM for administrators)",
    reply=replies.VMList,
)
def list_vms(body: Listing, user: Principal) -> Reply:
    owner = None if user.admin else (user.realm, user.name)
    return b'{"vms":' + context().catalog.vms_json(owner) + b"}", 200


@endpoint(
    bp,
    "/vm/action",
    summary="start, stop, suspend, resume or reboot a VM",
    responses={
        202: "queued",
        403: "a start over the owner's quota (the message names the limit and the usage)",
        404: "no such VM of the caller's",
        409: "not in this state",
    },
    reply=replies.VMQueued,
)
def action(body: VMAction, user: Principal) -> Reply:
    vm = apply(body.vmid, body.action, user)
    return {"message": f"{body.action} queued", "vm": public(vm)}, 202


@endpoint(
    bp,
    "/vm/delete",
    summary="Delete a VM and its disks",
    responses={202: "queued", 404: "no such VM of the caller's", 409: "being deleted"},
    reply=replies.VMQueued,
)
def delete(body: VMRef, user: Principal) -> Reply:
    vm = apply(body.vmid, Action.DELETE, user)
    return {"message": "deletion queued", "vm": public(vm)}, 202


def apply(vmid: str, action: Action, user: Principal) -> VM:
    def change(vm: VM) -> None:
        try:
            vm.apply(action, by=f"api ({user.realm}/{user.name})")
        except TransitionError as e:
            raise errors.Conflict(str(e)) from e

    return change_vm(vmid, user, change)


def change_vm(vmid: str, user: Principal, change: Callable[[VM], None]) -> VM:
    """Change a VM by compare-and-swap, with its owner's quota usage in the same transaction
    (starting a VM, or making it larger, is checked against the owner's limits). ``change``
    edits a copy of the VM as now stored, and raises an APIError to refuse."""
    owner = owned_vm(vmid, user).value
    ctx = context()
    changed: list[VM] = []

    def plan() -> Plan:
        found = ctx.store.get(VM, vmid)
        if found is None:
            raise errors.NotFound(f"no VM {vmid}")
        vm = found.value.model_copy(deep=True)
        change(vm)
        changed[:] = [vm]
        return Plan([(vm, found)], quota.of_vm(vm) - quota.of_vm(found.value))

    revision = charged((owner.owner_realm, owner.owner), plan)
    assert revision is not None
    ctx.catalog.wrote(changed[0], revision)
    return changed[0]


def owned_vm(vmid: str, user: Principal) -> Versioned[VM]:
    found = context().catalog.vm(vmid)
    if found is None or not user.owns(found.value):
        # Another user's VM is as invisible as a missing one.
        raise errors.NotFound(f"no VM {vmid}")
    return found


def find_image(ref: str, user: Principal) -> Image:
    """The image a new VM is made from (see images.visible_image), ready to be cloned."""
    found = visible_image(ref, user)
    if found is None:
        raise errors.BadRequest(f"unknown image {ref!r}: see /image/list")
    image = found.value
    if image.desired == ImageDesired.DELETED:
        raise errors.Conflict(f"image {ref!r} is being deleted")
    if image.status != ImageStatus.CREATED:
        raise errors.Conflict(f"image {ref!r} is not ready: it is {image.status}")
    return image


def public(vm: VM) -> dict[str, Any]:
    return vm.model_dump(mode="json", exclude=PUBLIC_EXCLUDE)
