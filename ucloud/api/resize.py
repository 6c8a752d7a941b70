"""Resizing a stopped VM: its CPUs, its memory, and growing its disks (ssd, hdd).

Only the VM's record changes here (its ``specs``), with its owner's quota usage in the same
transaction (vms.change_vm). The disks grow when the VM next starts: its host agent makes each
disk its size before every start (Storage.create_disk and grow_disk); a disk never shrinks.
CPUs and memory take effect at the same start, on whatever host the scheduler places it.
"""

from __future__ import annotations

from flask import Blueprint
from pydantic import ConfigDict, Field, StrictInt

from ucloud.api import errors
from ucloud.api.endpoint import Principal, Reply, context, endpoint
from ucloud.api.schemas import Size, VMRef
from ucloud.api.vms import change_vm, public
from ucloud.config import Settings
from ucloud.models import VM, AdminState, Desired, Host, Specs, Status

bp = Blueprint("resize", __name__)

# The disks a resize may grow, each a field of Specs: the system disk and the HDD disk (made at
# the next start if the VM had none).
GROWABLE_DISKS = ("ssd", "hdd")


class VMResize(VMRef):
    """Fields left out keep their value; at least one is given (the OpenAPI document says so
    too: one of them present and not null)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [k], "properties": {k: {"not": {"type": "null"}}}}
                for k in ("cpu", "ram", *GROWABLE_DISKS)
            ]
        }
    )

    cpu: StrictInt | None = Field(None, ge=1, le=256, description="virtual CPUs")
    ram: Size | None = Field(None, gt=0, le=4096, description="memory in GiB")
    ssd: Size | None = Field(
        None, gt=0, le=65536, description="system disk in GiB: it may only grow"
    )
    hdd: Size | None = Field(
        None, ge=0, le=65536, description="the second (HDD) disk in GiB: it may only grow"
    )


@endpoint(
    bp,
    "/vm/resize",
    summary="Change a stopped VM's CPUs and memory, grow its disks",
    responses={200: "done", 400: "bad size", 403: "over quota", 404: "no such VM", 409: "not now"},
)
def resize(body: VMResize, user: Principal) -> Reply:
    asked = {k: v for k in ("cpu", "ram", *GROWABLE_DISKS) if (v := getattr(body, k)) is not None}
    if not asked:
        raise errors.BadRequest("give at least one of cpu, ram, " + ", ".join(GROWABLE_DISKS))
    hosts, _ = context().store.list(Host)

    def change(vm: VM) -> None:
        if vm.status != Status.STOPPED or vm.desired != Desired.STOPPED:
            doing = "" if vm.desired == Desired.STOPPED else f", being {vm.desired}"
            raise errors.Conflict(
                f"VM {vm.uuid} is {vm.status}{doing}: stop it first (ucloud vm stop {vm.name} "
                "--wait), then resize it"
            )
        for disk in GROWABLE_DISKS:
            if disk in asked and asked[disk] < getattr(vm.specs, disk):
                raise errors.Conflict(
                    f"disks only grow: {disk} is {getattr(vm.specs, disk):g} GiB, "
                    f"{asked[disk]:g} GiB asked"
                )
        new = vm.specs.model_copy(update=asked)
        check_capacity(new, [h.value for h in hosts.values()], context().settings)
        vm.specs = new
        vm.record(f"api ({user.realm}/{user.name})", f"resized to {describe(new)}")

    vm = change_vm(body.vmid, user, change)
    return {"message": "resized: it takes effect when the VM starts", "vm": public(vm)}, 200


def check_capacity(specs: Specs, hosts: list[Host], settings: Settings) -> None:
    """409 unless some host in service could hold ``specs`` when empty (the scheduler's
    allocation ratios applied): a VM no host can ever hold would stay PENDING for good."""
    for host in hosts:
        c = host.capacity
        if (
            host.admin_state == AdminState.UP
            and specs.cpu <= c.cpu * settings.cpu_allocation_ratio
            and specs.ram <= c.ram * settings.ram_allocation_ratio + 1e-9
            and (c.ssd == 0 or specs.ssd <= c.ssd * settings.disk_allocation_ratio + 1e-9)
            and (c.hdd == 0 or specs.hdd <= c.hdd * settings.disk_allocation_ratio + 1e-9)
        ):
            return
    raise errors.Conflict(f"no host in service can hold {describe(specs)}")


def describe(specs: Specs) -> str:
    return f"cpu={specs.cpu} ram={specs.ram:g}G ssd={specs.ssd:g}G hdd={specs.hdd:g}G"
