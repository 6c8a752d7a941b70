"""VM endpoints: create, status, list, actions, delete."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ucloud.api import errors, firstboot
from ucloud.api import networks as networks_api
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.images import visible_image
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
from ucloud.store import Versioned

bp = Blueprint("vm", __name__)


@endpoint(bp, "/vm/create", summary="Create a VM", responses={202: "queued"})
def create(body: VMCreate, user: Principal) -> Reply:
    image = find_image(body.image, user)
    networks = [networks_api.find_network(ref, user) for ref in body.networks]
    if len({n.value.uuid for n in networks}) != len(networks):
        raise errors.BadRequest("a network is named twice: a VM has one NIC on each network")
    specs = Specs(cpu=body.specs.cpu, ram=body.specs.ram, ssd=body.specs.ssd, hdd=body.specs.hdd)
    vm = VM(
        name=body.vm_name,
        owner=user.name,
        owner_realm=user.realm,
        specs=specs,
        image=image.uuid,
    )
    vm.first_boot = firstboot.for_new_vm(body, user, vm.uuid)
    vm.record("api", f"created by {user.realm}/{user.name}")
    ctx = context()
    try:
        revision = ports.create_vm(ctx.store, vm, networks)
    except ports.Changed as e:
        raise errors.Conflict(str(e)) from e
    except AllocationError as e:
        raise errors.Conflict(str(e)) from e
    ctx.catalog.wrote(vm, revision)
    return {"message": "VM creation queued", "uuid": vm.uuid, "vm": public(vm)}, 202


@endpoint(bp, "/vm/status", "GET", summary="A VM's state and recent events")
def status(body: VMRef, user: Principal) -> Reply:
    return context().catalog.vm_json(owned_vm(body.vmid, user)), 200


@endpoint(bp, "/vm/list", "GET", summary="The caller's VMs (every VM for administrators)")
def list_vms(body: Listing, user: Principal) -> Reply:
    owner = None if user.admin else (user.realm, user.name)
    return b'{"vms":' + context().catalog.vms_json(owner) + b"}", 200


@endpoint(
    bp,
    "/vm/action",
    summary="start, stop, suspend, resume or reboot a VM",
    responses={202: "queued", 409: "not now"},
)
def action(body: VMAction, user: Principal) -> Reply:
    vm = apply(body.vmid, body.action, user)
    return {"message": f"{body.action} queued", "vm": public(vm)}, 202


@endpoint(bp, "/vm/delete", summary="Delete a VM and its disk", responses={202: "queued"})
def delete(body: VMRef, user: Principal) -> Reply:
    vm = apply(body.vmid, Action.DELETE, user)
    return {"message": "deletion queued", "vm": public(vm)}, 202


def apply(vmid: str, action: Action, user: Principal) -> VM:
    owned_vm(vmid, user)
    refused: list[str] = []

    def change(vm: VM) -> bool:
        try:
            vm.apply(action, by=f"api ({user.realm}/{user.name})")
        except TransitionError as e:
            refused.append(str(e))
            return False
        return True

    ctx = context()
    written = ctx.store.update(VM, vmid, change)
    if written is None:
        raise errors.NotFound(f"no VM {vmid}")
    if refused:
        raise errors.Conflict(refused[0])
    ctx.catalog.wrote(written.value, written.mod_revision)
    return written.value


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
